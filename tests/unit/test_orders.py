"""The order state machine, one class per message it decides on."""

from __future__ import annotations

import pytest

from decisions import legs_by_account, of_type, only

from domain import accounts
from domain.commands import Capture, CaptureMode, Method, Pay, Payer, Refund, Void
from domain.events import (
    ChannelOperation,
    ChannelOutcome,
    ChannelRequested,
    ChannelResponded,
    HoldReleaseRequested,
    HoldRequested,
    HoldResolved,
    JournalEntryDecided,
    PaymentStatusChanged,
)
from domain.ids import derive_id, payment_id_for
from domain.ledger import entry_balances
from domain.money import fee_minor
from domain.orders import (
    TERMINAL,
    TRANSITIONS,
    CommandStatus,
    Decision,
    Order,
    OrderStatus,
    decide_channel_response,
    decide_command,
    decide_hold_resolved,
)
from domain.routing import Route

# ---------------------------------------------------------------- helpers

S = OrderStatus
C = CommandStatus
NOW = 1_000
MERCHANT, ORDER_NO, CCY = "m-1", "order-1", "EUR"
PID = payment_id_for(MERCHANT, ORDER_NO)
ROUTE = Route(channel="acq", fee_bps=150, fee_fixed_minor=30, reason="test route")
AMOUNT = 10_000
FEE = fee_minor(AMOUNT, ROUTE.fee_bps, ROUTE.fee_fixed_minor)  # 150 + 30
CLEARING = accounts.channel_clearing("acq", CCY)
MERCHANT_ACCOUNT = accounts.merchant_pending(MERCHANT, CCY)
FEES = accounts.fee_revenue(CCY)


def pay(amount=AMOUNT, capture=CaptureMode.auto, key="pay-1", **changes) -> Pay:
    fields = dict(merchant_id=MERCHANT, idempotency_key=key, merchant_order_no=ORDER_NO,
                  amount_minor=amount, currency=CCY, method=Method.card, capture=capture)
    return Pay(**{**fields, **changes})


def capture(amount=None, key="cap-1") -> Capture:
    return Capture(merchant_id=MERCHANT, idempotency_key=key, merchant_order_no=ORDER_NO,
                   amount_minor=amount)


def void(key="void-1") -> Void:
    return Void(merchant_id=MERCHANT, idempotency_key=key, merchant_order_no=ORDER_NO)


def refund(refund_id="rf-1", amount=1_000, key=None) -> Refund:
    return Refund(merchant_id=MERCHANT, idempotency_key=key or f"key-{refund_id}",
                  merchant_order_no=ORDER_NO, refund_id=refund_id, amount_minor=amount)


def answer(request: ChannelRequested, outcome=ChannelOutcome.succeeded, amount=None,
           currency=None, serial="ch-1", decline_code="") -> ChannelResponded:
    return ChannelResponded(
        request_id=request.request_id, payment_id=request.payment_id, channel=request.channel,
        operation=request.operation, outcome=outcome,
        amount_minor=request.amount_minor if amount is None else amount,
        currency=request.currency if currency is None else currency,
        channel_serial=serial, decline_code=decline_code)


def hold_answer(hold: HoldRequested, placed=True, reason="") -> HoldResolved:
    return HoldResolved(hold_id=hold.hold_id, payment_id=hold.payment_id,
                        account_id=hold.account_id, placed=placed, reason=reason)








def processing(amount=AMOUNT, capture_mode=CaptureMode.auto) -> tuple[Order, ChannelRequested]:
    d = decide_command(None, pay(amount, capture_mode), ROUTE, NOW)
    return d.order, only(d, ChannelRequested)


def sold(amount=AMOUNT) -> tuple[Order, ChannelResponded, JournalEntryDecided]:
    order, request = processing(amount)
    callback = answer(request)
    d = decide_channel_response(order, callback, NOW + 1)
    return d.order, callback, only(d, JournalEntryDecided)


def authorized(amount=AMOUNT) -> Order:
    order, request = processing(amount, CaptureMode.manual)
    return decide_channel_response(order, answer(request), NOW + 1).order


def captured(order: Order, amount, key, now=NOW + 2) -> tuple[Order, Decision]:
    asked = decide_command(order, capture(amount, key), None, now)
    d = decide_channel_response(asked.order, answer(only(asked, ChannelRequested)), now + 1)
    return d.order, d


