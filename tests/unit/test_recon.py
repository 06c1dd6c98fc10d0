"""Reconciliation's pure matcher (``domain/recon.py``) and the order stage's side of its
automatic resolutions (``decide_channel_success`` / ``decide_channel_refund``).

One payment's records (its status events, the channel's callbacks, its ledger legs and the
channel's settlement lines) are fed to ``observe`` one at a time through ``Run``, which keeps
every step; time is fixed epoch milliseconds, moved on by the test (``ReconWake`` stands in
for the sweeper). Each discrepancy kind is pinned with its expected/reported values and
checked to be raised once and alone. Arrival order is checked over every permutation of a
payment's records, and a property adds redeliveries.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from decisions import of_type, only
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from unit import test_settlement as flows

from domain.events import (
    ChannelRequested,
    ChannelResponded,
    DeadlineReached,
    HoldRequested,
    JournalEntryDecided,
    LegApplied,
    PaymentStatusChanged,
    SettlementReported,
)
from domain.order_answers import (
    decide_channel_refund,
    decide_channel_success,
    decide_deadline,
)
from domain.order_state import CHANNEL_REFUND_PREFIX, hold_id_for
from domain.orders import CommandStatus, OrderStatus
from domain.recon import (
    DAY_MS,
    AutoResolve,
    ChannelRefundConfirmed,
    ChannelSuccessConfirmed,
    ExceptionKind,
    Matching,
    ReconException,
    ReconItem,
    ReconRules,
    ReconWake,
    SerialSeen,
    SettlementClosed,
    Step,
    Tally,
    by_serial,
    closed_tally,
    day_of,
    observe,
    open_state,
    period_closed,
    raised_tally,
    standing,
)
from streams.config import ConfigError
from streams.rules_config import load_recon

K = ExceptionKind
S = OrderStatus
C = CommandStatus

# ---------------------------------------------------------------- terms of the tests

T0 = 1_763_769_600_000
"""2025-11-22T00:00:00Z."""
DAY, NEXT_DAY, DAY_AFTER, DAY_BEFORE = "2025-11-22", "2025-11-23", "2025-11-24", "2025-11-21"
CH, CCY, PID, SERIAL = "acq", "EUR", "pay-1", "ch-1"
AMOUNT, FEE = 10_000, 180
NET = AMOUNT - FEE
CLEARING = f"clearing:{CH}:{CCY}"
PENDING = f"merchant:m:pending:{CCY}"
FEES = f"fees:{CCY}"
GRACE_MS, LINE_WAIT_MS = Matching().grace_ms, Matching().line_wait_ms  # 5 s, 10 s
BOOKING_GRACE_MS = Matching().booking_grace_ms  # 60 s
LATER = T0 + 10 * 60_000
"""Well past every grace and line wait of the default rules."""
RULES = ReconRules()


def rules(**matching) -> ReconRules:
    """Default rules for every channel, with ``matching`` changed."""
    return ReconRules(defaults=Matching(**matching))


def success_for_failed(on: bool = True) -> ReconRules:
    return rules(auto_resolve=AutoResolve(success_for_failed=on))


# ---------------------------------------------------------------- records


def psc(status: str, at_ms: int = T0 + 1_000, captured: int = 0, refunded: int = 0,
        previous: str = "processing", trigger: str = "sale", currency: str = CCY
        ) -> PaymentStatusChanged:
    return PaymentStatusChanged(
        payment_id=PID, merchant_id="m", merchant_order_no="o-1", status=status,
        previous_status=previous, reason="", channel=CH, channel_serial=SERIAL,
        amount_minor=AMOUNT, currency=currency, captured_minor=captured,
        refunded_minor=refunded, at_ms=at_ms, trigger=trigger)


PROCESSING = psc("processing", at_ms=T0, previous="created")
SUCCEEDED = psc("succeeded", captured=AMOUNT)
FAILED = psc("failed")


def callback(operation: str = "sale", outcome: str = "succeeded", amount: int = AMOUNT,
             request_id: str = "req-sale", currency: str = CCY, channel: str = CH,
             serial: str = SERIAL) -> ChannelResponded:
    return ChannelResponded(request_id=request_id, payment_id=PID, channel=channel,
                            operation=operation, outcome=outcome, amount_minor=amount,
                            currency=currency, channel_serial=serial)


def leg(entry_id: str, n: int, account_id: str, amount: int, reason: str, legs: int = 3
        ) -> LegApplied:
    return LegApplied(posting_id=f"{entry_id}/{n}", entry_id=entry_id, payment_id=PID,
                      account_id=account_id, currency=CCY, amount_minor=amount, sequence=n + 1,
                      total_minor=0, available_minor=0, frozen_minor=0, entry_legs=legs,
                      version=n + 1, reason=reason)


def capture_legs(amount: int = AMOUNT, fee: int = FEE, entry_id: str = "je-capture"
                 ) -> tuple[LegApplied, ...]:
    """The capture entry: the channel owes us the gross, the merchant the net, we the fee."""
    return (leg(entry_id, 0, CLEARING, -amount, "capture"),
            leg(entry_id, 1, PENDING, amount - fee, "capture"),
            leg(entry_id, 2, FEES, fee, "capture"))


def clearing_legs(settled: SettlementReported) -> tuple[LegApplied, ...]:
    """The order stage's settlement_clearing entry for a booked line."""
    gross, fee, entry_id = settled.amount_minor, settled.fee_minor, f"je-clr-{settled.line_id}"
    return (leg(entry_id, 0, CLEARING, gross, "settlement_clearing"),
            leg(entry_id, 1, f"cash:{CH}:{CCY}", -(gross - fee), "settlement_clearing"),
            leg(entry_id, 2, f"chfees:{CH}:{CCY}", -fee, "settlement_clearing"))


def line(line_id: str = "line-1", amount: int = AMOUNT, fee: int = FEE, settled_on: str = DAY,
         period: str | None = None, currency: str = CCY, channel: str = CH
         ) -> SettlementReported:
    """The channel's line; its report's period is the line's date unless told."""
    return SettlementReported(line_id=line_id, channel=channel, payment_id=PID,
                              channel_serial=SERIAL, amount_minor=amount, currency=currency,
                              settled_on=settled_on, fee_minor=fee,
                              period=settled_on if period is None else period)


LINE = line()


def live() -> tuple:
    """Order, callback and ledger of a sale that succeeded: the three live sides agree."""
    return (PROCESSING, SUCCEEDED, callback(), *capture_legs())


def refunded_in_full() -> tuple:
    """After ``live()``: the merchant's refund of the whole amount, answered and posted."""
    return (psc("refunded", at_ms=T0 + 5_000, captured=AMOUNT, refunded=AMOUNT,
                previous="succeeded", trigger="refund"),
            callback("refund", request_id="req-refund"),
            leg("je-refund", 0, PENDING, -NET, "refund"),
            leg("je-refund", 1, CLEARING, AMOUNT, "refund"),
            leg("je-refund", 2, FEES, -FEE, "refund"))


def wake(at_ms: int) -> ReconWake:
    return ReconWake(payment_id=PID, wake_ms=at_ms)


def closed(period: str, channel: str = CH) -> SettlementClosed:
    return SettlementClosed(channel=channel, period=period)


def pinned(e: ReconException) -> tuple:
    return (e.kind, e.expected_minor, e.reported_minor, e.line_id, e.payment_id, e.channel)


# ---------------------------------------------------------------- one payment's run


class Run:
    """One payment's records fed to ``observe`` in turn, one ms apart unless told when;
    every step is kept."""

    def __init__(self, recon_rules: ReconRules = RULES, start_ms: int = T0 + 2_000) -> None:
        self.rules = recon_rules
        self.now = start_ms
        self.item: ReconItem | None = None
        self.steps: list[Step] = []
        self.posted_ms = 0
        """When the order stage's settlement_clearing legs were all in (``delivered``)."""

    def feed(self, *records, at: int | None = None) -> Step:
        step = Step(self.item)
        for n, record in enumerate(records):
            self.now = at if at is not None and n == 0 else self.now + 1
            step = observe(self.item, record, self.now, self.rules)
            self.item = step.item
            self.steps.append(step)
        return step

    def wake(self, at_ms: int) -> Step:
        return self.feed(wake(at_ms), at=at_ms)

    def close(self, period: str, channel: str = CH) -> Step:
        self.now += 1
        step = period_closed(self.item, closed(period, channel), self.now, self.rules)
        self.item = step.item
        self.steps.append(step)
        return step

    @property
    def exceptions(self) -> list[ReconException]:
        return [e for s in self.steps for e in s.exceptions]

    @property
    def to_orders(self) -> list:
        return [m for s in self.steps for m in s.to_orders]

    @property
    def matched(self) -> int:
        return sum(s.matched for s in self.steps)

    def states(self) -> list[str]:
        return [s.state for s in self.item.lines]


def booked_run(recon_rules: ReconRules = RULES) -> Run:
    """Live sides agree and the line is booked (sent to the order stage), which has not
    posted the channel's payment yet."""
    run = Run(recon_rules)
    run.feed(*live(), LINE)
    return run


def matched_run(recon_rules: ReconRules = RULES) -> Run:
    """Live sides agree, the line is booked and the order stage posted the channel's payment
    (the line's settlement_clearing legs): the item is closed."""
    run = booked_run(recon_rules)
    run.feed(*clearing_legs(LINE))
    assert run.item.closed_ms == run.now
    return run


# ---------------------------------------------------------------- the three-way match


