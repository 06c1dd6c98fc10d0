"""Reconciliation's side of ops' resolutions (``domain.recon.resolved_by_ops``): the
resolved discrepancy no longer keeps its item open, the resolution's own postings raise
nothing new, and the item closes once everything else agrees."""

from __future__ import annotations

from unit.test_recon import (
    AMOUNT,
    CCY,
    CH,
    CLEARING,
    FAILED,
    LATER,
    LINE,
    NEXT_DAY,
    PID,
    PROCESSING,
    SUCCEEDED,
    Run,
    callback,
    capture_legs,
    clearing_legs,
    leg,
    line,
    matched_run,
    psc,
    rules,
)

from domain.events import ExceptionResolved
from domain.recon import ReconException, open_state, standing
from domain.recon_kinds import ExceptionKind

K = ExceptionKind
SUSPENSE = f"suspense:{CCY}"


def resolved(exception: ReconException, action: str, at_ms: int = 0) -> ExceptionResolved:
    return ExceptionResolved(
        payment_id=PID, merchant_id="m", exception_id=exception.exception_id,
        kind=exception.kind.value, action=action, resolver="ana", comment="looked into it",
        line_id=exception.line_id, at_ms=at_ms)


def write_off_legs(*legs: tuple[str, int]):
    return tuple(leg("je-wo", n, account, amount, "write_off", legs=len(legs))
                 for n, (account, amount) in enumerate(legs))


def duplicate_run() -> tuple[Run, ReconException]:
    run = matched_run()
    step = run.feed(line("line-2"))
    assert [e.kind for e in step.exceptions] == [K.duplicate_settlement]
    return run, step.exceptions[0]


def missing_run() -> tuple[Run, ReconException]:
    run = Run()
    run.feed(PROCESSING, SUCCEEDED, callback(), *capture_legs())
    closing = run.close(NEXT_DAY)
    step = run.wake(closing.wake_ms)
    assert [e.kind for e in step.exceptions] == [K.missing_at_channel]
    return run, step.exceptions[0]


def unpaid_run() -> tuple[Run, ReconException]:
    """The channel took the money of a failed order, and no rule resolves it."""
    run = Run(rules())
    run.feed(PROCESSING, FAILED, callback())
    step = run.wake(LATER)
    assert [e.kind for e in step.exceptions] == [K.status_mismatch]
    return run, step.exceptions[0]


class TestResolvedByOps:
    def test_a_written_off_duplicate_closes_its_item(self):
        run, duplicate = duplicate_run()

        step = run.feed(resolved(duplicate, "write_off"))
        run.feed(*write_off_legs((f"cash:{CH}:{CCY}", -9_820), (f"chfees:{CH}:{CCY}", -180),
                                 (SUSPENSE, AMOUNT)))

        assert [(r.exception_id, r.item_state, r.resolver) for r in step.resolutions] == [
            (duplicate.exception_id, "closed", "ana")]
        assert run.states() == ["booked", "resolved"]
        assert run.item.closed_ms and run.exceptions == [duplicate]

    def test_a_written_off_missing_line_closes_and_is_no_longer_owed(self):
        run, missing = missing_run()
        owed_before = standing(run.item).residual

        run.feed(resolved(missing, "write_off"),
                 *write_off_legs((CLEARING, AMOUNT), (SUSPENSE, -AMOUNT)))

        assert run.item.closed_ms
        assert run.item.ledger.written_off_minor == AMOUNT
        assert list(owed_before.values()) == [AMOUNT]
        assert standing(run.item).residual == {}
        assert run.exceptions == [missing]

    def test_an_accepted_channel_success_closes_once_its_line_is_booked(self):
        run, mismatch = unpaid_run()

        run.feed(psc("succeeded", at_ms=LATER, captured=AMOUNT, previous="failed",
                     trigger="reconciliation"), resolved(mismatch, "accept_channel_result"))
        taken_in = run.steps[-1].resolutions
        run.feed(*capture_legs())
        waiting = open_state(run.item)
        run.feed(LINE)
        run.feed(*clearing_legs(LINE))

        assert [r.item_state for r in taken_in] == ["awaiting_line"]  # not an exception now
        assert waiting == "awaiting_line"
        assert run.item.closed_ms
        assert run.exceptions == [mismatch]

    def test_a_refunded_channel_success_closes_when_the_money_is_back(self):
        run, mismatch = unpaid_run()

        run.feed(resolved(mismatch, "refund"),
                 leg("je-park", 0, CLEARING, -AMOUNT, "parked", legs=2),
                 leg("je-park", 1, SUSPENSE, AMOUNT, "parked", legs=2),
                 callback("refund", request_id="req-back"),
                 leg("je-back", 0, SUSPENSE, -AMOUNT, "parked_returned", legs=2),
                 leg("je-back", 1, CLEARING, AMOUNT, "parked_returned", legs=2))
        run.wake(run.now + 60_000)

        assert run.item.closed_ms
        assert run.exceptions == [mismatch]

    def test_an_unresolved_exception_still_keeps_the_item_open(self):
        run, mismatch = unpaid_run()

        assert open_state(run.item) == "exception"
        assert not run.item.closed_ms

    def test_resolving_twice_changes_nothing_more(self):
        run, duplicate = duplicate_run()
        run.feed(resolved(duplicate, "write_off"))
        once = run.item

        step = run.feed(resolved(duplicate, "write_off"))

        assert step.item.model_copy(update={"changed_ms": once.changed_ms}) == once
        assert step.item.ops_resolved == once.ops_resolved
        assert step.exceptions == ()

    def test_an_exception_the_item_never_raised_is_unknown_and_changes_nothing(self):
        run = matched_run()
        before = run.item
        stranger = ReconException(exception_id="rx_other", payment_id=PID, channel=CH,
                                  kind=K.fee_mismatch, reason="", detected_at_ms=0)

        step = run.feed(resolved(stranger, "accept_channel_result"))

        assert step.item == before
        assert [r.item_state for r in step.resolutions] == ["unknown"]

    def test_a_resolution_for_a_payment_without_item_creates_none(self):
        run = Run()
        stranger = ReconException(exception_id="rx_other", payment_id=PID, channel=CH,
                                  kind=K.fee_mismatch, reason="", detected_at_ms=0)

        step = run.feed(resolved(stranger, "accept_channel_result"))

        assert step.item is None
        assert [r.item_state for r in step.resolutions] == ["unknown"]
