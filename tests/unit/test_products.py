"""Products on the order state machine, one class per product or command.

Balance payments and pre-authorizations, authorization expiry, callback timeouts and late
answers, a payer switching method, transfers, top-ups, withdrawals, revocation, refunds,
split payments and mandate collections.

Every decision goes through ``Flow``, which checks on each step that each journal entry
balances, that every status change is an allowed transition and that each transition emits
exactly one ``PaymentStatusChanged``. ``Books`` is an in-memory ledger built from
``domain.ledger``: it answers holds and applies every entry and release the order stage
emits, so each test also sees the money land (and the ledger invariants hold).
"""

from __future__ import annotations

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from books import Books

from decisions import leg_on, legs_by_account, of_type, only

from domain import accounts
from domain.commands import (
    Capture,
    CaptureMode,
    Method,
    Pay,
    Payer,
    Refund,
    Revoke,
    SignMandate,
    SplitShare,
    TopUp,
    Transfer,
    Void,
    Withdraw,
)
from domain.events import (
    ChannelOperation,
    ChannelOutcome,
    ChannelRequested,
    ChannelResponded,
    DeadlineReached,
    HoldReleaseRequested,
    HoldRequested,
    HoldResolved,
    JournalEntryDecided,
    MandateChecked,
    MandateCheckRequested,
    PaymentStatusChanged,
)
from domain.ledger import (
    PostingStatus,
    entry_balances,
)
from domain.mandates import Mandate, decide_mandate_check, decide_mandate_command
from domain.money import fee_minor
from domain.order_state import COMPENSATION_PREFIX
from domain.orders import (
    TRANSITIONS,
    CommandStatus,
    Decision,
    Order,
    OrderKind,
    OrderStatus,
    decide_channel_response,
    decide_command,
    decide_deadline,
    decide_hold_resolved,
    decide_mandate_checked,
)
from domain.postings import split_pro_rata
from domain.routing import LateSuccess, Route

# ---------------------------------------------------------------- terms of the tests

S = OrderStatus
C = CommandStatus
OK, DECLINED = ChannelOutcome.succeeded, ChannelOutcome.declined
NOW = 1_000
MERCHANT, ORDER_NO, CCY = "m-1", "order-1", "EUR"
PAYER, PAYEE = "p-1", "p-2"
AMOUNT = 10_000
CARD = Route(channel="acq", fee_bps=150, fee_fixed_minor=30, reason="card route",
             callback_timeout_ms=30_000, authorization_ttl_ms=86_400_000)
BANK = Route(channel="bankco", fee_bps=0, fee_fixed_minor=20, reason="bank route",
             callback_timeout_ms=60_000, late_success=LateSuccess.accept)
FEE = fee_minor(AMOUNT, CARD.fee_bps, CARD.fee_fixed_minor)  # 150 + 30
BANK_FEE = fee_minor(AMOUNT, BANK.fee_bps, BANK.fee_fixed_minor)  # 20
WALLET = accounts.customer_wallet(PAYER, CCY)
PAYEE_WALLET = accounts.customer_wallet(PAYEE, CCY)
MERCHANT_ACCOUNT = accounts.merchant_pending(MERCHANT, CCY)
CLEARING = accounts.channel_clearing(CARD.channel, CCY)
BANK_CLEARING = accounts.channel_clearing(BANK.channel, CCY)
FEES = accounts.fee_revenue(CCY)
SUSPENSE = accounts.suspense(CCY)
SEED = accounts.channel_clearing("seed", CCY)
"""Where test money comes from, so the books stay zero-sum."""
BALANCE_TTL_MS = 3_600_000


# ---------------------------------------------------------------- commands


def _order_fields(key: str) -> dict:
    return dict(merchant_id=MERCHANT, idempotency_key=key, merchant_order_no=ORDER_NO)


def pay(amount=AMOUNT, method=Method.card, capture=CaptureMode.auto, key="pay-1",
        **changes) -> Pay:
    if method is Method.balance:
        changes.setdefault("payer", Payer(account_id=PAYER))
    return Pay(**_order_fields(key), amount_minor=amount, currency=CCY, method=method,
               capture=capture, **changes)


def balance_pay(amount=AMOUNT, capture=CaptureMode.auto) -> Pay:
    return pay(amount, Method.balance, capture)


def capture(amount=None, key="cap-1") -> Capture:
    return Capture(**_order_fields(key), amount_minor=amount)


def void(key="void-1") -> Void:
    return Void(**_order_fields(key))


def refund(refund_id="rf-1", amount=1_000) -> Refund:
    return Refund(**_order_fields(f"key-{refund_id}"), refund_id=refund_id, amount_minor=amount)


def revoke(key="revoke-1") -> Revoke:
    return Revoke(**_order_fields(key))


def transfer(amount=AMOUNT, source=PAYER, destination=PAYEE) -> Transfer:
    return Transfer(**_order_fields("tr-1"), from_account_id=source, to_account_id=destination,
                    amount_minor=amount, currency=CCY)


def topup(amount=AMOUNT, method=Method.card) -> TopUp:
    return TopUp(**_order_fields("top-1"), account_id=PAYER, amount_minor=amount, currency=CCY,
                 method=method)


def withdraw(amount=AMOUNT) -> Withdraw:
    return Withdraw(**_order_fields("wd-1"), account_id=PAYER, amount_minor=amount,
                    currency=CCY)


# ---------------------------------------------------------------- checks on every step










def statuses(decision: Decision) -> list[str]:
    return [e.status for e in of_type(decision, PaymentStatusChanged)]


def _status_changes(before: Order | None, after: Order) -> list[tuple[str, str]]:
    """The status changes the order's history records for one decision."""
    earlier = before.history if before is not None else ()
    assert after.history[:len(earlier)] == earlier, "history is append-only"
    prior = earlier[-1].status.value if earlier else ""
    changes = []
    for item in after.history[len(earlier):]:
        if item.status.value != prior:
            changes.append((prior, item.status.value))
            prior = item.status.value
    return changes


def check_decision(before: Order | None, decision: Decision) -> None:
    """Money balances; statuses move along TRANSITIONS; one event per transition."""
    for entry in of_type(decision, JournalEntryDecided):
        assert entry_balances(entry), entry
    after = decision.order if decision.order is not None else before
    events = of_type(decision, PaymentStatusChanged)
    if after is None:
        assert events == []
        return
    moves = [(e.previous_status, e.status) for e in events if e.status != e.previous_status]
    assert moves == _status_changes(before, after), (moves, after.history)
    for previous, status in moves:
        allowed = previous == "" and status == S.created.value
        assert allowed or S(status) in TRANSITIONS[S(previous)], (previous, status)
    if moves:
        assert moves[-1][1] == after.status.value


