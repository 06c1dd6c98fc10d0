"""Settlement: the channel's settlement line moves each merchant's part of a payment from its
pending account to its settled account, frozen first (one hold per merchant), then moved in
one entry once every part is frozen; refunds afterwards come from the settled account.

One class per situation. Every decision goes through ``Flow``, which checks on each step
that every journal entry balances and applies the entries and releases to ``Books``, an
in-memory ledger built on ``domain.ledger`` that places the holds the tests answer and
checks every account against its limit after each step.
"""

from __future__ import annotations

import pytest

from books import Books

from decisions import leg_on, legs_by_account, of_type, only

from domain import accounts
from domain.commands import (
    Capture,
    CaptureMode,
    Method,
    Pay,
    Refund,
    Revoke,
    SplitShare,
    TopUp,
)
from domain.events import (
    ChannelOutcome,
    ChannelRequested,
    ChannelResponded,
    HoldReleaseRequested,
    HoldRequested,
    HoldResolved,
    JournalEntryDecided,
    PaymentStatusChanged,
    SettlementReported,
)
from domain.ids import payment_id_for
from domain.ledger import (
    PostingStatus,
    entry_balances,
)
from domain.money import fee_minor
from domain.order_state import SETTLE_HOLD_PREFIX, hold_id_for
from domain.orders import (
    CommandStatus,
    Decision,
    Order,
    OrderStatus,
    decide_channel_response,
    decide_command,
    decide_hold_resolved,
    decide_settlement,
)
from domain.routing import Route

# ---------------------------------------------------------------- terms of the tests

S = OrderStatus
C = CommandStatus
OK, DECLINED = ChannelOutcome.succeeded, ChannelOutcome.declined
NOW = 1_000
MERCHANT, ORDER_NO, CCY = "m-1", "order-1", "EUR"
PID = payment_id_for(MERCHANT, ORDER_NO)
AMOUNT = 10_000
CARD = Route(channel="acq", fee_bps=150, fee_fixed_minor=30, reason="card route")
FEE = fee_minor(AMOUNT, CARD.fee_bps, CARD.fee_fixed_minor)  # 150 + 30
NET = AMOUNT - FEE
CLEARING = accounts.channel_clearing(CARD.channel, CCY)
SEED = accounts.channel_clearing("seed", CCY)
"""Where test money comes from, so the books stay zero-sum."""
SETTLED_ON = "2026-11-21"


def pending(merchant_id: str = MERCHANT) -> str:
    return accounts.merchant_pending(merchant_id, CCY)


def settled(merchant_id: str = MERCHANT) -> str:
    return accounts.merchant_settled(merchant_id, CCY)


def settle_hold_id(merchant_id: str = MERCHANT) -> str:
    return hold_id_for(PID, SETTLE_HOLD_PREFIX + merchant_id)


def shares(*parts: tuple[str, int]) -> tuple[SplitShare, ...]:
    return tuple(SplitShare(merchant_id=m, amount_minor=a) for m, a in parts)


# ---------------------------------------------------------------- messages


def _order_fields(key: str) -> dict:
    return dict(merchant_id=MERCHANT, idempotency_key=key, merchant_order_no=ORDER_NO)


def pay(amount=AMOUNT, capture=CaptureMode.auto, **changes) -> Pay:
    return Pay(**_order_fields("pay-1"), amount_minor=amount, currency=CCY, method=Method.card,
               capture=capture, **changes)


def refund(refund_id="rf-1", amount=1_000) -> Refund:
    return Refund(**_order_fields(f"key-{refund_id}"), refund_id=refund_id, amount_minor=amount)


def capture(amount: int, key: str) -> Capture:
    return Capture(**_order_fields(key), amount_minor=amount)


def revoke() -> Revoke:
    return Revoke(**_order_fields("revoke-1"))


def report(order: Order, amount=None, currency=CCY, line_id="line-1", fee_minor=0
           ) -> SettlementReported:
    """The channel's line: by default the gross it kept (captured less refunded)."""
    gross = order.captured_minor - order.refunded_minor
    return SettlementReported(line_id=line_id, channel=CARD.channel, payment_id=PID,
                              channel_serial=order.channel_serial,
                              amount_minor=gross if amount is None else amount,
                              currency=currency, settled_on=SETTLED_ON, fee_minor=fee_minor)