class TestThreeWayMatch:
    def test_live_sides_agreeing_wait_for_the_line_due_t_plus_settle_days(self):
        run = Run()

        step = run.feed(*live())

        assert (step.exceptions, step.to_orders, step.matched) == ((), (), False)
        assert step.due == (CH, NEXT_DAY)
        assert run.item.order.captured_on == day_of(SUCCEEDED.at_ms) == LINE.settled_on == DAY
        assert open_state(run.item) == "awaiting_line"

    def test_matching_line_is_booked_and_sent_to_orders_once(self):
        run = Run()
        run.feed(*live())

        step = run.feed(LINE)

        assert step.to_orders == (LINE,)
        assert (step.exceptions, run.exceptions) == ((), [])
        assert run.states() == ["booked"]
        assert run.item.lines[0].booked_ms == run.now
        assert (step.matched, step.due, run.item.closed_ms) == (False, None, 0)
        assert step.wake_ms == run.now + BOOKING_GRACE_MS  # the order stage has that long
        assert open_state(run.item) == "matching"

    def test_booked_item_closes_once_the_order_stage_posts_the_channels_payment(self):
        run = booked_run()

        steps = [run.feed(leg) for leg in clearing_legs(LINE)]

        assert [(s.matched, s.item.closed_ms) for s in steps[:-1]] == [(False, 0), (False, 0)]
        assert all(s.exceptions == () and s.to_orders == () for s in steps)
        assert steps[-1].matched is True
        assert run.item.closed_ms == run.item.matched_ms == run.now
        assert run.matched == 1
        assert [type(m) for m in run.to_orders] == [SettlementReported]
        assert (run.item.ledger.clearing_minor, run.item.ledger.settled_minor,
                run.item.ledger.fee_minor) == (-AMOUNT, AMOUNT, FEE)

    def test_half_applied_settlement_entry_keeps_the_item_open_within_grace(self):
        run = booked_run()

        step = run.feed(clearing_legs(LINE)[0])

        assert (step.item.closed_ms, step.matched, step.exceptions) == (0, False, ())
        assert step.wake_ms == run.now + BOOKING_GRACE_MS

    def test_later_half_applied_entry_reopens_the_item_without_counting_a_second_match(self):
        run = matched_run()
        late = (leg("je-late", 0, PENDING, -1, "adjust", legs=2),
                leg("je-late", 1, f"merchant:m:settled:{CCY}", 1, "adjust", legs=2))

        reopened = run.feed(late[0])
        closed_again = run.feed(late[1])

        assert (reopened.item.closed_ms, reopened.matched, reopened.exceptions) == (0, False, ())
        assert (closed_again.item.closed_ms, closed_again.matched) == (run.now, False)
        assert run.matched == 1

    def test_booked_line_waits_the_booking_grace_not_the_live_one(self):
        # A settlement file's lines are booked at once; the order and ledger stages take
        # longer than grace_ms to work through all of them, which is not a discrepancy.
        run = booked_run()
        booked_ms = run.item.lines[0].booked_ms

        step = run.wake(booked_ms + GRACE_MS)

        assert (step.exceptions, step.wake_ms) == ((), booked_ms + BOOKING_GRACE_MS)

    def test_booked_line_not_posted_within_grace_is_status_mismatch_unbooked(self):
        run = booked_run()
        booked_ms = run.item.lines[0].booked_ms

        early = run.wake(booked_ms + BOOKING_GRACE_MS - 1)
        step = run.wake(booked_ms + BOOKING_GRACE_MS)
        again = run.wake(LATER)

        assert (early.exceptions, early.wake_ms) == ((), booked_ms + BOOKING_GRACE_MS)
        assert [pinned(e) for e in step.exceptions] == [
            (K.status_mismatch, AMOUNT, 0, "line-1", PID, CH)]
        assert step.exceptions[0].reason == \
            "line line-1 matched, but the order (succeeded) did not book it"
        assert run.item.raised == ("unbooked:line-1",)
        assert (again.exceptions, run.item.closed_ms, step.matched) == ((), 0, False)
        assert open_state(run.item) == "exception"

    def test_unbooked_line_clears_when_the_order_stage_posts_it_late(self):
        run = booked_run()
        raised = run.wake(run.item.lines[0].booked_ms + BOOKING_GRACE_MS).exceptions

        steps = [run.feed(leg) for leg in clearing_legs(LINE)]

        cleared = [e for s in steps for e in s.exceptions]
        assert [(e.exception_id, e.kind, e.cleared, e.line_id) for e in cleared] == [
            (raised[0].exception_id, K.status_mismatch, True, "line-1")]
        assert cleared[0].resolution == "cleared: the records agree now"
        assert run.item.cleared == ("unbooked:line-1",)
        assert (steps[-1].matched, run.item.closed_ms) == (True, run.now)
        assert open_state(run.item) != "exception"

    def test_clearing_counts_as_resolved_not_as_raised_again(self):
        run = booked_run()
        raised = run.wake(run.item.lines[0].booked_ms + BOOKING_GRACE_MS)

        steps = [run.feed(leg) for leg in clearing_legs(LINE)]

        assert raised_tally(raised).exceptions == {"status_mismatch": 1}
        assert raised_tally(raised).auto_resolved == {}
        clearing = next(s for s in steps if s.exceptions)
        assert raised_tally(clearing).exceptions == {}
        assert raised_tally(clearing).auto_resolved == {"status_mismatch": 1}

    def test_cleared_finding_is_cleared_once_whatever_comes_after(self):
        run = booked_run()
        run.wake(run.item.lines[0].booked_ms + BOOKING_GRACE_MS)
        for leg_applied in clearing_legs(LINE):
            run.feed(leg_applied)

        later = [run.wake(LATER), run.feed(*clearing_legs(LINE))]

        assert [e for s in later for e in s.exceptions] == []
        assert sum(e.cleared for e in run.exceptions) == 1

    def test_payment_refunded_in_full_before_settlement_closes_without_a_line(self):
        run = Run()

        step = run.feed(*live(), *refunded_in_full())
        closed_ms = run.now
        closing = run.close(DAY_AFTER)

        assert (step.matched, step.due, run.item.closed_ms) == (True, None, closed_ms)
        assert (closing.exceptions, closing.due, run.item.missing_through) == ((), None, "")
        assert standing(run.item) == Tally()
        assert run.item.counted == "agreed"

    def test_zero_gross_line_for_a_payment_refunded_in_full_is_matched_without_legs(self):
        run = Run()
        run.feed(*live(), *refunded_in_full())
        closed_ms = run.item.closed_ms
        nothing = line(amount=0, fee=0)

        step = run.feed(nothing)

        assert (step.to_orders, step.exceptions, run.exceptions) == ((nothing,), (), [])
        assert (run.states(), run.item.ledger.settled_minor) == (["booked"], 0)
        assert (run.item.closed_ms, run.matched) == (closed_ms, 1)

    def test_closed_item_stays_closed_and_matched_once_on_later_wakes(self):
        run = matched_run()
        closed_ms = run.item.closed_ms

        step = run.feed(wake(LATER), at=LATER)

        assert (step.exceptions, step.to_orders, step.matched) == ((), (), False)
        assert run.item.closed_ms == closed_ms
        assert run.matched == 1

    def test_matched_item_counts_one_match_once_and_stands_for_nothing_open(self):
        run = matched_run()

        assert standing(run.item) == Tally()
        assert closed_tally(None, run.item) == Tally(matched={CH: 1},
                                                     matched_minor={f"{CH}|{CCY}": AMOUNT})
        assert closed_tally(run.item, None) == Tally()  # removal keeps the count

    def test_booked_item_without_settlement_clearing_is_open_and_still_owes_the_gross(self):
        run = booked_run()

        tally = standing(run.item)

        assert tally == Tally(open={f"{CH}|matching|{DAY}": 1},
                              residual={f"{CH}|{CCY}|{DAY}": AMOUNT})

    def test_closed_item_asks_to_be_woken_after_retention_then_is_removed(self):
        run = matched_run()
        closed_ms = run.item.closed_ms
        removal = closed_ms + RULES.retention_days * DAY_MS

        kept, removed = run.wake(removal - 1), run.wake(removal)

        assert (kept.item is not None, kept.wake_ms) == (True, removal)
        assert removed == Step(None)

    def test_wake_for_removed_item_is_nothing(self):
        step = observe(None, wake(LATER), LATER, RULES)

        assert step == Step(None)

    def test_redelivered_records_change_nothing(self):
        run = matched_run()
        before = run.item
        removal = before.closed_ms + RULES.retention_days * DAY_MS
        latest = (SUCCEEDED, callback(), *capture_legs(), LINE, *clearing_legs(LINE))

        steps = [observe(before, r, run.now + 1, RULES) for r in latest]

        assert all(s == Step(before, wake_ms=removal) for s in steps)

    def test_copy_of_a_record_keeps_the_items_due_day(self):
        run = Run()
        first = run.feed(*live())

        step = run.feed(callback())

        assert step == first == Step(first.item, due=(CH, NEXT_DAY))

    def test_copy_of_a_record_keeps_the_items_wake(self):
        run = Run()
        first = run.feed(PROCESSING, SUCCEEDED)

        step = run.feed(SUCCEEDED, at=first.wake_ms - 1)

        assert step == first == Step(first.item, wake_ms=first.wake_ms, due=(CH, NEXT_DAY))
        assert step.item.changed_ms == first.item.changed_ms  # a copy does not restart grace

    def test_copy_after_the_grace_ran_out_raises_what_a_wake_would(self):
        run = Run()
        first = run.feed(PROCESSING, SUCCEEDED)

        step = run.feed(SUCCEEDED, at=first.wake_ms)

        assert sorted((e.kind, e.expected_minor, e.reported_minor) for e in step.exceptions) \
            == [(K.amount_mismatch, AMOUNT, 0), (K.status_mismatch, AMOUNT, 0)]


# ---------------------------------------------------------------- arrival order


RECORDS = (PROCESSING, SUCCEEDED, callback(), *capture_legs(), LINE)


def in_order_events(records) -> list:
    """pay.events is ordered per payment: the order's own events keep their order (the
    other records may come in any order, around them)."""
    events = iter(sorted((r for r in records if isinstance(r, PaymentStatusChanged)),
                         key=lambda e: e.at_ms))
    return [next(events) if isinstance(r, PaymentStatusChanged) else r for r in records]


def delivered(records, lag: int = 0) -> Run:
    """``records`` fed in turn; once reconciliation sends the line to the order stage, that
    stage's settlement_clearing legs for it come ``lag`` records later (at the end if fewer
    are left). Then a wake once every grace and line wait has run out."""
    run, queue, legs = Run(), list(records), clearing_legs(LINE)
    sent = False
    while queue:
        record = queue.pop(0)
        run.feed(record)
        if record == legs[-1]:
            run.posted_ms = run.now
        elif not sent and LINE in run.to_orders:
            queue[lag:lag] = legs
            sent = True
    run.wake(run.now + max(GRACE_MS, LINE_WAIT_MS))
    return run