def refund_sent(order: Order, refund_id="rf-1", amount=1_000, now=NOW + 10):
    d = decide_command(order, refund(refund_id, amount), None, now)
    hold = only(d, HoldRequested)
    placed = decide_hold_resolved(d.order, hold_answer(hold), now + 1)
    return placed.order, hold, only(placed, ChannelRequested)


def refunded(order: Order, refund_id="rf-1", amount=1_000, now=NOW + 10):
    order, hold, request = refund_sent(order, refund_id, amount, now)
    d = decide_channel_response(order, answer(request), now + 2)
    return d.order, d, hold


def failed() -> Order:
    order, request = processing()
    return decide_channel_response(order, answer(request, ChannelOutcome.declined), NOW + 1).order


# ---------------------------------------------------------------- the table itself


class TestTransitions:
    def test_table_covers_every_status(self):
        names = set(TRANSITIONS)

        assert names == set(OrderStatus)

    def test_terminal_statuses_have_no_way_out(self):
        ways_out = {status: TRANSITIONS[status] for status in TERMINAL}

        assert all(not targets for targets in ways_out.values())

    def test_no_transition_back_to_created(self):
        targets = set().union(*TRANSITIONS.values())

        assert S.created not in targets


# ---------------------------------------------------------------- commands


class TestPay:
    def test_pay_accepted_when_new(self):
        cmd = pay()

        d = decide_command(None, cmd, ROUTE, NOW)

        assert d.status is C.accepted
        assert d.order.payment_id == PID
        assert d.order.status is S.processing
        assert [e.status for e in of_type(d, PaymentStatusChanged)] == ["created", "processing"]
        request = only(d, ChannelRequested)
        assert request.operation is ChannelOperation.sale
        assert (request.amount_minor, request.currency, request.channel) == (AMOUNT, CCY, "acq")
        assert d.order.requests == (request,)
        assert d.order.route == ROUTE

    def test_pay_requests_authorize_when_manual_capture(self):
        cmd = pay(capture=CaptureMode.manual)

        d = decide_command(None, cmd, ROUTE, NOW)

        assert only(d, ChannelRequested).operation is ChannelOperation.authorize

    def test_pay_rejected_no_route_when_route_missing(self):
        cmd = pay()

        d = decide_command(None, cmd, None, NOW)

        assert d == Decision(None, (), C.no_route)

    def test_pay_duplicate_when_same_payload_again(self):
        first = decide_command(None, pay(), ROUTE, NOW)

        again = decide_command(first.order, pay(), ROUTE, NOW + 5)

        assert again.status is C.duplicate
        assert again.order == first.order
        assert again.outputs == (only(first, ChannelRequested),)

    def test_pay_duplicate_when_only_idempotency_key_differs(self):
        first = decide_command(None, pay(key="a"), ROUTE, NOW)

        again = decide_command(first.order, pay(key="b"), ROUTE, NOW + 5)

        assert again.status is C.duplicate
        assert again.order == first.order

    @pytest.mark.parametrize("changes", [
        {"amount": AMOUNT + 1}, {"currency": "USD"}, {"capture": CaptureMode.manual},
        {"method": Method.bank, "amount": AMOUNT + 1},
        {"method": Method.balance, "payer": Payer(account_id="p-1")},
    ], ids=["amount", "currency", "capture", "method-and-amount", "method-not-a-channel"])
    def test_pay_conflict_when_same_order_no_different_payload(self, changes):
        first = decide_command(None, pay(), ROUTE, NOW)
        other = pay(**changes)

        again = decide_command(first.order, other, ROUTE, NOW + 5)

        assert again == Decision(first.order, (), C.order_exists_with_different_payload)

    def test_pay_is_second_attempt_when_other_channel_method_while_processing(self):
        first = decide_command(None, pay(), ROUTE, NOW)
        bank_route = Route(channel="bankco", fee_bps=0, fee_fixed_minor=0, reason="bank")

        again = decide_command(first.order, pay(method=Method.bank, key="pay-2"), bank_route,
                               NOW + 5)

        assert again.status is C.accepted
        request = only(again, ChannelRequested)
        assert (request.channel, request.reference) == ("bankco", "attempt-1")
        assert again.order.status is S.processing
        assert again.order.retry_routes == (bank_route,)
        assert of_type(again, PaymentStatusChanged) == []

    def test_pay_conflict_checked_before_route_when_route_missing(self):
        first = decide_command(None, pay(), ROUTE, NOW)

        again = decide_command(first.order, pay(amount=1), None, NOW + 5)

        assert again.status is C.order_exists_with_different_payload

    def test_pay_duplicate_when_order_already_terminal(self):
        order = failed()

        again = decide_command(order, pay(), ROUTE, NOW + 5)

        assert again.status is C.duplicate
        assert again.order == order