def holds_by_account(decision: Decision) -> dict[str, int]:
    return {h.account_id: h.amount_minor for h in of_type(decision, HoldRequested)}


def merchant_credits(entry: JournalEntryDecided) -> dict[str, int]:
    """What a capture entry credited each merchant (pending accounts)."""
    return {leg.account_id: leg.amount_minor for leg in entry.legs
            if leg.account_id.startswith("merchant:") and leg.amount_minor > 0}


# ---------------------------------------------------------------- the ledger and the flow


class Flow:
    """One order driven through its decisions; entries and releases go to the books."""

    def __init__(self) -> None:
        self.order: Order | None = None
        self.now_ms = NOW
        self.books = Books(CCY, SEED)
        self.entries: list[JournalEntryDecided] = []

    def _step(self, decide) -> Decision:
        self.now_ms += 1
        decision = decide(self.order, self.now_ms)
        for message in decision.outputs:
            if isinstance(message, JournalEntryDecided):
                self.books.post(message)
                self.entries.append(message)
            elif isinstance(message, HoldReleaseRequested):
                self.books.release(message)
        self.books.check()
        if decision.order is not None:
            self.order = decision.order
        return decision

    def command(self, cmd, route: Route | None = None) -> Decision:
        return self._step(lambda o, now: decide_command(o, cmd, route, now))

    def answer(self, request: ChannelRequested, outcome=OK) -> Decision:
        response = ChannelResponded(
            request_id=request.request_id, payment_id=request.payment_id,
            channel=request.channel, operation=request.operation, outcome=outcome,
            amount_minor=request.amount_minor, currency=request.currency,
            channel_serial="ch-1", decline_code="" if outcome is OK else "05")
        return self._step(lambda o, now: decide_channel_response(o, response, now))

    def hold(self, held: HoldRequested, refuse: str = "") -> Decision:
        """The ledger's answer: the books decide, unless told to refuse."""
        status = PostingStatus.insufficient_funds if refuse else self.books.place(held)
        placed = status is PostingStatus.applied
        answer = HoldResolved(hold_id=held.hold_id, payment_id=held.payment_id,
                              account_id=held.account_id, placed=placed,
                              reason=refuse or ("" if placed else status.name))
        return self._step(lambda o, now: decide_hold_resolved(o, answer, now))

    def hold_again(self, held: HoldRequested, placed: bool = True) -> Decision:
        """A redelivered answer (the books are not asked again)."""
        answer = HoldResolved(hold_id=held.hold_id, payment_id=held.payment_id,
                              account_id=held.account_id, placed=placed)
        return self._step(lambda o, now: decide_hold_resolved(o, answer, now))

    def settle(self, **changes) -> Decision:
        line = report(self.order, **changes)
        return self._step(lambda o, now: decide_settlement(o, line, now))


# ---------------------------------------------------------------- flows used by many tests


def sold(amount=AMOUNT, route=CARD, **changes) -> Flow:
    flow = Flow()
    flow.answer(only(flow.command(pay(amount, **changes), route), ChannelRequested))
    return flow


def refunded(flow: Flow, refund_id="rf-1", amount=1_000, outcome=OK) -> Decision:
    held = only(flow.command(refund(refund_id, amount)), HoldRequested)
    return flow.answer(only(flow.hold(held), ChannelRequested), outcome)


def settled_flow(flow: Flow) -> Flow:
    """The channel's line reported and every settlement hold placed."""
    for held in of_type(flow.settle(), HoldRequested):
        flow.hold(held)
    assert flow.order.settlement == "settled"
    return flow


def unchanged(flow: Flow, decision: Decision, code: CommandStatus) -> bool:
    return decision == Decision(flow.order, (), code)


# ---------------------------------------------------------------- one merchant