class TestArrivalOrder:
    def test_line_before_callbacks_is_booked_once_order_succeeds(self):
        run = Run()

        run.feed(PROCESSING, SUCCEEDED, LINE, *capture_legs())
        waiting = run.states()
        booked = run.feed(callback())
        run.feed(*clearing_legs(LINE))

        assert waiting == ["waiting"]
        assert (booked.to_orders, booked.matched) == ((LINE,), False)
        assert run.states() == ["booked"]
        assert (run.to_orders, run.exceptions, run.matched) == ([LINE], [], 1)

    def test_line_before_order_event_waits_line_wait_then_is_booked_once_order_succeeds(self):
        run = Run()
        first = run.feed(LINE)
        arrived = run.now

        run.feed(*live(), *clearing_legs(LINE))

        assert (first.wake_ms, first.exceptions) == (arrived + LINE_WAIT_MS, ())
        assert run.states() == ["booked"]
        assert (run.to_orders, run.exceptions, run.matched) == ([LINE], [], 1)

    def test_line_while_order_processing_waits_for_its_success(self):
        run = Run()

        step = run.feed(PROCESSING, LINE)

        assert (step.exceptions, step.to_orders, step.wake_ms) == (
            (), (), run.now + LINE_WAIT_MS)
        assert run.states() == ["waiting"]

    def test_every_arrival_order_books_the_line_once_without_exceptions(self):
        outcomes, runs = set(), 0
        for order in itertools.permutations(RECORDS):
            if list(order) != in_order_events(order):
                continue
            runs += 1
            run = delivered(order)
            outcomes.add((len(run.exceptions), tuple(run.to_orders), tuple(run.states()),
                          bool(run.item.closed_ms), run.matched,
                          run.item.matched_ms == run.posted_ms))

        assert runs == 5_040 // 2  # 7 records, processing before succeeded
        assert outcomes == {(0, (LINE,), ("booked",), True, 1, True)}

    @settings(max_examples=200, deadline=None, database=None)
    @given(order=st.permutations(RECORDS),
           again=st.lists(st.tuples(st.sampled_from(RECORDS), st.integers(0, 20)),
                          max_size=6),
           lag=st.integers(0, 12))
    def test_any_arrival_order_with_redeliveries_books_once_and_closes(self, order, again,
                                                                        lag):
        records = list(order)
        for record, where in again:  # the same record delivered a second time
            records.insert(where % (len(records) + 1), record)

        run = delivered(in_order_events(records), lag)

        assert run.exceptions == []
        assert [m for m in run.to_orders if isinstance(m, SettlementReported)] == [LINE]
        assert run.item.closed_ms > 0
        assert run.matched == 1
        assert run.item.matched_ms == run.posted_ms  # closed when the payment was posted


# ---------------------------------------------------------------- each exception kind


class TestAmountMismatch:
    @pytest.mark.parametrize("gross", [AMOUNT - 3, AMOUNT + 3])
    def test_line_gross_off_is_amount_mismatch_and_line_is_held(self, gross):
        run = Run()

        run.feed(*live(), line(amount=gross))

        assert [pinned(e) for e in run.exceptions] == [
            (K.amount_mismatch, AMOUNT, gross, "line-1", PID, CH)]
        assert (run.to_orders, run.states(), run.item.closed_ms) == ([], ["held"], 0)
        assert open_state(run.item) == "exception"

    def test_held_line_is_not_raised_again_on_later_wakes(self):
        run = Run()
        run.feed(*live(), line(amount=AMOUNT - 3))

        step = run.wake(LATER)

        assert (step.exceptions, step.to_orders) == ((), ())
        assert len(run.exceptions) == 1

    def test_corrected_line_after_held_one_is_booked(self):
        run = Run()
        run.feed(*live(), line(amount=AMOUNT - 3))
        fixed = line("line-2")

        step = run.feed(fixed)

        assert (step.to_orders, step.exceptions) == ((fixed,), ())
        assert run.states() == ["held", "booked"]

    def test_half_applied_ledger_entry_waits_the_booking_grace(self):
        run = Run()
        run.feed(PROCESSING, SUCCEEDED, callback(), *capture_legs()[:2])

        step = run.wake(run.now + GRACE_MS)

        assert (step.exceptions, step.wake_ms) == ((), run.item.changed_ms + BOOKING_GRACE_MS)

    def test_half_applied_ledger_entry_is_amount_mismatch_after_grace(self):
        run = Run()
        run.feed(PROCESSING, SUCCEEDED, callback(), *capture_legs()[:2])

        step = run.wake(run.now + BOOKING_GRACE_MS)

        assert [(e.kind, e.expected_minor, e.reported_minor) for e in step.exceptions] == [
            (K.amount_mismatch, 3, 2)]

    def test_ledger_legs_after_grace_clear_the_exception_and_the_line_is_booked(self):
        run = Run()
        run.feed(PROCESSING, SUCCEEDED, callback(), *capture_legs()[:2])
        raised = run.wake(run.now + BOOKING_GRACE_MS).exceptions

        late = run.feed(capture_legs()[2], LINE)

        assert [e.kind for e in raised] == [K.amount_mismatch]
        assert [(e.exception_id, e.cleared) for e in run.exceptions[1:]] == [
            (raised[0].exception_id, True)]
        assert late.to_orders == (LINE,)
        assert run.item.cleared == run.item.raised

    def test_callback_after_grace_clears_the_status_mismatch_it_caused(self):
        run = Run()
        run.feed(PROCESSING, SUCCEEDED, *capture_legs())
        raised = run.wake(run.now + GRACE_MS).exceptions

        late = run.feed(callback())

        assert [e.kind for e in raised] == [K.status_mismatch]
        assert [(e.exception_id, e.cleared) for e in late.exceptions] == [
            (raised[0].exception_id, True)]
        assert open_state(run.item) == "awaiting_line"

    def test_a_second_different_ledger_discrepancy_is_raised_too(self):
        run = Run()
        first = run.feed(PROCESSING, SUCCEEDED, callback(), *capture_legs(AMOUNT - 3))
        one = run.wake(first.wake_ms)
        second = run.feed(*ledger_fix(+1))

        two = run.wake(second.wake_ms)
        again = run.wake(LATER)

        assert [pinned(e) for e in one.exceptions + two.exceptions] == [
            (K.amount_mismatch, AMOUNT, AMOUNT - 3, "", PID, CH),
            (K.amount_mismatch, AMOUNT, AMOUNT - 4, "", PID, CH)]
        assert run.item.raised == (f"amount:ledger:{AMOUNT - 3}:{AMOUNT}",
                                   f"amount:ledger:{AMOUNT - 4}:{AMOUNT}")
        assert again.exceptions == ()

    def test_line_waits_without_an_exception_while_the_live_sides_disagree(self):
        run = Run()
        first = run.feed(PROCESSING, SUCCEEDED, callback(), *capture_legs(AMOUNT - 3))
        run.wake(first.wake_ms)
        raised = list(run.exceptions)

        run.feed(LINE)
        waited = run.wake(LATER)
        fixed = run.feed(*ledger_fix(-3))

        assert [(e.kind, e.line_id) for e in raised] == [(K.amount_mismatch, "")]
        assert (waited.exceptions, waited.to_orders) == ((), ())
        assert (fixed.to_orders, run.states()) == ((LINE,), ["booked"])
        assert [(e.exception_id, e.cleared) for e in fixed.exceptions] == [
            (raised[0].exception_id, True)]  # the correction cleared it: said once more
        assert run.exceptions[:-1] == raised


def ledger_fix(amount: int) -> tuple[LegApplied, ...]:
    """A later entry moving ``amount`` on the clearing account (ops' correction)."""
    entry_id = f"je-fix{amount:+d}"
    return (leg(entry_id, 0, CLEARING, amount, "adjust", legs=2),
            leg(entry_id, 1, PENDING, -amount, "adjust", legs=2))


class TestFeeMismatch:
    def test_fee_beyond_tolerance_is_raised_and_line_still_booked(self):
        run = Run()
        costly = line(fee=FEE + 1)

        step = run.feed(*live(), costly)

        assert [pinned(e) for e in run.exceptions] == [
            (K.fee_mismatch, FEE, FEE + 1, "line-1", PID, CH)]
        assert (step.to_orders, run.states()) == ((costly,), ["booked"])
        assert run.item.closed_ms == 0  # booked, but the fee waits for ops

    @pytest.mark.parametrize("fee,raised", [
        (FEE - 5, []), (FEE + 5, []), (FEE + 6, [K.fee_mismatch]), (FEE - 6, [K.fee_mismatch]),
    ])
    def test_fee_within_minor_tolerance_is_not_raised(self, fee, raised):
        run = Run(rules(fee_tolerance_minor=5))

        run.feed(*live(), line(fee=fee))

        assert [e.kind for e in run.exceptions] == raised
        assert run.states() == ["booked"]

    @pytest.mark.parametrize("fee,raised", [(FEE + 5, []), (FEE + 6, [K.fee_mismatch])])
    def test_fee_within_bps_tolerance_of_ours_is_not_raised(self, fee, raised):
        run = Run(rules(fee_tolerance_bps=300))  # 3 % of 180 = 5.4, floored to 5

        run.feed(*live(), line(fee=fee))

        assert [e.kind for e in run.exceptions] == raised

    def test_fee_allowance_adds_minor_units_and_basis_points_of_ours(self):
        rule = Matching(fee_tolerance_minor=2, fee_tolerance_bps=300)

        allowance = (rule.fee_allowance(FEE), rule.fee_allowance(-FEE), rule.fee_allowance(0))

        assert allowance == (7, 7, 2)


class TestDuplicateSettlement:
    def test_second_line_with_another_id_after_booking_is_duplicate_settlement(self):
        run = matched_run()

        step = run.feed(line("line-2"))

        assert [pinned(e) for e in step.exceptions] == [
            (K.duplicate_settlement, 0, AMOUNT, "line-2", PID, CH)]
        assert (step.to_orders, run.states()) == ((), ["booked", "held"])
        assert run.item.closed_ms == 0

    def test_same_line_id_twice_is_ignored_not_a_duplicate(self):
        run = matched_run()
        before = run.item

        step = run.feed(LINE)

        assert step == Step(before, wake_ms=before.closed_ms + RULES.retention_days * DAY_MS)

    def test_same_line_id_twice_before_its_payment_is_posted_is_not_sent_again(self):
        run = booked_run()
        before = run.item

        step = run.feed(LINE)

        booked_ms = before.lines[0].booked_ms
        assert step == Step(before, wake_ms=booked_ms + BOOKING_GRACE_MS)

    def test_two_lines_waiting_for_the_order_book_the_first_and_flag_the_second(self):
        run = Run()

        run.feed(LINE, line("line-2"), *live())

        assert [(e.kind, e.line_id) for e in run.exceptions] == [
            (K.duplicate_settlement, "line-2")]
        assert (run.to_orders, run.states()) == ([LINE], ["booked", "held"])