class TestCapture:
    def test_capture_rejected_when_order_missing(self):
        cmd = capture(100)

        d = decide_command(None, cmd, None, NOW)

        assert d == Decision(None, (), C.order_not_found)

    @pytest.mark.parametrize("make", [lambda: processing()[0], lambda: sold()[0], failed],
                             ids=["processing", "succeeded", "failed"])
    def test_capture_rejected_when_not_authorized(self, make):
        order = make()

        d = decide_command(order, capture(100), None, NOW + 5)

        assert d == Decision(order, (), C.capture_not_allowed_in_status)

    def test_capture_rejected_when_over_authorized(self):
        order = authorized(AMOUNT)

        d = decide_command(order, capture(AMOUNT + 1), None, NOW + 5)

        assert d == Decision(order, (), C.capture_exceeds_authorized)

    def test_capture_rejected_when_over_remaining_after_pending(self):
        order = decide_command(authorized(), capture(6_000, "c1"), None, NOW + 2).order

        d = decide_command(order, capture(4_001, "c2"), None, NOW + 3)

        assert d == Decision(order, (), C.capture_exceeds_authorized)

    def test_capture_rejected_when_nothing_left_and_amount_omitted(self):
        order = decide_command(authorized(), capture(AMOUNT, "c1"), None, NOW + 2).order

        d = decide_command(order, capture(None, "c2"), None, NOW + 3)

        assert d.status is C.capture_exceeds_authorized

    def test_capture_requests_partial_amount_when_given(self):
        order = authorized()

        d = decide_command(order, capture(4_000), None, NOW + 2)

        assert d.status is C.accepted
        request = only(d, ChannelRequested)
        assert (request.operation, request.amount_minor) == (ChannelOperation.capture, 4_000)
        assert d.order.capture_pending_minor == 4_000
        assert d.order.status is S.authorized

    def test_capture_partial_then_rest_succeeds_when_both_answered(self):
        order = authorized()

        first, first_d = captured(order, 4_000, "c1", NOW + 2)
        second, second_d = captured(first, None, "c2", NOW + 4)

        assert (first.status, first.captured_minor) == (S.authorized, 4_000)
        assert (second.status, second.captured_minor) == (S.succeeded, AMOUNT)
        assert second.capture_pending_minor == 0
        entries = [only(first_d, JournalEntryDecided), only(second_d, JournalEntryDecided)]
        assert entries[0].entry_id != entries[1].entry_id
        assert [legs_by_account(e)[CLEARING] for e in entries] == [-4_000, -6_000]
        assert all(entry_balances(e) for e in entries)

    def test_capture_declined_keeps_status_and_frees_pending(self):
        asked = decide_command(authorized(), capture(4_000), None, NOW + 2)
        request = only(asked, ChannelRequested)

        d = decide_channel_response(asked.order, answer(request, ChannelOutcome.declined), NOW + 3)

        assert d.status is C.accepted
        assert d.order.status is S.authorized
        assert (d.order.captured_minor, d.order.capture_pending_minor) == (0, 0)
        assert of_type(d, JournalEntryDecided) == []

    def test_capture_duplicate_when_same_key_redelivered_while_pending(self):
        asked = decide_command(authorized(), capture(4_000, "c1"), None, NOW + 2)

        again = decide_command(asked.order, capture(4_000, "c1"), None, NOW + 3)

        assert again == Decision(asked.order, (), C.duplicate)

    def test_capture_duplicate_when_full_capture_redelivered_while_pending(self):
        asked = decide_command(authorized(), capture(None, "c1"), None, NOW + 2)

        again = decide_command(asked.order, capture(None, "c1"), None, NOW + 3)

        assert again.status is C.duplicate

    def test_capture_duplicate_when_redelivered_after_succeeded(self):
        order, _ = captured(authorized(), AMOUNT, "c1")

        again = decide_command(order, capture(AMOUNT, "c1"), None, NOW + 9)

        assert again.status is C.duplicate