class TestSettleSingleMerchant:
    def test_settlement_freezes_merchant_net_on_pending_when_amount_matches(self):
        flow = sold()

        d = flow.settle()

        assert d.status is C.accepted
        held = only(d, HoldRequested)
        assert (held.hold_id, held.account_id, held.currency, held.amount_minor) == (
            settle_hold_id(), pending(), CCY, NET)
        assert (d.order.settlement, d.order.settled_on) == ("holding", SETTLED_ON)
        assert [(p.merchant_id, p.amount_minor, p.status) for p in d.order.settle_holds] == [
            (MERCHANT, NET, "holding")]
        assert [e.reason for e in of_type(d, JournalEntryDecided)] == ["settlement_clearing"]
        assert d.order.status is S.succeeded

    def test_settlement_posts_the_channels_payment_clearing_to_cash_and_its_fee(self):
        flow = sold()
        line = report(flow.order)

        d = flow.settle(fee_minor=120)

        entry = only(d, JournalEntryDecided)
        gross = line.amount_minor
        assert legs_by_account(entry) == {
            f"clearing:{line.channel}:{CCY}": gross,
            f"cash:{line.channel}:{CCY}": -(gross - 120),
            f"chfees:{line.channel}:{CCY}": -120}

    def test_settlement_moves_net_from_pending_to_settled_when_hold_placed(self):
        flow = sold()
        held = only(flow.settle(), HoldRequested)

        d = flow.hold(held)

        assert d.status is C.accepted
        entry = only(d, JournalEntryDecided)
        assert (entry.reason, legs_by_account(entry)) == ("settlement",
                                                          {pending(): -NET, settled(): NET})
        assert leg_on(entry, pending()).hold_id == held.hold_id
        assert leg_on(entry, settled()).hold_id == ""
        assert entry_balances(entry)
        assert (d.order.settlement, d.order.status) == ("settled", S.succeeded)
        assert [p.status for p in d.order.settle_holds] == ["placed"]
        assert (flow.books.total(pending()), flow.books.frozen(pending())) == (0, 0)
        assert flow.books.total(settled()) == NET

    def test_settlement_tells_merchant_without_status_change_when_settled(self):
        flow = sold()
        held = only(flow.settle(), HoldRequested)

        d = flow.hold(held)

        told = only(d, PaymentStatusChanged)
        assert (told.status, told.previous_status, told.trigger) == (
            "succeeded", "succeeded", "settlement")

    def test_settlement_moves_whole_amount_when_route_is_free(self):
        free = Route(channel="acq", fee_bps=0, fee_fixed_minor=0, reason="free route")
        flow = sold(route=free)

        d = flow.settle()

        assert holds_by_account(d) == {pending(): AMOUNT}


# ---------------------------------------------------------------- the line does not fit