class Flow:
    """One order driven through its decisions, each checked; a clock that ticks per step."""

    def __init__(self, now_ms: int = NOW) -> None:
        self.order: Order | None = None
        self.now_ms = now_ms
        self.books = Books(CCY, SEED)
        self.decisions: list[Decision] = []

    def _step(self, decide, now_ms: int | None) -> Decision:
        self.now_ms = self.now_ms + 1 if now_ms is None else now_ms
        before = self.order
        decision = decide(before, self.now_ms)
        check_decision(before, decision)
        self.books.take(decision.outputs)
        if decision.order is not None:
            self.order = decision.order
        self.decisions.append(decision)
        return decision

    def command(self, cmd, route: Route | None = None, now_ms=None, **options) -> Decision:
        return self._step(lambda o, now: decide_command(o, cmd, route, now, **options), now_ms)

    def answer(self, request: ChannelRequested, outcome=OK, amount=None, currency=None,
               decline_code="", serial="ch-1", now_ms=None) -> Decision:
        response = ChannelResponded(
            request_id=request.request_id, payment_id=request.payment_id,
            channel=request.channel, operation=request.operation, outcome=outcome,
            amount_minor=request.amount_minor if amount is None else amount,
            currency=request.currency if currency is None else currency,
            channel_serial=serial, decline_code=decline_code)
        return self._step(lambda o, now: decide_channel_response(o, response, now), now_ms)

    def hold(self, held: HoldRequested, refuse: str = "", now_ms=None) -> Decision:
        """The ledger's answer: the books decide, unless told to refuse."""
        status = PostingStatus.insufficient_funds if refuse else self.books.place(held)
        placed = status is PostingStatus.applied
        answer = HoldResolved(hold_id=held.hold_id, payment_id=held.payment_id,
                              account_id=held.account_id, placed=placed,
                              reason=refuse or ("" if placed else status.name))
        return self._step(lambda o, now: decide_hold_resolved(o, answer, now), now_ms)

    def mandate(self, check: MandateCheckRequested, mandate: Mandate | None) -> Decision:
        answer = only(decide_mandate_check(mandate, check, self.now_ms), MandateChecked)
        return self._step(lambda o, now: decide_mandate_checked(o, answer, now), None)

    def deadline(self, deadline_ms: int | None = None, now_ms=None) -> Decision:
        deadline_ms = self.order.deadline_ms if deadline_ms is None else deadline_ms
        now_ms = max(self.now_ms + 1, deadline_ms) if now_ms is None else now_ms
        reached = DeadlineReached(payment_id=self.order.payment_id, deadline_ms=deadline_ms)
        return self._step(lambda o, now: decide_deadline(o, reached, now), now_ms)


# ---------------------------------------------------------------- flows used by many tests


def card_processing(capture_mode=CaptureMode.auto, route=CARD) -> tuple[Flow, ChannelRequested]:
    flow = Flow()
    d = flow.command(pay(capture=capture_mode), route)
    return flow, only(d, ChannelRequested)


def card_sold(route=CARD) -> tuple[Flow, ChannelRequested]:
    flow, sale = card_processing(route=route)
    flow.answer(sale)
    return flow, sale


def card_authorized() -> Flow:
    flow, auth = card_processing(CaptureMode.manual)
    flow.answer(auth)
    return flow


def balance_started(capture_mode=CaptureMode.auto, funds=15_000, **options
                    ) -> tuple[Flow, HoldRequested]:
    flow = Flow()
    flow.books.fund(WALLET, funds)
    d = flow.command(balance_pay(capture=capture_mode), None, **options)
    return flow, only(d, HoldRequested)


def balance_authorized(funds=15_000) -> Flow:
    flow, held = balance_started(CaptureMode.manual, funds,
                                 balance_authorization_ttl_ms=BALANCE_TTL_MS)
    flow.hold(held)
    return flow


def two_attempts() -> tuple[Flow, ChannelRequested, ChannelRequested]:
    """The payer started on card, then switched to bank while the card sale was open."""
    flow, card_sale = card_processing()
    d = flow.command(pay(method=Method.bank, key="pay-2"), BANK)
    return flow, card_sale, only(d, ChannelRequested)


def revoking(flow: Flow) -> tuple[Decision, HoldRequested]:
    d = flow.command(revoke())
    return d, only(d, HoldRequested)


# ---------------------------------------------------------------- balance payments


class TestBalancePay:
    def test_pay_requests_hold_on_payer_wallet_when_method_balance(self):
        flow = Flow()

        d = flow.command(balance_pay(), None)

        assert d.status is C.accepted
        held = only(d, HoldRequested)
        assert (held.account_id, held.currency, held.amount_minor) == (WALLET, CCY, AMOUNT)
        assert statuses(d) == ["created", "processing"]
        assert (d.order.status, d.order.payer_hold) == (S.processing, "holding")
        assert of_type(d, ChannelRequested) == []

    def test_hold_placed_succeeds_with_entry_consuming_the_hold(self):
        flow, held = balance_started(funds=15_000)

        d = flow.hold(held)

        assert d.status is C.accepted
        assert (d.order.status, d.order.payer_hold) == (S.succeeded, "closed")
        entry = only(d, JournalEntryDecided)
        assert legs_by_account(entry) == {WALLET: -AMOUNT, MERCHANT_ACCOUNT: AMOUNT}
        debit = leg_on(entry, WALLET)
        assert (debit.hold_id, debit.hold_final) == (held.hold_id, True)
        assert of_type(d, ChannelRequested) == []  # internal: never on the wire
        assert (flow.books.total(WALLET), flow.books.frozen(WALLET)) == (5_000, 0)
        assert flow.books.total(MERCHANT_ACCOUNT) == AMOUNT

    def test_hold_refused_fails_without_entry(self):
        flow, held = balance_started(funds=AMOUNT - 1)

        d = flow.hold(held)

        assert (d.order.status, d.order.payer_hold) == (S.failed, "refused")
        assert of_type(d, JournalEntryDecided) == []
        assert "insufficient_funds" in only(d, PaymentStatusChanged).reason
        assert (flow.books.total(WALLET), flow.books.frozen(WALLET)) == (AMOUNT - 1, 0)

    def test_hold_answer_duplicate_when_redelivered_after_success(self):
        flow, held = balance_started()
        flow.hold(held)
        answer = HoldResolved(hold_id=held.hold_id, payment_id=held.payment_id,
                              account_id=WALLET, placed=True)

        d = decide_hold_resolved(flow.order, answer, flow.now_ms + 1)

        assert d == Decision(flow.order, (), C.duplicate)

    def test_pay_duplicate_without_outputs_when_same_balance_pay_again(self):
        flow, held = balance_started()
        flow.hold(held)

        d = flow.command(balance_pay(), None)

        assert d == Decision(flow.order, (), C.duplicate)


