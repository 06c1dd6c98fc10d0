"""Account balances and how legs and holds change them. One writer per account.

Invariants (DESIGN.md §3): total = available + frozen; frozen = sum of open holds;
available >= 0 unless the account kind allows overdraft; a hold resolves once.
"""

from __future__ import annotations

from enum import IntEnum

from domain.accounts import overdraft_unlimited
from domain.commands import Message
from domain.events import JournalEntryDecided, Leg


class PostingStatus(IntEnum):
    """One member per reason, numbers fixed forever."""

    applied = 0
    exists = 1
    currency_mismatch = 2
    hold_not_found = 3
    hold_exceeded = 4
    insufficient_funds = 5
    hold_exists = 6
    amount_must_be_positive = 7
    hold_outcome_unknown = 8
    """A redelivered hold request whose first answer was lost in a crash and whose hold is
    no longer open: it is answered as not placed (the order has moved past it)."""

    def transient(self) -> bool:
        return False


class Hold(Message):
    hold_id: str
    payment_id: str
    amount_minor: int


class AccountBalance(Message):
    account_id: str
    currency: str
    total_minor: int = 0
    frozen_minor: int = 0
    holds: tuple[Hold, ...] = ()
    legs_applied: int = 0
    """How many legs this account has applied: the sequence number of the last one."""

    @property
    def available_minor(self) -> int:
        return self.total_minor - self.frozen_minor


def open_account(account_id: str, currency: str) -> AccountBalance:
    return AccountBalance(account_id=account_id, currency=currency)


def posting_id_for(entry: JournalEntryDecided, account_id: str) -> str:
    return f"{entry.entry_id}:{account_id}"


def entry_balances(entry: JournalEntryDecided) -> bool:
    """Two or more legs, one per account (a posting id is entry + account), zero per currency."""
    totals: dict[str, int] = {}
    for leg in entry.legs:
        totals[leg.currency] = totals.get(leg.currency, 0) + leg.amount_minor
    one_leg_per_account = len({leg.account_id for leg in entry.legs}) == len(entry.legs)
    return len(entry.legs) >= 2 and one_leg_per_account and all(v == 0 for v in totals.values())


def check_invariants(balance: AccountBalance) -> None:
    assert balance.frozen_minor == sum(h.amount_minor for h in balance.holds), balance
    assert balance.frozen_minor >= 0, balance
    assert overdraft_unlimited(balance.account_id) or balance.available_minor >= 0, balance


def apply_leg(balance: AccountBalance, leg: Leg) -> tuple[AccountBalance, PostingStatus]:
    """Credit, debit, or debit that consumes a hold (remainder of the hold released)."""
    assert leg.account_id == balance.account_id
    if leg.currency != balance.currency:
        return balance, PostingStatus.currency_mismatch
    if leg.hold_id:
        return _capture_hold(balance, leg)
    total = balance.total_minor + leg.amount_minor
    if leg.amount_minor < 0 and not overdraft_unlimited(balance.account_id):
        if total - balance.frozen_minor < 0:
            return balance, PostingStatus.insufficient_funds
    updated = balance.model_copy(update={"total_minor": total,
                                         "legs_applied": balance.legs_applied + 1})
    check_invariants(updated)
    return updated, PostingStatus.applied


def _capture_hold(balance: AccountBalance, leg: Leg) -> tuple[AccountBalance, PostingStatus]:
    hold = next((h for h in balance.holds if h.hold_id == leg.hold_id), None)
    if hold is None:
        return balance, PostingStatus.hold_not_found
    if -leg.amount_minor > hold.amount_minor or leg.amount_minor >= 0:
        return balance, PostingStatus.hold_exceeded
    if not leg.hold_final and -leg.amount_minor < hold.amount_minor:
        return _take_from_hold(balance, hold, -leg.amount_minor), PostingStatus.applied
    updated = _close_hold(balance, hold).model_copy(
        update={"total_minor": balance.total_minor + leg.amount_minor,
                "legs_applied": balance.legs_applied + 1})
    check_invariants(updated)
    return updated, PostingStatus.applied


def _take_from_hold(balance: AccountBalance, hold: Hold, taken_minor: int) -> AccountBalance:
    """A partial capture that keeps the rest of the hold open for later captures."""
    assert 0 < taken_minor < hold.amount_minor
    rest = hold.model_copy(update={"amount_minor": hold.amount_minor - taken_minor})
    updated = balance.model_copy(update={
        "total_minor": balance.total_minor - taken_minor,
        "frozen_minor": balance.frozen_minor - taken_minor,
        "holds": tuple(rest if h.hold_id == hold.hold_id else h for h in balance.holds),
        "legs_applied": balance.legs_applied + 1,
    })
    check_invariants(updated)
    return updated


def place_hold(balance: AccountBalance, hold: Hold, earlier: PostingStatus | None = None
               ) -> tuple[AccountBalance, PostingStatus]:
    """Try phase: freeze funds if available covers them (or the account may overdraw).

    ``earlier`` is the first decision for this hold id, which the ledger stage keeps for
    every hold ever requested: a redelivered request gets that same answer and changes
    nothing, however long ago the hold was placed, captured, released or refused.
    """
    if earlier is not None:
        return balance, (PostingStatus.hold_exists if earlier is PostingStatus.applied
                         else earlier)
    if any(h.hold_id == hold.hold_id for h in balance.holds):
        return balance, PostingStatus.hold_exists
    if hold.amount_minor <= 0:
        return balance, PostingStatus.amount_must_be_positive
    limited = not overdraft_unlimited(balance.account_id)
    if limited and balance.available_minor < hold.amount_minor:
        return balance, PostingStatus.insufficient_funds
    updated = balance.model_copy(update={"frozen_minor": balance.frozen_minor + hold.amount_minor,
                                         "holds": balance.holds + (hold,)})
    check_invariants(updated)
    return updated, PostingStatus.applied


def release_hold(balance: AccountBalance, hold_id: str) -> tuple[AccountBalance, PostingStatus]:
    """Cancel phase: unfreeze without moving money. Releasing twice is a no-op."""
    hold = next((h for h in balance.holds if h.hold_id == hold_id), None)
    if hold is None:
        return balance, PostingStatus.hold_not_found
    updated = _close_hold(balance, hold)
    check_invariants(updated)
    return updated, PostingStatus.applied


def _close_hold(balance: AccountBalance, hold: Hold) -> AccountBalance:
    return balance.model_copy(update={
        "frozen_minor": balance.frozen_minor - hold.amount_minor,
        "holds": tuple(h for h in balance.holds if h.hold_id != hold.hold_id),
    })