class TestSettlementRefused:
    def test_settlement_rejected_order_not_found_when_order_unknown(self):
        line = report(sold().order)

        d = decide_settlement(None, line, NOW)

        assert d == Decision(None, (), C.order_not_found)

    @pytest.mark.parametrize("amount", [AMOUNT - 1, AMOUNT + 1, 0])
    def test_settlement_rejected_amount_mismatch_when_amount_differs(self, amount):
        flow = sold()

        d = flow.settle(amount=amount)

        assert unchanged(flow, d, C.settlement_amount_mismatch)

    def test_settlement_rejected_amount_mismatch_when_line_is_net_of_fee(self):
        flow = sold()

        d = flow.settle(amount=NET)

        assert unchanged(flow, d, C.settlement_amount_mismatch)

    def test_settlement_rejected_amount_mismatch_when_currency_differs(self):
        flow = sold()

        d = flow.settle(currency="USD")

        assert unchanged(flow, d, C.settlement_amount_mismatch)

    def test_settlement_rejected_amount_mismatch_when_refunds_not_deducted(self):
        flow = sold()
        refunded(flow, amount=1_000)

        d = flow.settle(amount=AMOUNT)

        assert unchanged(flow, d, C.settlement_amount_mismatch)

    def test_settlement_rejected_not_allowed_when_only_authorized(self):
        flow = Flow()
        flow.answer(only(flow.command(pay(capture=CaptureMode.manual), CARD), ChannelRequested))

        d = flow.settle(amount=AMOUNT)

        assert flow.order.status is S.authorized
        assert unchanged(flow, d, C.settlement_not_allowed_in_status)

    def test_settlement_rejected_not_allowed_when_processing(self):
        flow = Flow()
        flow.command(pay(), CARD)

        d = flow.settle(amount=AMOUNT)

        assert unchanged(flow, d, C.settlement_not_allowed_in_status)

    def test_settlement_rejected_not_allowed_when_declined(self):
        flow = Flow()
        flow.answer(only(flow.command(pay(), CARD), ChannelRequested), DECLINED)

        d = flow.settle(amount=0)

        assert flow.order.status is S.failed
        assert unchanged(flow, d, C.settlement_not_allowed_in_status)

    def test_settlement_rejected_not_allowed_when_revoked(self):
        flow = sold()
        held = only(flow.command(revoke()), HoldRequested)
        flow.answer(only(flow.hold(held), ChannelRequested))

        d = flow.settle(amount=AMOUNT)

        assert flow.order.status is S.canceled
        assert unchanged(flow, d, C.settlement_not_allowed_in_status)

    def test_settlement_rejected_not_allowed_when_order_is_topup(self):
        flow = Flow()
        topup = TopUp(**_order_fields("top-1"), account_id="p-1", amount_minor=AMOUNT,
                      currency=CCY, method=Method.card)
        flow.answer(only(flow.command(topup, CARD), ChannelRequested))

        d = flow.settle()

        assert flow.order.status is S.succeeded
        assert unchanged(flow, d, C.settlement_not_allowed_in_status)

    def test_settlement_rejected_while_refund_open_when_refund_hold_pending(self):
        flow = sold()
        flow.command(refund("rf-1", 1_000))

        d = flow.settle()

        assert unchanged(flow, d, C.settlement_while_refund_open)

    def test_settlement_rejected_while_refund_open_when_refund_at_channel(self):
        flow = sold()
        flow.hold(only(flow.command(refund("rf-1", 1_000)), HoldRequested))

        d = flow.settle()

        assert flow.order.refunds[0].status == "processing"
        assert unchanged(flow, d, C.settlement_while_refund_open)

    def test_settlement_rejected_while_refund_open_when_revocation_pending(self):
        flow = sold()
        flow.command(revoke())

        d = flow.settle()

        assert unchanged(flow, d, C.settlement_while_refund_open)

    def test_settlement_rejected_while_refund_open_before_amount_is_checked(self):
        flow = sold()
        flow.command(refund("rf-1", 1_000))

        d = flow.settle(amount=1)

        assert unchanged(flow, d, C.settlement_while_refund_open)

    def test_settlement_accepted_when_earlier_refund_failed(self):
        flow = sold()
        refunded(flow, amount=1_000, outcome=DECLINED)

        d = flow.settle()

        assert flow.order.refunded_minor == 0
        assert holds_by_account(d) == {pending(): NET}


# ---------------------------------------------------------------- the same line again


class TestSettlementDuplicate:
    def test_settlement_duplicate_when_reported_again_while_holding(self):
        flow = sold()
        flow.settle()

        d = flow.settle(line_id="line-2")

        assert unchanged(flow, d, C.duplicate)

    def test_settlement_duplicate_when_reported_again_after_settled(self):
        flow = settled_flow(sold())

        d = flow.settle()

        assert unchanged(flow, d, C.duplicate)

    def test_settlement_duplicate_before_amount_is_checked(self):
        flow = settled_flow(sold())

        d = flow.settle(amount=1, currency="USD")

        assert unchanged(flow, d, C.duplicate)

    def test_settlement_duplicate_when_reported_again_after_failed(self):
        flow = sold()
        flow.hold(only(flow.settle(), HoldRequested), refuse="insufficient_funds")

        d = flow.settle()

        assert flow.order.settlement == "failed"
        assert unchanged(flow, d, C.duplicate)

    def test_settle_hold_answer_duplicate_when_redelivered_after_settled(self):
        flow = sold()
        held = only(flow.settle(), HoldRequested)
        flow.hold(held)

        d = flow.hold_again(held)

        assert unchanged(flow, d, C.duplicate)

    def test_settle_hold_answer_duplicate_when_redelivered_while_others_hold(self):
        flow = sold(split=shares((MERCHANT, 6_000), ("m-2", 4_000)))
        first, _ = of_type(flow.settle(), HoldRequested)
        flow.hold(first)

        d = flow.hold_again(first, placed=False)

        assert unchanged(flow, d, C.duplicate)
        assert [p.status for p in flow.order.settle_holds] == ["placed", "holding"]

    def test_settle_hold_answer_duplicate_when_redelivered_after_failed(self):
        flow = sold()
        held = only(flow.settle(), HoldRequested)
        flow.hold(held, refuse="insufficient_funds")

        d = flow.hold_again(held, placed=True)

        assert unchanged(flow, d, C.duplicate)