class TestBalancePreAuthorization:
    def test_hold_placed_authorizes_without_entry_when_manual(self):
        flow, held = balance_started(CaptureMode.manual,
                                     balance_authorization_ttl_ms=BALANCE_TTL_MS)

        d = flow.hold(held)

        assert (d.order.status, d.order.authorized_minor, d.order.captured_minor) == (
            S.authorized, AMOUNT, 0)
        assert d.order.deadline_ms == flow.now_ms + BALANCE_TTL_MS
        assert of_type(d, JournalEntryDecided) == []
        assert flow.books.frozen(WALLET) == AMOUNT

    def test_partial_capture_keeps_rest_of_hold_when_not_last(self):
        flow = balance_authorized(funds=15_000)

        d = flow.command(capture(4_000, "c1"))

        assert d.status is C.accepted
        assert (d.order.status, d.order.captured_minor) == (S.authorized, 4_000)
        entry = only(d, JournalEntryDecided)
        debit = leg_on(entry, WALLET)
        assert (debit.amount_minor, debit.hold_final) == (-4_000, False)
        assert (flow.books.total(WALLET), flow.books.frozen(WALLET)) == (11_000, 6_000)

    def test_last_capture_closes_hold_and_succeeds(self):
        flow = balance_authorized(funds=15_000)
        flow.command(capture(4_000, "c1"))

        d = flow.command(capture(None, "c2"))

        assert (d.order.status, d.order.captured_minor) == (S.succeeded, AMOUNT)
        assert (d.order.payer_hold, d.order.deadline_ms) == ("closed", 0)
        debit = leg_on(only(d, JournalEntryDecided), WALLET)
        assert (debit.amount_minor, debit.hold_final) == (-6_000, True)
        assert (flow.books.total(WALLET), flow.books.frozen(WALLET)) == (5_000, 0)
        assert flow.books.total(MERCHANT_ACCOUNT) == AMOUNT

    def test_void_releases_rest_of_hold_when_partially_captured(self):
        flow = balance_authorized(funds=15_000)
        flow.command(capture(3_000, "c1"))
        flow.command(capture(2_000, "c2"))

        d = flow.command(void())

        assert (d.order.status, d.order.captured_minor) == (S.succeeded, 5_000)
        release = only(d, HoldReleaseRequested)
        assert release.account_id == WALLET
        assert (flow.books.total(WALLET), flow.books.frozen(WALLET)) == (10_000, 0)

    def test_void_cancels_and_releases_hold_when_nothing_captured(self):
        flow = balance_authorized(funds=15_000)

        d = flow.command(void())

        assert d.order.status is S.canceled
        assert only(d, HoldReleaseRequested).account_id == WALLET
        assert (flow.books.total(WALLET), flow.books.frozen(WALLET)) == (15_000, 0)

    def test_replayed_capture_answer_repeats_the_original_entry_when_later_captures_done(self):
        flow = balance_authorized(funds=15_000)
        first = only(flow.command(capture(4_000, "c1")), JournalEntryDecided)
        flow.command(capture(None, "c2"))
        request = next(r for r in flow.order.requests if r.reference == "capture-c1")

        d = flow.answer(request)

        assert d.status is C.callback_replayed
        assert only(d, JournalEntryDecided) == first


# ---------------------------------------------------------------- deadlines


class TestAuthorizationExpiry:
    def test_deadline_requests_void_when_channel_authorization_expires(self):
        flow = card_authorized()
        authorized_at_ms, due_ms = flow.now_ms, flow.order.deadline_ms

        d = flow.deadline()

        assert due_ms == authorized_at_ms + CARD.authorization_ttl_ms
        assert d.status is C.accepted
        request = only(d, ChannelRequested)
        assert (request.operation, request.channel) == (ChannelOperation.void, CARD.channel)
        assert (d.order.status, d.order.deadline_ms) == (S.authorized, 0)

    def test_void_answer_cancels_when_expired_authorization_voided(self):
        flow = card_authorized()
        voiding = only(flow.deadline(), ChannelRequested)

        d = flow.answer(voiding)

        assert d.order.status is S.canceled
        assert of_type(d, JournalEntryDecided) == []

    def test_deadline_cancels_and_releases_hold_when_balance_authorization_expires(self):
        flow = balance_authorized(funds=15_000)

        d = flow.deadline()

        assert statuses(d) == ["canceled"]
        assert d.order.status is S.canceled
        release = only(d, HoldReleaseRequested)
        assert (release.account_id, release.payment_id) == (WALLET, d.order.payment_id)
        assert (flow.books.total(WALLET), flow.books.frozen(WALLET)) == (15_000, 0)

    @pytest.mark.parametrize("shift_deadline_ms,shift_now_ms", [(-1, 0), (1, 1), (0, -1)],
                             ids=["stale", "other-deadline", "early"])
    def test_deadline_not_due_changes_nothing_when_stale_or_early(self, shift_deadline_ms,
                                                                   shift_now_ms):
        flow = card_authorized()
        due_ms = flow.order.deadline_ms
        before = flow.order

        d = flow.deadline(due_ms + shift_deadline_ms, now_ms=due_ms + shift_now_ms)

        assert d == Decision(before, (), C.deadline_not_due)

    def test_deadline_not_due_when_order_has_none(self):
        flow, _ = card_sold()
        before = flow.order

        d = flow.deadline(deadline_ms=0, now_ms=flow.now_ms + 10**9)

        assert before.deadline_ms == 0
        assert d == Decision(before, (), C.deadline_not_due)

    def test_deadline_rejected_when_order_missing(self):
        reached = DeadlineReached(payment_id="pay_x", deadline_ms=5)

        d = decide_deadline(None, reached, 10)

        assert d == Decision(None, (), C.order_not_found)


