"""Ops' resolutions of reconciliation exceptions, decided by the order stage
(``domain/resolutions.py``): the allowed actions per kind, the ladder of checks, the entries
each action posts (and that the preview shows the same), idempotency."""

from __future__ import annotations

import pytest
from decisions import legs_by_account, of_type, only
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from domain import accounts
from domain.commands import CaptureMode, Method, Pay, ResolutionAction, ResolveException
from domain.events import (
    ChannelOperation,
    ChannelOutcome,
    ChannelRequested,
    ChannelResponded,
    DeadlineReached,
    ExceptionResolved,
    JournalEntryDecided,
    PaymentStatusChanged,
)
from domain.ids import payment_id_for
from domain.money import fee_minor
from domain.order_state import COMPENSATION_PREFIX, CommandStatus, Order, OrderStatus
from domain.orders import decide_channel_response, decide_command, decide_deadline
from domain.recon_kinds import ExceptionKind
from domain.resolutions import (
    ALLOWED,
    FeeTerms,
    decide_resolution,
    digest_of,
    moves_money,
    preview,
)
from domain.routing import Route

A, K, C, S = ResolutionAction, ExceptionKind, CommandStatus, OrderStatus
NOW = 1_000
MERCHANT, ORDER_NO, CCY, CH = "m-1", "order-1", "EUR", "acq"
PID = payment_id_for(MERCHANT, ORDER_NO)
ROUTE = Route(channel=CH, fee_bps=150, fee_fixed_minor=30, reason="test route",
              callback_timeout_ms=2_000)
TERMS = FeeTerms(ROUTE.fee_bps, ROUTE.fee_fixed_minor)
AMOUNT = 10_000
CLEARING = accounts.channel_clearing(CH, CCY)
SUSPENSE = accounts.suspense(CCY)
PENDING = accounts.merchant_pending(MERCHANT, CCY)
FEES = accounts.fee_revenue(CCY)


def pay(amount: int = AMOUNT) -> Pay:
    return Pay(merchant_id=MERCHANT, idempotency_key="pay-1", merchant_order_no=ORDER_NO,
               amount_minor=amount, currency=CCY, method=Method.card, capture=CaptureMode.auto)


def answer(request: ChannelRequested, outcome=ChannelOutcome.succeeded, amount=None,
           decline_code="") -> ChannelResponded:
    return ChannelResponded(
        request_id=request.request_id, payment_id=PID, channel=request.channel,
        operation=request.operation, outcome=outcome,
        amount_minor=request.amount_minor if amount is None else amount,
        currency=request.currency, channel_serial="ch-1", decline_code=decline_code)


def processing(amount: int = AMOUNT) -> tuple[Order, ChannelRequested]:
    d = decide_command(None, pay(amount), ROUTE, NOW)
    return d.order, only(d, ChannelRequested)


def declined(amount: int = AMOUNT) -> Order:
    """The channel declined; reconciliation later learnt that it took the money."""
    order, request = processing(amount)
    d = decide_channel_response(order, answer(request, ChannelOutcome.declined,
                                              decline_code="do_not_honor"), NOW + 1)
    assert d.order.status is S.failed
    return d.order


def timed_out(amount: int = AMOUNT) -> Order:
    order, _ = processing(amount)
    for _ in range(3):  # two status queries, then the timeout
        order = decide_deadline(order, DeadlineReached(payment_id=PID,
                                                       deadline_ms=order.deadline_ms),
                                order.deadline_ms).order
    assert order.status is S.timed_out
    return order


def other_money(taken: int = AMOUNT - 1) -> Order:
    order, request = processing()
    d = decide_channel_response(order, answer(request, amount=taken), NOW + 1)
    assert d.order.status is S.amount_mismatch
    return d.order


def sold(amount: int = AMOUNT) -> Order:
    order, request = processing(amount)
    return decide_channel_response(order, answer(request), NOW + 1).order


def resolve(kind: ExceptionKind, action: ResolutionAction, amount: int = AMOUNT,
            exception_id: str = "rx_1", **changes) -> ResolveException:
    fields = dict(merchant_id=MERCHANT, idempotency_key=f"ops-{exception_id}-{action.value}",
                  merchant_order_no=ORDER_NO, exception_id=exception_id, kind=kind,
                  action=action, resolver="ana", comment="checked with the acquirer",
                  channel=CH, currency=CCY, amount_minor=amount)
    return ResolveException(**{**fields, **changes})


def entries(decision) -> list[JournalEntryDecided]:
    return of_type(decision, JournalEntryDecided)


def balanced(entry: JournalEntryDecided) -> bool:
    return sum(leg.amount_minor for leg in entry.legs) == 0


