"""The ledger auditor (domain/audit.py) fed the events the ledger stage sends.

``MiniLedger`` runs ``domain.ledger`` over a dict of rows and, for every change it applies,
records the ``LegApplied`` / ``HoldChanged`` that ``agents/ledger.py`` would send (same
fields, same posting ids, rows chosen by ``AccountsFile.place``), one stream per row in the
order applied. ``interleave`` merges those streams keeping each row's order but mixing the
legs of one entry across rows arbitrarily, as a reader of several partitions sees them.

Faults are made the way a broken ledger would make them: a ledger that ignores limits or
applies an unbalanced entry, or one event changed in a single field.
"""

from __future__ import annotations

from collections import defaultdict, deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import accounts
from domain.audit import AuditCheck, Auditor, Violation
from domain.events import HoldChanged, JournalEntryDecided, Leg, LegApplied
from domain.ledger import (
    AccountBalance,
    Hold,
    PostingStatus,
    apply_leg,
    entry_balances,
    open_account,
    place_hold,
    posting_id_for,
    release_hold,
)
from streams.accounts_config import AccountsFile, HotAccount, LimitRule

C = AuditCheck
EUR, USD = "EUR", "USD"
WALLET = accounts.customer_wallet("p-1", EUR)
MERCHANT = accounts.merchant_pending("m-1", EUR)
CREDIT_SHOP = accounts.merchant_pending("credit-shop", EUR)
CLEARING = accounts.channel_clearing("acq", EUR)
FEES = accounts.fee_revenue(EUR)
OVERDRAFT_MINOR = 500
POLICY = AccountsFile(
    limits=(LimitRule(account="merchant:credit-shop:*", overdraft_minor=OVERDRAFT_MINOR),),
    hot_accounts=(HotAccount(account="fees:*", shards=4),),
)
BOOKS = {
    EUR: (WALLET, accounts.customer_wallet("p-2", EUR), MERCHANT, CREDIT_SHOP, CLEARING, FEES,
          accounts.suspense(EUR)),
    USD: (accounts.customer_wallet("p-1", USD), accounts.merchant_pending("m-1", USD),
          accounts.channel_clearing("acq", USD), accounts.fee_revenue(USD)),
}
AMOUNT_MINOR_MAX = 3_000


def no_limit(account_id: str) -> None:
    return None


def currency_of(row_id: str) -> str:
    return accounts.logical_account(row_id).rsplit(":", 1)[1]


def leg(account_id: str, amount_minor: int, hold_id: str = "", hold_final: bool = True) -> Leg:
    return Leg(account_id=account_id, currency=currency_of(account_id),
               amount_minor=amount_minor, hold_id=hold_id, hold_final=hold_final)