class TestCallbackTimeout:
    def test_deadline_times_out_order_when_channel_silent(self):
        flow, _ = card_processing()
        sent_at_ms, due_ms = flow.now_ms, flow.order.deadline_ms

        d = flow.deadline()

        assert due_ms == sent_at_ms + CARD.callback_timeout_ms
        assert statuses(d) == ["timed_out"]
        assert (d.order.status, d.order.deadline_ms) == (S.timed_out, 0)
        assert of_type(d, ChannelRequested) == []

    def test_late_success_succeeds_with_capture_entry_when_rule_accept(self):
        flow, sale = card_processing(route=CARD.model_copy(
            update={"late_success": LateSuccess.accept}))
        flow.deadline()

        d = flow.answer(sale)

        assert d.status is C.accepted
        assert d.order.status is S.succeeded
        assert legs_by_account(only(d, JournalEntryDecided)) == {
            CLEARING: -AMOUNT, MERCHANT_ACCOUNT: AMOUNT - FEE, FEES: FEE}

    def test_late_success_parked_in_suspense_and_refunded_when_rule_refund(self):
        flow, sale = card_processing()
        flow.deadline()

        d = flow.answer(sale)

        assert d.status is C.late_success_refunding
        assert d.order.status is S.failed
        entry = only(d, JournalEntryDecided)
        assert legs_by_account(entry) == {CLEARING: -AMOUNT, SUSPENSE: AMOUNT}
        back = only(d, ChannelRequested)
        assert (back.operation, back.channel, back.amount_minor) == (
            ChannelOperation.refund, CARD.channel, AMOUNT)
        assert back.reference.startswith(COMPENSATION_PREFIX)
        assert back in d.order.requests
        assert flow.books.total(SUSPENSE) == AMOUNT

    def test_compensation_success_moves_suspense_back_to_clearing(self):
        flow, sale = card_processing()
        flow.deadline()
        back = only(flow.answer(sale), ChannelRequested)

        d = flow.answer(back)

        assert d.status is C.accepted
        assert d.order.status is S.failed
        entry = only(d, JournalEntryDecided)
        assert entry.reason == "parked_returned"
        assert legs_by_account(entry) == {SUSPENSE: -AMOUNT, CLEARING: AMOUNT}
        assert (flow.books.total(SUSPENSE), flow.books.total(CLEARING)) == (0, 0)

    def test_compensation_declined_left_for_ops_and_books_nothing(self):
        flow, sale = card_processing()
        flow.deadline()
        back = only(flow.answer(sale), ChannelRequested)

        d = flow.answer(back, DECLINED, decline_code="91")

        assert d.status is C.compensation_refund_declined
        assert d.outputs == ()
        assert flow.books.total(SUSPENSE) == AMOUNT

    def test_late_authorization_voided_without_entry_when_rule_refund(self):
        flow, auth = card_processing(CaptureMode.manual)
        flow.deadline()

        d = flow.answer(auth)

        assert d.order.status is S.failed
        back = only(d, ChannelRequested)
        assert back.operation is ChannelOperation.void
        assert back.reference.startswith(COMPENSATION_PREFIX)
        assert of_type(d, JournalEntryDecided) == []

    def test_late_decline_fails_when_timed_out(self):
        flow, sale = card_processing()
        flow.deadline()

        d = flow.answer(sale, DECLINED, decline_code="05")

        assert statuses(d) == ["failed"]
        assert d.order.status is S.failed
        assert of_type(d, JournalEntryDecided) == []


# ---------------------------------------------------------------- payer switches method


class TestPayerSwitchesMethod:
    def test_second_pay_sends_second_sale_when_other_method_while_processing(self):
        flow, card_sale = card_processing()

        d = flow.command(pay(method=Method.bank, key="pay-2"), BANK)

        assert d.status is C.accepted
        request = only(d, ChannelRequested)
        assert (request.operation, request.channel) == (ChannelOperation.sale, BANK.channel)
        assert (request.amount_minor, request.reference) == (AMOUNT, "attempt-1")
        assert request.request_id != card_sale.request_id
        assert d.order.status is S.processing
        assert d.order.deadline_ms == flow.now_ms + BANK.callback_timeout_ms
        assert statuses(d) == []

    def test_order_stays_processing_when_first_declines_while_second_open(self):
        flow, card_sale, _ = two_attempts()

        d = flow.answer(card_sale, DECLINED, decline_code="51")

        assert d.status is C.accepted
        assert d.order.status is S.processing
        assert d.outputs == ()

    def test_order_fails_when_both_attempts_declined(self):
        flow, card_sale, bank_sale = two_attempts()
        flow.answer(card_sale, DECLINED)

        d = flow.answer(bank_sale, DECLINED, decline_code="R01")

        assert statuses(d) == ["failed"]
        assert "R01" in only(d, PaymentStatusChanged).reason

    def test_second_attempt_pays_with_its_own_clearing_and_fee_when_first_declined(self):
        flow, card_sale, bank_sale = two_attempts()
        flow.answer(card_sale, DECLINED)

        d = flow.answer(bank_sale, serial="bk-7")

        assert (d.order.status, d.order.paid_via, d.order.channel_serial) == (
            S.succeeded, BANK.channel, "bk-7")
        assert legs_by_account(only(d, JournalEntryDecided)) == {
            BANK_CLEARING: -AMOUNT, MERCHANT_ACCOUNT: AMOUNT - BANK_FEE, FEES: BANK_FEE}

    def test_second_success_parked_and_refunded_when_both_attempts_succeed(self):
        flow, card_sale, bank_sale = two_attempts()
        flow.answer(card_sale)

        d = flow.answer(bank_sale)

        assert d.status is C.duplicate_payment_refunding
        assert (d.order.status, d.order.paid_via, d.order.captured_minor) == (
            S.succeeded, CARD.channel, AMOUNT)
        assert legs_by_account(only(d, JournalEntryDecided)) == {BANK_CLEARING: -AMOUNT,
                                                                 SUSPENSE: AMOUNT}
        back = only(d, ChannelRequested)
        assert (back.operation, back.channel) == (ChannelOperation.refund, BANK.channel)
        assert back.reference == COMPENSATION_PREFIX + bank_sale.request_id
        assert only(d, PaymentStatusChanged).status == "succeeded"  # the merchant is told

    def test_refund_goes_to_the_channel_that_paid_when_second_attempt_paid(self):
        flow, card_sale, bank_sale = two_attempts()
        flow.answer(card_sale, DECLINED)
        flow.answer(bank_sale)
        held = only(flow.command(refund("rf-1", 1_000)), HoldRequested)

        d = flow.hold(held)

        assert only(d, ChannelRequested).channel == BANK.channel

    def test_second_pay_rejected_order_already_paid_when_succeeded(self):
        flow, _ = card_sold()

        d = flow.command(pay(method=Method.bank, key="pay-2"), BANK)

        assert d == Decision(flow.order, (), C.order_already_paid)

    def test_second_pay_rejected_order_already_final_when_failed(self):
        flow, card_sale = card_processing()
        flow.answer(card_sale, DECLINED)

        d = flow.command(pay(method=Method.bank, key="pay-2"), BANK)

        assert d == Decision(flow.order, (), C.order_already_final)

    def test_second_pay_rejected_no_route_when_none_for_new_method(self):
        flow, _ = card_processing()

        d = flow.command(pay(method=Method.bank, key="pay-2"), None)

        assert d == Decision(flow.order, (), C.no_route)

    def test_second_pay_conflict_when_other_money(self):
        flow, _ = card_processing()

        d = flow.command(pay(AMOUNT + 1, method=Method.bank, key="pay-2"), BANK)

        assert d == Decision(flow.order, (), C.order_exists_with_different_payload)

    def test_timed_out_order_waits_for_open_attempt_when_one_declines_late(self):
        flow, card_sale, bank_sale = two_attempts()
        flow.deadline()
        flow.answer(card_sale, DECLINED)

        d = flow.answer(bank_sale)

        assert d.status is C.accepted
        assert (d.order.status, d.order.paid_via) == (S.succeeded, BANK.channel)
        assert legs_by_account(only(d, JournalEntryDecided))[BANK_CLEARING] == -AMOUNT