# ---------------------------------------------------------------- the ladder


class TestChecks:
    def test_refused_when_no_order(self):
        d = decide_resolution(None, resolve(K.status_mismatch, A.refund), NOW)

        assert d == (None, (), C.order_not_found)

    @pytest.mark.parametrize("kind,action", [
        (K.status_mismatch, A.write_off), (K.fee_mismatch, A.refund),
        (K.missing_in_ours, A.write_off), (K.duplicate_settlement, A.accept_channel_result),
        (K.currency_mismatch, A.refund)])
    def test_refused_when_the_action_does_not_fit_the_kind(self, kind, action):
        order = declined()

        d = decide_resolution(order, resolve(kind, action), NOW + 5)

        assert d == (order, (), C.action_not_allowed_for_kind)

    @pytest.mark.parametrize("changes", [{"currency": "USD"}, {"channel": "other_bank"}])
    def test_refused_when_the_facts_name_another_channel_or_currency(self, changes):
        order = declined()

        d = decide_resolution(order, resolve(K.status_mismatch, A.accept_channel_result,
                                             **changes), NOW + 5)

        assert d.status is C.resolution_facts_differ_from_order

    def test_idempotency_is_checked_before_the_kind(self):
        order = decide_resolution(declined(), resolve(K.status_mismatch, A.refund),
                                  NOW + 5).order

        d = decide_resolution(order, resolve(K.status_mismatch, A.write_off), NOW + 6)

        assert d.status is C.exception_already_resolved

    def test_a_comment_is_required(self):
        with pytest.raises(ValidationError) as raised:
            resolve(K.status_mismatch, A.refund, comment="")

        assert raised.value.errors()[0]["loc"] == ("comment",)


class TestIdempotency:
    def test_same_resolution_twice_is_a_duplicate_with_nothing_sent(self):
        cmd = resolve(K.status_mismatch, A.accept_channel_result)
        first = decide_resolution(declined(), cmd, NOW + 5)

        again = decide_resolution(first.order, cmd.model_copy(
            update={"idempotency_key": "ops-another-key"}), NOW + 6)

        assert again == (first.order, (), C.duplicate)

    def test_another_action_on_a_resolved_exception_is_refused(self):
        first = decide_resolution(declined(), resolve(K.status_mismatch, A.refund), NOW + 5)

        other = decide_resolution(first.order, resolve(K.status_mismatch,
                                                       A.accept_channel_result), NOW + 6)

        assert other == (first.order, (), C.exception_already_resolved)

    def test_another_exception_of_the_same_payment_is_resolved_on_its_own(self):
        first = decide_resolution(sold(), resolve(K.fee_mismatch, A.accept_channel_result,
                                                  exception_id="rx_fee"), NOW + 5)

        second = decide_resolution(first.order, resolve(
            K.duplicate_settlement, A.write_off, exception_id="rx_dup", line_id="l-2",
            fee_minor=180), NOW + 6)

        assert second.status is C.accepted
        assert [r.exception_id for r in second.order.resolutions] == ["rx_fee", "rx_dup"]


# ---------------------------------------------------------------- each action


class TestAcceptChannelResult:
    @pytest.mark.parametrize("unpaid", [declined, timed_out])
    def test_unpaid_order_succeeds_and_the_capture_is_posted(self, unpaid):
        order = unpaid()

        d = decide_resolution(order, resolve(K.status_mismatch, A.accept_channel_result), NOW + 9)

        fee = fee_minor(AMOUNT, ROUTE.fee_bps, ROUTE.fee_fixed_minor)
        assert d.status is C.accepted
        assert (d.order.status, d.order.captured_minor) == (S.succeeded, AMOUNT)
        assert legs_by_account(only(d, JournalEntryDecided)) == {
            CLEARING: -AMOUNT, PENDING: AMOUNT - fee, FEES: fee}
        moved = only(d, PaymentStatusChanged)
        assert (moved.trigger, moved.status) == ("reconciliation", "succeeded")
        assert "checked with the acquirer" not in moved.reason  # ops' note stays with ops
        resolved = only(d, ExceptionResolved)
        assert (resolved.exception_id, resolved.resolver, resolved.comment) == (
            "rx_1", "ana", "checked with the acquirer")
        assert resolved.entry_ids == (only(d, JournalEntryDecided).entry_id,)

    def test_the_preview_shows_the_capture_the_order_posts(self):
        cmd = resolve(K.status_mismatch, A.accept_channel_result)
        shown = preview(PID, MERCHANT, cmd, TERMS)

        d = decide_resolution(declined(), cmd.model_copy(
            update={"preview_digest": shown.digest}), NOW + 5)

        assert d.status is C.accepted
        assert [legs_by_account(e) for e in shown.entries] == [
            legs_by_account(e) for e in entries(d)]

    def test_refused_when_the_order_would_post_other_entries_than_previewed(self):
        cmd = resolve(K.status_mismatch, A.accept_channel_result)
        stale = preview(PID, MERCHANT, cmd, FeeTerms(fee_bps=0, fee_fixed_minor=0))

        d = decide_resolution(declined(), cmd.model_copy(
            update={"preview_digest": stale.digest}), NOW + 5)

        assert d.status is C.resolution_differs_from_preview
        assert d.outputs == ()

    def test_refused_when_no_attempt_asked_for_that_money(self):
        d = decide_resolution(declined(), resolve(K.status_mismatch, A.accept_channel_result,
                                                  amount=AMOUNT + 1), NOW + 5)

        assert d.status is C.resolution_facts_differ_from_order

    def test_refused_when_the_order_already_succeeded(self):
        d = decide_resolution(sold(), resolve(K.status_mismatch, A.accept_channel_result),
                              NOW + 5)

        assert d.status is C.resolution_not_applicable_in_status

    def test_a_fee_difference_is_accepted_with_nothing_posted(self):
        order = sold()

        d = decide_resolution(order, resolve(K.fee_mismatch, A.accept_channel_result,
                                             amount=0, line_id="l-1"), NOW + 5)

        assert d.status is C.accepted
        assert [type(o).__name__ for o in d.outputs] == ["ExceptionResolved"]
        assert d.order.status is S.succeeded
        assert d.order.history[-1].trigger == "resolve_exception"