# ---------------------------------------------------------------- split payments


class TestSettleSplitPayment:
    SHARES = shares((MERCHANT, 7_000), ("m-2", 3_000))

    def test_settlement_requests_one_hold_per_merchant_at_its_net_share(self):
        flow = sold(split=self.SHARES)
        credited = merchant_credits(flow.entries[-1])

        d = flow.settle()

        assert d.status is C.accepted
        assert holds_by_account(d) == credited == {pending(): 6_874, pending("m-2"): 2_946}
        assert {h.hold_id for h in of_type(d, HoldRequested)} == {
            settle_hold_id(MERCHANT), settle_hold_id("m-2")}

    def test_settlement_waits_for_every_hold_when_one_is_placed(self):
        flow = sold(split=self.SHARES)
        first, _ = of_type(flow.settle(), HoldRequested)

        d = flow.hold(first)

        assert d.status is C.accepted
        assert d.outputs == ()
        assert d.order.settlement == "holding"

    def test_settlement_entry_has_two_legs_per_merchant_when_all_holds_placed(self):
        flow = sold(split=self.SHARES)
        held = of_type(flow.settle(), HoldRequested)
        flow.hold(held[0])

        d = flow.hold(held[1])

        entry = only(d, JournalEntryDecided)
        assert legs_by_account(entry) == {pending(): -6_874, settled(): 6_874,
                                          pending("m-2"): -2_946, settled("m-2"): 2_946}
        assert {leg.account_id: leg.hold_id for leg in entry.legs if leg.hold_id} == {
            h.account_id: h.hold_id for h in held}
        assert entry_balances(entry)
        assert d.order.settlement == "settled"

    def test_settlement_empties_every_pending_account_when_booked(self):
        flow = settled_flow(sold(split=self.SHARES))

        books = flow.books

        assert [books.total(pending(m)) for m in (MERCHANT, "m-2")] == [0, 0]
        assert [books.frozen(pending(m)) for m in (MERCHANT, "m-2")] == [0, 0]
        assert [books.total(settled(m)) for m in (MERCHANT, "m-2")] == [6_874, 2_946]

    def test_settlement_sums_each_capture_net_when_captured_in_parts(self):
        flow = Flow()
        flow.answer(only(flow.command(pay(split=self.SHARES, capture=CaptureMode.manual),
                                      CARD), ChannelRequested))
        credited: dict[str, int] = {}
        for amount, key in ((4_000, "c-1"), (6_000, "c-2")):
            booked = flow.answer(only(flow.command(capture(amount, key)), ChannelRequested))
            for account, net in merchant_credits(only(booked, JournalEntryDecided)).items():
                credited[account] = credited.get(account, 0) + net

        d = flow.settle()

        assert flow.order.status is S.succeeded
        assert holds_by_account(d) == credited == {pending(): 2_737 + 4_116,
                                                   pending("m-2"): 1_173 + 1_764}

    def test_settlement_holds_nothing_for_merchant_whose_share_the_fee_took(self):
        route = Route(channel="acq", fee_bps=0, fee_fixed_minor=30, reason="fixed fee")
        flow = sold(31, route, split=shares((MERCHANT, 30), ("m-2", 1)))

        d = flow.settle()

        assert holds_by_account(d) == {pending(): 1}
        assert [p.merchant_id for p in d.order.settle_holds] == [MERCHANT]

    def test_settlement_moves_every_share_when_merchant_of_record_has_none(self):
        flow = sold(split=shares(("m-2", 6_000), ("m-3", 4_000)))

        d = flow.settle()

        assert holds_by_account(d) == {pending("m-2"): 5_892, pending("m-3"): 3_928}