class TestCurrencyMismatch:
    def test_line_in_another_currency_is_currency_mismatch_and_held(self):
        run = Run()

        run.feed(*live(), line(currency="USD"))

        assert [pinned(e) for e in run.exceptions] == [
            (K.currency_mismatch, AMOUNT, AMOUNT, "line-1", PID, CH)]
        assert (run.to_orders, run.states()) == ([], ["held"])

    def test_channel_success_in_another_currency_is_currency_mismatch_after_grace(self):
        run = Run()
        run.feed(PROCESSING, SUCCEEDED, callback(currency="USD"), *capture_legs())

        step = run.wake(run.now + GRACE_MS)

        assert [(e.kind, e.expected_minor, e.reported_minor) for e in step.exceptions] == [
            (K.currency_mismatch, AMOUNT, AMOUNT)]


class TestDateWindow:
    def test_line_dated_outside_its_period_is_date_out_of_window(self):
        run = Run()

        run.feed(*live(), line(settled_on=DAY, period=NEXT_DAY))

        assert [pinned(e) for e in run.exceptions] == [
            (K.date_out_of_window, None, None, "line-1", PID, CH)]
        assert (run.to_orders, run.states()) == ([], ["held"])

    @pytest.mark.parametrize("settle_days,window,settled_on", [
        (1, 0, DAY_AFTER), (0, 0, NEXT_DAY), (0, 1, DAY_AFTER), (1, 0, DAY_BEFORE)])
    def test_line_without_period_outside_t_to_t_plus_n_plus_window_is_out_of_window(
            self, settle_days, window, settled_on):
        run = Run(rules(settle_days=settle_days, date_window_days=window))

        run.feed(*live(), line(settled_on=settled_on, period=""))

        assert [(e.kind, e.line_id) for e in run.exceptions] == [
            (K.date_out_of_window, "line-1")]
        assert run.states() == ["held"]

    @pytest.mark.parametrize("settle_days,window,settled_on", [
        (1, 0, DAY), (1, 0, NEXT_DAY), (0, 0, DAY), (0, 1, NEXT_DAY), (1, 1, DAY_AFTER)])
    def test_line_without_period_on_any_day_of_its_window_is_booked(
            self, settle_days, window, settled_on):
        run = Run(rules(settle_days=settle_days, date_window_days=window))
        dated = line(settled_on=settled_on, period="")

        run.feed(*live(), dated)

        assert (run.exceptions, run.to_orders, run.states()) == ([], [dated], ["booked"])

    @pytest.mark.parametrize("settled_on,booked", [(DAY_BEFORE, True), ("2025-11-20", False)])
    def test_window_opens_on_the_day_of_the_first_status_event_when_earlier(
            self, settled_on, booked):
        """Resolved late: the channel took the money the day before the order captured it."""
        run = Run()
        dated = line(settled_on=settled_on, period="")

        run.feed(psc("processing", at_ms=T0 - 60_000, previous="created"),
                 psc("timed_out", at_ms=T0 - 30_000), SUCCEEDED, callback(), *capture_legs(),
                 dated)

        assert (run.item.order.first_on, run.item.order.captured_on) == (DAY_BEFORE, DAY)
        assert (run.to_orders, run.states()) == (
            ([dated], ["booked"]) if booked else ([], ["held"]))
        assert [(e.kind, e.line_id) for e in run.exceptions] == (
            [] if booked else [(K.date_out_of_window, "line-1")])


class TestMissingInOurs:
    def test_line_for_unknown_payment_waits_line_wait_then_is_missing_in_ours(self):
        run = Run()
        first = run.feed(LINE)
        arrived = run.now

        early = run.wake(first.wake_ms - 1)
        step = run.wake(first.wake_ms)

        assert first.wake_ms == arrived + LINE_WAIT_MS
        assert (first.exceptions, early.exceptions) == ((), ())
        assert [pinned(e) for e in step.exceptions] == [
            (K.missing_in_ours, None, AMOUNT, "line-1", PID, CH)]
        assert (run.to_orders, run.states()) == ([], ["held"])
        assert open_state(run.item) == "exception"  # raised: it waits for ops now

    def test_channel_success_for_unknown_payment_is_missing_in_ours_after_line_wait(self):
        run = Run()
        first = run.feed(callback())
        arrived = run.now

        early = run.wake(first.wake_ms - 1)
        run.wake(first.wake_ms)

        assert (first.wake_ms, early.exceptions) == (arrived + LINE_WAIT_MS, ())
        assert [pinned(e) for e in run.exceptions] == [
            (K.missing_in_ours, None, AMOUNT, "", PID, CH)]
        assert run.to_orders == []


class TestMissingAtChannel:
    @pytest.mark.parametrize("period", [NEXT_DAY, DAY_AFTER])
    def test_period_closed_on_or_after_due_day_without_line_is_missing_at_channel(
            self, period):
        run = Run()
        run.feed(*live())

        closing = run.close(period)
        early = run.wake(closing.wake_ms - 1)
        step = run.wake(closing.wake_ms)

        assert (closing.exceptions, early.exceptions) == ((), ())
        assert closing.wake_ms == run.steps[-3].item.missing_at_ms
        assert [pinned(e) for e in run.exceptions] == [
            (K.missing_at_channel, AMOUNT, None, "", PID, CH)]
        assert step.exceptions[0].order == run.item.order
        assert (step.to_orders, step.due, run.item.missing_through) == ((), None, period)

    def test_line_arriving_within_grace_after_the_close_is_booked_not_missing(self):
        """A line that named only the serial comes one hop later than the close."""
        run = Run()
        run.feed(*live())

        closing = run.close(NEXT_DAY)
        run.feed(LINE)
        run.wake(closing.wake_ms)

        assert run.exceptions == []
        assert [type(m).__name__ for m in run.to_orders] == ["SettlementReported"]

    def test_period_closed_before_due_day_raises_nothing_and_keeps_waiting(self):
        run = Run()
        run.feed(*live())

        step = run.close(DAY)

        assert (step.exceptions, step.due, step.item) == ((), (CH, NEXT_DAY), run.item)
        assert run.item.missing_through == ""

    def test_period_closed_raises_nothing_when_a_held_line_exists(self):
        run = Run()
        run.feed(*live(), line(amount=AMOUNT - 3))

        step = run.close(NEXT_DAY)

        assert (step.exceptions, step.due) == ((), None)

    def test_period_closed_raises_nothing_for_another_channel(self):
        run = Run()
        run.feed(*live())

        step = run.close(NEXT_DAY, channel="other")

        assert (step.exceptions, step.due) == ((), (CH, NEXT_DAY))

    def test_missing_at_channel_is_raised_once_over_later_periods(self):
        run = Run()
        run.feed(*live())

        first = run.close(NEXT_DAY)
        run.wake(first.wake_ms)
        again = run.close(DAY_AFTER)
        run.wake(first.wake_ms + GRACE_MS)

        assert (again.exceptions, len(run.exceptions)) == ((), 1)

    def test_period_closed_raises_nothing_for_a_failed_order(self):
        run = Run()
        run.feed(PROCESSING, FAILED)

        step = run.close(DAY_AFTER)

        assert (step.exceptions, step.due) == ((), None)


class TestStatusMismatch:
    @pytest.mark.parametrize("unpaid", ["failed", "timed_out"])
    def test_unpaid_order_with_channel_success_is_status_mismatch_after_grace(self, unpaid):
        run = Run()
        first = run.feed(PROCESSING, psc(unpaid), callback())

        step = run.wake(first.wake_ms)

        assert [pinned(e) for e in step.exceptions] == [
            (K.status_mismatch, 0, AMOUNT, "", PID, CH)]
        assert (len(run.exceptions), run.to_orders, run.item.closed_ms) == (1, [], 0)

    def test_succeeded_order_with_channel_latest_answer_declined_is_status_mismatch(self):
        run = Run()
        first = run.feed(*live(), callback(outcome="declined"))

        step = run.wake(first.wake_ms)

        assert [pinned(e) for e in step.exceptions] == [
            (K.status_mismatch, AMOUNT, 0, "", PID, CH)]
        assert len(run.exceptions) == 1

    def test_failed_order_with_declined_callback_is_matched_without_line(self):
        run = Run()

        step = run.feed(PROCESSING, callback(outcome="declined"), FAILED)

        assert (step.exceptions, step.to_orders, step.matched, step.due) == (
            (), (), True, None)

    def test_line_for_failed_order_is_status_mismatch_and_held_at_once_when_rule_off(self):
        run = Run(success_for_failed(False))

        step = run.feed(PROCESSING, callback(outcome="declined"), FAILED, LINE)

        assert [pinned(e) for e in step.exceptions] == [
            (K.status_mismatch, 0, AMOUNT, "line-1", PID, CH)]
        assert (run.to_orders, run.states(), step.exceptions[0].resolution) == (
            [], ["held"], "")

    def test_line_from_another_channel_than_the_orders_is_status_mismatch_and_held(self):
        run = Run()
        elsewhere = line(channel="other")

        run.feed(*live(), elsewhere)
        step = run.feed(LINE)  # the same line id, from the order's channel

        assert [pinned(e) for e in run.exceptions] == [
            (K.status_mismatch, 0, AMOUNT, "line-1", PID, CH)]
        assert run.exceptions[0].reason == f"other settled it, the order was paid via {CH}"
        assert run.item.raised == ("channel:line-1",)
        assert (run.to_orders, step.to_orders, run.states()) == (
            [LINE], (LINE,), ["held", "booked"])

    def test_line_from_another_channel_for_a_failed_order_is_held_not_confirmed(self):
        run = Run(success_for_failed())

        run.feed(PROCESSING, callback(outcome="declined"), FAILED, line(channel="other"))

        assert (run.to_orders, run.states()) == ([], ["held"])
        assert [(e.kind, e.line_id, e.resolution) for e in run.exceptions] == [
            (K.status_mismatch, "line-1", "")]

    def test_line_after_callback_success_was_raised_is_the_same_discrepancy(self):
        run = Run(success_for_failed(False))
        first = run.feed(PROCESSING, FAILED, callback())
        run.wake(first.wake_ms)

        step = run.feed(LINE)

        assert step.exceptions == ()
        assert [e.kind for e in run.exceptions] == [K.status_mismatch]
        assert run.states() == ["held"]