class TestRefund:
    def test_failed_order_parks_the_money_and_sends_it_back(self):
        d = decide_resolution(declined(), resolve(K.status_mismatch, A.refund), NOW + 5)

        parked = only(d, JournalEntryDecided)
        back = only(d, ChannelRequested)
        assert (d.status, d.order.status) == (C.accepted, S.failed)
        assert legs_by_account(parked) == {CLEARING: -AMOUNT, SUSPENSE: AMOUNT}
        assert (back.operation, back.amount_minor, back.channel) == (
            ChannelOperation.refund, AMOUNT, CH)
        assert back.reference.startswith(COMPENSATION_PREFIX)

    def test_the_channels_confirmation_empties_suspense(self):
        d = decide_resolution(declined(), resolve(K.status_mismatch, A.refund), NOW + 5)

        confirmed = decide_channel_response(d.order, answer(only(d, ChannelRequested)), NOW + 6)

        assert legs_by_account(only(confirmed, JournalEntryDecided)) == {
            SUSPENSE: -AMOUNT, CLEARING: AMOUNT}

    def test_the_preview_shows_both_entries(self):
        cmd = resolve(K.status_mismatch, A.refund)
        shown = preview(PID, MERCHANT, cmd, TERMS)

        d = decide_resolution(declined(), cmd.model_copy(
            update={"preview_digest": shown.digest}), NOW + 5)

        assert d.status is C.accepted
        assert [e.reason for e in shown.entries] == ["parked", "parked_returned"]

    def test_timed_out_order_fails_when_its_late_money_is_refunded(self):
        d = decide_resolution(timed_out(), resolve(K.status_mismatch, A.refund), NOW + 9)

        assert d.order.status is S.failed
        assert [e.status for e in of_type(d, PaymentStatusChanged)] == ["failed"]
        assert d.order.deadline_ms == 0

    def test_refused_when_a_settlement_line_already_paid_it_over(self):
        d = decide_resolution(declined(), resolve(K.status_mismatch, A.refund,
                                                  line_id="line-7"), NOW + 5)

        assert d.status is C.refund_not_allowed_for_settled_line

    def test_other_money_is_given_back_as_the_channel_took_it(self):
        d = decide_resolution(other_money(9_999), resolve(K.amount_mismatch, A.refund,
                                                          amount=9_999), NOW + 5)

        assert d.status is C.accepted
        assert legs_by_account(only(d, JournalEntryDecided)) == {
            CLEARING: -9_999, SUSPENSE: 9_999}
        assert only(d, ChannelRequested).amount_minor == 9_999
        assert d.order.status is S.amount_mismatch

    def test_other_money_refused_when_the_amount_is_not_what_the_channel_took(self):
        d = decide_resolution(other_money(9_999), resolve(K.amount_mismatch, A.refund,
                                                          amount=AMOUNT), NOW + 5)

        assert d.status is C.resolution_facts_differ_from_order


