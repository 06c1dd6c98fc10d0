"""The ledger auditor: an independent model of every account, fed by what the ledger says
it did (``LegApplied`` and ``HoldChanged`` on ``pay.ledger.entries``), checking the money
rules of DESIGN.md §3 after every event.

It keeps its own balances, holds and per-entry tallies and never trusts a reported figure
without recomputing it. A check that fails yields a ``Violation`` naming the check, the
account and the entry or hold that caused it; the caller exports and publishes them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from enum import Enum

from domain.commands import Message
from domain.events import HoldChange, HoldChanged, LegApplied


class AuditCheck(str, Enum):
    entry_balanced = "entry_balanced"
    """Once all its legs are applied, an entry sums to zero per currency."""
    zero_sum = "zero_sum"
    """All balances per currency sum to zero, counting what is in flight."""
    within_limit = "within_limit"
    """No account's available balance is below its limit."""
    frozen_equals_holds = "frozen_equals_holds"
    """Each account's frozen balance equals the sum of its open holds."""
    reported_equals_rebuilt = "reported_equals_rebuilt"
    """The balance the ledger reports equals the auditor's own sum of legs."""
    applied_once = "applied_once"
    """Each account's changes are numbered without gap or repeat."""


class Violation(Message):
    check: AuditCheck
    account_id: str
    cause_id: str
    """The posting or hold id whose event revealed it."""
    detail: str


@dataclass
class _Account:
    total_minor: int = 0
    holds: dict[str, int] = field(default_factory=dict)
    version: int = 0


@dataclass
class _Entry:
    legs_seen: int = 0
    sums: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class AuditStatus(Message):
    """The auditor's counts so far (on ``pay.audit.status``): the API's ledger audit status."""

    checks: dict[str, int]
    violations: dict[str, int]
    entries_completed: int
    open_entries: int
    in_flight: dict[str, int]
    copies_dropped: int
    at_ms: int

    @property
    def clean(self) -> bool:
        return not any(self.violations.values())