class TestRevocation:
    REVOKED = psc("canceled", at_ms=T0 + 3_000, captured=AMOUNT, previous="succeeded",
                  trigger="revoke")
    """What the order stage publishes when a reversal succeeds (captured stays)."""
    REVERSAL = (leg("je-revoke", 0, PENDING, -NET, "revoke"),
                leg("je-revoke", 1, CLEARING, AMOUNT, "revoke"),
                leg("je-revoke", 2, FEES, -FEE, "revoke"))

    def test_revoked_order_with_reversal_posted_raises_nothing_and_closes(self):
        run = Run()

        run.feed(*live(), self.REVOKED,
                 callback("reverse", request_id="req-reverse"), *self.REVERSAL)
        run.wake(LATER)

        assert run.exceptions == []
        assert (run.item.closed_ms > 0, run.item.ledger.clearing_minor) == (True, 0)


class TestGrace:
    def test_differences_within_grace_raise_nothing_and_wake_at_changed_plus_grace(self):
        run = Run()

        step = run.feed(PROCESSING, SUCCEEDED)

        assert (step.exceptions, step.to_orders) == ((), ())
        assert step.wake_ms == step.item.changed_ms + GRACE_MS == run.now + GRACE_MS

    def test_wake_one_ms_before_grace_raises_nothing(self):
        run = Run()
        first = run.feed(PROCESSING, SUCCEEDED)

        step = run.wake(first.wake_ms - 1)

        assert (step.exceptions, step.wake_ms) == ((), first.wake_ms)

    def test_wake_when_grace_ran_out_raises_each_difference_once(self):
        run = Run()
        first = run.feed(PROCESSING, SUCCEEDED)

        step = run.wake(first.wake_ms)
        again = run.wake(first.wake_ms + GRACE_MS)

        assert sorted((e.kind, e.expected_minor, e.reported_minor) for e in step.exceptions) \
            == [(K.amount_mismatch, AMOUNT, 0), (K.status_mismatch, AMOUNT, 0)]
        assert again.exceptions == ()

    def test_each_new_record_restarts_grace(self):
        run = Run()
        first = run.feed(PROCESSING, SUCCEEDED)

        later = run.feed(callback(), at=first.wake_ms - 1)

        assert later.exceptions == ()
        assert later.wake_ms == first.wake_ms - 1 + GRACE_MS

    def test_grace_of_the_channel_rule_is_used(self):
        run = Run(rules(grace_ms=100))

        step = run.feed(PROCESSING, SUCCEEDED)

        assert step.wake_ms == run.now + 100


# ---------------------------------------------------------------- automatic resolution


def confirmation(**changes) -> ChannelSuccessConfirmed:
    fields = dict(payment_id=PID, channel=CH, channel_serial=SERIAL, amount_minor=AMOUNT,
                  currency=CCY, evidence=f"{CH} answered success")
    return ChannelSuccessConfirmed(**{**fields, **changes})


class TestAutoResolveChannelSuccess:
    @pytest.mark.parametrize("unpaid", ["failed", "timed_out"])
    def test_channel_success_for_unpaid_order_sends_one_confirmation_when_rule_on(
            self, unpaid):
        run = Run(success_for_failed())
        first = run.feed(PROCESSING, psc(unpaid), callback())

        step = run.wake(first.wake_ms)
        run.wake(LATER)  # never applied: raised again for ops, not sent again

        assert step.to_orders == (confirmation(),)
        assert run.to_orders == [confirmation()]
        assert [e.kind for e in step.exceptions] == [K.status_mismatch]
        assert step.exceptions[0].resolution != ""
        assert raised_tally(step) == Tally(exceptions={"status_mismatch": 1},
                                           auto_resolved={"status_mismatch": 1})
        assert [(e.kind, e.resolution) for e in run.exceptions[1:]] == [(K.status_mismatch, "")]

    def test_confirmation_not_in_effect_two_graces_later_is_raised_again_for_ops(self):
        run = Run(success_for_failed())
        first = run.feed(PROCESSING, FAILED, callback())
        sent = run.wake(first.wake_ms)
        due = run.now + 2 * GRACE_MS

        early = run.wake(due - 1)
        step = run.wake(due)
        again = run.wake(LATER)

        assert (sent.wake_ms, run.item.asked_ms) == (due, {"status:channel": due - 2 * GRACE_MS})
        assert (early.exceptions, early.to_orders, early.wake_ms) == ((), (), due)
        assert [pinned(e) for e in step.exceptions] == [
            (K.status_mismatch, 0, AMOUNT, "", PID, CH)]
        [follow_up] = step.exceptions
        assert follow_up.resolution == ""
        assert follow_up.reason == (
            f"still, {2 * GRACE_MS} ms after the automatic resolution was sent (refused by the "
            f"order stage?): {CH} says succeeded ({AMOUNT} {CCY}), the order says failed")
        assert follow_up.exception_id != sent.exceptions[0].exception_id
        assert run.item.raised == ("status:channel", "status:channel:unresolved")
        assert (step.to_orders, again.exceptions, again.to_orders) == ((), (), ())
        assert raised_tally(step) == Tally(exceptions={"status_mismatch": 1})
        assert open_state(run.item) == "exception"

    def test_confirmation_in_effect_within_two_graces_raises_nothing_more(self):
        run = Run(success_for_failed())
        first = run.feed(PROCESSING, FAILED, callback())
        run.wake(first.wake_ms)

        run.feed(psc("succeeded", captured=AMOUNT, previous="failed",
                     trigger="reconciliation"), *capture_legs())
        step = run.wake(LATER)

        assert (step.exceptions, len(run.exceptions), run.to_orders) == (
            (), 1, [confirmation()])
        assert run.item.raised == ("status:channel",)

    def test_confirmation_names_the_channel_that_answered_success_after_a_failover(self):
        """The order's events name its first channel; the payer paid on the second."""
        run = Run(success_for_failed())
        first = run.feed(PROCESSING, callback(outcome="declined"), FAILED,
                         callback(request_id="req-alt", channel="alt", serial="alt-7"))

        step = run.wake(first.wake_ms)

        assert step.to_orders == (confirmation(channel="alt", channel_serial="alt-7",
                                               evidence="alt answered success"),)
        assert [pinned(e) for e in step.exceptions] == [
            (K.status_mismatch, 0, AMOUNT, "", PID, CH)]
        assert step.exceptions[0].reason == f"alt says succeeded ({AMOUNT} {CCY}), the order " \
            "says failed"

    def test_channel_success_for_failed_order_sends_nothing_when_rule_off(self):
        run = Run(success_for_failed(False))
        first = run.feed(PROCESSING, FAILED, callback())

        step = run.wake(first.wake_ms)

        assert (step.to_orders, [e.resolution for e in step.exceptions]) == ((), [""])

    @pytest.mark.parametrize("amount", [AMOUNT - 1, AMOUNT + 1])
    def test_channel_success_for_other_amount_never_auto_resolves(self, amount):
        run = Run(success_for_failed())
        first = run.feed(PROCESSING, FAILED, callback(amount=amount))

        step = run.wake(first.wake_ms)

        assert [pinned(e) for e in step.exceptions] == [
            (K.status_mismatch, 0, amount, "", PID, CH)]
        assert (run.to_orders, step.exceptions[0].resolution) == ([], "")

    def test_confirmed_order_that_succeeds_closes_once_its_line_is_booked(self):
        run = Run(success_for_failed())
        first = run.feed(PROCESSING, FAILED, callback())
        run.wake(first.wake_ms)

        run.feed(psc("succeeded", captured=AMOUNT, previous="failed",
                     trigger="reconciliation"), *capture_legs(), LINE)
        booked = run.item.closed_ms
        run.feed(*clearing_legs(LINE))
        run.wake(LATER)

        assert [e.kind for e in run.exceptions] == [K.status_mismatch]
        assert run.to_orders == [confirmation(), LINE]
        assert (booked, run.states(), run.item.closed_ms > 0) == (0, ["booked"], True)
        # closed first as a failed payment with nothing to settle, then settled by the line
        assert [s.item.counted for s in run.steps if s.matched] == ["agreed", "matched"]

    def test_line_for_failed_order_sends_confirmation_and_waits_when_rule_on(self):
        run = Run(success_for_failed())

        step = run.feed(PROCESSING, callback(outcome="declined"), FAILED, LINE)

        assert step.to_orders == (confirmation(evidence="settlement line line-1"),)
        assert [pinned(e) for e in step.exceptions] == [
            (K.status_mismatch, 0, AMOUNT, "line-1", PID, CH)]
        assert step.exceptions[0].resolution != ""
        assert run.states() == ["waiting"]

    PARKED = (PROCESSING, psc("timed_out", at_ms=T0 + 30_000), callback(),
              psc("failed", at_ms=T0 + 31_000, previous="timed_out"),
              callback("refund", request_id="~back-req-sale"))
    """A late success the order parked and sent back (the order stage refuses to confirm
    it: ``TestOrderChannelSuccess``), and the channel's refund of it."""

    @pytest.mark.parametrize("history", ["declined", "parked"])
    def test_confirmation_from_a_line_not_in_effect_is_raised_again_for_ops(self, history):
        """The order stage never applies it (it refused it): the wakes the item asks for
        alone must bring it back to ops, once, within two graces of sending it."""
        run = Run(success_for_failed())
        records = self.PARKED if history == "parked" else (
            PROCESSING, callback(outcome="declined"), FAILED)
        run.feed(*records)
        step = run.feed(LINE)
        sent_ms, sent = run.now, len(run.exceptions)

        for _ in range(5):  # the sweeper: each wake the item asks for
            if not step.wake_ms:
                break
            step = run.wake(step.wake_ms)

        assert run.to_orders == [confirmation(evidence="settlement line line-1")]
        assert [(e.kind, e.reported_minor, e.resolution) for e in run.exceptions[sent:]] == [
            (K.status_mismatch, AMOUNT, "")]
        assert run.exceptions[-1].detected_at_ms <= sent_ms + 2 * GRACE_MS
        assert open_state(run.item) == "exception"

    def test_line_for_timed_out_order_waits_line_wait_before_confirming(self):
        run = Run(success_for_failed())
        run.feed(PROCESSING, psc("timed_out"))
        first = run.feed(LINE)

        early = run.wake(first.wake_ms - 1)
        step = run.wake(first.wake_ms)

        assert (first.to_orders, first.exceptions, early.to_orders) == ((), (), ())
        assert step.to_orders == (confirmation(evidence="settlement line line-1"),)
        assert [(e.kind, e.line_id) for e in run.exceptions] == [
            (K.status_mismatch, "line-1")]
        assert run.states() == ["waiting"]

    def test_line_for_failed_order_of_other_amount_is_held_when_rule_on(self):
        run = Run(success_for_failed())

        run.feed(PROCESSING, callback(outcome="declined"), FAILED, line(amount=AMOUNT - 1))

        assert (run.to_orders, run.states()) == ([], ["held"])
        assert [(e.kind, e.resolution) for e in run.exceptions] == [(K.status_mismatch, "")]

    def test_line_for_failed_order_is_booked_after_order_succeeds_by_reconciliation(self):
        run = Run(success_for_failed())
        run.feed(PROCESSING, callback(outcome="declined"), FAILED, LINE)

        run.feed(psc("succeeded", captured=AMOUNT, previous="failed",
                     trigger="reconciliation"), *capture_legs())
        run.wake(LATER)

        assert run.states() == ["booked"]
        assert [m for m in run.to_orders if isinstance(m, SettlementReported)] == [LINE]

    def test_line_for_failed_order_closes_without_new_exception_after_reconciliation(self):
        run = Run(success_for_failed())
        run.feed(PROCESSING, callback(outcome="declined"), FAILED, LINE)
        resolved = len(run.exceptions)

        posted = run.feed(psc("succeeded", captured=AMOUNT, previous="failed",
                              trigger="reconciliation"), *capture_legs())
        run.feed(*clearing_legs(LINE))
        run.wake(LATER)

        assert posted.to_orders == (LINE,)  # booked as soon as the order is posted
        assert run.exceptions[resolved:] == []
        assert (run.states(), run.item.closed_ms > 0) == (["booked"], True)


