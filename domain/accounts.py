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


CUSTOMER_SEPARATOR = "."
"""Between a merchant's id and its customer's in the owner of a wallet the API names."""


def merchants_customer(merchant_id: str, customer_id: str) -> str:
    """A merchant's customer as the ledger names the wallet's owner: ``<merchant>.<customer>``.
    A merchant id may hold dots and a customer id may not, so the last dot ends the
    merchant's id: ``m-acme`` cannot name a customer of ``m-acme.eu`` (``eu.bob``)."""
    assert merchant_id
    assert customer_id
    assert CUSTOMER_SEPARATOR not in customer_id, customer_id
    return f"{merchant_id}{CUSTOMER_SEPARATOR}{customer_id}"


def wallet_merchant(account_id: str) -> str | None:
    """The merchant whose customer's wallet this is (``wallet:<merchant>.<customer>:<CCY>``);
    None for any other account, or a wallet no merchant named (``wallet:p-1:EUR``)."""
    parts = account_id.split(":")
    if len(parts) != 3 or parts[0] != AccountKind.customer_wallet.value:
        return None
    merchant, separator, customer = parts[1].rpartition(CUSTOMER_SEPARATOR)
    return merchant if separator and merchant and customer else None


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