# ---------------------------------------------------------------- refunds before settlement


class TestSettleAfterPartialRefunds:
    def test_settlement_freezes_net_less_refunds_when_partially_refunded(self):
        flow = sold()
        refunded(flow, "rf-1", 1_000)
        refunded(flow, "rf-2", 500)

        d = flow.settle()

        assert flow.order.status is S.partially_refunded
        assert report(flow.order).amount_minor == AMOUNT - 1_500
        assert holds_by_account(d) == {pending(): NET - 1_500}

    def test_settlement_leaves_pending_empty_when_partially_refunded(self):
        flow = sold()
        refunded(flow, "rf-1", 1_000)

        settled_flow(flow)

        assert flow.books.total(pending()) == 0
        assert flow.books.total(settled()) == NET - 1_000

    def test_settlement_reduces_only_primary_part_when_split_partially_refunded(self):
        flow = sold(split=shares((MERCHANT, 7_000), ("m-2", 3_000)))
        refunded(flow, "rf-1", 1_000)

        d = flow.settle()

        assert holds_by_account(d) == {pending(): 6_874 - 1_000, pending("m-2"): 2_946}

    def test_settlement_skips_primary_when_refunds_exceed_its_split_share(self):
        flow = sold(split=shares((MERCHANT, 1_000), ("m-2", 9_000)))
        flow.books.fund(pending(), 2_000)  # the primary bears refunds from other funds
        refunded(flow, "rf-1", 2_000)

        d = flow.settle()

        assert d.status is C.accepted
        assert holds_by_account(d) == {pending("m-2"): 8_838}

    def test_settlement_skips_primary_when_refunds_exceed_its_net(self):
        flow = sold()
        flow.books.fund(pending(), FEE)  # the fee is not given back
        refunded(flow, "rf-1", AMOUNT - 100)

        d = flow.settle()

        assert (d.status, d.order.settlement) == (C.accepted, "settled")
        assert of_type(d, HoldRequested) == []
        assert flow.books.total(settled()) == 0

    def test_settlement_settles_nothing_when_fully_refunded(self):
        flow = sold()
        flow.books.fund(pending(), FEE)
        refunded(flow, "rf-1", AMOUNT)

        d = flow.settle()

        assert flow.order.status is S.refunded
        assert (d.status, d.order.settlement, d.order.settled_on) == (
            C.accepted, "settled", SETTLED_ON)
        assert of_type(d, HoldRequested) == []
        assert of_type(d, JournalEntryDecided) == []
        assert only(d, PaymentStatusChanged).trigger == "settlement"
        assert settled() not in flow.books.balances

    def test_settlement_of_fully_refunded_is_duplicate_when_reported_again(self):
        flow = sold()
        flow.books.fund(pending(), FEE)
        refunded(flow, "rf-1", AMOUNT)
        flow.settle()

        d = flow.settle()

        assert unchanged(flow, d, C.duplicate)


# ---------------------------------------------------------------- refunds after settlement


