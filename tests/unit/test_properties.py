"""Property tests: the money rules (DESIGN.md §3) hold after every step of random traffic.

(a) ``PaymentAuditor`` drives the order state machine with random commands, channel answers
    (random outcome, other amounts, duplicates, contradictions, any order) and ledger work
    (holds placed, redelivered and released in any order), keeping its own ledger from the
    outputs with the real ``domain.ledger`` functions, applied once per posting id like the
    ledger stage. It registers the acceptable status before every command, checks the money
    rules after every step, and at the end answers everything outstanding and checks that
    nothing is left frozen or pending.
(b) Random posting/hold sequences on one account, checked against a small model.

Hypothesis prints the failing steps (and a ``@reproduce_failure`` blob) on failure; replay
with the same commit and that blob.
"""

from __future__ import annotations

import sys
from collections import defaultdict

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from domain import accounts
from domain.commands import Capture, CaptureMode, Method, Pay, Refund, Void
from domain.events import (
    ChannelOperation,
    ChannelOutcome,
    ChannelRequested,
    ChannelResponded,
    HoldReleaseRequested,
    HoldRequested,
    HoldResolved,
    JournalEntryDecided,
    Leg,
    PaymentStatusChanged,
)
from domain.ids import derive_id, payment_id_for
from domain.money import fee_minor
from domain.ledger import (
    AccountBalance,
    Hold,
    PostingStatus,
    apply_leg,
    check_invariants,
    entry_balances,
    open_account,
    place_hold,
    posting_id_for,
    release_hold,
)
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
    fingerprint_of,
)
from domain.routing import ChannelTerms, choose_route

C = CommandStatus
S = OrderStatus
P = PostingStatus

CHANNELS = (
    ChannelTerms(name="acq-a", methods=(Method.card, Method.bank), currencies=("EUR", "JPY"),
                 fee_bps=150, fee_fixed_minor=30, priority=10),
    ChannelTerms(name="acq-b", methods=(Method.wallet, Method.card), currencies=("EUR",),
                 fee_bps=0, fee_fixed_minor=0, priority=20),
)
MERCHANTS = ("m-a", "m-b")
ORDER_NOS = ("o-1", "o-2", "o-3", "o-4")
CURRENCIES = ("EUR", "JPY")
KEYS = ("k-1", "k-2", "k-3")
REFUND_IDS = ("rf-1", "rf-2", "rf-3")

_amounts = st.integers(min_value=1, max_value=3_000)
_FIRST_OPS = (ChannelOperation.sale, ChannelOperation.authorize)
_ANSWERS = ("ok", "ok", "ok", "declined", "declined", "other_amount")
_targets = st.tuples(st.sampled_from(MERCHANTS), st.sampled_from(ORDER_NOS))
_ALL_TARGETS = [(m, n) for m in MERCHANTS for n in ORDER_NOS]