class TestVoid:
    def test_void_rejected_when_order_missing(self):
        cmd = void()

        d = decide_command(None, cmd, None, NOW)

        assert d.status is C.order_not_found

    def test_void_cancels_when_nothing_captured(self):
        asked = decide_command(authorized(), void(), None, NOW + 2)
        request = only(asked, ChannelRequested)

        d = decide_channel_response(asked.order, answer(request), NOW + 3)

        assert request.operation is ChannelOperation.void
        assert d.order.status is S.canceled
        assert of_type(d, JournalEntryDecided) == []
        assert only(d, PaymentStatusChanged).status == "canceled"

    def test_void_succeeds_order_when_partially_captured(self):
        order, _ = captured(authorized(), 3_000, "c1")
        asked = decide_command(order, void(), None, NOW + 5)

        d = decide_channel_response(asked.order, answer(only(asked, ChannelRequested)), NOW + 6)

        assert d.order.status is S.succeeded
        assert (d.order.captured_minor, d.order.authorized_minor) == (3_000, AMOUNT)
        assert of_type(d, JournalEntryDecided) == []

    def test_void_rejected_when_capture_pending(self):
        order = decide_command(authorized(), capture(100), None, NOW + 2).order

        d = decide_command(order, void(), None, NOW + 3)

        assert d == Decision(order, (), C.void_not_allowed_in_status)

    def test_void_rejected_when_sale_succeeded(self):
        order = sold()[0]

        d = decide_command(order, void(), None, NOW + 3)

        assert d == Decision(order, (), C.void_not_allowed_in_status)

    def test_void_duplicate_when_redelivered_before_answer(self):
        asked = decide_command(authorized(), void("v1"), None, NOW + 2)

        again = decide_command(asked.order, void("v2"), None, NOW + 3)

        assert again == Decision(asked.order, (), C.duplicate)

    def test_void_declined_keeps_authorized(self):
        asked = decide_command(authorized(), void(), None, NOW + 2)
        request = only(asked, ChannelRequested)

        d = decide_channel_response(asked.order, answer(request, ChannelOutcome.declined), NOW + 3)

        assert d.order.status is S.authorized
        assert d.outputs == ()

    def test_void_duplicate_when_redelivered_after_canceled(self):
        asked = decide_command(authorized(), void(), None, NOW + 2)
        order = decide_channel_response(asked.order, answer(only(asked, ChannelRequested)),
                                        NOW + 3).order

        again = decide_command(order, void(), None, NOW + 4)

        assert again.status is C.duplicate