# ---------------------------------------------------------------- transfers, top-ups, payouts


class TestTransfer:
    def test_transfer_freezes_source_wallet_first(self):
        flow = Flow()

        d = flow.command(transfer())

        assert d.status is C.accepted
        held = only(d, HoldRequested)
        assert (held.account_id, held.amount_minor) == (WALLET, AMOUNT)
        assert (d.order.kind, d.order.status) == (OrderKind.transfer, S.processing)
        assert of_type(d, ChannelRequested) == []

    def test_transfer_moves_money_from_source_to_destination_when_hold_placed(self):
        flow = Flow()
        flow.books.fund(WALLET, 12_000)
        held = only(flow.command(transfer()), HoldRequested)

        d = flow.hold(held)

        assert d.order.status is S.succeeded
        entry = only(d, JournalEntryDecided)
        assert legs_by_account(entry) == {WALLET: -AMOUNT, PAYEE_WALLET: AMOUNT}
        assert leg_on(entry, WALLET).hold_id == held.hold_id
        assert (flow.books.total(WALLET), flow.books.total(PAYEE_WALLET)) == (2_000, AMOUNT)

    def test_transfer_fails_without_entry_when_hold_refused(self):
        flow = Flow()
        held = only(flow.command(transfer()), HoldRequested)

        d = flow.hold(held)

        assert d.order.status is S.failed
        assert of_type(d, JournalEntryDecided) == []
        assert flow.books.total(PAYEE_WALLET) == 0

    def test_transfer_refused_by_validation_when_same_account(self):
        with pytest.raises(pydantic.ValidationError, match="to_account_id"):
            transfer(source=PAYER, destination=PAYER)

    @pytest.mark.parametrize("follow_up", [capture(), void(), refund(), revoke()],
                             ids=["capture", "void", "refund", "revoke"])
    def test_follow_up_rejected_command_not_allowed_for_kind_when_transfer(self, follow_up):
        flow = Flow()
        flow.books.fund(WALLET, AMOUNT)
        flow.hold(only(flow.command(transfer()), HoldRequested))

        d = flow.command(follow_up)

        assert d == Decision(flow.order, (), C.command_not_allowed_for_kind)


class TestTopUp:
    def test_topup_requests_sale_on_channel_without_hold(self):
        flow = Flow()

        d = flow.command(topup(), CARD)

        request = only(d, ChannelRequested)
        assert (request.operation, request.channel) == (ChannelOperation.sale, CARD.channel)
        assert of_type(d, HoldRequested) == []
        assert (d.order.kind, d.order.status) == (OrderKind.topup, S.processing)

    def test_topup_credits_wallet_net_of_fee_when_channel_succeeds(self):
        flow = Flow()
        sale = only(flow.command(topup(), CARD), ChannelRequested)

        d = flow.answer(sale)

        assert d.order.status is S.succeeded
        assert legs_by_account(only(d, JournalEntryDecided)) == {
            CLEARING: -AMOUNT, WALLET: AMOUNT - FEE, FEES: FEE}
        assert flow.books.total(WALLET) == AMOUNT - FEE

    def test_topup_fails_without_entry_when_declined(self):
        flow = Flow()
        sale = only(flow.command(topup(), CARD), ChannelRequested)

        d = flow.answer(sale, DECLINED)

        assert d.order.status is S.failed
        assert of_type(d, JournalEntryDecided) == []

    def test_topup_refused_by_validation_when_method_is_not_a_channel(self):
        with pytest.raises(pydantic.ValidationError, match="method"):
            topup(method=Method.balance)


