"""Account balances and how legs and holds change them. One writer per account.

Invariants (DESIGN.md §3): total = available + frozen; frozen = sum of open holds;
available >= 0 unless the account kind allows overdraft; a hold resolves once.
"""

from __future__ import annotations

from enum import IntEnum

from domain.accounts import default_limit
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
    version: int = 0
    """How many changes (legs, holds placed, released) the account has seen."""

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


BY_KIND = object()
"""Default for ``limit_minor``: the limit the account's kind implies (accounts.default_limit)."""


def _limit(balance: AccountBalance, limit_minor) -> int | None:
    return default_limit(balance.account_id) if limit_minor is BY_KIND else limit_minor


def check_invariants(balance: AccountBalance, limit_minor=None) -> None:
    """Always: frozen = sum of open holds, never negative. With a limit (``BY_KIND`` for
    the kind's), also available >= -limit: checked after every debit and hold, not after
    credits (a limit lowered in config must not stop money coming in)."""
    assert balance.frozen_minor == sum(h.amount_minor for h in balance.holds), balance
    assert balance.frozen_minor >= 0, balance
    assert balance.version >= balance.legs_applied, balance
    limit = _limit(balance, limit_minor)
    assert limit is None or balance.available_minor >= -limit, (balance, limit)


def _check_within(balance: AccountBalance, limit_minor: int | None) -> None:
    check_invariants(balance, limit_minor)


def apply_leg(balance: AccountBalance, leg: Leg, limit_minor=BY_KIND
              ) -> tuple[AccountBalance, PostingStatus]:
    """Credit, debit, or debit that consumes a hold (remainder of the hold released).

    ``limit_minor`` is how far below zero available may go (None: no limit); a debit that
    would go further is refused. Credits always apply."""
    assert leg.account_id == balance.account_id
    limit = _limit(balance, limit_minor)
    if leg.currency != balance.currency:
        return balance, PostingStatus.currency_mismatch
    if leg.hold_id:
        return _capture_hold(balance, leg)
    total = balance.total_minor + leg.amount_minor
    if leg.amount_minor < 0 and limit is not None:
        if total - balance.frozen_minor < -limit:
            return balance, PostingStatus.insufficient_funds
    updated = balance.model_copy(update={"total_minor": total,
                                         "legs_applied": balance.legs_applied + 1,
                                         "version": balance.version + 1})
    check_invariants(updated)
    if leg.amount_minor < 0:
        _check_within(updated, limit)
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
                "legs_applied": balance.legs_applied + 1, "version": balance.version + 1})
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
        "version": balance.version + 1,
    })
    check_invariants(updated)
    return updated


def place_hold(balance: AccountBalance, hold: Hold, earlier: PostingStatus | None = None,
               limit_minor=BY_KIND) -> tuple[AccountBalance, PostingStatus]:
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
    limit = _limit(balance, limit_minor)
    if limit is not None and balance.available_minor - hold.amount_minor < -limit:
        return balance, PostingStatus.insufficient_funds
    updated = balance.model_copy(update={"frozen_minor": balance.frozen_minor + hold.amount_minor,
                                         "holds": balance.holds + (hold,),
                                         "version": balance.version + 1})
    check_invariants(updated)
    _check_within(updated, limit)
    return updated, PostingStatus.applied


def release_hold(balance: AccountBalance, hold_id: str) -> tuple[AccountBalance, PostingStatus]:
    """Cancel phase: unfreeze without moving money. Releasing twice is a no-op."""
    hold = next((h for h in balance.holds if h.hold_id == hold_id), None)
    if hold is None:
        return balance, PostingStatus.hold_not_found
    updated = _close_hold(balance, hold)
    updated = updated.model_copy(update={"version": balance.version + 1})
    check_invariants(updated)
    return updated, PostingStatus.applied


def _close_hold(balance: AccountBalance, hold: Hold) -> AccountBalance:
    return balance.model_copy(update={
        "frozen_minor": balance.frozen_minor - hold.amount_minor,
        "holds": tuple(h for h in balance.holds if h.hold_id != hold.hold_id),
    })