class TestRefund:
    def test_refund_rejected_when_order_missing(self):
        cmd = refund()

        d = decide_command(None, cmd, None, NOW)

        assert d.status is C.order_not_found

    @pytest.mark.parametrize("make", [lambda: processing()[0], authorized, failed],
                             ids=["processing", "authorized", "failed"])
    def test_refund_rejected_when_not_captured(self, make):
        order = make()

        d = decide_command(order, refund(), None, NOW + 5)

        assert d == Decision(order, (), C.refund_not_allowed_in_status)

    def test_refund_holds_merchant_funds_when_succeeded(self):
        order = sold()[0]

        d = decide_command(order, refund("rf-1", 2_500), None, NOW + 5)

        assert d.status is C.accepted
        hold = only(d, HoldRequested)
        assert (hold.account_id, hold.currency, hold.amount_minor) == (MERCHANT_ACCOUNT, CCY, 2_500)
        assert d.outputs == (hold,)
        assert d.order.status is S.succeeded
        assert [(r.refund_id, r.status) for r in d.order.refunds] == [("rf-1", "holding")]

    def test_refund_partially_refunds_with_entry_consuming_hold_when_channel_succeeds(self):
        order, hold, request = refund_sent(sold()[0], "rf-1", 2_500)

        d = decide_channel_response(order, answer(request), NOW + 20)

        assert d.order.status is S.partially_refunded
        assert d.order.refunded_minor == 2_500
        entry = only(d, JournalEntryDecided)
        assert entry_balances(entry)
        debit = next(leg for leg in entry.legs if leg.account_id == MERCHANT_ACCOUNT)
        assert (debit.amount_minor, debit.hold_id) == (-2_500, hold.hold_id)
        assert legs_by_account(entry) == {MERCHANT_ACCOUNT: -2_500, CLEARING: 2_500}

    def test_refund_fully_refunds_when_rest_refunded(self):
        order, _, _ = refunded(sold()[0], "rf-1", 2_500, NOW + 10)

        order, d, _ = refunded(order, "rf-2", AMOUNT - 2_500, NOW + 20)

        assert d.order.status is S.refunded
        assert order.refunded_minor == order.captured_minor == AMOUNT

    def test_refund_rejected_when_sum_exceeds_captured(self):
        first = decide_command(sold()[0], refund("rf-1", 6_000), None, NOW + 5)

        second = decide_command(first.order, refund("rf-2", 4_001), None, NOW + 6)

        assert second == Decision(first.order, (), C.refund_exceeds_captured)

    def test_refund_accepted_when_sum_equals_captured(self):
        first = decide_command(sold()[0], refund("rf-1", 6_000), None, NOW + 5)

        second = decide_command(first.order, refund("rf-2", 4_000), None, NOW + 6)

        assert second.status is C.accepted

    def test_refund_rejected_when_over_captured_after_partial_void(self):
        order, _ = captured(authorized(), 3_000, "c1")
        asked = decide_command(order, void(), None, NOW + 5)
        order = decide_channel_response(asked.order, answer(only(asked, ChannelRequested)),
                                        NOW + 6).order

        d = decide_command(order, refund("rf-1", 3_001), None, NOW + 7)

        assert d.status is C.refund_exceeds_captured

    def test_refund_accepted_again_when_earlier_refund_failed(self):
        first = decide_command(sold()[0], refund("rf-1", 8_000), None, NOW + 5)
        rejected = decide_hold_resolved(first.order, hold_answer(only(first, HoldRequested),
                                                                 placed=False), NOW + 6)

        second = decide_command(rejected.order, refund("rf-2", 8_000), None, NOW + 7)

        assert second.status is C.accepted

    def test_refund_duplicate_when_same_id_same_amount(self):
        first = decide_command(sold()[0], refund("rf-1", 1_000), None, NOW + 5)

        again = decide_command(first.order, refund("rf-1", 1_000, key="other"), None, NOW + 6)

        assert again == Decision(first.order, (), C.duplicate)

    def test_refund_conflict_when_same_id_different_amount(self):
        first = decide_command(sold()[0], refund("rf-1", 1_000), None, NOW + 5)

        again = decide_command(first.order, refund("rf-1", 1_001), None, NOW + 6)

        assert again == Decision(first.order, (), C.refund_exists_with_different_amount)

    def test_refund_conflict_checked_before_limit_when_both_break(self):
        first = decide_command(sold()[0], refund("rf-1", 1_000), None, NOW + 5)

        again = decide_command(first.order, refund("rf-1", AMOUNT), None, NOW + 6)

        assert again.status is C.refund_exists_with_different_amount

    def test_refund_duplicate_checked_before_status_when_already_refunded(self):
        order, _, _ = refunded(sold()[0], "rf-1", AMOUNT)

        again = decide_command(order, refund("rf-1", AMOUNT), None, NOW + 30)

        assert order.status is S.refunded
        assert again.status is C.duplicate

    def test_refund_declined_releases_hold_and_marks_failed(self):
        order, hold, request = refund_sent(sold()[0], "rf-1", 2_500)

        d = decide_channel_response(order, answer(request, ChannelOutcome.declined), NOW + 20)

        assert d.order.status is S.succeeded
        assert d.order.refunded_minor == 0
        release = only(d, HoldReleaseRequested)
        assert (release.hold_id, release.account_id) == (hold.hold_id, MERCHANT_ACCOUNT)
        assert of_type(d, JournalEntryDecided) == []
        assert [r.status for r in d.order.refunds] == ["failed"]