class MiniLedger:
    """The ledger stage without Kafka: rows, limits and the events it sends per row."""

    def __init__(self, limit_of=POLICY.limit_of) -> None:
        self.limit_of = limit_of
        self.rows: dict[str, AccountBalance] = {}
        self.streams: dict[str, list[LegApplied | HoldChanged]] = defaultdict(list)

    def row(self, row_id: str) -> AccountBalance:
        return self.rows.get(row_id) or open_account(row_id, currency_of(row_id))

    def post(self, entry_id: str, payment_id: str, *legs: Leg) -> bool:
        """All legs or none: a valid history has no entry left half-applied."""
        entry = JournalEntryDecided(entry_id=entry_id, payment_id=payment_id, reason="test",
                                    legs=legs, decided_at_ms=0)
        afters: dict[str, AccountBalance] = {}
        notes: list[LegApplied] = []
        for one in legs:
            row_id = POLICY.place(one.account_id, payment_id)
            placed = one.model_copy(update={"account_id": row_id})
            after, status = apply_leg(self.row(row_id), placed, self.limit_of(row_id))
            if status is not PostingStatus.applied:
                return False
            afters[row_id] = after
            notes.append(self._applied(entry, placed, after))
        self.rows.update(afters)
        for note in notes:
            self.streams[note.account_id].append(note)
        return True

    @staticmethod
    def _applied(entry: JournalEntryDecided, placed: Leg, after: AccountBalance) -> LegApplied:
        return LegApplied(
            posting_id=posting_id_for(entry, placed.account_id), entry_id=entry.entry_id,
            payment_id=entry.payment_id, account_id=placed.account_id,
            currency=placed.currency, amount_minor=placed.amount_minor,
            sequence=after.legs_applied, total_minor=after.total_minor,
            available_minor=after.available_minor, frozen_minor=after.frozen_minor,
            hold_id=placed.hold_id, hold_final=placed.hold_final,
            entry_legs=len(entry.legs), version=after.version)

    def hold(self, hold_id: str, payment_id: str, account_id: str, amount_minor: int) -> bool:
        row_id = POLICY.place(account_id, payment_id)
        wanted = Hold(hold_id=hold_id, payment_id=payment_id, amount_minor=amount_minor)
        after, status = place_hold(self.row(row_id), wanted, None, self.limit_of(row_id))
        if status is PostingStatus.applied:
            self._changed(after, hold_id, payment_id, "placed", amount_minor)
        return status is PostingStatus.applied

    def release(self, row_id: str, hold_id: str) -> bool:
        held = next((h for h in self.row(row_id).holds if h.hold_id == hold_id), None)
        after, status = release_hold(self.row(row_id), hold_id)
        if status is PostingStatus.applied:
            self._changed(after, hold_id, held.payment_id, "released", held.amount_minor)
        return status is PostingStatus.applied

    def _changed(self, after: AccountBalance, hold_id: str, payment_id: str, change: str,
                 amount_minor: int) -> None:
        self.rows[after.account_id] = after
        self.streams[after.account_id].append(HoldChanged(
            hold_id=hold_id, payment_id=payment_id, account_id=after.account_id,
            currency=after.currency, change=change, amount_minor=amount_minor,
            version=after.version, total_minor=after.total_minor,
            available_minor=after.available_minor, frozen_minor=after.frozen_minor))

    def open_holds(self) -> list[tuple[str, Hold]]:
        return sorted(((row_id, h) for row_id, row in self.rows.items() for h in row.holds),
                      key=lambda pair: pair[1].hold_id)


# ---------------------------------------------------------------- random valid histories


def _group(rng, currency: str) -> list[Leg]:
    """2 to 4 legs on distinct accounts of one currency, summing to zero, none zero."""
    names = rng.sample(BOOKS[currency], rng.randint(2, 4))
    amounts = [rng.choice((-1, 1)) * rng.randint(1, AMOUNT_MINOR_MAX) for _ in names[1:]]
    if sum(amounts) == 0:
        amounts[0] += 1 if amounts[0] > 0 else -1
    signed = [-sum(amounts), *amounts]
    return [leg(name, amount) for name, amount in zip(names, signed, strict=True)]


def _capture_legs(rng, ledger: MiniLedger) -> tuple[str, list[Leg]]:
    """A debit consuming (part of) an open hold, credited to one or two other accounts."""
    row_id, held = rng.choice(ledger.open_holds())
    account_id = accounts.logical_account(row_id)
    taken = rng.randint(1, held.amount_minor)
    others = [a for a in BOOKS[currency_of(account_id)] if a != account_id]
    legs = [leg(account_id, -taken, held.hold_id, hold_final=rng.random() < 0.5)]
    if taken >= 2 and rng.random() < 0.5:
        fee = rng.randint(1, taken - 1)
        first, second = rng.sample(others, 2)
        return held.payment_id, legs + [leg(first, taken - fee), leg(second, fee)]
    return held.payment_id, legs + [leg(rng.choice(others), taken)]


def random_step(rng, ledger: MiniLedger, n: int) -> None:
    """One operation; one the ledger refuses leaves no trace, as in the stage."""
    payment_id = f"pay_{rng.randint(1, 12)}"
    roll = rng.random()
    if roll < 0.25:
        account_id = rng.choice(BOOKS[rng.choice((EUR, USD))])
        ledger.hold(f"h_{n}", payment_id, account_id, rng.randint(1, AMOUNT_MINOR_MAX))
    elif roll < 0.35 and ledger.open_holds():
        row_id, held = rng.choice(ledger.open_holds())
        assert ledger.release(row_id, held.hold_id)
    elif roll < 0.6 and ledger.open_holds():
        payment_id, legs = _capture_legs(rng, ledger)
        ledger.post(f"je_{n}", payment_id, *legs)
    else:
        legs = _group(rng, EUR) if rng.random() < 0.7 else _group(rng, USD)
        if rng.random() < 0.3:
            legs += _group(rng, USD if legs[0].currency == EUR else EUR)
        entry = JournalEntryDecided(entry_id=f"je_{n}", payment_id=payment_id, reason="test",
                                    legs=tuple(legs), decided_at_ms=0)
        assert entry_balances(entry)
        ledger.post(entry.entry_id, payment_id, *legs)