def refund_confirmation(request_id: str, amount: int) -> ChannelRefundConfirmed:
    return ChannelRefundConfirmed(payment_id=PID, channel=CH, request_id=request_id,
                                  amount_minor=amount, currency=CCY,
                                  evidence=f"{CH} refunded by itself")


class TestAutoResolveChannelRefund:
    def refunded_by_channel(self, recon_rules: ReconRules, amount: int = 3_000) -> Run:
        """A sale that matched, then a refund callback for a request the order never sent."""
        run = Run(recon_rules)
        first = run.feed(*live(), callback("refund", amount=amount, request_id="req-unknown"))
        run.wake(first.wake_ms)
        return run

    @pytest.mark.parametrize("amount", [3_000, AMOUNT])
    def test_channel_refund_never_asked_is_amount_mismatch_with_refund_confirmation(
            self, amount):
        run = self.refunded_by_channel(rules(auto_resolve=AutoResolve(channel_refund=True)),
                                       amount)

        assert [pinned(e) for e in run.exceptions] == [
            (K.amount_mismatch, AMOUNT, AMOUNT - amount, "", PID, CH)]
        assert run.exceptions[0].resolution != ""
        assert run.to_orders == [refund_confirmation("req-unknown", amount)]
        assert run.item.raised == ("amount:channel_refund:req-unknown",)

    def test_channel_refund_posted_by_the_order_closes_once_the_line_is_booked(self):
        run = self.refunded_by_channel(rules(auto_resolve=AutoResolve(channel_refund=True)))
        posted = (leg("je-chrefund", 0, PENDING, -3_000, "refund", legs=2),
                  leg("je-chrefund", 1, CLEARING, 3_000, "refund", legs=2))
        net_line = line(amount=AMOUNT - 3_000)

        run.feed(psc("partially_refunded", at_ms=T0 + 5_000, captured=AMOUNT, refunded=3_000,
                     previous="succeeded", trigger="refund"), *posted, net_line)
        booked = run.item.closed_ms
        run.feed(*clearing_legs(net_line))
        run.wake(LATER)

        assert len(run.exceptions) == 1
        assert run.to_orders[-1] == net_line
        assert (booked, run.states(), run.item.closed_ms > 0) == (0, ["booked"], True)

    def test_two_channel_refunds_in_one_grace_are_one_discrepancy_with_both_confirmed(self):
        run = Run(rules(auto_resolve=AutoResolve(channel_refund=True)))
        first = run.feed(*live(), callback("refund", amount=2_000, request_id="req-b"),
                         callback("refund", amount=1_000, request_id="req-a"))

        step = run.wake(first.wake_ms)

        assert [pinned(e) for e in step.exceptions] == [
            (K.amount_mismatch, AMOUNT, AMOUNT - 3_000, "", PID, CH)]
        assert step.to_orders == (refund_confirmation("req-b", 2_000),
                                  refund_confirmation("req-a", 1_000))
        assert run.item.raised == ("amount:channel_refund:req-a,req-b",)

    def test_second_channel_refund_after_the_first_was_posted_is_raised_and_confirmed(self):
        """Each confirmation names its refund: the order stage posts the new one and finds
        the first one a duplicate (``TestOrderChannelRefund``)."""
        run = self.refunded_by_channel(rules(auto_resolve=AutoResolve(channel_refund=True)))
        run.feed(psc("partially_refunded", at_ms=T0 + 5_000, captured=AMOUNT, refunded=3_000,
                     previous="succeeded", trigger="refund"),
                 leg("je-chrefund", 0, PENDING, -3_000, "refund", legs=2),
                 leg("je-chrefund", 1, CLEARING, 3_000, "refund", legs=2))
        agreed = run.item.raised
        second = run.feed(callback("refund", amount=3_000, request_id="req-other"))

        step = run.wake(second.wake_ms)

        assert agreed == ("amount:channel_refund:req-unknown",)
        assert [pinned(e) for e in step.exceptions] == [
            (K.amount_mismatch, AMOUNT - 3_000, AMOUNT - 6_000, "", PID, CH)]
        assert step.exceptions[0].resolution != ""
        assert step.to_orders == (refund_confirmation("req-unknown", 3_000),
                                  refund_confirmation("req-other", 3_000))
        assert run.item.raised == ("amount:channel_refund:req-unknown",
                                   "amount:channel_refund:req-other,req-unknown")

    def test_channel_refund_the_order_refused_is_raised_again_for_ops(self):
        run = self.refunded_by_channel(rules(auto_resolve=AutoResolve(channel_refund=True)))
        sent_ms = run.now

        step = run.wake(sent_ms + 2 * GRACE_MS)

        assert [(e.kind, e.expected_minor, e.reported_minor, e.resolution)
                for e in step.exceptions] == [(K.amount_mismatch, AMOUNT, AMOUNT - 3_000, "")]
        assert run.item.raised == ("amount:channel_refund:req-unknown",
                                   "amount:channel_refund:req-unknown:unresolved")
        assert len(run.to_orders) == 1

    def test_channel_refund_never_asked_waits_for_ops_when_rule_off(self):
        run = self.refunded_by_channel(RULES)

        assert [(e.kind, e.resolution) for e in run.exceptions] == [(K.amount_mismatch, "")]
        assert run.to_orders == []

    def test_channel_success_rule_alone_does_not_post_a_channel_refund(self):
        run = self.refunded_by_channel(success_for_failed())

        assert run.to_orders == []


# ---------------------------------------------------------------- rules


class TestRules:
    def test_channel_entry_takes_unset_fields_from_defaults(self):
        recon_rules = ReconRules.model_validate({
            "defaults": {"grace_ms": 1_000, "settle_days": 2, "fee_tolerance_minor": 3},
            "channels": [{"channel": "wallet", "settle_days": 4}]})

        rule = recon_rules.for_channel("wallet")

        assert (rule.channel, rule.settle_days, rule.grace_ms, rule.fee_tolerance_minor) == (
            "wallet", 4, 1_000, 3)

    def test_channel_entry_without_auto_resolve_takes_the_defaults_one(self):
        recon_rules = ReconRules.model_validate({
            "defaults": {"auto_resolve": {"success_for_failed": True}},
            "channels": [{"channel": "wallet", "settle_days": 4}]})

        rule = recon_rules.for_channel("wallet")

        assert rule.auto_resolve == AutoResolve(success_for_failed=True)

    def test_channel_entry_takes_unset_auto_resolve_fields_from_defaults(self):
        recon_rules = ReconRules.model_validate({
            "defaults": {"auto_resolve": {"success_for_failed": True}},
            "channels": [{"channel": "wallet", "auto_resolve": {"channel_refund": True}}]})

        rule = recon_rules.for_channel("wallet")

        assert rule.auto_resolve == AutoResolve(success_for_failed=True, channel_refund=True)

    def test_unknown_channel_gets_the_defaults_under_its_name(self):
        recon_rules = ReconRules(defaults=Matching(settle_days=3, grace_ms=7),
                                 channels=(Matching(channel="wallet", settle_days=5),))

        rule = recon_rules.for_channel("nowhere")

        assert rule == Matching(channel="nowhere", settle_days=3, grace_ms=7)

    def test_channel_listed_twice_is_refused(self):
        with pytest.raises(ValidationError, match="wallet listed twice"):
            ReconRules.model_validate({"channels": [{"channel": "wallet"},
                                                    {"channel": "wallet"}]})

    def test_channel_without_name_is_refused(self):
        with pytest.raises(ValidationError, match="needs a name"):
            ReconRules.model_validate({"channels": [{"settle_days": 2}]})

    def test_unknown_field_is_refused(self):
        with pytest.raises(ValidationError):
            ReconRules.model_validate({"defaults": {"settle_day": 2}})

    def test_channel_rule_decides_how_its_payments_are_matched(self):
        recon_rules = ReconRules(channels=(Matching(channel=CH, fee_tolerance_minor=1),))
        run = Run(recon_rules)

        run.feed(*live(), line(fee=FEE + 1))

        assert run.exceptions == []