class TestHoldResolved:
    def test_hold_placed_sends_refund_to_channel(self):
        asked = decide_command(sold()[0], refund("rf-1", 2_500), None, NOW + 5)

        d = decide_hold_resolved(asked.order, hold_answer(only(asked, HoldRequested)), NOW + 6)

        assert d.status is C.accepted
        request = only(d, ChannelRequested)
        assert (request.operation, request.amount_minor) == (ChannelOperation.refund, 2_500)
        assert request.reference == "rf-1"
        assert request in d.order.requests
        assert [r.status for r in d.order.refunds] == ["processing"]
        assert d.order.status is S.succeeded

    def test_hold_rejected_fails_refund_without_channel_request(self):
        asked = decide_command(sold()[0], refund("rf-1", 2_500), None, NOW + 5)
        hold = only(asked, HoldRequested)

        d = decide_hold_resolved(asked.order, hold_answer(hold, False, "insufficient_funds"),
                                 NOW + 6)

        assert d.status is C.accepted
        assert of_type(d, ChannelRequested) == []
        assert [r.status for r in d.order.refunds] == ["failed"]
        assert d.order.status is S.succeeded
        assert "insufficient_funds" in only(d, PaymentStatusChanged).reason

    @pytest.mark.parametrize("placed", [True, False])
    def test_hold_answer_duplicate_when_already_resolved(self, placed):
        asked = decide_command(sold()[0], refund("rf-1", 2_500), None, NOW + 5)
        answer_ = hold_answer(only(asked, HoldRequested), placed)
        first = decide_hold_resolved(asked.order, answer_, NOW + 6)

        again = decide_hold_resolved(first.order, answer_, NOW + 7)

        assert again == Decision(first.order, (), C.duplicate)

    def test_hold_answer_rejected_when_hold_unknown(self):
        order = sold()[0]
        stray = HoldResolved(hold_id="hold_x", payment_id=PID, account_id=MERCHANT_ACCOUNT,
                             placed=True)

        d = decide_hold_resolved(order, stray, NOW + 5)

        assert d == Decision(order, (), C.hold_for_unknown_purpose)

    def test_hold_answer_rejected_when_order_missing(self):
        stray = HoldResolved(hold_id="hold_x", payment_id=PID, account_id=MERCHANT_ACCOUNT,
                             placed=True)

        d = decide_hold_resolved(None, stray, NOW)

        assert d == Decision(None, (), C.order_not_found)