def drive(rng, steps: int) -> MiniLedger:
    ledger = MiniLedger()
    ledger.post("je_fund", "pay_0", leg(CLEARING, -(len(BOOKS[EUR]) - 1) * 10_000),
                *(leg(a, 10_000) for a in BOOKS[EUR] if a != CLEARING))
    for n in range(steps):
        random_step(rng, ledger, n)
    return ledger


def interleave(streams: dict[str, list], rng) -> list[LegApplied | HoldChanged]:
    """Every row's events in its own order; across rows in any order."""
    queues = {row_id: deque(events) for row_id, events in streams.items() if events}
    merged = []
    while queues:
        row_id = rng.choice(sorted(queues))
        merged.append(queues[row_id].popleft())
        if not queues[row_id]:
            del queues[row_id]
    return merged


class _FirstRow:
    """Stands in for an rng: always takes the first row in sorted order."""

    @staticmethod
    def choice(options):
        return options[0]


def with_copies(events: list, rng) -> tuple[list, int]:
    """The row's events with some sent again right away or after later ones."""
    out, copies = [], 0
    for index, event in enumerate(events):
        out.append(event)
        while rng.random() > 0.7:
            out.append(events[rng.randint(0, index)])
            copies += 1
    return out, copies


def partly_seen(postings: set[str], ledger: MiniLedger) -> dict[str, int]:
    """Per currency, the legs seen of entries not yet seen whole: what is in flight."""
    legs = defaultdict(list)
    for event in (e for events in ledger.streams.values() for e in events):
        if isinstance(event, LegApplied):
            legs[event.entry_id].append(event)
    flying: dict[str, int] = defaultdict(int)
    for entry_legs in legs.values():
        seen = [e for e in entry_legs if e.posting_id in postings]
        if len(seen) < len(entry_legs):
            for e in seen:
                flying[e.currency] += e.amount_minor
    return {currency: amount for currency, amount in flying.items() if amount}


def feed(auditor: Auditor, events) -> list[Violation]:
    return [violation for event in events for violation in auditor.observe(event)]


def stream(ledger: MiniLedger, row_id: str) -> list[LegApplied | HoldChanged]:
    return ledger.streams[row_id]


def only(found: list[Violation]) -> tuple[AuditCheck, str, str]:
    assert len(found) == 1, found
    return found[0].check, found[0].account_id, found[0].cause_id


# ---------------------------------------------------------------- tests


class TestValidHistory:
    @settings(max_examples=60, deadline=None, database=None)
    @given(rng=st.randoms(use_true_random=False), steps=st.integers(min_value=1, max_value=30))
    def test_no_violation_when_rows_interleaved_in_any_order(self, rng, steps):
        ledger = drive(rng, steps)
        auditor = Auditor(POLICY.limit_of)

        found = []
        for event in interleave(ledger.streams, rng):
            found += auditor.observe(event)
            assert auditor.in_flight() == partly_seen(auditor.postings, ledger)

        assert found == []
        assert sum(auditor.violations.values()) == 0
        assert auditor.in_flight() == {}
        assert auditor.open_entries() == 0
        assert auditor.copies_dropped == 0
        rebuilt = {a: (m.total_minor, sum(m.holds.values())) for a, m in auditor.accounts.items()}
        assert rebuilt == {a: (r.total_minor, r.frozen_minor) for a, r in ledger.rows.items()}

    def test_entry_in_flight_until_its_last_leg_arrives(self):
        ledger = MiniLedger()
        ledger.post("je_1", "pay_1", leg(CLEARING, -1_000), leg(MERCHANT, 900),
                    leg(FEES, 100))
        auditor = Auditor(POLICY.limit_of)
        first, second, third = interleave(ledger.streams, _FirstRow())

        feed(auditor, [first, second])
        midway = (auditor.in_flight(), auditor.open_entries())
        found = feed(auditor, [third])

        assert (first.account_id, third.account_id) == (CLEARING, MERCHANT)
        assert midway == ({EUR: -900}, 1)
        assert found == []
        assert (auditor.in_flight(), auditor.open_entries(), auditor.entries_completed) == (
            {}, 0, 1)
        assert auditor.checked[C.entry_balanced] == 1
        assert auditor.checked[C.zero_sum] == 1

    def test_hot_account_leg_lands_on_a_sub_account_row(self):
        ledger = MiniLedger()

        ledger.post("je_1", "pay_7", leg(CLEARING, -100), leg(FEES, 100))

        (row_id,) = [r for r in ledger.streams if accounts.logical_account(r) == FEES]
        assert row_id == POLICY.place(FEES, "pay_7")
        assert row_id != FEES