class TestRefundAfterSettlement:
    def test_refund_holds_settled_account_when_order_settled(self):
        flow = settled_flow(sold())

        d = flow.command(refund("rf-1", 3_000))

        held = only(d, HoldRequested)
        assert (held.account_id, held.amount_minor) == (settled(), 3_000)

    def test_refund_entry_debits_settled_account_when_order_settled(self):
        flow = settled_flow(sold())

        d = refunded(flow, "rf-1", 3_000)

        entry = only(d, JournalEntryDecided)
        assert legs_by_account(entry) == {settled(): -3_000, CLEARING: 3_000}
        assert leg_on(entry, settled()).hold_id == hold_id_for(PID, "rf-1")
        assert (flow.books.total(settled()), flow.books.frozen(settled())) == (NET - 3_000, 0)
        assert flow.books.total(pending()) == 0

    def test_refund_split_debits_primary_settled_account_when_order_settled(self):
        flow = settled_flow(sold(split=shares((MERCHANT, 7_000), ("m-2", 3_000))))

        d = refunded(flow, "rf-1", 3_000)

        assert legs_by_account(only(d, JournalEntryDecided)) == {settled(): -3_000,
                                                                 CLEARING: 3_000}
        assert flow.books.total(settled("m-2")) == 2_946

    def test_refund_declined_releases_hold_on_settled_account_when_order_settled(self):
        flow = settled_flow(sold())

        d = refunded(flow, "rf-1", 3_000, outcome=DECLINED)

        release = only(d, HoldReleaseRequested)
        assert (release.account_id, release.hold_id) == (settled(), hold_id_for(PID, "rf-1"))
        assert (flow.books.total(settled()), flow.books.frozen(settled())) == (NET, 0)

    def test_refund_fails_when_settled_account_lacks_funds(self):
        flow = settled_flow(sold())
        flow.books.fund(pending(), AMOUNT)  # pending money does not count any more
        held = only(flow.command(refund("rf-1", AMOUNT)), HoldRequested)

        d = flow.hold(held)

        assert d.order.refunds[0].status == "failed"
        assert "insufficient_funds" in only(d, PaymentStatusChanged).reason

    def test_refund_rejected_not_allowed_while_settlement_holding(self):
        flow = sold()
        flow.settle()

        d = flow.command(refund("rf-1", 1_000))

        assert unchanged(flow, d, C.refund_not_allowed_in_status)

    def test_refund_holds_pending_account_when_settlement_failed(self):
        flow = sold()
        flow.hold(only(flow.settle(), HoldRequested), refuse="insufficient_funds")

        d = flow.command(refund("rf-1", 1_000))

        assert only(d, HoldRequested).account_id == pending()

    def test_refund_replayed_after_settlement_repeats_its_pending_entry(self):
        flow = sold()
        held = only(flow.command(refund("rf-1", 1_000)), HoldRequested)
        request = only(flow.hold(held), ChannelRequested)
        first = only(flow.answer(request), JournalEntryDecided)
        settled_flow(flow)

        d = flow.answer(request)

        assert d.status is C.callback_replayed
        assert d.outputs == (first,)
        assert legs_by_account(first) == {pending(): -1_000, CLEARING: 1_000}

    def test_refund_replayed_after_settlement_repeats_its_settled_entry(self):
        flow = settled_flow(sold())
        held = only(flow.command(refund("rf-1", 1_000)), HoldRequested)
        request = only(flow.hold(held), ChannelRequested)
        first = only(flow.answer(request), JournalEntryDecided)

        d = flow.answer(request)

        assert (d.status, d.outputs) == (C.callback_replayed, (first,))


# ---------------------------------------------------------------- revocation


class TestRevokeAfterSettlement:
    def test_revoke_rejected_after_settlement_when_settled(self):
        flow = settled_flow(sold())

        d = flow.command(revoke())

        assert unchanged(flow, d, C.revoke_after_settlement)

    def test_revoke_rejected_after_settlement_when_settlement_holding(self):
        flow = sold()
        flow.settle()

        d = flow.command(revoke())

        assert unchanged(flow, d, C.revoke_after_settlement)

    def test_revoke_rejected_after_settlement_when_settlement_failed(self):
        flow = sold()
        flow.hold(only(flow.settle(), HoldRequested), refuse="insufficient_funds")

        d = flow.command(revoke())

        assert unchanged(flow, d, C.revoke_after_settlement)

    def test_revoke_rejected_after_settlement_before_split_is_checked(self):
        flow = settled_flow(sold(split=shares((MERCHANT, 7_000), ("m-2", 3_000))))

        d = flow.command(revoke())

        assert unchanged(flow, d, C.revoke_after_settlement)


# ---------------------------------------------------------------- a settlement hold refused