class TestChannelResponse:
    def test_sale_success_succeeds_with_balanced_capture_entry(self):
        order, request = processing()

        d = decide_channel_response(order, answer(request, serial="ch-42"), NOW + 1)

        assert d.status is C.accepted
        assert d.order.status is S.succeeded
        assert (d.order.authorized_minor, d.order.captured_minor) == (AMOUNT, AMOUNT)
        assert d.order.channel_serial == "ch-42"
        entry = only(d, JournalEntryDecided)
        assert entry_balances(entry)
        assert legs_by_account(entry) == {CLEARING: -AMOUNT, MERCHANT_ACCOUNT: AMOUNT - FEE,
                                          FEES: FEE}
        assert all(leg.currency == CCY and not leg.hold_id for leg in entry.legs)
        assert FEE == 180

    def test_sale_success_has_no_fee_leg_when_route_free(self):
        free = Route(channel="acq", fee_bps=0, fee_fixed_minor=0, reason="free")
        created = decide_command(None, pay(), free, NOW)

        d = decide_channel_response(created.order, answer(only(created, ChannelRequested)),
                                    NOW + 1)

        assert legs_by_account(only(d, JournalEntryDecided)) == {CLEARING: -AMOUNT,
                                                                 MERCHANT_ACCOUNT: AMOUNT}

    def test_sale_decline_fails_without_entry(self):
        order, request = processing()

        d = decide_channel_response(order, answer(request, ChannelOutcome.declined,
                                                  decline_code="51"), NOW + 1)

        assert d.order.status is S.failed
        assert of_type(d, JournalEntryDecided) == []
        assert "51" in only(d, PaymentStatusChanged).reason

    def test_authorize_success_authorizes_without_entry(self):
        order, request = processing(capture_mode=CaptureMode.manual)

        d = decide_channel_response(order, answer(request), NOW + 1)

        assert d.order.status is S.authorized
        assert (d.order.authorized_minor, d.order.captured_minor) == (AMOUNT, 0)
        assert of_type(d, JournalEntryDecided) == []

    @pytest.mark.parametrize("amount,currency", [(AMOUNT - 1, None), (AMOUNT + 1, None),
                                                 (None, "USD")],
                             ids=["less", "more", "currency"])
    def test_sale_amount_mismatch_when_channel_reports_other_money(self, amount, currency):
        order, request = processing()

        d = decide_channel_response(order, answer(request, amount=amount, currency=currency),
                                    NOW + 1)

        assert d.status is C.accepted
        assert d.order.status is S.amount_mismatch
        assert of_type(d, JournalEntryDecided) == []
        assert d.order.captured_minor == 0

    def test_duplicate_callback_replayed_with_same_entry_and_order_unchanged(self):
        order, callback, entry = sold()

        again = decide_channel_response(order, callback, NOW + 5)

        assert again.status is C.callback_replayed
        assert again.order == order
        replayed = only(again, JournalEntryDecided)
        assert replayed.entry_id == entry.entry_id
        assert replayed.legs == entry.legs
        assert of_type(again, PaymentStatusChanged) == []

    def test_duplicate_refund_callback_replayed_with_same_entry(self):
        order, d, _ = refunded(sold()[0], "rf-1", 2_500)
        entry = only(d, JournalEntryDecided)
        callback = answer(next(r for r in order.requests if r.reference == "rf-1"))

        again = decide_channel_response(order, callback, NOW + 50)

        assert again.status is C.callback_replayed
        assert again.order == order
        assert only(again, JournalEntryDecided).entry_id == entry.entry_id
        assert only(again, JournalEntryDecided).legs == entry.legs

    def test_duplicate_decline_replayed_without_outputs(self):
        order, request = processing()
        callback = answer(request, ChannelOutcome.declined)
        first = decide_channel_response(order, callback, NOW + 1)

        again = decide_channel_response(first.order, callback, NOW + 2)

        assert again == Decision(first.order, (), C.callback_replayed)

    def test_duplicate_mismatch_callback_replayed_without_entry(self):
        order, request = processing()
        callback = answer(request, amount=AMOUNT - 1)
        first = decide_channel_response(order, callback, NOW + 1)

        again = decide_channel_response(first.order, callback, NOW + 2)

        assert again == Decision(first.order, (), C.callback_replayed)

    def test_duplicate_callback_replays_identical_entry_after_later_activity(self):
        order, callback, entry = sold()
        order = decide_command(order, refund("rf-1", 100), None, NOW + 7).order

        again = decide_channel_response(order, callback, NOW + 8)

        assert only(again, JournalEntryDecided) == entry

    def test_unknown_request_ignored_and_noted(self):
        order, request = processing()
        stray = answer(request).model_copy(update={"request_id": "req_unknown"})

        d = decide_channel_response(order, stray, NOW + 1)

        assert d.status is C.callback_for_unknown_request
        assert d.order.status is S.processing
        assert d.outputs == ()
        assert len(d.order.history) == len(order.history) + 1
        assert "req_unknown" in d.order.history[-1].reason

    def test_callback_rejected_when_order_missing(self):
        _, request = processing()

        d = decide_channel_response(None, answer(request), NOW + 1)

        assert d == Decision(None, (), C.order_not_found)

    def test_capture_rejected_while_void_outstanding(self):
        voiding = decide_command(authorized(), void(), None, NOW + 2)

        d = decide_command(voiding.order, capture(AMOUNT, "c1"), None, NOW + 3)

        assert d.status is C.capture_not_allowed_in_status
        assert d.outputs == ()
        assert d.order is voiding.order

    def test_late_success_after_decline_keeps_failed_and_moves_no_money(self):
        order, request = processing()
        declined = decide_channel_response(order, answer(request, ChannelOutcome.declined),
                                           NOW + 1).order

        d = decide_channel_response(declined, answer(request), NOW + 2)

        assert d.order.status is S.failed
        assert of_type(d, JournalEntryDecided) == []
        assert d.order.captured_minor == 0

    def test_late_success_after_decline_recorded_in_history(self):
        order, request = processing()
        declined = decide_channel_response(order, answer(request, ChannelOutcome.declined),
                                           NOW + 1).order

        d = decide_channel_response(declined, answer(request), NOW + 2)

        assert d.status is C.callback_late
        assert len(d.order.history) == len(declined.history) + 1

    @pytest.mark.parametrize("first_amount,again_amount,again_currency", [
        (AMOUNT, AMOUNT - 1, CCY), (AMOUNT, AMOUNT, "USD"), (AMOUNT - 1, AMOUNT, CCY),
    ], ids=["other-amount", "other-currency", "correct-after-mismatch"])
    def test_repeat_with_other_money_recorded_as_late(self, first_amount, again_amount,
                                                      again_currency):
        order, request = processing()
        first = decide_channel_response(order, answer(request, amount=first_amount), NOW + 1)

        again = decide_channel_response(
            first.order, answer(request, amount=again_amount, currency=again_currency), NOW + 2)

        assert again.status is C.callback_late
        assert len(again.order.history) == len(first.order.history) + 1
        assert again.order.status is first.order.status

    def test_identical_repeat_replayed_when_first_reported_other_currency(self):
        order, request = processing()
        callback = answer(request, currency="USD")
        first = decide_channel_response(order, callback, NOW + 1)

        again = decide_channel_response(first.order, callback, NOW + 2)

        assert first.order.status is S.amount_mismatch
        assert again == Decision(first.order, (), C.callback_replayed)

    def test_capture_never_requested_once_void_sent(self):
        voiding = decide_command(authorized(), void(), None, NOW + 2)
        capturing = decide_command(voiding.order, capture(500, "c1"), None, NOW + 3)
        canceled = decide_channel_response(capturing.order, answer(only(voiding, ChannelRequested)),
                                           NOW + 4).order

        assert capturing.status is C.capture_not_allowed_in_status
        assert canceled.status is S.canceled
        assert canceled.captured_minor == 0