class TestWithdrawal:
    def test_withdrawal_freezes_wallet_before_any_payout_request(self):
        flow = Flow()

        d = flow.command(withdraw(), BANK)

        held = only(d, HoldRequested)
        assert (held.account_id, held.amount_minor) == (WALLET, AMOUNT)
        assert of_type(d, ChannelRequested) == []
        assert (d.order.kind, d.order.status, d.order.deadline_ms) == (
            OrderKind.withdrawal, S.processing, 0)

    def test_payout_requested_when_hold_placed(self):
        flow = Flow()
        flow.books.fund(WALLET, 12_000)
        held = only(flow.command(withdraw(), BANK), HoldRequested)

        d = flow.hold(held)

        request = only(d, ChannelRequested)
        assert (request.operation, request.channel, request.amount_minor) == (
            ChannelOperation.payout, BANK.channel, AMOUNT)
        assert d.order.deadline_ms == flow.now_ms + BANK.callback_timeout_ms
        assert flow.books.frozen(WALLET) == AMOUNT

    def test_no_payout_when_hold_refused(self):
        flow = Flow()
        held = only(flow.command(withdraw(), BANK), HoldRequested)

        d = flow.hold(held)

        assert d.order.status is S.failed
        assert of_type(d, ChannelRequested) == []

    def test_payout_success_debits_wallet_into_clearing(self):
        flow, payout = self._payout_sent()

        d = flow.answer(payout)

        assert d.order.status is S.succeeded
        entry = only(d, JournalEntryDecided)
        assert legs_by_account(entry) == {WALLET: -AMOUNT, BANK_CLEARING: AMOUNT}
        assert leg_on(entry, WALLET).hold_final is True
        assert (flow.books.total(WALLET), flow.books.frozen(WALLET)) == (2_000, 0)

    def test_payout_decline_releases_hold_and_fails(self):
        flow, payout = self._payout_sent()

        d = flow.answer(payout, DECLINED, decline_code="AC04")

        assert d.order.status is S.failed
        release = only(d, HoldReleaseRequested)
        assert release.account_id == WALLET
        assert of_type(d, JournalEntryDecided) == []
        assert (flow.books.total(WALLET), flow.books.frozen(WALLET)) == (12_000, 0)

    def test_payout_timeout_keeps_the_hold(self):
        flow, _ = self._payout_sent()

        d = flow.deadline()

        assert d.order.status is S.timed_out
        assert of_type(d, HoldReleaseRequested) == []
        assert flow.books.frozen(WALLET) == AMOUNT

    def test_late_payout_success_booked_even_when_rule_refund(self):
        flow, payout = self._payout_sent(BANK.model_copy(
            update={"late_success": LateSuccess.refund}))
        flow.deadline()

        d = flow.answer(payout)

        assert d.order.status is S.succeeded
        assert legs_by_account(only(d, JournalEntryDecided)) == {WALLET: -AMOUNT,
                                                                 BANK_CLEARING: AMOUNT}

    @staticmethod
    def _payout_sent(route=BANK) -> tuple[Flow, ChannelRequested]:
        flow = Flow()
        flow.books.fund(WALLET, 12_000)
        held = only(flow.command(withdraw(), route), HoldRequested)
        return flow, only(flow.hold(held), ChannelRequested)


# ---------------------------------------------------------------- revocation


class TestRevoke:
    def test_revoke_requests_void_when_authorized(self):
        flow = card_authorized()

        d = flow.command(revoke())

        assert d.status is C.accepted
        assert only(d, ChannelRequested).operation is ChannelOperation.void
        assert d.order.status is S.authorized

    def test_revoke_cancels_when_void_answered(self):
        flow = card_authorized()
        voiding = only(flow.command(revoke()), ChannelRequested)

        d = flow.answer(voiding)

        assert d.order.status is S.canceled

    def test_revoke_freezes_merchant_net_when_succeeded(self):
        flow, _ = card_sold()

        d, held = revoking(flow)

        assert d.status is C.accepted
        assert (held.account_id, held.amount_minor) == (MERCHANT_ACCOUNT, AMOUNT - FEE)
        assert (d.order.status, d.order.revocation) == (S.succeeded, "holding")
        assert of_type(d, PaymentStatusChanged) == []

    def test_revoke_sends_reverse_when_merchant_hold_placed(self):
        flow, _ = card_sold()
        _, held = revoking(flow)

        d = flow.hold(held)

        request = only(d, ChannelRequested)
        assert (request.operation, request.amount_minor) == (ChannelOperation.reverse, AMOUNT)
        assert d.order.revocation == "processing"

    def test_reverse_success_cancels_and_returns_amount_with_fee(self):
        flow, _ = card_sold()
        _, held = revoking(flow)
        reverse = only(flow.hold(held), ChannelRequested)

        d = flow.answer(reverse)

        assert (d.order.status, d.order.revocation) == (S.canceled, "succeeded")
        entry = only(d, JournalEntryDecided)
        assert legs_by_account(entry) == {MERCHANT_ACCOUNT: -(AMOUNT - FEE), CLEARING: AMOUNT,
                                          FEES: -FEE}
        assert leg_on(entry, MERCHANT_ACCOUNT).hold_id == held.hold_id
        assert [flow.books.total(a) for a in (MERCHANT_ACCOUNT, CLEARING, FEES)] == [0, 0, 0]

    def test_revocation_fails_when_merchant_hold_refused(self):
        flow, _ = card_sold()
        _, held = revoking(flow)

        d = flow.hold(held, refuse="insufficient_funds")

        assert (d.order.status, d.order.revocation) == (S.succeeded, "failed")
        assert of_type(d, ChannelRequested) == []
        assert "insufficient_funds" in only(d, PaymentStatusChanged).reason

    def test_revocation_fails_and_releases_hold_when_reverse_declined(self):
        flow, _ = card_sold()
        _, held = revoking(flow)
        reverse = only(flow.hold(held), ChannelRequested)

        d = flow.answer(reverse, DECLINED, decline_code="settled")

        assert (d.order.status, d.order.revocation) == (S.succeeded, "failed")
        assert only(d, HoldReleaseRequested).hold_id == held.hold_id
        assert of_type(d, JournalEntryDecided) == []
        assert flow.books.frozen(MERCHANT_ACCOUNT) == 0

    def test_revoke_rejected_in_status_when_revocation_failed(self):
        flow, _ = card_sold()
        _, held = revoking(flow)
        flow.hold(held, refuse="insufficient_funds")

        d = flow.command(revoke("revoke-2"))

        assert d == Decision(flow.order, (), C.revoke_not_allowed_in_status)

    def test_revoke_duplicate_when_in_flight(self):
        flow, _ = card_sold()
        revoking(flow)

        d = flow.command(revoke("revoke-2"))

        assert d == Decision(flow.order, (), C.duplicate)

    def test_refund_rejected_while_revocation_in_flight(self):
        flow, _ = card_sold()
        revoking(flow)

        d = flow.command(refund())

        assert d == Decision(flow.order, (), C.refund_not_allowed_in_status)

    def test_revoke_rejected_for_split(self):
        flow = Flow()
        split = (SplitShare(merchant_id=MERCHANT, amount_minor=6_000),
                 SplitShare(merchant_id="m-2", amount_minor=4_000))
        flow.answer(only(flow.command(pay(split=split), CARD), ChannelRequested))

        d = flow.command(revoke())

        assert d == Decision(flow.order, (), C.revoke_not_allowed_for_split)

    def test_revoke_rejected_in_status_after_a_refund(self):
        flow, _ = card_sold()
        flow.command(refund("rf-1", 1_000))

        d = flow.command(revoke())

        assert d == Decision(flow.order, (), C.revoke_not_allowed_in_status)

    def test_revoke_of_balance_payment_returns_money_to_wallet(self):
        flow, held = balance_started(funds=15_000)
        flow.hold(held)
        _, merchant_hold = revoking(flow)

        d = flow.hold(merchant_hold)

        assert d.order.status is S.canceled
        assert legs_by_account(only(d, JournalEntryDecided)) == {MERCHANT_ACCOUNT: -AMOUNT,
                                                                 WALLET: AMOUNT}
        assert (flow.books.total(WALLET), flow.books.total(MERCHANT_ACCOUNT)) == (15_000, 0)

    def test_revoke_takes_back_only_the_paying_fee_when_duplicate_was_sent_back(self):
        flow, card_sale, bank_sale = two_attempts()
        flow.answer(card_sale)
        flow.answer(only(flow.answer(bank_sale), ChannelRequested))  # duplicate sent back
        _, held = revoking(flow)
        reverse = only(flow.hold(held), ChannelRequested)

        d = flow.answer(reverse)

        assert held.amount_minor == AMOUNT - FEE
        assert legs_by_account(only(d, JournalEntryDecided)) == {
            MERCHANT_ACCOUNT: -(AMOUNT - FEE), CLEARING: AMOUNT, FEES: -FEE}
        accounts_touched = (MERCHANT_ACCOUNT, FEES, CLEARING, BANK_CLEARING, SUSPENSE)
        assert [flow.books.total(a) for a in accounts_touched] == [0, 0, 0, 0, 0]