class TestCopies:
    def test_copy_dropped_and_counted_when_same_event_twice(self):
        ledger = MiniLedger()
        ledger.post("je_1", "pay_1", leg(CLEARING, -100), leg(MERCHANT, 100))
        (event,) = stream(ledger, MERCHANT)
        auditor = Auditor(POLICY.limit_of)
        auditor.observe(event)

        found = auditor.observe(event)

        assert found == []
        assert auditor.copies_dropped == 1
        assert auditor.accounts[MERCHANT].total_minor == 100
        assert auditor.open_entries() == 1

    def test_copy_dropped_when_older_event_comes_after_newer_ones(self):
        ledger = MiniLedger()
        ledger.post("je_fund", "pay_0", leg(CLEARING, -1_000), leg(WALLET, 1_000))
        ledger.hold("h-1", "pay_1", WALLET, 300)
        ledger.post("je_1", "pay_1", leg(WALLET, -200, "h-1"), leg(MERCHANT, 200))
        fund, placed, captured = stream(ledger, WALLET)
        auditor = Auditor(POLICY.limit_of)
        feed(auditor, [fund, placed, captured])

        found = feed(auditor, [placed, fund, captured])

        assert found == []
        assert auditor.copies_dropped == 3
        assert auditor.accounts[WALLET].holds == {}

    @settings(max_examples=40, deadline=None, database=None)
    @given(rng=st.randoms(use_true_random=False), steps=st.integers(min_value=1, max_value=30))
    def test_no_violation_when_copies_redelivered_anywhere(self, rng, steps):
        ledger = drive(rng, steps)
        copied = {}
        copies = 0
        for row_id, events in sorted(ledger.streams.items()):
            copied[row_id], added = with_copies(events, rng)
            copies += added
        auditor = Auditor(POLICY.limit_of)

        found = feed(auditor, interleave(copied, rng))

        assert found == []
        assert auditor.copies_dropped == copies
        assert (auditor.in_flight(), auditor.open_entries()) == ({}, 0)