class TestWriteOff:
    def test_a_duplicate_lines_money_is_booked_to_suspense(self):
        d = decide_resolution(sold(), resolve(K.duplicate_settlement, A.write_off,
                                              line_id="line-2", fee_minor=180), NOW + 5)

        assert legs_by_account(only(d, JournalEntryDecided)) == {
            f"cash:{CH}:{CCY}": -(AMOUNT - 180), f"chfees:{CH}:{CCY}": -180,
            SUSPENSE: AMOUNT}
        assert only(d, JournalEntryDecided).reason == "write_off"

    def test_a_missing_lines_receivable_is_given_up_against_suspense(self):
        d = decide_resolution(sold(), resolve(K.missing_at_channel, A.write_off), NOW + 5)

        assert legs_by_account(only(d, JournalEntryDecided)) == {
            CLEARING: AMOUNT, SUSPENSE: -AMOUNT}
        assert d.order.status is S.succeeded  # the merchant keeps its money: we bear it

    def test_missing_refused_when_the_amount_is_not_what_the_order_kept(self):
        d = decide_resolution(sold(), resolve(K.missing_at_channel, A.write_off,
                                              amount=AMOUNT - 1), NOW + 5)

        assert d.status is C.resolution_facts_differ_from_order

    def test_missing_refused_once_the_order_is_settled(self):
        order = sold().model_copy(update={"settlement": "settled"})

        d = decide_resolution(order, resolve(K.missing_at_channel, A.write_off), NOW + 5)

        assert d.status is C.resolution_not_applicable_in_status

    def test_the_preview_is_the_entry_posted(self):
        cmd = resolve(K.duplicate_settlement, A.write_off, line_id="line-2", fee_minor=180)

        shown = preview(PID, MERCHANT, cmd, TERMS)
        d = decide_resolution(sold(), cmd.model_copy(update={"preview_digest": shown.digest}),
                              NOW + 5)

        assert shown.entries[0].model_copy(update={"decided_at_ms": NOW + 5}) == only(
            d, JournalEntryDecided)


def test_every_allowed_action_that_moves_money_previews_an_entry():
    for kind, actions in ALLOWED.items():
        for action in actions:
            shown = preview(PID, MERCHANT, resolve(kind, action, line_id="l", fee_minor=10),
                            TERMS)

            assert bool(shown.entries) == moves_money(kind, action), (kind, action)
            assert all(balanced(e) for e in shown.entries)
            assert shown.digest == digest_of(shown.entries)


# ---------------------------------------------------------------- properties

_SETUPS = {
    (K.status_mismatch, A.accept_channel_result): lambda amount: (declined(amount), amount),
    (K.status_mismatch, A.refund): lambda amount: (timed_out(amount), amount),
    (K.amount_mismatch, A.refund): lambda amount: (other_money(amount - 1), amount - 1),
    (K.fee_mismatch, A.accept_channel_result): lambda amount: (sold(amount), 0),
    (K.duplicate_settlement, A.write_off): lambda amount: (sold(amount), amount),
    (K.missing_at_channel, A.write_off): lambda amount: (sold(amount), amount),
}


@settings(max_examples=120, deadline=None, database=None)
@given(st.sampled_from(sorted(_SETUPS)), st.integers(min_value=2, max_value=10_000_000),
       st.integers(min_value=0, max_value=1_000), st.integers(min_value=1, max_value=4),
       st.booleans())
def test_a_resolution_applied_many_times_applies_once_and_balances(
        case, amount, fee, times, previewed):
    order, moved = _SETUPS[case](amount)
    cmd = resolve(*case, amount=moved, line_id="line-2" if case[0] is not K.status_mismatch
                  else "", fee_minor=min(fee, moved))
    if previewed:
        cmd = cmd.model_copy(update={"preview_digest": preview(PID, MERCHANT, cmd,
                                                               TERMS).digest})

    first = decide_resolution(order, cmd, NOW + 10)
    later = first
    for n in range(1, times):
        later = decide_resolution(later.order, cmd, NOW + 10 + n)

    assert first.status is C.accepted
    assert all(balanced(e) for e in entries(first))
    assert len(of_type(first, ExceptionResolved)) == 1
    assert later.order == first.order
    if times > 1:
        assert (later.outputs, later.status) == ((), C.duplicate)


@pytest.mark.parametrize("command_type,delivered", [
    ("review", False), ("resolve_exception", False), ("refund", True)])
def test_a_refused_ops_command_is_not_the_merchants_webhook(command_type, delivered):
    from agents.webhooks import for_merchant
    from domain.events import CommandRejected

    refused = CommandRejected(payment_id=PID, merchant_id=MERCHANT, merchant_order_no=ORDER_NO,
                              command_type=command_type, idempotency_key="ops-k",
                              code="exception_already_resolved", reason="", at_ms=NOW)

    assert for_merchant(refused) is delivered