class TestSettleHoldRefused:
    SHARES = shares((MERCHANT, 5_000), ("m-2", 3_000), ("m-3", 2_000))

    def test_settlement_fails_without_entry_when_only_hold_refused(self):
        flow = sold()
        held = only(flow.settle(), HoldRequested)

        d = flow.hold(held, refuse="insufficient_funds")

        assert (d.status, d.order.settlement) == (C.accepted, "failed")
        assert of_type(d, JournalEntryDecided) == []
        assert of_type(d, HoldReleaseRequested) == []
        assert "insufficient_funds" in only(d, PaymentStatusChanged).reason
        assert [p.status for p in d.order.settle_holds] == ["refused"]
        assert (flow.books.total(pending()), flow.books.frozen(pending())) == (NET, 0)

    def test_settlement_releases_placed_holds_only_when_one_refused(self):
        flow = sold(split=self.SHARES)
        first, second, third = of_type(flow.settle(), HoldRequested)
        flow.hold(first)
        flow.hold(second, refuse="insufficient_funds")

        d = flow.hold(third)

        assert d.order.settlement == "failed"
        assert of_type(d, JournalEntryDecided) == []
        assert {(r.hold_id, r.account_id) for r in of_type(d, HoldReleaseRequested)} == {
            (first.hold_id, first.account_id), (third.hold_id, third.account_id)}
        assert [p.status for p in d.order.settle_holds] == ["released", "refused", "released"]

    def test_settlement_releases_placed_hold_when_refusal_answers_first(self):
        flow = sold(split=shares((MERCHANT, 7_000), ("m-2", 3_000)))
        first, second = of_type(flow.settle(), HoldRequested)
        flow.hold(first, refuse="insufficient_funds")

        d = flow.hold(second)

        release = only(d, HoldReleaseRequested)
        assert (release.hold_id, release.account_id) == (second.hold_id, pending("m-2"))

    def test_settlement_unfreezes_every_pending_account_when_failed(self):
        flow = sold(split=self.SHARES)
        credited = merchant_credits(flow.entries[-1])
        first, second, third = of_type(flow.settle(), HoldRequested)
        flow.hold(first)
        flow.hold(second)

        flow.hold(third, refuse="insufficient_funds")

        assert {a: flow.books.frozen(a) for a in credited} == {a: 0 for a in credited}
        assert {a: flow.books.total(a) for a in credited} == credited
        assert not any(account.startswith("merchant:") and ":settled:" in account
                       for account in flow.books.balances)

    def test_settlement_fails_when_pending_money_frozen_for_another_order(self):
        flow = sold()
        flow.books.place(HoldRequested(hold_id="hold_other", payment_id="pay_other",
                                       account_id=pending(), currency=CCY, amount_minor=1))
        held = only(flow.settle(), HoldRequested)

        d = flow.hold(held)

        assert d.order.settlement == "failed"
        assert "insufficient_funds" in only(d, PaymentStatusChanged).reason


# ---------------------------------------------------------------- the money through the ledger


class TestSettlementThroughTheLedger:
    def test_every_entry_balances_when_split_refunded_settled_and_refunded_again(self):
        flow = sold(split=shares((MERCHANT, 5_000), ("m-2", 3_000), ("m-3", 2_000)))
        refunded(flow, "rf-1", 1_500)
        settled_flow(flow)

        refunded(flow, "rf-2", 2_000)

        assert [e.reason for e in flow.entries] == [
            "capture", "refund", "settlement_clearing", "settlement", "refund"]
        assert all(entry_balances(e) for e in flow.entries)

    def test_accounts_within_limits_and_merchant_money_kept_when_settled_then_refunded(self):
        flow = sold(split=shares((MERCHANT, 5_000), ("m-2", 3_000), ("m-3", 2_000)))
        credited = merchant_credits(flow.entries[-1])
        refunded(flow, "rf-1", 1_500)
        settled_flow(flow)

        refunded(flow, "rf-2", 2_000)

        books = flow.books
        books.check()  # every account within the limit its kind implies, zero-sum
        merchants = [MERCHANT, "m-2", "m-3"]
        kept = {m: books.total(pending(m)) + books.total(settled(m)) for m in merchants}
        assert kept == {m: credited[pending(m)] - (3_500 if m == MERCHANT else 0)
                        for m in merchants}
        assert all(books.total(pending(m)) == 0 for m in merchants)
        assert all(books.frozen(a) == 0 for a in books.balances)
        # The channel paid the 8,500 it kept (clearing back to zero); the refund after
        # settlement is what we now owe it, netted by its next settlement.
        assert books.total(CLEARING) == 2_000