class TestManyLines:
    MANY = rules(lines_per_payment="many")
    FIRST = line("part-a", amount=6_000, fee=100, settled_on=DAY)
    SECOND = line("part-b", amount=4_000, fee=80, settled_on=NEXT_DAY)

    def test_first_part_alone_sends_nothing_and_keeps_item_open(self):
        run = Run(self.MANY)

        step = run.feed(*live(), self.FIRST)

        assert (step.exceptions, step.to_orders, step.matched) == ((), (), False)
        assert run.states() == ["part"]
        assert open_state(run.item) == "awaiting_line"

    def test_two_parts_adding_up_are_booked_as_one_settlement_of_the_order_net(self):
        run = Run(self.MANY)

        step = run.feed(*live(), self.FIRST, self.SECOND)
        combined = only_settlement(step)
        posted = run.feed(*clearing_legs(combined))

        assert (combined.amount_minor, combined.fee_minor, combined.settled_on,
                combined.currency, combined.payment_id) == (AMOUNT, FEE, NEXT_DAY, CCY, PID)
        assert combined.line_id not in ("part-a", "part-b")
        assert (run.exceptions, run.states(), step.matched) == ([], ["booked", "booked"], False)
        assert (posted.matched, run.item.closed_ms, run.matched) == (True, run.now, 1)
        assert len(run.to_orders) == 1

    def test_parts_settle_the_order_net_of_its_refunds(self):
        run = Run(self.MANY)
        refunded = psc("partially_refunded", at_ms=T0 + 5_000, captured=AMOUNT,
                       refunded=1_000, previous="succeeded", trigger="refund")
        refund = (leg("je-refund", 0, PENDING, -1_000, "refund", legs=2),
                  leg("je-refund", 1, CLEARING, 1_000, "refund", legs=2))

        step = run.feed(*live(), refunded, callback("refund", amount=1_000, request_id="rf"),
                        *refund, self.FIRST, line("part-b", amount=3_000, fee=80))

        assert only_settlement(step).amount_minor == AMOUNT - 1_000
        assert run.exceptions == []

    def test_parts_short_of_ours_when_the_deadline_closes_are_an_amount_mismatch(self):
        run = Run(self.MANY)
        run.feed(*live(), self.FIRST)

        closing = run.close(NEXT_DAY)
        step = run.wake(closing.wake_ms)

        assert [pinned(e) for e in step.exceptions] == [
            (K.amount_mismatch, AMOUNT, 6_000, "part-a", PID, CH)]
        assert (run.states(), run.to_orders) == (["held"], [])

    def test_parts_adding_up_before_the_deadline_close_raise_nothing(self):
        run = Run(self.MANY)
        run.feed(*live(), self.FIRST)

        closing = run.close(NEXT_DAY)
        run.feed(self.SECOND)
        run.wake(closing.wake_ms)

        assert run.exceptions == [] and run.states() == ["booked", "booked"]

    @pytest.mark.parametrize("repeat_after", [1, 2])
    def test_repeat_of_a_part_is_duplicate_settlement(self, repeat_after):
        run = Run(self.MANY)
        run.feed(*live(), *(self.FIRST, self.SECOND)[:repeat_after])
        repeat = line("part-c", amount=6_000, fee=100)

        step = run.feed(repeat)

        assert [(e.kind, e.reported_minor, e.line_id) for e in step.exceptions] == [
            (K.duplicate_settlement, 6_000, "part-c")]
        assert step.to_orders == ()
        assert run.states()[-1] == "held"

    def test_equal_parts_are_not_duplicates_until_they_exceed_the_order(self):
        run = Run(self.MANY)
        half = [line(f"half-{n}", amount=AMOUNT // 2, fee=FEE // 2) for n in range(3)]

        run.feed(*live(), *half)

        assert [(e.kind, e.line_id) for e in run.exceptions] == [
            (K.duplicate_settlement, "half-2")]
        assert run.states() == ["booked", "booked", "held"]

    def test_part_beyond_what_is_open_is_amount_mismatch(self):
        run = Run(self.MANY)

        run.feed(*live(), self.FIRST, line("part-b", amount=4_001))

        assert [(e.kind, e.expected_minor, e.reported_minor) for e in run.exceptions] == [
            (K.amount_mismatch, 4_000, 4_001)]
        assert run.states() == ["part", "held"]


def only_settlement(step: Step) -> SettlementReported:
    found = [m for m in step.to_orders if isinstance(m, SettlementReported)]
    assert len(found) == 1, step.to_orders
    return found[0]


# ---------------------------------------------------------------- tallies


class TestTally:
    def test_add_with_sign_minus_one_undoes_an_add(self):
        base = Tally(matched={CH: 2}, open={f"{CH}|in_flight|{DAY}": 1},
                     residual={f"{CH}|{CCY}|{DAY}": 500}, exceptions={"fee_mismatch": 1})
        part = Tally(matched={CH: 1, "other": 1}, open={f"{CH}|in_flight|{DAY}": 1},
                     residual={f"{CH}|{CCY}|{DAY}": -500}, auto_resolved={"x": 1})

        undone = base.add(part).add(part, -1)

        assert undone == base

    def test_add_drops_counters_that_reach_zero(self):
        one = Tally(open={"k": 1})

        assert one.add(one, -1) == Tally()

    def test_add_keeps_the_latest_closed_period_per_channel(self):
        a = Tally(closed_periods={CH: NEXT_DAY})

        merged = a.add(Tally(closed_periods={CH: DAY, "w": DAY}))

        assert merged.closed_periods == {CH: NEXT_DAY, "w": DAY}

    def test_raised_tally_counts_kinds_and_the_auto_resolved_ones(self):
        def raised(kind, resolution=""):
            return ReconException(exception_id=f"rx-{kind.value}", payment_id=PID, channel=CH,
                                  kind=kind, reason="", detected_at_ms=T0,
                                  resolution=resolution)
        step = Step(None, (raised(K.status_mismatch, "fixed"), raised(K.status_mismatch),
                           raised(K.fee_mismatch)))

        tally = raised_tally(step)

        assert tally == Tally(exceptions={"status_mismatch": 2, "fee_mismatch": 1},
                              auto_resolved={"status_mismatch": 1})

    def test_standing_of_open_item_has_one_open_entry_keyed_channel_state_day(self):
        run = Run(start_ms=T0 - 2)  # first record at T0 - 1: the day before its capture

        run.feed(*live())

        assert standing(run.item) == Tally(open={f"{CH}|awaiting_line|{DAY_BEFORE}": 1},
                                           residual={f"{CH}|{CCY}|{DAY}": AMOUNT})

    def test_standing_of_no_item_is_empty(self):
        assert standing(None) == Tally()

    def test_standing_moves_from_open_to_matched_when_the_line_is_booked(self):
        run = Run()
        run.feed(*live())
        before = standing(run.item)

        item = run.item
        run.feed(LINE, *clearing_legs(LINE))
        delta = standing(run.item).add(before, -1).add(closed_tally(item, run.item))

        assert delta == Tally(matched={CH: 1}, matched_minor={f"{CH}|{CCY}": AMOUNT},
                              open={f"{CH}|awaiting_line|{DAY}": -1},
                              residual={f"{CH}|{CCY}|{DAY}": -AMOUNT})


# ---------------------------------------------------------------- the order stage's side


def confirm(flow, decide, confirmed):
    """Drive one reconciliation confirmation through the flow (entries posted, checked)."""
    return flow._step(lambda order, now: decide(order, confirmed, now))


def declined_sale() -> flows.Flow:
    flow = flows.Flow()
    request = only(flow.command(flows.pay(), flows.CARD), ChannelRequested)
    flow.answer(request, flows.DECLINED)
    assert flow.order.status is S.failed
    return flow


def order_success(amount: int = flows.AMOUNT, channel: str = flows.CARD.channel):
    return ChannelSuccessConfirmed(payment_id=flows.PID, channel=channel,
                                   channel_serial="ch-9", amount_minor=amount,
                                   currency=flows.CCY, evidence="settlement line l-1")


def parked_late_success() -> flows.Flow:
    """A sale timed out; its late success was parked in suspense and is being sent back
    (the route's late_success rule), and the order failed."""
    flow = flows.Flow()
    request = only(flow.command(flows.pay(), flows.CARD), ChannelRequested)
    flow.now_ms = flow.order.deadline_ms - 1
    reached = DeadlineReached(payment_id=flows.PID, deadline_ms=flow.order.deadline_ms)
    flow._step(lambda order, now: decide_deadline(order, reached, now))
    assert flow.order.status is S.timed_out
    late = flow.answer(request)
    assert (late.status, flow.order.status) == (C.late_success_refunding, S.failed)
    return flow


def order_refund(amount: int, request_id: str = "req-ch-1"):
    return ChannelRefundConfirmed(payment_id=flows.PID, channel=flows.CARD.channel,
                                  request_id=request_id, amount_minor=amount,
                                  currency=flows.CCY, evidence="acq refunded by itself")


class TestOrderChannelSuccess:
    def test_failed_order_succeeds_by_reconciliation_and_posts_one_capture(self):
        flow = declined_sale()

        d = confirm(flow, decide_channel_success, order_success())

        assert d.status is C.accepted
        told = only(d, PaymentStatusChanged)
        assert (told.status, told.previous_status, told.trigger, told.captured_minor) == (
            "succeeded", "failed", "reconciliation", flows.AMOUNT)
        entry = only(d, JournalEntryDecided)
        assert entry.reason == "capture"
        assert {leg.account_id: leg.amount_minor for leg in entry.legs} == {
            flows.CLEARING: -flows.AMOUNT, flows.pending(): flows.NET,
            f"fees:{flows.CCY}": flows.FEE}
        assert (d.order.status, d.order.channel_serial) == (S.succeeded, "ch-9")
        assert of_type(d, ChannelRequested) == []

    def test_confirmation_records_the_attempts_success_in_place_of_its_decline(self):
        flow = declined_sale()
        [request] = flow.order.requests

        d = confirm(flow, decide_channel_success, order_success())

        assert [(a.request_id, a.outcome, a.amount_minor, a.applied_at_ms)
                for a in d.order.applied] == [
            (request.request_id, flows.OK, flows.AMOUNT, flow.now_ms)]

    def test_late_real_success_after_the_confirmation_is_a_replay_that_posts_nothing(self):
        flow = declined_sale()
        [request] = flow.order.requests
        capture = only(confirm(flow, decide_channel_success, order_success()),
                       JournalEntryDecided)
        order, books = flow.order, dict(flow.books.balances)

        d = flow.answer(request)  # the channel's own success, after all

        assert (d.status, d.order) == (C.callback_replayed, order)
        assert of_type(d, JournalEntryDecided) == [capture]  # the same entry: applied once
        assert of_type(d, PaymentStatusChanged) == []
        assert flow.books.balances == books
        assert flow.books.total(flows.pending()) == flows.NET

    def test_second_confirmation_is_duplicate_and_does_nothing(self):
        flow = declined_sale()
        confirm(flow, decide_channel_success, order_success())

        d = confirm(flow, decide_channel_success, order_success())

        assert (d.status, d.outputs, d.order) == (C.duplicate, (), flow.order)
        assert len(flow.entries) == 1

    def test_confirmation_of_a_success_whose_money_was_parked_is_not_applicable(self):
        flow = parked_late_success()
        before, entries = flow.order, len(flow.entries)

        d = confirm(flow, decide_channel_success, order_success())

        assert (d.status, d.outputs, d.order) == (C.confirmation_not_applicable, (), before)
        assert len(flow.entries) == entries

    @pytest.mark.parametrize("amount,channel", [
        (flows.AMOUNT - 1, flows.CARD.channel), (flows.AMOUNT + 1, flows.CARD.channel),
        (flows.AMOUNT, "other")])
    def test_confirmation_of_other_money_or_channel_is_not_applicable(self, amount, channel):
        flow = declined_sale()
        before = flow.order

        d = confirm(flow, decide_channel_success, order_success(amount, channel))

        assert (d.status, d.outputs, d.order) == (C.confirmation_not_applicable, (), before)

    def test_confirmation_for_unknown_order_is_order_not_found(self):
        d = decide_channel_success(None, order_success(), flows.NOW)

        assert (d.status, d.outputs, d.order) == (C.order_not_found, (), None)


class TestOrderChannelRefund:
    @pytest.mark.parametrize("amount,status", [
        (3_000, S.partially_refunded), (flows.AMOUNT, S.refunded)])
    def test_channel_refund_is_held_on_pending_then_posted_without_channel_request(
            self, amount, status):
        flow = flows.sold()
        flow.books.fund(flows.pending(), flows.FEE)  # the fee is not returned: cover it

        asked = confirm(flow, decide_channel_refund, order_refund(amount))
        held = only(asked, HoldRequested)
        d = flow.hold(held)

        assert asked.status is C.accepted
        assert (held.account_id, held.amount_minor, held.currency) == (
            flows.pending(), amount, flows.CCY)
        refund_id = asked.order.refunds[-1].refund_id
        assert refund_id.startswith(CHANNEL_REFUND_PREFIX)
        assert held.hold_id == hold_id_for(flows.PID, refund_id)
        assert d.status is C.accepted
        assert (d.order.status, d.order.refunded_minor) == (status, amount)
        entry = only(d, JournalEntryDecided)
        assert (entry.reason, {leg.account_id: leg.amount_minor for leg in entry.legs}[
            flows.pending()]) == ("refund", -amount)
        assert of_type(d, ChannelRequested) == []
        assert [r.status for r in d.order.refunds] == ["succeeded"]

    @pytest.mark.parametrize("posted", [False, True])
    def test_same_channel_refund_confirmed_twice_is_duplicate(self, posted):
        flow = flows.sold()
        held = only(confirm(flow, decide_channel_refund, order_refund(3_000)), HoldRequested)
        if posted:
            flow.hold(held)
        before, entries = flow.order, len(flow.entries)

        d = confirm(flow, decide_channel_refund, order_refund(3_000))

        assert (d.status, d.outputs, d.order) == (C.duplicate, (), before)
        assert (len(flow.entries), flow.order.refunded_minor) == (entries, 3_000 * posted)

    def test_two_different_channel_refunds_of_the_same_amount_are_both_posted(self):
        flow = flows.sold()

        for request_id in ("req-ch-1", "req-ch-2"):
            asked = confirm(flow, decide_channel_refund, order_refund(3_000, request_id))
            assert asked.status is C.accepted
            assert flow.hold(only(asked, HoldRequested)).status is C.accepted

        assert (flow.order.status, flow.order.refunded_minor) == (S.partially_refunded, 6_000)
        assert [r.status for r in flow.order.refunds] == ["succeeded", "succeeded"]
        assert len({r.refund_id for r in flow.order.refunds}) == 2
        assert [e.reason for e in flow.entries] == ["capture", "refund", "refund"]
        assert flow.books.total(flows.pending()) == flows.NET - 6_000

    def test_confirmation_of_a_refund_the_order_asked_for_is_duplicate(self):
        flow = flows.sold()
        flows.refunded(flow, "rf-1", 1_000)
        [asked] = [r for r in flow.order.requests if r.reference == "rf-1"]
        before, entries = flow.order, len(flow.entries)

        d = confirm(flow, decide_channel_refund, order_refund(1_000, asked.request_id))

        assert (d.status, d.outputs, d.order) == (C.duplicate, (), before)
        assert (len(flow.entries), flow.order.refunded_minor) == (entries, 1_000)

    @pytest.mark.parametrize("stage", ["refund holding", "refund processing",
                                       "revocation holding"])
    def test_channel_refund_while_a_merchant_refund_or_revocation_is_open_is_not_applicable(
            self, stage):
        flow = flows.sold()
        if stage.startswith("refund"):
            held = only(flow.command(flows.refund("rf-1", 1_000)), HoldRequested)
            if stage == "refund processing":
                only(flow.hold(held), ChannelRequested)
        else:
            flow.command(flows.revoke())
        before = flow.order

        d = confirm(flow, decide_channel_refund, order_refund(3_000))

        what, status = stage.split()
        assert (d.status, d.outputs, d.order) == (C.confirmation_not_applicable, (), before)
        assert ([r.status for r in before.refunds], before.revocation) == (
            ([status], "") if what == "refund" else ([], status))

    def test_channel_refund_beyond_captured_is_not_applicable(self):
        flow = flows.sold()

        d = confirm(flow, decide_channel_refund, order_refund(flows.AMOUNT + 1))

        assert (d.status, d.outputs) == (C.confirmation_not_applicable, ())

    def test_channel_refund_for_failed_order_is_not_applicable(self):
        flow = declined_sale()

        d = confirm(flow, decide_channel_refund, order_refund(1_000))

        assert (d.status, d.outputs) == (C.confirmation_not_applicable, ())


# ---------------------------------------------------------------- lines by channel serial


class TestBySerial:
    RULES = ReconRules()
    SEEN = SerialSeen(serial=SERIAL, payment_id=PID, channel=CH)
    BARE = LINE.model_copy(update={"payment_id": ""})

    def test_line_after_the_serial_is_forwarded_with_our_payment_id(self):
        known = by_serial(None, self.SEEN, T0, self.RULES)

        step = by_serial(known.row, self.BARE, T0 + 1, self.RULES)

        assert step.forward == (LINE,)
        assert step.exceptions == ()
        assert known.wake_ms == T0 + self.RULES.retention_days * DAY_MS

    def test_serial_row_goes_after_retention(self):
        known = by_serial(None, self.SEEN, T0, self.RULES)
        kept = known.wake_ms

        early = by_serial(known.row, wake(kept - 1), kept - 1, self.RULES)
        gone = by_serial(early.row, wake(kept), kept, self.RULES)

        assert (early.row, early.wake_ms) == (known.row, kept)
        assert gone.row is None

    def test_line_before_the_serial_waits_then_goes_on_when_the_serial_comes(self):
        waiting = by_serial(None, self.BARE, T0, self.RULES)

        known = by_serial(waiting.row, self.SEEN, T0 + 5, self.RULES)

        assert (waiting.forward, waiting.wake_ms) == ((), T0 + LINE_WAIT_MS)
        assert known.forward == (LINE,)
        assert known.row.waiting == ()

    def test_same_line_twice_waits_once(self):
        first = by_serial(None, self.BARE, T0, self.RULES)

        again = by_serial(first.row, self.BARE, T0 + 3, self.RULES)

        assert len(again.row.waiting) == 1 and again.wake_ms == T0 + LINE_WAIT_MS

    def test_serial_nobody_has_is_missing_in_ours_after_line_wait_once(self):
        waiting = by_serial(None, self.BARE, T0, self.RULES)

        early = by_serial(waiting.row, wake(T0 + LINE_WAIT_MS - 1), T0 + LINE_WAIT_MS - 1,
                          self.RULES)
        late = by_serial(early.row, wake(T0 + LINE_WAIT_MS), T0 + LINE_WAIT_MS, self.RULES)
        again = by_serial(late.row, wake(T0 + LINE_WAIT_MS + 9), T0 + LINE_WAIT_MS + 9,
                          self.RULES)

        assert early.exceptions == () and again.exceptions == ()
        [exc] = late.exceptions
        assert (exc.kind, exc.payment_id, exc.line_id, exc.reported_minor) == (
            K.missing_in_ours, "", LINE.line_id, AMOUNT)
        assert SERIAL in exc.reason and late.wake_ms == 0


# ---------------------------------------------------------------- config/recon.yaml


class TestReconConfig:
    SHIPPED = Path(__file__).resolve().parents[2] / "config"

    def test_shipped_file_loads_versioned_and_channels_inherit_the_defaults(self):
        loaded = load_recon(self.SHIPPED)

        assert len(loaded.version) == 10
        wallet = loaded.for_channel("wallet")
        assert (wallet.settle_days, wallet.lines_per_payment, wallet.grace_ms) == (
            2, "many", loaded.defaults.grace_ms)

    def test_bad_line_is_refused_with_file_line_and_field(self, tmp_path):
        text = (self.SHIPPED / "recon.yaml").read_text()
        bad = text.replace("    settle_days: 2\n", "    settle_days: -2\n")
        assert bad != text
        (tmp_path / "recon.yaml").write_text(bad)
        line = bad.splitlines().index("    settle_days: -2") + 1

        with pytest.raises(ConfigError, match=rf"recon.yaml:{line}: channels\.3\.settle_days"):
            load_recon(tmp_path)
