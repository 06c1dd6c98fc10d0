"""Account identifiers and their kinds. The id says the kind; the kind says the limit."""

from __future__ import annotations

from enum import Enum


class AccountKind(str, Enum):
    customer_wallet = "wallet"
    merchant_pending = "merchant"
    merchant_settled = "settled"
    channel_clearing = "clearing"
    fee_revenue = "fees"
    suspense = "suspense"
    settlement_cash = "cash"
    channel_fees = "chfees"


# Asset-side, technical and revenue accounts may run negative without limit: a clearing
# account is what a channel owes us; the fee account is what we earned, and a fee reversal
# (revocation) must never be refused half-way through an entry. Wallets and merchants keep
# available >= 0 (DESIGN.md §3.4); issue 4 makes limits configurable per account.
_UNLIMITED = frozenset({AccountKind.channel_clearing, AccountKind.suspense,
                        AccountKind.fee_revenue, AccountKind.settlement_cash,
                        AccountKind.channel_fees})


def customer_wallet(account_id: str, currency: str) -> str:
    return f"wallet:{account_id}:{currency}"


def suspense(currency: str) -> str:
    """Money we hold for nobody yet: a duplicate or late charge on its way back."""
    return f"suspense:{currency}"


def merchant_pending(merchant_id: str, currency: str) -> str:
    return f"merchant:{merchant_id}:pending:{currency}"


def merchant_settled(merchant_id: str, currency: str) -> str:
    return f"merchant:{merchant_id}:settled:{currency}"


def channel_clearing(channel: str, currency: str) -> str:
    return f"clearing:{channel}:{currency}"


def settlement_cash(channel: str, currency: str) -> str:
    """What a channel paid into our bank account when it settled (an asset, like clearing)."""
    return f"cash:{channel}:{currency}"


def channel_fees(channel: str, currency: str) -> str:
    """The fees a channel kept when it settled: our cost of taking payments through it."""
    return f"chfees:{channel}:{currency}"


def fee_revenue(currency: str) -> str:
    return f"fees:{currency}"


def kind_of(account_id: str) -> AccountKind:
    parts = account_id.split(":")
    if parts[0] == "merchant" and len(parts) > 2 and parts[2] == "settled":
        return AccountKind.merchant_settled
    return AccountKind(parts[0])


def overdraft_unlimited(account_id: str) -> bool:
    return kind_of(account_id) in _UNLIMITED


def default_limit(account_id: str) -> int | None:
    """How far below zero the account's available balance may go by its kind (None: no
    limit). ``config/accounts.yaml`` may give single accounts an overdraft."""
    return None if overdraft_unlimited(account_id) else 0


SHARD_SEPARATOR = "#"


def sub_account(account_id: str, shard: int) -> str:
    """One of a hot account's sub-accounts: its own row and partition, same money."""
    assert shard >= 0
    return f"{account_id}{SHARD_SEPARATOR}{shard}"


def logical_account(account_id: str) -> str:
    """The account a sub-account belongs to (an account that is not split is itself)."""
    return account_id.split(SHARD_SEPARATOR, 1)[0]