# ---------------------------------------------------------------- refunds and splits


class TestRefunds:
    def test_second_concurrent_refund_refused_when_sum_exceeds_captured(self):
        flow, _ = card_sold()
        first = flow.command(refund("rf-1", 6_000))

        second = flow.command(refund("rf-2", 4_001))

        assert first.status is C.accepted
        assert second == Decision(first.order, (), C.refund_exceeds_captured)

    def test_both_refunds_book_when_sum_fits(self):
        flow, _ = card_sold()
        flow.books.fund(MERCHANT_ACCOUNT, 1_000)  # the net alone cannot cover the fee part
        holds = [only(flow.command(refund(rid, amt)), HoldRequested)
                 for rid, amt in (("rf-1", 6_000), ("rf-2", 4_000))]
        sent = [only(flow.hold(h), ChannelRequested) for h in holds]

        answers = [flow.answer(request) for request in sent]

        assert [a.order.status for a in answers] == [S.partially_refunded, S.refunded]
        assert flow.order.refunded_minor == AMOUNT
        assert flow.books.total(MERCHANT_ACCOUNT) == 1_000 - FEE  # the fee is not given back

    def test_refund_of_balance_payment_credits_the_wallet(self):
        flow, held = balance_started(funds=15_000)
        flow.hold(held)
        refund_hold = only(flow.command(refund("rf-1", 2_500)), HoldRequested)

        d = flow.hold(refund_hold)

        assert d.order.status is S.partially_refunded
        assert legs_by_account(only(d, JournalEntryDecided)) == {MERCHANT_ACCOUNT: -2_500,
                                                                 WALLET: 2_500}
        assert flow.books.total(WALLET) == 7_500


class TestSplitPayment:
    SHARES = (SplitShare(merchant_id=MERCHANT, amount_minor=6_000),
              SplitShare(merchant_id="m-2", amount_minor=3_000),
              SplitShare(merchant_id="m-3", amount_minor=1_000))

    def test_capture_credits_each_merchant_pro_rata_net_of_fee(self):
        flow = Flow()
        sale = only(flow.command(pay(split=self.SHARES), CARD), ChannelRequested)

        d = flow.answer(sale)

        legs = legs_by_account(only(d, JournalEntryDecided))
        credits = [legs[accounts.merchant_pending(s.merchant_id, CCY)] for s in self.SHARES]
        assert sum(credits) == AMOUNT - FEE
        exact = [(AMOUNT - FEE) * s.amount_minor / AMOUNT for s in self.SHARES]
        assert all(abs(c - e) < 1 for c, e in zip(credits, exact, strict=True))
        assert (legs[CLEARING], legs[FEES]) == (-AMOUNT, FEE)

    def test_partial_captures_credit_merchants_pro_rata(self):
        flow = Flow()
        flow.answer(only(flow.command(pay(split=self.SHARES, capture=CaptureMode.manual), CARD),
                         ChannelRequested))

        d = flow.command(capture(5_000, "c1"))
        booked = flow.answer(only(d, ChannelRequested))

        legs = legs_by_account(only(booked, JournalEntryDecided))
        fee = fee_minor(5_000, CARD.fee_bps, CARD.fee_fixed_minor)
        credits = [legs[accounts.merchant_pending(s.merchant_id, CCY)] for s in self.SHARES]
        assert sum(credits) == 5_000 - fee

    def test_no_merchant_credit_is_negative_when_fee_takes_nearly_all(self):
        flow = Flow()
        shares = (SplitShare(merchant_id=MERCHANT, amount_minor=10),
                  SplitShare(merchant_id="m-2", amount_minor=10),
                  SplitShare(merchant_id="m-3", amount_minor=11))
        route = Route(channel="acq", fee_bps=0, fee_fixed_minor=30, reason="fixed fee")
        sale = only(flow.command(pay(31, split=shares), route), ChannelRequested)

        d = flow.answer(sale)

        legs = legs_by_account(only(d, JournalEntryDecided))
        assert all(amount > 0 for account, amount in legs.items()
                   if account.startswith("merchant:"))
        assert legs[FEES] == 30

    def test_split_refund_borne_by_merchant_of_record(self):
        flow = Flow()
        flow.answer(only(flow.command(pay(split=self.SHARES), CARD), ChannelRequested))

        d = flow.command(refund("rf-1", 1_000))

        assert only(d, HoldRequested).account_id == MERCHANT_ACCOUNT


def _split_of(share_max: int):
    return st.lists(st.integers(min_value=1, max_value=share_max), min_size=1,
                    max_size=10).map(lambda amounts: tuple(
                        SplitShare(merchant_id=f"m-{i}", amount_minor=a)
                        for i, a in enumerate(amounts)))


_shares = _split_of(10**6)
_small_shares = _split_of(60)
"""Small amounts, where a fixed fee takes most of the money and rounding matters most."""


