"""Reading a domain Decision in tests: its outputs by type, an entry's legs by account."""

from __future__ import annotations

from domain.events import JournalEntryDecided, Leg


def of_type(decision, cls) -> list:
    return [m for m in decision.outputs if isinstance(m, cls)]


def only(decision, cls):
    found = of_type(decision, cls)
    assert len(found) == 1, decision.outputs
    return found[0]


def legs_by_account(entry: JournalEntryDecided) -> dict[str, int]:
    return {leg.account_id: leg.amount_minor for leg in entry.legs}


def leg_on(entry: JournalEntryDecided, account_id: str) -> Leg:
    return next(leg for leg in entry.legs if leg.account_id == account_id)