class TestFaults:
    """Each check fires on the fault it exists for, naming the event that revealed it."""

    def test_entry_balanced_fails_when_legs_do_not_sum_to_zero(self):
        ledger = MiniLedger()
        ledger.post("je_bad", "pay_1", leg(CLEARING, -100), leg(MERCHANT, 101))
        auditor = Auditor(POLICY.limit_of)

        found = feed(auditor, stream(ledger, CLEARING) + stream(ledger, MERCHANT))

        assert only(found) == (C.entry_balanced, MERCHANT, f"je_bad:{MERCHANT}")
        assert "je_bad" in found[0].detail
        assert auditor.open_entries() == 0

    def test_zero_sum_fails_when_entry_completes_after_an_unbalanced_one(self):
        ledger = MiniLedger()
        ledger.post("je_bad", "pay_1", leg(CLEARING, -100), leg(MERCHANT, 101))
        ledger.post("je_ok", "pay_2", leg(CLEARING, -50), leg(WALLET, 50))
        auditor = Auditor(POLICY.limit_of)
        feed(auditor, stream(ledger, MERCHANT) + stream(ledger, CLEARING))

        found = feed(auditor, stream(ledger, WALLET))

        assert only(found) == (C.zero_sum, WALLET, f"je_ok:{WALLET}")
        assert "'EUR': 1" in found[0].detail

    def test_applied_once_fails_when_posting_applied_again_under_new_version(self):
        ledger = MiniLedger()
        ledger.post("je_1", "pay_1", leg(CLEARING, -100), leg(MERCHANT, 100))
        (first,) = stream(ledger, MERCHANT)
        again = first.model_copy(update={"version": 2, "sequence": 2, "total_minor": 200,
                                         "available_minor": 200})
        auditor = Auditor(POLICY.limit_of)
        auditor.observe(first)

        found = auditor.observe(again)

        assert only(found) == (C.applied_once, MERCHANT, f"je_1:{MERCHANT}")
        assert auditor.copies_dropped == 0
        assert auditor.accounts[MERCHANT].version == 2

    def test_applied_once_fails_when_version_skips_one(self):
        ledger = MiniLedger()
        ledger.post("je_1", "pay_1", leg(CLEARING, -100), leg(MERCHANT, 100))
        ledger.post("je_2", "pay_2", leg(CLEARING, -30), leg(MERCHANT, 30))
        first, second = stream(ledger, MERCHANT)
        auditor = Auditor(POLICY.limit_of)
        auditor.observe(first)

        found = auditor.observe(second.model_copy(update={"version": 3}))

        assert only(found) == (C.applied_once, MERCHANT, f"je_2:{MERCHANT}")
        assert "change 3 after 1" in found[0].detail

    def test_reported_equals_rebuilt_fails_when_total_differs_from_legs(self):
        ledger = MiniLedger()
        ledger.post("je_1", "pay_1", leg(CLEARING, -100), leg(MERCHANT, 100))
        (event,) = stream(ledger, MERCHANT)
        auditor = Auditor(POLICY.limit_of)

        found = auditor.observe(event.model_copy(update={"total_minor": 99,
                                                         "available_minor": 99}))

        assert only(found) == (C.reported_equals_rebuilt, MERCHANT, f"je_1:{MERCHANT}")

    def test_frozen_equals_holds_fails_when_frozen_differs_from_open_holds(self):
        ledger = MiniLedger()
        ledger.hold("h-1", "pay_1", CLEARING, 300)
        (placed,) = stream(ledger, CLEARING)
        auditor = Auditor(POLICY.limit_of)

        found = auditor.observe(placed.model_copy(update={"frozen_minor": 301}))

        assert only(found) == (C.frozen_equals_holds, CLEARING, "h-1")

    def test_frozen_equals_holds_fails_when_release_reports_hold_still_frozen(self):
        ledger = MiniLedger()
        ledger.hold("h-1", "pay_1", CLEARING, 300)
        ledger.release(CLEARING, "h-1")
        placed, released = stream(ledger, CLEARING)
        auditor = Auditor(POLICY.limit_of)
        auditor.observe(placed)

        found = auditor.observe(released.model_copy(update={"frozen_minor": 300}))

        assert only(found) == (C.frozen_equals_holds, CLEARING, "h-1")

    def test_within_limit_fails_when_wallet_debited_below_zero(self):
        ledger = MiniLedger(limit_of=no_limit)
        ledger.post("je_1", "pay_1", leg(WALLET, -1), leg(CLEARING, 1))
        auditor = Auditor(POLICY.limit_of)

        found = feed(auditor, stream(ledger, WALLET))

        assert POLICY.limit_of(WALLET) == 0
        assert only(found) == (C.within_limit, WALLET, f"je_1:{WALLET}")
        assert "available -1 below limit 0" in found[0].detail

    def test_within_limit_fails_when_hold_takes_wallet_below_zero(self):
        ledger = MiniLedger(limit_of=no_limit)
        ledger.hold("h-1", "pay_1", WALLET, 1)
        auditor = Auditor(POLICY.limit_of)

        found = feed(auditor, stream(ledger, WALLET))

        assert only(found) == (C.within_limit, WALLET, "h-1")

    def test_within_limit_holds_when_overdraft_reaches_its_limit_exactly(self):
        ledger = MiniLedger(limit_of=no_limit)
        ledger.post("je_1", "pay_1", leg(CREDIT_SHOP, -OVERDRAFT_MINOR), leg(CLEARING, 500))
        auditor = Auditor(POLICY.limit_of)

        found = feed(auditor, stream(ledger, CREDIT_SHOP))

        assert found == []
        assert auditor.accounts[CREDIT_SHOP].total_minor == -OVERDRAFT_MINOR
        assert auditor.checked[C.within_limit] == 1

    def test_within_limit_fails_when_overdraft_exceeded_by_one(self):
        ledger = MiniLedger(limit_of=no_limit)
        ledger.post("je_1", "pay_1", leg(CREDIT_SHOP, -OVERDRAFT_MINOR), leg(CLEARING, 500))
        ledger.post("je_2", "pay_2", leg(CREDIT_SHOP, -1), leg(CLEARING, 1))
        auditor = Auditor(POLICY.limit_of)

        found = feed(auditor, stream(ledger, CREDIT_SHOP))

        assert only(found) == (C.within_limit, CREDIT_SHOP, f"je_2:{CREDIT_SHOP}")
        assert "available -501 below limit -500" in found[0].detail

    @pytest.mark.parametrize("account_id", [CLEARING, accounts.suspense(EUR)])
    def test_within_limit_holds_when_account_unlimited(self, account_id):
        ledger = MiniLedger(limit_of=no_limit)
        ledger.post("je_1", "pay_1", leg(account_id, -10**9), leg(MERCHANT, 10**9))
        auditor = Auditor(POLICY.limit_of)

        found = feed(auditor, stream(ledger, account_id) + stream(ledger, MERCHANT))

        assert found == []

    def test_violations_counted_per_check(self):
        ledger = MiniLedger(limit_of=no_limit)
        ledger.post("je_1", "pay_1", leg(WALLET, -1), leg(CLEARING, 1))
        ledger.post("je_2", "pay_2", leg(WALLET, -1), leg(CLEARING, 1))
        auditor = Auditor(POLICY.limit_of)

        feed(auditor, stream(ledger, WALLET))

        assert dict(auditor.violations) == {C.within_limit: 2}
        assert auditor.checked[C.within_limit] == 2