class TestSplitProRata:
    @settings(max_examples=300, deadline=None, database=None)
    @given(amount_minor=st.integers(min_value=0, max_value=10**13), shares=_shares)
    def test_parts_sum_exactly_and_stay_within_one_of_exact_proportion(self, amount_minor,
                                                                       shares):
        total = sum(s.amount_minor for s in shares)

        parts = split_pro_rata(amount_minor, shares)

        assert len(parts) == len(shares)
        assert sum(parts) == amount_minor
        for part, share in zip(parts, shares, strict=True):
            assert part >= 0
            assert abs(part * total - amount_minor * share.amount_minor) < total

    @settings(max_examples=100, deadline=None, database=None)
    @given(shares=_shares)
    def test_parts_all_zero_when_amount_zero(self, shares):
        parts = split_pro_rata(0, shares)

        assert parts == [0] * len(shares)

    @settings(max_examples=150, deadline=None, database=None)
    @given(shares=_small_shares, fee_bps=st.integers(min_value=0, max_value=10_000),
           fee_fixed_minor=st.integers(min_value=0, max_value=300))
    def test_split_capture_credits_are_never_negative_and_sum_to_net(self, shares, fee_bps,
                                                                     fee_fixed_minor):
        amount = sum(s.amount_minor for s in shares)
        route = Route(channel="acq", fee_bps=fee_bps, fee_fixed_minor=fee_fixed_minor,
                      reason="any fee")
        flow = Flow()
        sale = only(flow.command(pay(amount, split=shares), route), ChannelRequested)

        d = flow.answer(sale)

        legs = legs_by_account(only(d, JournalEntryDecided))
        fee = fee_minor(amount, fee_bps, fee_fixed_minor)
        credits = [v for k, v in legs.items() if k.startswith("merchant:")]
        assert all(c > 0 for c in credits)
        assert sum(credits) == amount - fee


# ---------------------------------------------------------------- mandate collections


def signed_mandate(amount_minor_max=AMOUNT) -> Mandate:
    sign = SignMandate(merchant_id=MERCHANT, idempotency_key="sign-1", mandate_id="mdt-1",
                       payer_account_id=PAYER, currency=CCY, amount_minor_max=amount_minor_max)
    return decide_mandate_command(None, sign, NOW - 100).mandate


class TestMandatePay:
    def test_mandate_pay_asks_the_mandate_first(self):
        flow = Flow()

        d = flow.command(pay(method=Method.mandate, mandate_id="mdt-1"), BANK)

        check = only(d, MandateCheckRequested)
        assert (check.mandate_key, check.amount_minor, check.currency) == (
            signed_mandate().mandate_key, AMOUNT, CCY)
        assert d.order.status is S.created
        assert of_type(d, ChannelRequested) == []

    def test_mandate_allowed_starts_collection_on_channel(self):
        flow = Flow()
        check = only(flow.command(pay(method=Method.mandate, mandate_id="mdt-1"), BANK),
                     MandateCheckRequested)

        d = flow.mandate(check, signed_mandate())

        assert d.status is C.accepted
        request = only(d, ChannelRequested)
        assert (request.operation, request.channel) == (ChannelOperation.sale, BANK.channel)
        assert (d.order.status, d.order.payer_account_id) == (S.processing, PAYER)
        assert d.order.deadline_ms == flow.now_ms + BANK.callback_timeout_ms

    @pytest.mark.parametrize("mandate", [None, signed_mandate(AMOUNT - 1)],
                             ids=["unknown", "over-limit"])
    def test_mandate_refused_fails_order(self, mandate):
        flow = Flow()
        check = only(flow.command(pay(method=Method.mandate, mandate_id="mdt-1"), BANK),
                     MandateCheckRequested)

        d = flow.mandate(check, mandate)

        assert statuses(d) == ["failed"]
        assert of_type(d, ChannelRequested) == []

    def test_mandate_answer_duplicate_when_repeated(self):
        flow = Flow()
        check = only(flow.command(pay(method=Method.mandate, mandate_id="mdt-1"), BANK),
                     MandateCheckRequested)
        flow.mandate(check, signed_mandate())

        d = flow.mandate(check, signed_mandate())

        assert d.status is C.duplicate
        assert d.outputs == ()

    def test_mandate_answer_unexpected_when_order_not_by_mandate(self):
        flow, _ = card_processing()
        check = MandateCheckRequested(payment_id=flow.order.payment_id,
                                      mandate_key=signed_mandate().mandate_key,
                                      merchant_id=MERCHANT, mandate_id="mdt-1",
                                      amount_minor=AMOUNT, currency=CCY)

        d = flow.mandate(check, signed_mandate())

        assert d.status is C.mandate_answer_unexpected

    def test_mandate_pay_refused_by_validation_when_manual_capture(self):
        with pytest.raises(pydantic.ValidationError, match="capture"):
            pay(method=Method.mandate, mandate_id="mdt-1", capture=CaptureMode.manual)


# ---------------------------------------------------------------- the checks themselves


class TestStepChecks:
    def test_every_decision_in_a_long_run_was_checked(self):
        flow, card_sale, bank_sale = two_attempts()
        flow.answer(card_sale)
        flow.answer(bank_sale)
        flow.answer(only(flow.decisions[-1], ChannelRequested))
        held = only(flow.command(refund("rf-1", 2_000)), HoldRequested)

        flow.answer(only(flow.hold(held), ChannelRequested))

        assert flow.order.status is S.partially_refunded
        assert len(flow.decisions) == 8
        assert flow.books.total(SUSPENSE) == 0

    def test_check_refuses_two_events_for_one_transition(self):
        flow, sale = card_processing()
        d = decide_channel_response(flow.order, ChannelResponded(
            request_id=sale.request_id, payment_id=sale.payment_id, channel=sale.channel,
            operation=sale.operation, outcome=OK, amount_minor=AMOUNT, currency=CCY,
            channel_serial="ch-1"), NOW + 5)
        doubled = d._replace(outputs=d.outputs + (only(d, PaymentStatusChanged),))

        with pytest.raises(AssertionError):
            check_decision(flow.order, doubled)

    def test_check_refuses_a_move_outside_the_table(self):
        flow, _ = card_sold()
        backwards = flow.order.model_copy(update={"status": S.processing})
        event = only(flow.decisions[-1], PaymentStatusChanged).model_copy(
            update={"previous_status": "succeeded", "status": "processing"})
        moved = backwards.model_copy(update={"history": backwards.history + (
            backwards.history[-1].model_copy(update={"status": S.processing}),)})

        with pytest.raises(AssertionError):
            check_decision(flow.order, Decision(moved, (event,), C.accepted))