class PaymentAuditor(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.now_ms = 1_000
        self.orders: dict[str, Order] = {}
        self.last_status: dict[str, OrderStatus] = {}
        self.channel_pending: dict[str, ChannelRequested] = {}
        self.channel_answered: dict[str, ChannelResponded] = {}
        self.ledger_queue: list = []
        self.hold_requests_done: dict[str, HoldRequested] = {}
        self.hold_decisions: dict[str, PostingStatus] = {}
        self.hold_answers_pending: list[HoldResolved] = []
        self.hold_answers_sent: list[HoldResolved] = []
        self.balances: dict[str, AccountBalance] = {}
        self.applied_postings: set[str] = set()
        self.entry_legs: dict[str, tuple[Leg, ...]] = {}
        self.entry_payment: dict[str, str] = {}
        self.clearing_by_payment: dict[str, int] = defaultdict(int)

    # ------------------------------------------------------------ plumbing

    def _tick(self) -> int:
        self.now_ms += 7
        return self.now_ms

    def _record(self, payment_id: str, before: Order | None, decision: Decision) -> None:
        after = decision.order
        assert isinstance(decision.status, CommandStatus)
        event("decision", decision.status.name)
        if after is not None and (before is None or before.status is not after.status):
            event("reached", after.status.value)
        if before is not None:
            assert after is not None
            assert after.status == before.status or after.status in TRANSITIONS[before.status], (
                before.status, after.status)
            if before.status in TERMINAL:
                assert after.status is before.status
        if after is not None:
            assert after.payment_id == payment_id
            self.orders[payment_id] = after
        for changed in (m for m in decision.outputs if isinstance(m, PaymentStatusChanged)):
            previous = changed.previous_status
            assert previous in ("",) + tuple(s.value for s in OrderStatus), changed
            if previous:
                to = OrderStatus(changed.status)
                assert changed.status == previous or to in TRANSITIONS[OrderStatus(previous)]
        self._emit(decision.outputs)

    def _emit(self, outputs) -> None:
        for message in outputs:
            if isinstance(message, ChannelRequested):
                known = message.request_id in self.channel_answered
                if not known:
                    self.channel_pending.setdefault(message.request_id, message)
            elif isinstance(message, JournalEntryDecided):
                self._post(message)
            elif isinstance(message, (HoldRequested, HoldReleaseRequested)):
                self.ledger_queue.append(message)
            else:
                assert isinstance(message, PaymentStatusChanged), type(message)

    def _account(self, account_id: str, currency: str) -> AccountBalance:
        return self.balances.get(account_id) or open_account(account_id, currency)

    def _post(self, entry: JournalEntryDecided) -> None:
        """Like the ledger stage: a balanced entry, each leg applied once by posting id."""
        assert entry_balances(entry), entry
        self._check_entry_shape(entry)
        known = self.entry_legs.setdefault(entry.entry_id, entry.legs)
        assert known == entry.legs, ("same entry id, different legs", known, entry.legs)
        assert self.entry_payment.setdefault(entry.entry_id, entry.payment_id) == entry.payment_id
        for leg in entry.legs:
            posting_id = posting_id_for(entry, leg.account_id)
            if posting_id in self.applied_postings:
                continue
            after, status = apply_leg(self._account(leg.account_id, leg.currency), leg)
            assert status is P.applied, (status, leg)
            self.balances[leg.account_id] = after
            self.applied_postings.add(posting_id)
            if accounts.kind_of(leg.account_id) is accounts.AccountKind.channel_clearing:
                self.clearing_by_payment[entry.payment_id] += leg.amount_minor

    def _check_entry_shape(self, entry: JournalEntryDecided) -> None:
        """Capture: clearing pays the gross, merchant gets net, fee account the route's fee.
        Refund: the merchant's hold is consumed and the gross goes back to clearing."""
        order = self.orders[entry.payment_id]
        route, ccy = order.route, order.currency
        legs = {leg.account_id: leg for leg in entry.legs}
        assert len(legs) == len(entry.legs)
        clearing = legs[accounts.channel_clearing(route.channel, ccy)].amount_minor
        merchant = legs[accounts.merchant_pending(order.merchant_id, ccy)]
        if entry.reason == "capture":
            fee = fee_minor(-clearing, route.fee_bps, route.fee_fixed_minor)
            assert merchant.amount_minor == -clearing - fee and not merchant.hold_id
            fees = legs.get(accounts.fee_revenue(ccy))
            assert (fees.amount_minor if fees else 0) == fee
        else:
            assert entry.reason == "refund", entry.reason
            assert clearing > 0 and merchant.amount_minor == -clearing
            assert merchant.hold_id and len(legs) == 2

    def _order_of(self, target) -> tuple[str, Order | None]:
        payment_id = payment_id_for(*target)
        return payment_id, self.orders.get(payment_id)

    def _pick(self, data, *fitting: OrderStatus) -> tuple[str, str]:
        """Usually an order in a status where the command makes sense (so runs get deep),
        sometimes any order (so the refusals get exercised). Unknown orders: ``strays``."""
        known = sorted((o.merchant_id, o.merchant_order_no) for o in self.orders.values())
        apt = [who for who in known if self.orders[payment_id_for(*who)].status in fitting]
        if apt and data.draw(st.sampled_from([True, True, True, False]), label="apt"):
            return data.draw(st.sampled_from(apt), label="who")
        return data.draw(st.sampled_from(known), label="who")

    @staticmethod
    def _amount(data, rest: int) -> int:
        """The rest, part of it, just over it, or anything (so the limits get exercised)."""
        how = data.draw(st.sampled_from(["rest", "part", "over", "any"]), label="how")
        if how == "rest" and rest > 0:
            return rest
        if how == "part" and rest > 0:
            return data.draw(st.integers(1, rest), label="amount")
        if how == "over":
            return max(rest, 0) + 1
        return data.draw(_amounts, label="amount")

    # ------------------------------------------------------------ commands

    @rule(data=st.data(), amount=_amounts, currency=st.sampled_from(CURRENCIES),
          method=st.sampled_from(list(Method)), mode=st.sampled_from(list(CaptureMode)),
          key=st.sampled_from(KEYS))
    def pay(self, data, amount, currency, method, mode, key):
        """Usually a new order; sometimes the same merchant order again (same or other payload)."""
        fresh = [who for who in _ALL_TARGETS if payment_id_for(*who) not in self.orders]
        again = not fresh or not data.draw(st.sampled_from([True, True, True, False]))
        who = data.draw(st.sampled_from(_ALL_TARGETS if again else fresh), label="who")
        payment_id, before = self._order_of(who)
        cmd = Pay(merchant_id=who[0], merchant_order_no=who[1], idempotency_key=key,
                  amount_minor=amount, currency=currency, method=method, capture=mode)
        route = choose_route(CHANNELS, method, currency)
        if before is None:
            allowed = {C.no_route} if route is None else {C.accepted}
        elif before.fingerprint == fingerprint_of(cmd):
            allowed = {C.duplicate}
        else:
            allowed = {C.order_exists_with_different_payload}

        decision = decide_command(before, cmd, route, self._tick())

        assert decision.status in allowed, (decision.status, allowed)
        if decision.status is C.accepted:
            assert decision.order.status is S.processing
        self._record(payment_id, before, decision)

    @precondition(lambda self: _any_in(self, S.authorized))
    @rule(data=st.data(), rest=st.booleans(), key=st.sampled_from(KEYS))
    def capture(self, data, rest, key):
        who = self._pick(data, S.authorized)
        payment_id, before = self._order_of(who)
        left = before.authorized_minor - before.captured_minor - before.capture_pending_minor
        amount = None if rest else self._amount(data, left)
        cmd = Capture(merchant_id=who[0], merchant_order_no=who[1], idempotency_key=key,
                      amount_minor=amount)
        asked_before = any(r.operation is ChannelOperation.capture
                           and r.reference == f"capture-{key}" for r in before.requests)
        if asked_before:  # idempotency is checked before status (STYLE rule 4)
            allowed = {C.duplicate, C.capture_exists_with_different_amount}
        elif before.status is not S.authorized or _void_pending(before):
            allowed = {C.capture_not_allowed_in_status}
        else:
            allowed = {C.accepted, C.capture_exceeds_authorized}

        decision = decide_command(before, cmd, None, self._tick())

        assert decision.status in allowed, (decision.status, allowed)
        if decision.status is C.accepted:
            remaining = before.authorized_minor - before.captured_minor \
                - before.capture_pending_minor
            asked = remaining if amount is None else amount
            assert 0 < asked <= remaining
            assert decision.order.capture_pending_minor == before.capture_pending_minor + asked
        else:
            assert decision.order == before
            assert decision.outputs == ()
        self._record(payment_id, before, decision)

    @precondition(lambda self: _any_in(self, S.authorized))
    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def void(self, data, key):
        who = self._pick(data, S.authorized)
        payment_id, before = self._order_of(who)
        cmd = Void(merchant_id=who[0], merchant_order_no=who[1], idempotency_key=key)
        declined = {a.request_id for a in before.applied
                    if a.outcome is ChannelOutcome.declined}
        if any(r.operation is ChannelOperation.void and r.request_id not in declined
               for r in before.requests):
            allowed = {C.duplicate}
        elif before.status is not S.authorized or before.capture_pending_minor:
            allowed = {C.void_not_allowed_in_status}
        else:
            allowed = {C.accepted}

        decision = decide_command(before, cmd, None, self._tick())

        assert decision.status in allowed, (decision.status, allowed)
        self._record(payment_id, before, decision)

    @precondition(lambda self: _any_in(self, S.succeeded, S.partially_refunded))
    @rule(data=st.data(), refund_id=st.sampled_from(REFUND_IDS))
    def refund(self, data, refund_id):
        who = self._pick(data, S.succeeded, S.partially_refunded)
        payment_id, before = self._order_of(who)
        live = sum(r.amount_minor for r in before.refunds if r.status != "failed")
        amount = self._amount(data, before.captured_minor - live)
        cmd = Refund(merchant_id=who[0], merchant_order_no=who[1],
                     idempotency_key=f"key-{refund_id}", refund_id=refund_id, amount_minor=amount)
        allowed = _refund_allowed(before, refund_id, amount)

        decision = decide_command(before, cmd, None, self._tick())

        assert decision.status is allowed, (decision.status, allowed)
        if allowed is C.accepted:
            hold = next(m for m in decision.outputs if isinstance(m, HoldRequested))
            assert hold.amount_minor == amount
        self._record(payment_id, before, decision)

    @rule(who=_targets, kind=st.sampled_from(["capture", "void", "refund", "callback"]))
    def strays(self, who, kind):
        """Follow-ups for an order we never saw, or a callback for a request we never sent."""
        payment_id, before = self._order_of(who)
        if kind == "callback":
            if before is not None:
                self._stray_callback(payment_id, before)
            return
        if before is not None:
            return
        ids = dict(merchant_id=who[0], merchant_order_no=who[1], idempotency_key="k-x")
        cmd = {"capture": Capture(**ids), "void": Void(**ids),
               "refund": Refund(**ids, refund_id="rf-x", amount_minor=1)}[kind]

        decision = decide_command(None, cmd, None, self._tick())

        assert decision == Decision(None, (), C.order_not_found)

    def _stray_callback(self, payment_id: str, before: Order) -> None:
        stray = ChannelResponded(
            request_id=f"req_stray_{self.now_ms}", payment_id=payment_id, channel="acq-a",
            operation=ChannelOperation.sale, outcome=ChannelOutcome.succeeded, amount_minor=1,
            currency=before.currency, channel_serial="stray")

        decision = decide_channel_response(before, stray, self._tick())

        assert decision.status is C.callback_for_unknown_request
        assert decision.outputs == ()
        assert decision.order.status is before.status
        self._record(payment_id, before, decision)

    # ------------------------------------------------------------ the channel

    @precondition(lambda self: self.channel_pending)
    @rule(data=st.data(), how=st.sampled_from(_ANSWERS))
    def channel_answers(self, data, how):
        """Any outstanding request, in any order; mostly success, often a decline, and now
        and then a sale/authorize answered with another amount."""
        request_id = data.draw(st.sampled_from(sorted(self.channel_pending)))
        first_op = self.channel_pending[request_id].operation in _FIRST_OPS
        delta = data.draw(st.sampled_from([-1, 1])) if first_op and how == "other_amount" else 0
        self._channel_answer(request_id, how != "declined", delta)

    def _channel_answer(self, request_id: str, succeeded: bool, delta: int) -> None:
        request = self.channel_pending.pop(request_id)
        amount = request.amount_minor + delta
        outcome = ChannelOutcome.succeeded if succeeded else ChannelOutcome.declined
        callback = ChannelResponded(
            request_id=request.request_id, payment_id=request.payment_id,
            channel=request.channel, operation=request.operation, outcome=outcome,
            amount_minor=amount, currency=request.currency, channel_serial=f"ser-{request_id}",
            decline_code="" if succeeded else "05", responded_at_ms=self.now_ms)
        self.channel_answered[request_id] = callback
        before = self.orders[request.payment_id]

        decision = decide_channel_response(before, callback, self._tick())

        assert decision.status in (C.accepted, C.callback_late), decision.status
        self._record(request.payment_id, before, decision)

    @precondition(lambda self: self.channel_answered)
    @rule(data=st.data(), how=st.sampled_from(["same", "same", "outcome", "amount"]))
    def channel_repeats(self, data, how):
        """The same answer again (a replay), or one contradicting it: the opposite outcome or
        other money (recorded, never applied)."""
        request_id = data.draw(st.sampled_from(sorted(self.channel_answered)))
        callback = self.channel_answered[request_id]
        contradict = how != "same"
        if how == "outcome":
            flipped = (ChannelOutcome.declined if callback.outcome is ChannelOutcome.succeeded
                       else ChannelOutcome.succeeded)
            callback = callback.model_copy(update={"outcome": flipped})
        elif how == "amount":
            callback = callback.model_copy(update={"amount_minor": callback.amount_minor + 1})
        before = self.orders[callback.payment_id]

        decision = decide_channel_response(before, callback, self._tick())

        if contradict:
            assert decision.status is C.callback_late, decision.status
            assert decision.outputs == ()
            assert len(decision.order.history) == len(before.history) + 1
            assert decision.order.model_copy(update={"history": before.history,
                                                     "updated_at_ms": before.updated_at_ms}) \
                == before
        else:
            assert decision.status is C.callback_replayed, decision.status
            assert decision.order == before
            assert all(isinstance(m, JournalEntryDecided) for m in decision.outputs)
            assert all(m.entry_id in self.entry_legs for m in decision.outputs)
        self._record(callback.payment_id, before, decision)

    # ------------------------------------------------------------ the ledger

    @precondition(lambda self: self.ledger_queue)
    @rule(data=st.data())
    def ledger_works(self, data):
        index = data.draw(st.integers(0, len(self.ledger_queue) - 1))
        message = self.ledger_queue.pop(index)

        if isinstance(message, HoldRequested):
            self._place(message)
        else:
            self._release(message)

        self._check_account(message.account_id)

    def _place(self, req: HoldRequested) -> None:
        """Like the ledger stage: hold_exists counts as placed, the answer goes back."""
        before = self._account(req.account_id, req.currency)
        after, status = place_hold(before, Hold(hold_id=req.hold_id, payment_id=req.payment_id,
                                                amount_minor=req.amount_minor),
                                   self.hold_decisions.get(req.hold_id))
        self.hold_decisions.setdefault(req.hold_id, status)
        if status is P.applied:
            self.balances[req.account_id] = after
        else:
            assert after is before
        placed = status in (P.applied, P.hold_exists)
        if req.hold_id not in self.hold_requests_done:
            assert status is not P.hold_exists
        self.hold_requests_done.setdefault(req.hold_id, req)
        self.hold_answers_pending.append(HoldResolved(
            hold_id=req.hold_id, payment_id=req.payment_id, account_id=req.account_id,
            placed=placed, reason="" if placed else status.name))

    def _release(self, req: HoldReleaseRequested) -> None:
        before = self.balances[req.account_id]
        after, status = release_hold(before, req.hold_id)
        assert status in (P.applied, P.hold_not_found)
        self.balances[req.account_id] = after

    @precondition(lambda self: self.hold_requests_done)
    @rule(data=st.data())
    def ledger_gets_hold_request_again(self, data):
        hold_id = data.draw(st.sampled_from(sorted(self.hold_requests_done)))
        req = self.hold_requests_done[hold_id]
        first = next(a for a in self.hold_answers_sent + self.hold_answers_pending
                     if a.hold_id == hold_id)
        before = self._account(req.account_id, req.currency)

        self._place(req)

        assert self.hold_answers_pending[-1].placed == first.placed
        assert self._account(req.account_id, req.currency) == before

    @precondition(lambda self: self.hold_answers_pending)
    @rule(data=st.data())
    def orders_get_hold_answer(self, data):
        index = data.draw(st.integers(0, len(self.hold_answers_pending) - 1))
        answer = self.hold_answers_pending.pop(index)
        first_time = all(a.hold_id != answer.hold_id for a in self.hold_answers_sent)
        self.hold_answers_sent.append(answer)
        before = self.orders[answer.payment_id]

        decision = decide_hold_resolved(before, answer, self._tick())

        assert decision.status is (C.accepted if first_time else C.duplicate), decision.status
        self._record(answer.payment_id, before, decision)

    # ------------------------------------------------------------ invariants

    @invariant()
    def status_only_moves_forward(self):
        for payment_id, order in self.orders.items():
            previous = self.last_status.get(payment_id)
            if previous is not None:
                assert order.status is previous or order.status in TRANSITIONS[previous]
                if previous in TERMINAL:
                    assert order.status is previous
            self.last_status[payment_id] = order.status

    @invariant()
    def order_amounts_consistent(self):
        for order in self.orders.values():
            assert 0 <= order.captured_minor <= order.authorized_minor <= order.amount_minor
            assert order.capture_pending_minor >= 0
            assert order.captured_minor + order.capture_pending_minor <= order.authorized_minor
            assert 0 <= order.refunded_minor <= order.captured_minor
            succeeded = sum(r.amount_minor for r in order.refunds if r.status == "succeeded")
            assert order.refunded_minor == succeeded
            live = sum(r.amount_minor for r in order.refunds if r.status != "failed")
            assert live <= order.captured_minor
            assert len({r.refund_id for r in order.refunds}) == len(order.refunds)

    @invariant()
    def ledger_zero_sum_per_currency(self):
        totals: dict[str, int] = defaultdict(int)
        for balance in self.balances.values():
            totals[balance.currency] += balance.total_minor
        assert all(total == 0 for total in totals.values()), dict(totals)

    @invariant()
    def accounts_keep_their_rules(self):
        for account_id in self.balances:
            self._check_account(account_id)

    @invariant()
    def ledger_matches_orders(self):
        for payment_id, order in self.orders.items():
            net = order.captured_minor - order.refunded_minor
            assert self.clearing_by_payment[payment_id] == -net, (payment_id, order.status)
        for entry_id, legs in self.entry_legs.items():
            for leg in legs:
                assert f"{entry_id}:{leg.account_id}" in self.applied_postings

    @invariant()
    def open_holds_belong_to_live_refunds(self):
        """A hold stays frozen only while its refund is undecided or its release is queued."""
        refund_of: dict[str, str] = {}
        for payment_id, order in self.orders.items():
            for r in order.refunds:
                refund_of[derive_id("hold", payment_id, r.refund_id)] = r.status
        releasing = {m.hold_id for m in self.ledger_queue if isinstance(m, HoldReleaseRequested)}
        for balance in self.balances.values():
            for h in balance.holds:
                assert h.hold_id in refund_of, h
                assert refund_of[h.hold_id] in ("holding", "processing") or h.hold_id in releasing

    def _check_account(self, account_id: str) -> None:
        balance = self.balances.get(account_id)
        if balance is None:
            return
        check_invariants(balance)
        assert balance.frozen_minor == sum(h.amount_minor for h in balance.holds)
        assert balance.total_minor == balance.available_minor + balance.frozen_minor
        assert len({h.hold_id for h in balance.holds}) == len(balance.holds)
        if not accounts.overdraft_unlimited(account_id):
            assert balance.available_minor >= 0

    # ------------------------------------------------------------ quiescence

    def drain(self):
        """Answer everything outstanding (success and decline in turn, so both endings get
        checked); then no money may be left frozen or pending."""
        for step in range(200):
            if self.channel_pending:
                request_id = next(iter(self.channel_pending))
                request = self.channel_pending.pop(request_id)
                outcome = (ChannelOutcome.succeeded, ChannelOutcome.declined)[step % 2]
                callback = ChannelResponded(
                    request_id=request_id, payment_id=request.payment_id,
                    channel=request.channel, operation=request.operation,
                    outcome=outcome, amount_minor=request.amount_minor,
                    currency=request.currency, channel_serial=f"ser-{request_id}")
                self.channel_answered[request_id] = callback
                before = self.orders[request.payment_id]
                decision = decide_channel_response(before, callback, self._tick())
                self._record(request.payment_id, before, decision)
            elif self.ledger_queue:
                message = self.ledger_queue.pop(0)
                if isinstance(message, HoldRequested):
                    self._place(message)
                else:
                    self._release(message)
            elif self.hold_answers_pending:
                answer = self.hold_answers_pending.pop(0)
                first_time = all(a.hold_id != answer.hold_id for a in self.hold_answers_sent)
                self.hold_answers_sent.append(answer)
                before = self.orders[answer.payment_id]
                decision = decide_hold_resolved(before, answer, self._tick())
                assert decision.status is (C.accepted if first_time else C.duplicate)
                self._record(answer.payment_id, before, decision)
            else:
                break

        assert not (self.channel_pending or self.ledger_queue or self.hold_answers_pending)
        for balance in self.balances.values():
            assert balance.frozen_minor == 0, balance
            assert balance.holds == ()
        for order in self.orders.values():
            assert order.capture_pending_minor == 0
            assert all(r.status in ("succeeded", "failed") for r in order.refunds), order.refunds
            assert order.status not in (S.created, S.risk_review, S.processing)

    def teardown(self):
        # Every run ends quiescent and is checked there, unless a step already failed
        # (draining then would only bury the first failure under a second one).
        if sys.exc_info()[0] is None:
            self.drain()


def _any_in(auditor: PaymentAuditor, *statuses: OrderStatus) -> bool:
    return any(order.status in statuses for order in auditor.orders.values())


def _void_pending(order: Order) -> bool:
    answered = {a.request_id for a in order.applied}
    return any(r.operation is ChannelOperation.void and r.request_id not in answered
               for r in order.requests)


def _refund_allowed(order: Order | None, refund_id: str, amount: int) -> CommandStatus:
    """The one status an auditor accepts for a refund: checks in the pinned order."""
    if order is None:
        return C.order_not_found
    existing = next((r for r in order.refunds if r.refund_id == refund_id), None)
    if existing is not None:
        same = existing.amount_minor == amount
        return C.duplicate if same else C.refund_exists_with_different_amount
    if order.status not in (S.succeeded, S.partially_refunded):
        return C.refund_not_allowed_in_status
    live = sum(r.amount_minor for r in order.refunds if r.status != "failed")
    if live + amount > order.captured_minor:
        return C.refund_exceeds_captured
    return C.accepted


TestPaymentAuditor = PaymentAuditor.TestCase
TestPaymentAuditor.settings = settings(
    max_examples=300, stateful_step_count=60, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# ---------------------------------------------------------------- (b) one account

_HOLD_IDS = ("h-0", "h-1", "h-2", "h-3")
_ops = st.one_of(
    st.tuples(st.just("credit"), st.integers(0, 2_000)),
    st.tuples(st.just("debit"), st.integers(1, 2_000)),
    st.tuples(st.just("hold"), st.sampled_from(_HOLD_IDS), st.integers(-1, 1_500)),
    st.tuples(st.just("release"), st.sampled_from(_HOLD_IDS)),
    st.tuples(st.just("capture"), st.sampled_from(_HOLD_IDS), st.integers(-5, 1_500)),
    st.tuples(st.just("other_currency"), st.integers(-500, 500)),
)


class _AccountModel:
    """What the balance should be, kept independently of domain.ledger."""

    def __init__(self, unlimited: bool):
        self.unlimited = unlimited
        self.total = 0
        self.holds: dict[str, int] = {}
        self.decided: dict[str, PostingStatus] = {}
        """Each hold id's first decision, as the ledger stage keeps it in a table."""

    @property
    def available(self) -> int:
        return self.total - sum(self.holds.values())

    def expect(self, op) -> PostingStatus:
        kind = op[0]
        if kind == "other_currency":
            return P.currency_mismatch
        if kind == "credit":
            return P.applied
        if kind == "debit":
            return P.applied if self.unlimited or self.available >= op[1] else P.insufficient_funds
        hold_id = op[1]
        if kind == "release":
            return P.applied if hold_id in self.holds else P.hold_not_found
        if kind == "capture":
            if hold_id not in self.holds:
                return P.hold_not_found
            return P.applied if 0 < op[2] <= self.holds[hold_id] else P.hold_exceeded
        if hold_id in self.decided:
            return P.hold_exists if self.decided[hold_id] is P.applied else self.decided[hold_id]
        if op[2] <= 0:
            return P.amount_must_be_positive
        return P.applied if self.unlimited or self.available >= op[2] else P.insufficient_funds

    def apply(self, op) -> None:
        kind = op[0]
        if kind == "credit":
            self.total += op[1]
        elif kind == "debit":
            self.total -= op[1]
        elif kind == "hold":
            self.holds[op[1]] = op[2]
        else:
            if kind == "capture":
                self.total -= op[2]
            del self.holds[op[1]]


def _run_op(balance: AccountBalance, op, decided: dict):
    account_id, currency = balance.account_id, balance.currency
    kind = op[0]
    if kind == "credit":
        return apply_leg(balance, Leg(account_id=account_id, currency=currency,
                                      amount_minor=op[1]))
    if kind == "debit":
        return apply_leg(balance, Leg(account_id=account_id, currency=currency,
                                      amount_minor=-op[1]))
    if kind == "other_currency":
        return apply_leg(balance, Leg(account_id=account_id, currency="USD",
                                      amount_minor=op[1]))
    if kind == "hold":
        return place_hold(balance, Hold(hold_id=op[1], payment_id="pay_x", amount_minor=op[2]),
                          decided.get(op[1]))
    if kind == "release":
        return release_hold(balance, op[1])
    return apply_leg(balance, Leg(account_id=account_id, currency=currency,
                                  amount_minor=-op[2], hold_id=op[1]))


@settings(max_examples=250, deadline=None, database=None)
@given(st.sampled_from([accounts.merchant_pending("m-a", "EUR"),
                        accounts.channel_clearing("acq-a", "EUR"), "fees:EUR", "suspense:EUR"]),
       st.lists(_ops, max_size=40))
def test_account_invariants_hold_when_random_postings_and_holds(account_id, ops):
    balance = open_account(account_id, "EUR")
    model = _AccountModel(accounts.overdraft_unlimited(account_id))

    for op in ops:
        expected = model.expect(op)
        after, status = _run_op(balance, op, model.decided)
        if op[0] == "hold":
            model.decided.setdefault(op[1], status)

        assert status is expected, (op, status, expected)
        if status is P.applied:
            model.apply(op)
        else:
            assert after is balance
        check_invariants(after)
        assert after.total_minor == model.total
        assert {h.hold_id: h.amount_minor for h in after.holds} == model.holds
        assert after.frozen_minor == sum(model.holds.values())
        assert model.unlimited or after.available_minor >= 0
        balance = after