class TestPartialCapture:
    def _held(self) -> MiniLedger:
        ledger = MiniLedger()
        ledger.post("je_fund", "pay_0", leg(CLEARING, -1_000), leg(WALLET, 1_000))
        ledger.hold("h-1", "pay_1", WALLET, 600)
        ledger.post("je_1", "pay_1", leg(WALLET, -250, "h-1", hold_final=False),
                    leg(MERCHANT, 250))
        return ledger

    def test_rest_of_hold_stays_frozen_when_capture_not_final(self):
        ledger = self._held()
        auditor = Auditor(POLICY.limit_of)

        found = feed(auditor, stream(ledger, WALLET) + stream(ledger, MERCHANT)
                     + stream(ledger, CLEARING))

        assert found == []
        assert auditor.accounts[WALLET].holds == {"h-1": 350}
        assert stream(ledger, WALLET)[-1].frozen_minor == 350

    def test_frozen_equals_holds_fails_when_partial_capture_reports_hold_closed(self):
        ledger = self._held()
        fund, placed, captured = stream(ledger, WALLET)
        auditor = Auditor(POLICY.limit_of)
        feed(auditor, [fund, placed])

        found = auditor.observe(captured.model_copy(update={"frozen_minor": 0,
                                                            "available_minor": 750}))

        assert only(found) == (C.frozen_equals_holds, WALLET, f"je_1:{WALLET}")

    def test_hold_closed_when_final_capture_takes_less_than_the_rest(self):
        ledger = self._held()
        ledger.post("je_2", "pay_1", leg(WALLET, -100, "h-1"), leg(MERCHANT, 100))
        auditor = Auditor(POLICY.limit_of)

        found = feed(auditor, stream(ledger, WALLET) + stream(ledger, MERCHANT)
                     + stream(ledger, CLEARING))

        assert found == []
        assert auditor.accounts[WALLET].holds == {}
        assert auditor.accounts[WALLET].total_minor == 650

    def test_hold_closed_when_partial_capture_takes_everything_left(self):
        ledger = self._held()
        ledger.post("je_2", "pay_1", leg(WALLET, -350, "h-1", hold_final=False),
                    leg(MERCHANT, 350))
        auditor = Auditor(POLICY.limit_of)

        found = feed(auditor, stream(ledger, WALLET) + stream(ledger, MERCHANT)
                     + stream(ledger, CLEARING))

        assert found == []
        assert auditor.accounts[WALLET].holds == {}

    def test_release_frees_the_rest_when_after_partial_capture(self):
        ledger = self._held()
        ledger.release(WALLET, "h-1")
        auditor = Auditor(POLICY.limit_of)

        found = feed(auditor, stream(ledger, WALLET))

        assert found == []
        assert stream(ledger, WALLET)[-1].amount_minor == 350
        assert auditor.accounts[WALLET].holds == {}