# ---------------------------------------------------------------- terminal states


def _terminal_orders() -> dict[str, Order]:
    order, request = processing()
    mismatch = decide_channel_response(order, answer(request, amount=1), NOW + 1).order
    voiding = decide_command(authorized(), void(), None, NOW + 2)
    canceled = decide_channel_response(voiding.order, answer(only(voiding, ChannelRequested)),
                                       NOW + 3).order
    fully_refunded = refunded(sold()[0], "rf-1", AMOUNT)[0]
    return {"failed": failed(), "canceled": canceled, "refunded": fully_refunded,
            "amount_mismatch": mismatch}


def _everything_for(order: Order) -> list:
    """Every command, every callback (both outcomes) and every hold answer we can make."""
    messages: list = [pay(), pay(amount=1), capture(None, "c9"), capture(1, "c8"), void("v9"),
                      refund("rf-1", AMOUNT), refund("rf-9", 1)]
    for request in order.requests:
        messages += [answer(request), answer(request, ChannelOutcome.declined)]
    for r in order.refunds:
        for placed in (True, False):
            messages.append(HoldResolved(hold_id=derive_id("hold", PID, r.refund_id),
                                         payment_id=PID, account_id=MERCHANT_ACCOUNT,
                                         placed=placed))
    return messages


def _decide_any(order: Order, message, now: int) -> Decision:
    if isinstance(message, ChannelResponded):
        return decide_channel_response(order, message, now)
    if isinstance(message, HoldResolved):
        return decide_hold_resolved(order, message, now)
    return decide_command(order, message, ROUTE, now)


class TestTerminal:
    @pytest.mark.parametrize("name", ["failed", "canceled", "refunded", "amount_mismatch"])
    def test_status_never_changes_when_terminal(self, name):
        order = _terminal_orders()[name]
        messages = _everything_for(order)

        seen, current = [], order
        for now, message in enumerate(messages, start=NOW + 100):
            d = _decide_any(current, message, now)
            current = d.order
            seen.append((d.order.status, of_type(d, PaymentStatusChanged)))

        assert order.status.value == name
        assert len(messages) >= 9
        assert all(status is order.status for status, _ in seen)
        assert all(events == [] for _, events in seen)
        assert (current.captured_minor, current.refunded_minor) == (order.captured_minor,
                                                                    order.refunded_minor)


# ---------------------------------------------------------------- money the channel reports


class TestReportedMoney:
    def test_capture_reported_with_other_amount_books_nothing(self):
        asked = decide_command(authorized(), capture(3_000, "c1"), None, NOW + 2)
        request = only(asked, ChannelRequested)

        d = decide_channel_response(asked.order, answer(request, amount=2_999), NOW + 3)

        assert d.status is C.callback_amount_mismatch
        assert of_type(d, JournalEntryDecided) == []
        assert d.order.captured_minor == 0
        assert d.order.capture_pending_minor == 3_000  # left for reconciliation
        assert "nothing booked" in d.order.history[-1].reason

    def test_refund_reported_in_other_currency_books_nothing(self):
        order, _hold, request = refund_sent(sold()[0], "rf-1", 1_000)

        d = decide_channel_response(order, answer(request, currency="GBP"), NOW + 20)

        assert d.status is C.callback_amount_mismatch
        assert d.outputs == ()
        assert d.order.refunded_minor == 0

    def test_capture_key_reused_with_other_amount_is_a_conflict(self):
        asked = decide_command(authorized(), capture(3_000, "c1"), None, NOW + 2)

        d = decide_command(asked.order, capture(4_000, "c1"), None, NOW + 3)

        assert d.status is C.capture_exists_with_different_amount
        assert d.order is asked.order


class TestVoidRetry:
    def test_void_retried_after_decline_with_a_new_request(self):
        first = decide_command(authorized(), void("v1"), None, NOW + 2)
        declined = decide_channel_response(
            first.order, answer(only(first, ChannelRequested), ChannelOutcome.declined), NOW + 3)

        again = decide_command(declined.order, void("v2"), None, NOW + 4)

        assert again.status is C.accepted
        assert only(again, ChannelRequested).request_id != only(first, ChannelRequested).request_id