class Auditor:
    """Feed it every ledger event once (drop copies by message id first)."""

    def __init__(self, limit_of) -> None:
        self._limit_of = limit_of
        """account id -> overdraft allowed in minor units, or None for no limit."""
        self.accounts: dict[str, _Account] = defaultdict(_Account)
        self.entries: dict[str, _Entry] = {}
        self.applied_per_currency: dict[str, int] = defaultdict(int)
        self.in_flight_per_currency: dict[str, int] = defaultdict(int)
        self.checked: dict[AuditCheck, int] = defaultdict(int)
        self.violations: dict[AuditCheck, int] = defaultdict(int)
        self.entries_completed = 0
        self.copies_dropped = 0
        self._off_reported: dict[str, int] = {}
        self.postings: set[str] = set()
        """Posting ids seen (a bloom filter would bound this; see issue 10)."""

    def observe(self, event: LegApplied | HoldChanged) -> list[Violation]:
        """One ledger event. A copy (the ledger re-sends after a crash) carries a version
        the account already has and is dropped; a posting applied twice shows up as the
        same posting id under a new version."""
        account = self.accounts[event.account_id]
        if event.version <= account.version:
            self.copies_dropped += 1
            return []
        if isinstance(event, LegApplied):
            if event.posting_id in self.postings:
                # It did happen: count it, so later checks compare like with like and one
                # fault is reported once, not on every later event of the account.
                self.checked[AuditCheck.applied_once] += 1
                self.violations[AuditCheck.applied_once] += 1
                account.version = event.version
                account.total_minor += event.amount_minor
                self.applied_per_currency[event.currency] += event.amount_minor
                return [Violation(check=AuditCheck.applied_once, account_id=event.account_id,
                                  cause_id=event.posting_id,
                                  detail=f"posting applied again as change {event.version}")]
            self.postings.add(event.posting_id)
            found = self._leg(event)
        else:
            assert isinstance(event, HoldChanged), type(event)
            found = self._hold(event)
        found += self._account_checks(event)
        for violation in found:
            self.violations[violation.check] += 1
        return found

    # ------------------------------------------------------------ per event kind

    def _leg(self, leg: LegApplied) -> list[Violation]:
        account = self.accounts[leg.account_id]
        account.total_minor += leg.amount_minor
        if leg.hold_id in account.holds:
            rest = account.holds.pop(leg.hold_id) + leg.amount_minor  # a debit: negative
            if not leg.hold_final and rest > 0:
                account.holds[leg.hold_id] = rest
        self.applied_per_currency[leg.currency] += leg.amount_minor
        return self._tally(leg)

    def _tally(self, leg: LegApplied) -> list[Violation]:
        entry = self.entries.setdefault(leg.entry_id, _Entry())
        entry.legs_seen += 1
        entry.sums[leg.currency] += leg.amount_minor
        self.in_flight_per_currency[leg.currency] += leg.amount_minor
        if entry.legs_seen < leg.entry_legs:
            return []
        del self.entries[leg.entry_id]
        self.entries_completed += 1
        for currency, total in entry.sums.items():
            self.in_flight_per_currency[currency] -= total
        self.checked[AuditCheck.entry_balanced] += 1
        unbalanced = {c: v for c, v in entry.sums.items() if v}
        if unbalanced:
            return [Violation(check=AuditCheck.entry_balanced, account_id=leg.account_id,
                              cause_id=leg.posting_id,
                              detail=f"entry {leg.entry_id} sums to {unbalanced}")]
        return self._zero_sum(leg)

    def _zero_sum(self, leg: LegApplied) -> list[Violation]:
        """Reported when the amount the ledger is off by changes, not on every later entry."""
        self.checked[AuditCheck.zero_sum] += 1
        off = {c: self.applied_per_currency[c] - self.in_flight_per_currency[c]
               for c in self.applied_per_currency}
        off = {c: v for c, v in off.items() if v}
        if off == self._off_reported:
            return []
        self._off_reported = off
        if off:
            return [Violation(check=AuditCheck.zero_sum, account_id=leg.account_id,
                              cause_id=leg.posting_id, detail=f"ledger off by {off}")]
        return []

    def _hold(self, change: HoldChanged) -> list[Violation]:
        account = self.accounts[change.account_id]
        if change.change is HoldChange.placed:
            account.holds[change.hold_id] = change.amount_minor
        else:
            assert change.change is HoldChange.released, change
            account.holds.pop(change.hold_id, None)
        return []

    # ------------------------------------------------------------ per account

    def _account_checks(self, event: LegApplied | HoldChanged) -> list[Violation]:
        account = self.accounts[event.account_id]
        cause = event.posting_id if isinstance(event, LegApplied) else event.hold_id
        found: list[Violation] = []

        def check(which: AuditCheck, ok: bool, detail: str) -> None:
            self.checked[which] += 1
            if not ok:
                found.append(Violation(check=which, account_id=event.account_id,
                                       cause_id=cause, detail=detail))

        check(AuditCheck.applied_once, event.version == account.version + 1,
              f"change {event.version} after {account.version}")
        account.version = max(account.version, event.version)
        frozen = sum(account.holds.values())
        check(AuditCheck.reported_equals_rebuilt, event.total_minor == account.total_minor,
              f"reported total {event.total_minor}, rebuilt {account.total_minor}")
        check(AuditCheck.frozen_equals_holds, event.frozen_minor == frozen,
              f"reported frozen {event.frozen_minor}, open holds {frozen}")
        limit = self._limit_of(event.account_id)
        available = account.total_minor - frozen
        check(AuditCheck.within_limit, limit is None or available >= -limit,
              f"available {available} below limit {-(limit or 0)}")
        return found

    # ------------------------------------------------------------ reporting

    def in_flight(self) -> dict[str, int]:
        """Per currency, what is applied on some accounts of an entry but not yet on all."""
        return {c: v for c, v in self.in_flight_per_currency.items() if v}

    def open_entries(self) -> int:
        return len(self.entries)

    def status(self, at_ms: int) -> AuditStatus:
        return AuditStatus(checks={k.value: v for k, v in self.checked.items()},
                           violations={k.value: v for k, v in self.violations.items()},
                           entries_completed=self.entries_completed,
                           open_entries=self.open_entries(), in_flight=self.in_flight(),
                           copies_dropped=self.copies_dropped, at_ms=at_ms)
