"""Property tests: the money rules (DESIGN.md §3) hold after every step of random traffic.

(a) ``PaymentAuditor`` drives the pure domain through every product: channel payments (sale
    and pre-authorization, split, the payer switching channel while processing), balance
    payments against funded wallets (sale, and pre-authorization with several partial
    captures and a void), mandate collections, transfers, top-ups and withdrawals; and
    through the exception paths: declines, other amounts, replayed and contradicting
    callbacks, callback timeouts with late answers under both late-success rules,
    authorization expiry, stale deadlines, revocations and refunds; and through the
    channel's settlement lines (right money mostly, sometimes other money, sometimes while a
    refund is open, sometimes the same line again). Ledger work (holds placed, redelivered
    and released in any order) and the mandate owner's answers run in between, in any order.
    Orders get routing plans of up to three candidates: a retriable decline, or silence on
    a channel that fails over on timeout (never for a payout), starts the next one while
    attempts remain (the abandoned attempt may still answer: first success kept, any later
    one sent back). Risk gives each new order a verdict (mostly approve; sometimes review,
    then ops approve or reject it or its review expires; sometimes decline), and a payer's
    retry one too.

    Like TigerBeetle's auditor it is an independent model: before every message it
    registers the statuses it accepts and fails on any other; on success it updates its
    own expectation of the money each order moved (per account), which the ledger must
    match after every step, together with the money rules; and it predicts each failover
    (which candidate, which request) and checks that whatever risk held back sent nothing.
    At the end (in every other run after the channel went silent past its deadlines) it
    answers everything outstanding, sweeps every deadline, and checks that nothing is left
    pending or frozen without a reason and that the balances rebuild from the journal.
(b) Random posting/hold sequences on one account, checked against a small model.

Hypothesis prints the failing steps (and a ``@reproduce_failure`` blob) on failure; replay
with the same commit and that blob. ``PAYCORE_AUDIT_EXAMPLES`` sets how many runs (a).
"""

from __future__ import annotations

import os
import sys
from collections import Counter, defaultdict
from functools import lru_cache

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from decisions import of_type

from domain import accounts
from domain.commands import (
    CHANNEL_METHODS,
    Capture,
    CaptureMode,
    Method,
    Pay,
    Payer,
    Refund,
    Review,
    ReviewDecision,
    Revoke,
    SignMandate,
    SplitShare,
    TerminateMandate,
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
    Leg,
    MandateChecked,
    MandateCheckRequested,
    PaymentStatusChanged,
    SettlementReported,
)
from domain.ids import mandate_key_for, payment_id_for
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
from domain.mandates import (
    Mandate,
    MandateCode,
    MandateStatus,
    decide_mandate_check,
    decide_mandate_command,
)
from domain.money import fee_minor
from domain.order_state import (
    COMPENSATION_PREFIX,
    PAYER_HOLD,
    REVOKE_HOLD,
    SETTLE_HOLD_PREFIX,
    hold_id_for,
)
from domain.orders import (
    TERMINAL,
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
    decide_settlement,
)
from domain.risk import Hit, RiskDecision, Verdict
from domain.routing import (
    INTERNAL_CHANNEL,
    ChannelTerms,
    LateSuccess,
    Payment,
    Route,
    RoutePlan,
    RoutingRules,
    plan_route,
)

C = CommandStatus
S = OrderStatus
P = PostingStatus
M = MandateCode
OP = ChannelOperation
OK = ChannelOutcome.succeeded
DECLINED = ChannelOutcome.declined

# acq_a and acq_d refund a late success, acq_b and acq_c book it. acq_a's fixed fee eats
# small amounts whole (the merchant leg is dropped); acq_b is free. "91" (and "96" on
# acq_d) say the channel could not: the order fails over to the plan's next candidate;
# acq_b and acq_c also fail over when they stay silent past their timeout (acq_a times out,
# so its late successes are refunded by rule).
# Plans by priority: card EUR a, b, d; bank EUR a, d; bank JPY c, a; wallet EUR b, d;
# card JPY and mandate a alone; wallet JPY none.
RETRIABLE = "91"
CHANNELS = (
    ChannelTerms(name="acq_a", methods=(Method.card, Method.bank, Method.mandate),
                 currencies=("EUR", "JPY"), fee_bps=150, fee_fixed_minor=30, priority=10,
                 callback_timeout_ms=30_000, authorization_ttl_ms=86_400_000,
                 late_success=LateSuccess.refund, retriable_declines=(RETRIABLE,)),
    ChannelTerms(name="acq_b", methods=(Method.wallet, Method.card), currencies=("EUR",),
                 priority=20, callback_timeout_ms=60_000, authorization_ttl_ms=3_600_000,
                 late_success=LateSuccess.accept, retriable_declines=(RETRIABLE,),
                 failover_on_timeout=True),
    ChannelTerms(name="acq_c", methods=(Method.bank,), currencies=("JPY",), fee_fixed_minor=5,
                 priority=5, callback_timeout_ms=45_000, late_success=LateSuccess.accept,
                 retriable_declines=(RETRIABLE,), failover_on_timeout=True),
    ChannelTerms(name="acq_d", methods=(Method.card, Method.bank, Method.wallet),
                 currencies=("EUR",), fee_bps=80, priority=30, callback_timeout_ms=20_000,
                 authorization_ttl_ms=7_200_000, late_success=LateSuccess.refund,
                 retriable_declines=(RETRIABLE, "96")),
)
TERMS = {c.name: c for c in CHANNELS}
DECLINE_CODES = ("05", RETRIABLE, "96")


@lru_cache(maxsize=64)
def _plan(method: Method, currency: str, max_attempts: int) -> RoutePlan | None:
    """Candidates by priority (amount and merchant do not matter to these rules)."""
    rules = RoutingRules(channels=CHANNELS, max_attempts=max_attempts)
    return plan_route(rules, Payment("pay_x", "m-a", method, currency, 1))


def _plan_of(plan: RoutePlan | Route | None) -> RoutePlan | None:
    """What the domain makes of a bare Route: a plan of one."""
    if isinstance(plan, Route):
        return RoutePlan(candidates=(plan,), rule_id="", version="", scores="")
    return plan


def _first(plan: RoutePlan | Route | None) -> Route | None:
    plan = _plan_of(plan)
    return plan.candidates[0] if plan else None


# Risk's verdicts: mostly approve (or not screened), sometimes held for review or declined.
REVIEW_TTL_MS = 900_000
APPROVE = Verdict(decision=RiskDecision.approve, score=10, version="risk-1")
REVIEW = Verdict(decision=RiskDecision.review, score=60, version="risk-1",
                 hits=(Hit(rule_id="velocity", score=60, reason="4 payments in 60 s"),),
                 review_ttl_ms=REVIEW_TTL_MS)
DECLINE = Verdict(decision=RiskDecision.decline, score=95, version="risk-1",
                  hits=(Hit(rule_id="blocklist", score=95, reason="account blocked"),))
_verdicts = st.sampled_from((APPROVE,) * 6 + (None, REVIEW, REVIEW, DECLINE))
HELD_BACK = frozenset({"pending", "rejected", "expired"})
"""Review states in which nothing may have been sent for the order."""
BALANCE_AUTHORIZATION_TTL_MS = 2 * 86_400_000
MERCHANTS = ("m-a", "m-b")
SPLIT_MERCHANTS = ("m-a", "m-b", "m-c", "m-d")
ORDER_NOS = tuple(f"o-{n}" for n in range(1, 21))
WALLETS = ("w-1", "w-2", "w-3")
MANDATE_IDS = ("md-1", "md-2")
BANK_ACCOUNTS = ("bank-1", "bank-2")
CURRENCIES = ("EUR", "JPY")
KEYS = ("k-1", "k-2", "k-3")
CAPTURE_KEYS = ("c-1", "c-2", "c-3", "c-4", "c-5")
REFUND_IDS = ("rf-1", "rf-2", "rf-3")
ATTEMPTS = (OP.sale, OP.authorize, OP.payout)
PAYER_HOLD_LIVE = (S.processing, S.authorized, S.timed_out)
ENTRY_REASONS = frozenset({"capture", "refund", "topup", "transfer", "payout", "revoke",
                           "parked", "parked_returned", "funding", "settlement",
                           "settlement_clearing"})
SETTLEABLE = (S.succeeded, S.partially_refunded, S.refunded)
MERCHANTS_BUCKET = "merchants"
"""A split payment's merchants are checked together: the rounding rule is the domain's."""
UNCHANGED = frozenset({
    C.order_exists_with_different_payload, C.order_not_found, C.no_route,
    C.capture_not_allowed_in_status, C.capture_exceeds_authorized, C.void_not_allowed_in_status,
    C.refund_not_allowed_in_status, C.refund_exceeds_captured,
    C.refund_exists_with_different_amount, C.capture_exists_with_different_amount,
    C.order_already_paid, C.order_already_final, C.order_held_for_review,
    C.revoke_not_allowed_in_status,
    C.revoke_not_allowed_for_split, C.command_not_allowed_for_kind, C.deadline_not_due,
    C.mandate_answer_unexpected, C.hold_for_unknown_purpose, C.settlement_not_allowed_in_status,
    C.settlement_amount_mismatch, C.settlement_while_refund_open, C.revoke_after_settlement,
    C.review_not_pending,
})
"""Refusals: the order and the outputs stay exactly as they were."""

_amounts = st.one_of(st.integers(1, 40), st.integers(1, 3_000))
_ANSWERS = ("ok", "ok", "ok", "declined", "retriable", "retriable", "other_amount")
_ALL_TARGETS = [(m, n) for m in MERCHANTS for n in ORDER_NOS]
_targets = st.sampled_from(_ALL_TARGETS)
_wallets = st.sampled_from(WALLETS)
_currencies = st.sampled_from(CURRENCIES)
_keys = st.sampled_from(KEYS)
_channel_methods = st.sampled_from(sorted(CHANNEL_METHODS))
_split = st.lists(st.tuples(st.sampled_from(SPLIT_MERCHANTS),
                            st.one_of(st.integers(1, 5), st.integers(1, 400))),
                  min_size=2, max_size=4, unique_by=lambda share: share[0])


def _payload(cmd) -> dict:
    return cmd.model_dump(exclude={"idempotency_key"})


def _fee(channel: str, amount_minor: int) -> int:
    if channel == INTERNAL_CHANNEL:
        return 0
    terms = TERMS[channel]
    return fee_minor(amount_minor, terms.fee_bps, terms.fee_fixed_minor)


def _is_internal(cmd) -> bool:
    """Money that never leaves our ledger: answered on the spot, no channel request."""
    return isinstance(cmd, Transfer) or (isinstance(cmd, Pay) and cmd.method is Method.balance)


def _channel_pay(cmd) -> bool:
    return isinstance(cmd, Pay) and cmd.method in CHANNEL_METHODS


def _mandate_pay(cmd) -> bool:
    return isinstance(cmd, Pay) and cmd.method is Method.mandate


def _other_attempt(origin, cmd) -> bool:
    """The payer paying the same order and money again by a channel method."""
    return (_channel_pay(origin) and _channel_pay(cmd)
            and cmd.amount_minor == origin.amount_minor and cmd.currency == origin.currency
            and cmd.capture is origin.capture and cmd.split == origin.split)


def _payer_wallet(cmd) -> str:
    if isinstance(cmd, Pay):
        return accounts.customer_wallet(cmd.payer.account_id, cmd.currency)
    if isinstance(cmd, Transfer):
        return accounts.customer_wallet(cmd.from_account_id, cmd.currency)
    return accounts.customer_wallet(cmd.account_id, cmd.currency)


def _same_money(request: ChannelRequested, callback: ChannelResponded) -> bool:
    return (callback.amount_minor == request.amount_minor
            and callback.currency == request.currency)


def _sent_back(request: ChannelRequested) -> bool:
    return request.reference.startswith(COMPENSATION_PREFIX)


def _is_merchant(account_id: str) -> bool:
    """A merchant's pending or settled account (both ids start with the kind "merchant")."""
    return account_id.startswith("merchant:")


def _is_settled(account_id: str) -> bool:
    return _is_merchant(account_id) and account_id.split(":")[2] == "settled"


def _settled_of(pending_id: str) -> str:
    _, merchant_id, _, currency = pending_id.split(":")
    return accounts.merchant_settled(merchant_id, currency)


def _nonzero(amounts: Counter) -> dict[str, int]:
    return {account: amount for account, amount in amounts.items() if amount}


_hold_id = lru_cache(maxsize=4_096)(hold_id_for)
"""The invariants look hold ids up every step: hashing them once keeps the run fast."""




class PaymentAuditor(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.now_ms = 1_000
        # What the auditor knows of each order.
        self.orders: dict[str, Order] = {}
        self.origin: dict[str, Pay | Transfer | TopUp | Withdraw] = {}
        self.attempt_payloads: dict[str, list[dict]] = {}
        """Payloads of the payer's later attempts per order: a copy of one is a duplicate."""
        self.last_status: dict[str, OrderStatus] = {}
        self.deadlines_seen: dict[str, set[int]] = defaultdict(set)
        self.capture_asks: dict[tuple[str, str], int] = {}
        self.voids: dict[str, dict[str, str]] = defaultdict(dict)
        """Merchant voids per order: request id -> pending | succeeded | declined."""
        self.stuck: set[str] = set()
        """Orders where a channel reported other money (a capture, a refund, or a late answer
        after a timeout): recorded, nothing booked, left to reconciliation."""
        # Routing and risk, as the auditor saw them.
        self.plans: dict[str, RoutePlan] = {}
        self.used: dict[str, list[Route]] = {}
        """Per order, the routes of its attempts so far: the first candidate, then the
        payer's own retries and the failovers, in order."""
        self.attempt_log: dict[str, list[ChannelRequested]] = defaultdict(list)
        self.attempt_ids: set[str] = set()
        self.failovers: Counter = Counter()
        self.kept: dict[str, list[str]] = defaultdict(list)
        """Per order, the attempts whose success the order kept (at most one)."""
        self.backed: set[str] = set()
        """Attempts whose success was parked and sent back (a duplicate or late charge)."""
        self.verdicts: dict[str, Verdict | None] = {}
        self.review: dict[str, str] = {}
        self.risk_declined: set[str] = set()
        self.effects: Counter = Counter()
        """Per payment id: requests, holds, releases, mandate checks and entries emitted."""
        # The channel.
        self.channel_pending: dict[str, ChannelRequested] = {}
        self.channel_answered: dict[str, ChannelResponded] = {}
        self.backs: dict[str, list[ChannelRequested]] = defaultdict(list)
        # The ledger stage.
        self.ledger_queue: list = []
        self.hold_requests_done: dict[str, HoldRequested] = {}
        self.hold_decisions: dict[str, PostingStatus] = {}
        self.hold_answers_pending: list[HoldResolved] = []
        self.hold_answers_sent: list[HoldResolved] = []
        self.balances: dict[str, AccountBalance] = {}
        self.applied_postings: set[str] = set()
        self.entry_legs: dict[str, tuple[Leg, ...]] = {}
        self.entry_payment: dict[str, str] = {}
        self.ledger_log: list = []
        self.journal_totals: Counter = Counter()
        self.hold_model: dict[str, dict[str, int]] = defaultdict(dict)
        # The mandate owner.
        self.mandates: dict[str, Mandate] = {}
        self.mandate_origin: dict[str, SignMandate] = {}
        self.mandate_counted: dict[str, set[str]] = defaultdict(set)
        self.checks_pending: list[MandateCheckRequested] = []
        self.checks_done: list[MandateCheckRequested] = []
        self.mandate_answers_pending: list[MandateChecked] = []
        self.mandate_answers_sent: list[MandateChecked] = []
        # The auditor's own money: per payment id, per account (split merchants bucketed).
        self.actual: dict[str, Counter] = defaultdict(Counter)
        self.model: dict[str, Counter] = defaultdict(Counter)
        self.captured: Counter = Counter()
        self.refunded: Counter = Counter()
        self.fees_booked: Counter = Counter()
        self.capture_pending: Counter = Counter()
        self.paid_channel: dict[str, str] = {}
        self.fundings = 0
        # Settlement, as the auditor saw it.
        self.merchant_money: dict[str, Counter] = defaultdict(Counter)
        """Per payment, per merchant account (pending and settled, never bucketed): what its
        legs moved, from the postings."""
        self.refund_account: dict[tuple[str, str], str] = {}
        """Where each refund's hold was asked: pending, or settled once the order settled."""
        self.settlement: dict[str, str] = {}
        """Orders whose line was taken: holding | settled | failed."""
        self.settle_parts: dict[str, dict[str, tuple[str, int]]] = {}
        """Per payment, settlement hold id -> (pending account, amount)."""
        self.settle_answers: dict[str, dict[str, bool]] = defaultdict(dict)
        self.lines_sent: list[SettlementReported] = []
        self.drain_refunded: set[tuple[str, str]] = set()

    # ------------------------------------------------------------ plumbing

    def _tick(self) -> int:
        self.now_ms += 7
        return self.now_ms

    def _internal(self, payment_id: str) -> bool:
        return _is_internal(self.origin[payment_id])

    def _decided(self, payment_id: str, before: Order | None, decision: Decision,
                 allowed: set[CommandStatus]) -> Decision:
        """Fail on any status not registered before the message; then record the decision."""
        assert isinstance(decision.status, CommandStatus)
        assert decision.status in allowed, (decision.status, allowed)
        event("decision", decision.status.name)
        if decision.status in UNCHANGED:
            assert decision.order == before, decision.status
            assert decision.outputs == (), decision.status
        if decision.status is C.duplicate:
            assert decision.order == before
        self._record(payment_id, before, decision)
        return decision

    def _record(self, payment_id: str, before: Order | None, decision: Decision) -> None:
        after = decision.order
        if after is not None and (before is None or before.status is not after.status):
            event("reached", f"{after.kind.value} {after.status.value}")
        if before is not None:
            assert after is not None
            assert after.status == before.status or after.status in TRANSITIONS[before.status], (
                before.status, after.status)
            if before.status in TERMINAL:
                assert after.status is before.status
        if after is not None:
            assert after.payment_id == payment_id
            self.orders[payment_id] = after
            if after.deadline_ms:
                self.deadlines_seen[payment_id].add(after.deadline_ms)
        told = of_type(decision, PaymentStatusChanged)
        for changed in told:
            previous = changed.previous_status
            assert previous in ("",) + tuple(s.value for s in OrderStatus), changed
            if previous:
                to = OrderStatus(changed.status)
                assert changed.status == previous or to in TRANSITIONS[OrderStatus(previous)]
        if after is not None and (before is None or after.status is not before.status):
            assert told and told[-1].status == after.status.value, told  # merchants hear it
        for request in of_type(decision, ChannelRequested):
            if request.operation in ATTEMPTS and not _sent_back(request):
                self._attempt_started(payment_id, before, decision, request)
        self._emit(decision.outputs)

    def _attempt_started(self, payment_id: str, before: Order | None, decision: Decision,
                         request: ChannelRequested) -> None:
        """Each attempt has its own request id, and none starts once the order is paid."""
        if decision.status is C.duplicate:  # the first request again: dropped by its id
            assert request.request_id in self.attempt_ids, request
            return
        assert request.request_id not in self.attempt_ids, ("attempt id reused", request)
        assert before is None or before.status in (S.created, S.risk_review, S.processing), (
            "new attempt after the order was decided", before.status, request)
        assert decision.order.status is S.processing
        assert not self.kept[payment_id]
        self.attempt_ids.add(request.request_id)
        self.attempt_log[payment_id].append(request)

    def _emit(self, outputs) -> None:
        for message in outputs:
            if not isinstance(message, PaymentStatusChanged):
                self.effects[message.payment_id] += 1
            if isinstance(message, ChannelRequested):
                assert message.channel != INTERNAL_CHANNEL, message  # answered on the spot
                if message.operation is OP.void and not _sent_back(message):
                    self.voids[message.payment_id].setdefault(message.request_id, "pending")
                if message.request_id not in self.channel_answered:
                    self.channel_pending.setdefault(message.request_id, message)
            elif isinstance(message, JournalEntryDecided):
                self._post(message)
            elif isinstance(message, (HoldRequested, HoldReleaseRequested)):
                self.ledger_queue.append(message)
            elif isinstance(message, MandateCheckRequested):
                self.checks_pending.append(message)
            else:
                assert isinstance(message, PaymentStatusChanged), type(message)

    def _account(self, account_id: str, currency: str) -> AccountBalance:
        return self.balances.get(account_id) or open_account(account_id, currency)

    def _bucket(self, payment_id: str, account_id: str) -> str:
        origin = self.origin.get(payment_id)
        split = isinstance(origin, Pay) and origin.split
        return MERCHANTS_BUCKET if split and _is_merchant(account_id) else account_id

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
            assert status is P.applied, (status, leg, entry)
            self.balances[leg.account_id] = after
            self.applied_postings.add(posting_id)
            self.ledger_log.append(leg)
            self.journal_totals[leg.account_id] += leg.amount_minor
            self.actual[entry.payment_id][self._bucket(entry.payment_id, leg.account_id)] += \
                leg.amount_minor
            if _is_merchant(leg.account_id):
                self.merchant_money[entry.payment_id][leg.account_id] += leg.amount_minor
            if leg.hold_id:
                self._hold_taken(leg)

    def _hold_taken(self, leg: Leg) -> None:
        holds = self.hold_model[leg.account_id]
        taken = -leg.amount_minor
        assert 0 < taken <= holds[leg.hold_id], (leg, holds)
        if leg.hold_final or taken == holds[leg.hold_id]:
            del holds[leg.hold_id]
        else:
            holds[leg.hold_id] -= taken

    @staticmethod
    def _check_entry_shape(entry: JournalEntryDecided) -> None:
        """No zero legs; a limited account is only debited through a hold placed first (so
        no leg can be refused once decided); captures only credit merchants."""
        assert entry.reason in ENTRY_REASONS, entry.reason
        for leg in entry.legs:
            assert leg.amount_minor != 0, entry
            if leg.amount_minor < 0 and not accounts.overdraft_unlimited(leg.account_id):
                assert leg.hold_id, ("limited account debited without a hold", entry)
            if leg.hold_id:
                assert leg.amount_minor < 0, entry
            if _is_merchant(leg.account_id):
                assert entry.reason not in ("capture",) or leg.amount_minor > 0, entry
            if _is_settled(leg.account_id):  # only settlement brings money in; refunds take
                assert entry.reason == ("settlement" if leg.amount_minor > 0 else "refund"), entry
        if entry.reason == "settlement":
            PaymentAuditor._check_settlement_shape(entry)

    @staticmethod
    def _check_settlement_shape(entry: JournalEntryDecided) -> None:
        """Each merchant's frozen pending money, all of it to its own settled account."""
        debits = {leg.account_id: -leg.amount_minor for leg in entry.legs if leg.amount_minor < 0}
        credits = {leg.account_id: leg.amount_minor for leg in entry.legs if leg.amount_minor > 0}
        assert all(_is_merchant(a) and not _is_settled(a) for a in debits), entry
        assert all(leg.hold_id for leg in entry.legs if leg.amount_minor < 0), entry
        assert {_settled_of(a): amount for a, amount in debits.items()} == credits, entry

    def _pick(self, data, *fitting: OrderStatus) -> str:
        """Usually an order in a status where the message makes sense (so runs get deep),
        sometimes any order (so the refusals get exercised)."""
        known = sorted(self.orders)
        apt = [pid for pid in known if self.orders[pid].status in fitting
               and self.orders[pid].kind is OrderKind.payment]
        if apt and data.draw(st.integers(0, 4), label="apt") < 4:
            return data.draw(st.sampled_from(apt), label="order")
        return data.draw(st.sampled_from(known), label="order")

    def _target(self, data) -> tuple[str, str]:
        """Usually a new merchant order; sometimes one we already have."""
        fresh = [who for who in _ALL_TARGETS if payment_id_for(*who) not in self.orders]
        again = not fresh or data.draw(st.integers(0, 4), label="again") == 4
        return data.draw(st.sampled_from(_ALL_TARGETS if again else fresh), label="who")

    @staticmethod
    def _amount(data, rest: int) -> int:
        """The rest, part of it, just over it, or anything (so the limits get exercised)."""
        how = data.draw(st.sampled_from(["part", "rest", "over", "any"]), label="how")
        if how == "rest" and rest > 0:
            return rest
        if how == "part" and rest > 0:
            return data.draw(st.integers(1, rest), label="amount")
        if how == "over":
            return max(rest, 0) + 1
        return data.draw(_amounts, label="amount")

    def _open_attempts(self, payment_id: str) -> list[ChannelRequested]:
        return [r for r in self.channel_pending.values() if r.payment_id == payment_id
                and r.operation in ATTEMPTS and not _sent_back(r)]

    def _void_blocks(self, payment_id: str) -> bool:
        """A void is outstanding or went through: another one is a duplicate."""
        return any(s in ("pending", "succeeded") for s in self.voids[payment_id].values())

    # ------------------------------------------------------------ the auditor's money

    def _source(self, payment_id: str) -> str:
        """Where a payment's money comes from, and goes back to on refund or revocation."""
        origin = self.origin[payment_id]
        if origin.method is Method.balance:
            return _payer_wallet(origin)
        return accounts.channel_clearing(self.paid_channel[payment_id], origin.currency)

    def _merchant(self, payment_id: str) -> str:
        origin = self.origin[payment_id]
        return self._bucket(payment_id, accounts.merchant_pending(origin.merchant_id,
                                                                  origin.currency))

    def _book(self, payment_id: str, channel: str, amount_minor: int) -> None:
        """Money in (or out, for a payout) for an order, at the channel's fee."""
        origin, model = self.origin[payment_id], self.model[payment_id]
        ccy, fee = origin.currency, _fee(channel, amount_minor)
        self.captured[payment_id] += amount_minor
        if isinstance(origin, Pay):
            model[self._source(payment_id)] -= amount_minor
            model[self._merchant(payment_id)] += amount_minor - fee
            model[accounts.fee_revenue(ccy)] += fee
            self.fees_booked[payment_id] += fee
        elif isinstance(origin, TopUp):
            model[accounts.channel_clearing(channel, ccy)] -= amount_minor
            model[_payer_wallet(origin)] += amount_minor - fee
            model[accounts.fee_revenue(ccy)] += fee
        elif isinstance(origin, Withdraw):  # no fee on payouts
            model[_payer_wallet(origin)] -= amount_minor
            model[accounts.channel_clearing(channel, ccy)] += amount_minor
        else:
            model[_payer_wallet(origin)] -= amount_minor
            model[accounts.customer_wallet(origin.to_account_id, ccy)] += amount_minor
        event("booked", f"{type(origin).__name__} via {channel}")

    def _refunded(self, payment_id: str, refund_id: str, amount_minor: int,
                  decision: Decision) -> None:
        """Taken from where its hold was asked: settled once the order settled."""
        account_id = self.refund_account[(payment_id, refund_id)]
        entry = next(e for e in of_type(decision, JournalEntryDecided) if e.reason == "refund")
        debit = next(leg for leg in entry.legs if leg.amount_minor < 0)
        assert (debit.account_id, debit.hold_id, -debit.amount_minor) == (
            account_id, _hold_id(payment_id, refund_id), amount_minor), entry
        self.refunded[payment_id] += amount_minor
        self.model[payment_id][self._bucket(payment_id, account_id)] -= amount_minor
        self.model[payment_id][self._source(payment_id)] += amount_minor
        event("refunded from", "settled" if _is_settled(account_id) else "pending")

    def _revocation_net(self, payment_id: str) -> int:
        return self.captured[payment_id] - self.fees_booked[payment_id]

    def _reversed(self, payment_id: str) -> None:
        """Revocation: the capture undone in full, our fee included."""
        model, fee = self.model[payment_id], self.fees_booked[payment_id]
        model[self._merchant(payment_id)] -= self._revocation_net(payment_id)
        model[self._source(payment_id)] += self.captured[payment_id]
        model[accounts.fee_revenue(self.origin[payment_id].currency)] -= fee
        event("revoked", "internal" if self._internal(payment_id) else "channel")

    def _park(self, payment_id: str, channel: str, amount_minor: int, sign: int = 1) -> None:
        ccy = self.origin[payment_id].currency
        self.model[payment_id][accounts.channel_clearing(channel, ccy)] -= sign * amount_minor
        self.model[payment_id][accounts.suspense(ccy)] += sign * amount_minor

    def _fund(self, wallet: str, currency: str, amount_minor: int) -> None:
        """Money in from outside, booked directly from a clearing account."""
        self.fundings += 1
        payment_id = f"fund-{self.fundings}"
        legs = (Leg(account_id=accounts.channel_clearing("acq_a", currency), currency=currency,
                    amount_minor=-amount_minor),
                Leg(account_id=accounts.customer_wallet(wallet, currency), currency=currency,
                    amount_minor=amount_minor))
        for leg in legs:
            self.model[payment_id][leg.account_id] += leg.amount_minor
        self._post(JournalEntryDecided(entry_id=f"je_fund_{self.fundings}",
                                       payment_id=payment_id, reason="funding", legs=legs,
                                       decided_at_ms=self._tick()))

    # ------------------------------------------------------------ funding

    @initialize(funds=st.lists(st.tuples(_wallets, _currencies, st.integers(1, 6_000)),
                               max_size=4))
    def open_wallets(self, funds):
        """Most runs start with some wallets funded, so balance payments get deep."""
        for wallet, currency, amount in funds:
            self._fund(wallet, currency, amount)

    @rule(wallet=_wallets, currency=_currencies, amount=_amounts)
    def fund_wallet(self, wallet, currency, amount):
        self._fund(wallet, currency, amount)

    # ------------------------------------------------------------ new orders

    @rule(data=st.data(), amount=_amounts, currency=_currencies,
          method=st.sampled_from([Method.card, Method.bank, Method.wallet, Method.mandate]),
          mode=st.sampled_from(list(CaptureMode)), key=_keys)
    def pay(self, data, amount, currency, method, mode, key):
        """By a channel or a mandate, sometimes split; usually a new order."""
        if method is not Method.mandate:
            self._pay(data, amount, currency, method, mode, key, {})
            return
        who = self._target(data)
        signed = sorted(m.mandate_id for m in self.mandates.values()
                        if m.merchant_id == who[0] and m.status is MandateStatus.active)
        mandate_id = data.draw(st.sampled_from(MANDATE_IDS), label="mandate")
        if signed and data.draw(st.integers(0, 3), label="signed") < 3:
            mandate_id = data.draw(st.sampled_from(signed), label="mandate")
            mandate = self.mandates[mandate_key_for(who[0], mandate_id)]
            currency = mandate.currency
            amount = data.draw(st.integers(1, mandate.amount_minor_max + 1), label="amount")
        self._pay(data, amount, currency, method, CaptureMode.auto, key,
                  {"mandate_id": mandate_id}, who)

    @rule(data=st.data(), wallet=_wallets, currency=_currencies,
          mode=st.sampled_from(list(CaptureMode)), key=_keys)
    def pay_from_balance(self, data, wallet, currency, mode, key):
        """From the payer's wallet: usually within what it holds, sometimes more."""
        account_id = accounts.customer_wallet(wallet, currency)
        amount = self._within(data, account_id, None)
        self._pay(data, amount, currency, Method.balance, mode, key,
                  {"payer": Payer(account_id=wallet)})

    def _within(self, data, account_id: str, amount: int | None) -> int:
        """Usually within what the wallet holds, sometimes more (or any amount)."""
        available = self.journal_totals[account_id] - sum(self.hold_model[account_id].values())
        if available > 0 and data.draw(st.integers(0, 3), label="fits") < 3:
            return data.draw(st.integers(1, available), label="amount")
        return data.draw(_amounts, label="amount") if amount is None else amount

    def _pay(self, data, amount, currency, method, mode, key, fields: dict,
             who: tuple[str, str] | None = None) -> None:
        if data.draw(st.integers(0, 3), label="split?") == 3:
            shares = data.draw(_split, label="split")
            fields["split"] = tuple(SplitShare(merchant_id=m, amount_minor=a) for m, a in shares)
            amount = sum(a for _, a in shares)
        who = who or self._target(data)
        cmd = Pay(merchant_id=who[0], merchant_order_no=who[1], idempotency_key=key,
                  amount_minor=amount, currency=currency, method=method, capture=mode, **fields)
        self._submit(data, cmd, self._routing(data, method, currency))

    @staticmethod
    def _routing(data, method: Method, currency: str) -> RoutePlan | Route | None:
        """Usually a plan of two or three attempts; sometimes one, or a bare Route."""
        attempts = data.draw(st.sampled_from([2, 3, 3, 2, 1, 0]), label="max attempts")
        if attempts:
            return _plan(method, currency, attempts)
        return _first(_plan(method, currency, 1))

    @precondition(lambda self: any(_channel_pay(o) for o in self.origin.values()))
    @rule(data=st.data(), method=_channel_methods, key=_keys)
    def payer_switches_method(self, data, method, key):
        """No answer yet: the payer pays the same order by another channel method."""
        candidates = sorted(pid for pid, o in self.origin.items() if _channel_pay(o))
        waiting = [pid for pid in candidates if self.orders[pid].status is S.processing]
        payment_id = data.draw(st.sampled_from(waiting if waiting and data.draw(
            st.booleans(), label="waiting") else candidates), label="order")
        origin = self.origin[payment_id]
        cmd = Pay.model_validate({**origin.model_dump(), "method": method,
                                  "idempotency_key": key})
        self._submit(data, cmd, self._routing(data, method, origin.currency))

    @rule(data=st.data(), kind=st.sampled_from(["transfer", "topup", "withdraw"]),
          wallet=_wallets, other=_wallets, amount=_amounts, currency=_currencies,
          method=_channel_methods, key=_keys)
    def wallet_order(self, data, kind, wallet, other, amount, currency, method, key):
        """A transfer to another wallet, a top-up from a channel, or a payout to one; money
        out of a wallet usually within what it holds."""
        who = self._target(data)
        if kind != "topup":
            amount = self._within(data, accounts.customer_wallet(wallet, currency), amount)
        ids = dict(merchant_id=who[0], merchant_order_no=who[1], idempotency_key=key,
                   amount_minor=amount, currency=currency)
        if kind == "transfer":
            if other == wallet:
                other = WALLETS[(WALLETS.index(wallet) + 1) % len(WALLETS)]
            self._submit(data, Transfer(**ids, from_account_id=wallet, to_account_id=other),
                         None)
        elif kind == "topup":
            self._submit(data, TopUp(**ids, account_id=wallet, method=method),
                         self._routing(data, method, currency))
        else:
            self._submit(data, Withdraw(**ids, account_id=wallet, method=method),
                         self._routing(data, method, currency))

    def _submit(self, data, cmd, plan) -> None:
        payment_id = cmd.subject_id()
        before = self.orders.get(payment_id)
        verdict = data.draw(_verdicts, label="verdict")
        route = _first(plan)
        allowed = self._create_expected(before, cmd, route, verdict)

        decision = decide_command(before, cmd, plan, self._tick(), BALANCE_AUTHORIZATION_TTL_MS,
                                  verdict=verdict)

        if before is None and decision.status is C.accepted:
            self._created(payment_id, cmd, plan, verdict)
        elif decision.status is C.accepted:  # the payer's later attempt
            self.attempt_payloads.setdefault(payment_id, []).append(_payload(cmd))
            self.used[payment_id].append(route)
        self._decided(payment_id, before, decision, allowed)
        event("order", f"{type(cmd).__name__} {'again' if before else 'new'}: "
              f"{decision.status.name}")
        if decision.status is C.accepted:
            self._check_started(before, decision, cmd, route, verdict)
        elif decision.status is C.attempt_refused_by_risk:  # noted, nothing else
            assert decision.outputs == ()
            assert decision.order.model_copy(update={
                "history": before.history, "updated_at_ms": before.updated_at_ms}) == before
            event("attempt", f"refused by risk ({verdict.decision.value})")

    def _created(self, payment_id: str, cmd, plan, verdict: Verdict | None) -> None:
        self.origin[payment_id] = cmd
        plan = _plan_of(plan)
        if _is_internal(cmd):  # the domain routes it inside the ledger
            plan = RoutePlan(candidates=(Route(channel=INTERNAL_CHANNEL, fee_bps=0,
                                               fee_fixed_minor=0, reason=""),),
                             rule_id="internal", version="", scores="")
        self.plans[payment_id] = plan
        self.used[payment_id] = [plan.candidates[0]]
        self.verdicts[payment_id] = verdict
        decision = verdict.decision if verdict is not None else RiskDecision.approve
        self.review[payment_id] = "pending" if decision is RiskDecision.review else ""
        if decision is RiskDecision.decline:
            self.risk_declined.add(payment_id)

    def _create_expected(self, before: Order | None, cmd, route,
                         verdict: Verdict | None) -> set[CommandStatus]:
        if before is None:
            return {C.accepted} if _is_internal(cmd) or route is not None else {C.no_route}
        origin = self.origin[before.payment_id]
        later = self.attempt_payloads.get(before.payment_id, [])
        if _payload(cmd) == _payload(origin) or _payload(cmd) in later:
            return {C.duplicate}
        if not _other_attempt(origin, cmd):
            return {C.order_exists_with_different_payload}
        if before.status is S.failed:
            return {C.order_already_final}
        if before.status is S.risk_review:
            return {C.order_held_for_review}
        if before.status is not S.processing:
            return {C.order_already_paid}
        if route is None:
            return {C.no_route}
        if verdict is not None and verdict.decision is not RiskDecision.approve:
            return {C.attempt_refused_by_risk}
        return {C.accepted}

    def _check_started(self, before: Order | None, decision: Decision, cmd, route,
                       verdict: Verdict | None) -> None:
        after = decision.order
        requests = of_type(decision, ChannelRequested)
        if before is not None:
            assert after.status is S.processing
            assert [(r.channel, r.amount_minor) for r in requests] == [
                (route.channel, cmd.amount_minor)]
            event("attempt", "payer switched channel")
            return
        assert after.risk == verdict
        if not _is_internal(cmd):
            assert after.route_plan == self.plans[after.payment_id]
        said = verdict.decision if verdict is not None else RiskDecision.approve
        if said is RiskDecision.approve:
            self._check_proceeded(decision, cmd, route, S.created)
            return
        # Held back by risk: only the merchant hears of it; no request, hold or entry.
        assert all(isinstance(m, PaymentStatusChanged) for m in decision.outputs), decision
        assert after.requests == () and after.payer_hold == "" and after.retry_routes == ()
        if said is RiskDecision.decline:
            assert after.status is S.failed and after.deadline_ms == 0
            assert after.history[-1].reason.startswith("risk decline"), after.history[-1]
        else:
            assert after.status is S.risk_review and after.review == "pending"
            assert after.deadline_ms == self.now_ms + verdict.review_ttl_ms
        event("risk", f"{type(cmd).__name__} {said.value}")

    def _check_proceeded(self, decision: Decision, cmd, route, waiting: OrderStatus) -> None:
        """Risk let it through: the mandate is checked (the order ``waiting`` for it), the
        payer's funds frozen, or the first candidate asked to pay."""
        after = decision.order
        requests = of_type(decision, ChannelRequested)
        holds = of_type(decision, HoldRequested)
        if isinstance(cmd, Pay) and cmd.method is Method.mandate:
            assert after.status is waiting and not requests
            assert len(of_type(decision, MandateCheckRequested)) == 1
        elif _is_internal(cmd) or isinstance(cmd, Withdraw):
            assert after.status is S.processing and after.payer_hold == "holding"
            assert [(h.account_id, h.amount_minor) for h in holds] == [
                (_payer_wallet(cmd), cmd.amount_minor)]
            assert not requests
        else:
            assert after.status is S.processing and not holds
            assert [(r.channel, r.amount_minor) for r in requests] == [
                (route.channel, cmd.amount_minor)]

    # ------------------------------------------------------------ follow-ups

    @precondition(lambda self: _any_payment_in(self, S.authorized))
    @rule(data=st.data(), key=st.sampled_from(CAPTURE_KEYS))
    def capture_part(self, data, key):
        """One of several partial captures (a rule of its own so they come often)."""
        payment_id = self._pick(data, S.authorized)
        before = self.orders[payment_id]
        left = before.authorized_minor - before.captured_minor - before.capture_pending_minor
        amount = data.draw(st.integers(1, left), label="amount") if left > 1 else None
        self._capture(payment_id, key, amount)

    @precondition(lambda self: _any_payment_in(self, S.authorized))
    @rule(data=st.data(), rest=st.booleans(), key=st.sampled_from(CAPTURE_KEYS))
    def capture(self, data, rest, key):
        """The rest (no amount), or the rest, more, part or anything given as an amount."""
        payment_id = self._pick(data, S.authorized)
        before = self.orders[payment_id]
        left = before.authorized_minor - before.captured_minor - before.capture_pending_minor
        self._capture(payment_id, key, None if rest else self._amount(data, left))

    def _capture(self, payment_id: str, key: str, amount: int | None) -> None:
        before = self.orders[payment_id]
        left = before.authorized_minor - before.captured_minor - before.capture_pending_minor
        cmd = Capture(merchant_id=before.merchant_id, merchant_order_no=before.merchant_order_no,
                      idempotency_key=key, amount_minor=amount)
        allowed = self._capture_expected(before, key, amount)

        decision = decide_command(before, cmd, None, self._tick())

        self._decided(payment_id, before, decision, allowed)
        event("capture", f"{before.method} {decision.status.name}")
        if decision.status is C.accepted:
            asked = left if amount is None else amount
            self.capture_asks[(payment_id, key)] = asked
            self._capture_sent(payment_id, before, decision, asked)

    def _capture_expected(self, before: Order, key: str, amount: int | None) -> set:
        if before.kind is not OrderKind.payment:
            return {C.command_not_allowed_for_kind}
        earlier = self.capture_asks.get((before.payment_id, key))
        if earlier is not None:  # idempotency is checked before status (STYLE rule 4)
            same = amount is None or amount == earlier
            return {C.duplicate} if same else {C.capture_exists_with_different_amount}
        if before.status is not S.authorized or any(
                s == "pending" for s in self.voids[before.payment_id].values()):
            return {C.capture_not_allowed_in_status}
        remaining = before.authorized_minor - before.captured_minor \
            - self.capture_pending[before.payment_id]
        asked = remaining if amount is None else amount
        return {C.accepted} if 0 < asked <= remaining else {C.capture_exceeds_authorized}

    def _capture_sent(self, payment_id: str, before: Order, decision: Decision,
                      asked: int) -> None:
        after = decision.order
        if not self._internal(payment_id):
            self.capture_pending[payment_id] += asked
            assert [r.amount_minor for r in of_type(decision, ChannelRequested)] == [asked]
            return
        self._book(payment_id, INTERNAL_CHANNEL, asked)
        final = before.captured_minor + asked == before.authorized_minor
        assert after.status is (S.succeeded if final else S.authorized)
        event("balance capture", "final" if final else "partial")

    @precondition(lambda self: _any_payment_in(self, S.authorized))
    @rule(data=st.data(), key=_keys)
    def void(self, data, key):
        payment_id = self._pick(data, S.authorized)
        before = self.orders[payment_id]
        cmd = Void(merchant_id=before.merchant_id, merchant_order_no=before.merchant_order_no,
                   idempotency_key=key)
        if before.kind is not OrderKind.payment:
            allowed = {C.command_not_allowed_for_kind}
        elif self._void_blocks(payment_id):
            allowed = {C.duplicate}
        elif before.status is not S.authorized or before.capture_pending_minor:
            allowed = {C.void_not_allowed_in_status}
        else:
            allowed = {C.accepted}

        decision = decide_command(before, cmd, None, self._tick())

        self._decided(payment_id, before, decision, allowed)
        if decision.status is C.accepted:
            self._void_sent(payment_id, before, decision)

    def _void_sent(self, payment_id: str, before: Order, decision: Decision) -> None:
        after = decision.order
        if not self._internal(payment_id):
            assert after.status is S.authorized
            assert [r.operation for r in of_type(decision, ChannelRequested)] == [OP.void]
            return
        self.voids[payment_id][f"internal-{len(self.voids[payment_id])}"] = "succeeded"
        assert after.status is (S.succeeded if before.captured_minor else S.canceled)
        releases = of_type(decision, HoldReleaseRequested)
        assert [r.hold_id for r in releases] == [_hold_id(payment_id, PAYER_HOLD)]
        event("balance void", "after captures" if before.captured_minor else "nothing captured")

    @precondition(lambda self: _any_payment_in(self, S.succeeded, S.partially_refunded))
    @rule(data=st.data(), refund_id=st.sampled_from(REFUND_IDS))
    def refund(self, data, refund_id):
        """Usually a paid order (often a settled one), part, all or more of what is left."""
        payment_id = self._pick(data, S.succeeded, S.partially_refunded)
        settled = self._settled_refundable()
        if settled and data.draw(st.booleans(), label="settled?"):
            payment_id = data.draw(st.sampled_from(settled), label="order")
        self._refund(payment_id, refund_id, self._amount(data, self._refundable(payment_id)))

    def _refundable(self, payment_id: str) -> int:
        order = self.orders[payment_id]
        return order.captured_minor - sum(r.amount_minor for r in order.refunds
                                          if r.status != "failed")

    def _settled_refundable(self) -> list[str]:
        return sorted(pid for pid, state in self.settlement.items() if state == "settled"
                      and self.orders[pid].status in (S.succeeded, S.partially_refunded)
                      and self._refundable(pid) > 0)

    def _refund(self, payment_id: str, refund_id: str, amount: int) -> None:
        before = self.orders[payment_id]
        cmd = Refund(merchant_id=before.merchant_id, merchant_order_no=before.merchant_order_no,
                     idempotency_key=f"key-{refund_id}", refund_id=refund_id, amount_minor=amount)
        settlement = self.settlement.get(payment_id, "")
        allowed = {_refund_expected(before, refund_id, amount, settlement == "holding")}

        decision = decide_command(before, cmd, None, self._tick())

        self._decided(payment_id, before, decision, allowed)
        event("refund", f"{before.method} {decision.status.name}")
        if decision.status is C.accepted:
            merchant = accounts.merchant_pending(before.merchant_id, before.currency)
            if settlement == "settled":  # the channel paid it out: refunds come from settled
                merchant = _settled_of(merchant)
            self.refund_account[(payment_id, refund_id)] = merchant
            hold = of_type(decision, HoldRequested)
            assert [(h.account_id, h.amount_minor) for h in hold] == [(merchant, amount)]

    @precondition(lambda self: _any_payment_in(self, S.succeeded, S.authorized))
    @rule(data=st.data(), key=_keys)
    def revoke(self, data, key):
        payment_id = self._pick(data, S.succeeded, S.authorized)
        before = self.orders[payment_id]
        cmd = Revoke(merchant_id=before.merchant_id, merchant_order_no=before.merchant_order_no,
                     idempotency_key=key)
        allowed = {self._revoke_expected(before)}

        decision = decide_command(before, cmd, None, self._tick())

        self._decided(payment_id, before, decision, allowed)
        event("revoke", f"{before.method} {before.status.value}: {decision.status.name}")
        if decision.status is not C.accepted:
            return
        if before.status is S.authorized:
            self._void_sent(payment_id, before, decision)
            return
        net = self._revocation_net(payment_id)
        if net > 0:
            assert decision.order.revocation == "holding"
            assert [(h.account_id, h.amount_minor) for h in of_type(decision, HoldRequested)] \
                == [(accounts.merchant_pending(before.merchant_id, before.currency), net)]
        else:  # the fee took it all: nothing to freeze at the merchant
            assert decision.order.revocation == "processing"
            assert [(r.operation, r.amount_minor) for r in of_type(
                decision, ChannelRequested)] == [(OP.reverse, before.captured_minor)]

    def _revoke_expected(self, before: Order) -> CommandStatus:
        if before.kind is not OrderKind.payment:
            return C.command_not_allowed_for_kind
        if before.revocation == "failed":
            return C.revoke_not_allowed_in_status
        if before.revocation:
            return C.duplicate
        if before.status is S.authorized:
            if self._void_blocks(before.payment_id):
                return C.duplicate
            if before.capture_pending_minor:
                return C.revoke_not_allowed_in_status
            return C.accepted
        if before.payment_id in self.settlement:
            return C.revoke_after_settlement
        if self.origin[before.payment_id].split:
            return C.revoke_not_allowed_for_split
        if before.status is not S.succeeded or before.refunds:
            return C.revoke_not_allowed_in_status
        return C.accepted

    # ------------------------------------------------------------ risk review

    @precondition(lambda self: self.orders)
    @rule(data=st.data(), decision=st.sampled_from([ReviewDecision.approve,
                                                    ReviewDecision.approve,
                                                    ReviewDecision.reject]),
          reviewer=st.sampled_from(["ops-1", "ops-2"]), comment=st.sampled_from(["", "ok"]),
          key=_keys)
    def ops_review(self, data, decision, reviewer, comment, key):
        """Ops decide on an order held for review (usually), or on any other order: a
        second decision is a duplicate if the same, else refused."""
        held = sorted(pid for pid, state in self.review.items() if state == "pending")
        if held and data.draw(st.integers(0, 4), label="held") < 4:
            payment_id = data.draw(st.sampled_from(held), label="order")
        else:
            payment_id = data.draw(st.sampled_from(sorted(self.orders)), label="order")
        before = self.orders[payment_id]
        cmd = Review(merchant_id=before.merchant_id, merchant_order_no=before.merchant_order_no,
                     idempotency_key=key, decision=decision, reviewer=reviewer, comment=comment)
        wanted = "approved" if decision is ReviewDecision.approve else "rejected"
        state = self.review[payment_id]
        if state == wanted:
            allowed = {C.duplicate}
        elif state != "pending":
            allowed = {C.review_not_pending}
        else:
            allowed = {C.accepted}

        decided = decide_command(before, cmd, None, self._tick())

        self._decided(payment_id, before, decided, allowed)
        event("review", f"{state or 'none'} {decision.value}: {decided.status.name}")
        if decided.status is not C.accepted:
            return
        after = decided.order
        self.review[payment_id] = wanted
        assert after.review == wanted
        if decision is ReviewDecision.reject:
            assert after.status is S.failed and after.deadline_ms == 0
            assert all(isinstance(m, PaymentStatusChanged) for m in decided.outputs)
            return
        origin = self.origin[payment_id]
        self._check_proceeded(decided, origin, self.plans[payment_id].candidates[0],
                              S.risk_review)

    # ------------------------------------------------------------ strays

    @rule(who=_targets, kind=st.sampled_from(
        ["capture", "void", "refund", "revoke", "deadline", "hold", "mandate", "callback",
         "settlement", "review"]))
    def strays(self, who, kind):
        """Messages for an order we never saw, a request or hold it never made, or a
        mandate answer for an order that is no mandate collection."""
        payment_id = payment_id_for(*who)
        before = self.orders.get(payment_id)
        if before is None:
            self._stray_for_unknown(who, kind)
        elif kind == "callback":
            self._stray_callback(payment_id, before)
        elif kind == "hold":
            answer = HoldResolved(hold_id="hold_stray", payment_id=payment_id,
                                  account_id="wallet:w-1:EUR", placed=True)
            decision = decide_hold_resolved(before, answer, self._tick())
            self._decided(payment_id, before, decision, {C.hold_for_unknown_purpose})
        elif kind == "mandate" and not _mandate_pay(self.origin[payment_id]):
            answer = MandateChecked(payment_id=payment_id, mandate_key="mdt_stray",
                                    allowed=True, code="accepted", payer_account_id="bank-1")
            decision = decide_mandate_checked(before, answer, self._tick())
            self._decided(payment_id, before, decision, {C.mandate_answer_unexpected})

    def _stray_for_unknown(self, who, kind: str) -> None:
        payment_id = payment_id_for(*who)
        ids = dict(merchant_id=who[0], merchant_order_no=who[1], idempotency_key="k-x")
        now = self._tick()
        if kind == "deadline":
            decision = decide_deadline(None, DeadlineReached(payment_id=payment_id,
                                                             deadline_ms=now), now)
        elif kind == "hold":
            decision = decide_hold_resolved(None, HoldResolved(
                hold_id="hold_x", payment_id=payment_id, account_id="wallet:w-1:EUR",
                placed=True), now)
        elif kind == "mandate":
            decision = decide_mandate_checked(None, MandateChecked(
                payment_id=payment_id, mandate_key="mdt_x", allowed=True, code="accepted"), now)
        elif kind == "settlement":
            decision = decide_settlement(None, SettlementReported(
                line_id="line-x", channel="acq_a", payment_id=payment_id, channel_serial="x",
                amount_minor=1, currency="EUR", settled_on="2026-01-01"), now)
        elif kind == "callback":
            decision = decide_channel_response(None, ChannelResponded(
                request_id="req_x", payment_id=payment_id, channel="acq_a",
                operation=OP.sale, outcome=OK, amount_minor=1, currency="EUR",
                channel_serial="x"), now)
        else:
            cmd = {"capture": Capture(**ids), "void": Void(**ids), "revoke": Revoke(**ids),
                   "refund": Refund(**ids, refund_id="rf-x", amount_minor=1),
                   "review": Review(**ids, decision=ReviewDecision.approve,
                                    reviewer="ops-1")}[kind]
            decision = decide_command(None, cmd, None, now)

        assert decision == Decision(None, (), C.order_not_found), decision

    def _stray_callback(self, payment_id: str, before: Order) -> None:
        stray = ChannelResponded(
            request_id=f"req_stray_{self.now_ms}", payment_id=payment_id, channel="acq_a",
            operation=OP.sale, outcome=OK, amount_minor=1, currency=before.currency,
            channel_serial="stray")

        decision = decide_channel_response(before, stray, self._tick())

        self._decided(payment_id, before, decision, {C.callback_for_unknown_request})
        assert decision.outputs == ()
        assert decision.order.status is before.status

    # ------------------------------------------------------------ deadlines

    @precondition(lambda self: self.orders)
    @rule(data=st.data(), how=st.sampled_from(["due", "due", "due", "early", "old", "other"]),
          late_ms=st.sampled_from([0, 1, 5_000]))
    def sweeper_nudges(self, data, how, late_ms):
        """Usually the nudge once an order's deadline passed (time jumps there, often for a
        silent channel); sometimes one too early, for a deadline since replaced, or for
        none, which changes nothing."""
        due = sorted(pid for pid, o in self.orders.items() if o.deadline_ms)
        if how != "due" or not due:
            self._stale_deadline(data, how)
            return
        silent = [pid for pid in due if self.orders[pid].status is S.processing]
        pool = silent if silent and data.draw(st.integers(0, 3), label="silent") < 3 else due
        self._deadline(data.draw(st.sampled_from(pool), label="order"), late_ms)

    def _deadline(self, payment_id: str, late_ms: int) -> None:
        before = self.orders[payment_id]
        self.now_ms = max(self.now_ms, before.deadline_ms) + late_ms
        open_attempts = self._open_attempts(payment_id)
        may_void = not (self._void_blocks(payment_id) or before.capture_pending_minor)
        reached = DeadlineReached(payment_id=payment_id, deadline_ms=before.deadline_ms)

        decision = decide_deadline(before, reached, self.now_ms)

        self._decided(payment_id, before, decision, {C.accepted})
        after = decision.order
        if self.review[payment_id] == "pending":  # nobody decided in time
            assert before.status is S.risk_review
            assert after.status is S.failed and after.review == "expired"
            assert after.deadline_ms == 0
            assert all(isinstance(m, PaymentStatusChanged) for m in decision.outputs)
            self.review[payment_id] = "expired"
            event("deadline", "risk review expired")
            return
        if before.status is S.authorized and before.capture_pending_minor:
            # expiry waits for the capture's answer: the sweeper looks again later
            assert after.status is S.authorized and decision.outputs == ()
            assert after.deadline_ms >= self.now_ms + 1_000
            event("deadline", "authorization expiry waits for a capture")
            return
        if before.status is S.processing and open_attempts:
            # Never a payout: money that may have left cannot be called back, so a second
            # payout must not start while the first may still pay out.
            latest = [r for r in self.attempt_log[payment_id] if r in open_attempts][-1]
            fails_over = self._route_to(payment_id, latest.channel).failover_on_timeout \
                and latest.operation is not OP.payout
            after_route = self._next_candidate(payment_id) if fails_over else None
            if after_route is not None:
                self._failed_over(before, decision, latest, after_route, timeout=True)
                return
        started = [r for r in of_type(decision, ChannelRequested) if r.operation in ATTEMPTS]
        assert not started, ("an attempt started where none may", before.status, started)
        assert after.deadline_ms == 0
        if before.status is S.processing and open_attempts:
            assert after.status is S.timed_out and decision.outputs[1:] == ()
            event("deadline", f"{before.kind.value} timed out")
        elif before.status is S.authorized and may_void:
            self._void_sent(payment_id, before, decision)
            event("deadline", "authorization expired")
        else:
            assert after.status is before.status and decision.outputs == ()

    def _stale_deadline(self, data, how: str) -> None:
        payment_id = data.draw(st.sampled_from(sorted(self.orders)), label="order")
        before = self.orders[payment_id]
        old = sorted(self.deadlines_seen[payment_id] - {before.deadline_ms})
        if how == "early" and before.deadline_ms > self.now_ms + 7:
            deadline_ms, now = before.deadline_ms, self._tick()
        elif how == "old" and old:
            deadline_ms = data.draw(st.sampled_from(old), label="deadline")
            now = self.now_ms = max(self.now_ms, deadline_ms) + 1
        else:
            deadline_ms, now = before.deadline_ms + 1, self._tick()
        reached = DeadlineReached(payment_id=payment_id, deadline_ms=deadline_ms)

        decision = decide_deadline(before, reached, now)

        self._decided(payment_id, before, decision, {C.deadline_not_due})

    # ------------------------------------------------------------ the channel

    @precondition(lambda self: self.channel_pending)
    @rule(data=st.data(), how=st.sampled_from(_ANSWERS))
    def channel_answers(self, data, how):
        """Any outstanding request, in any order; mostly success, often a decline, and now
        and then an answer with other money."""
        request_id = data.draw(st.sampled_from(sorted(self.channel_pending)), label="request")
        request = self.channel_pending[request_id]
        delta = 0
        if how == "other_amount" and request.operation is not OP.void and (
                request.operation in ATTEMPTS or data.draw(st.booleans(), label="other")):
            delta = data.draw(st.sampled_from([-1, 1]), label="delta")
        code = "05"
        if how == "retriable":  # the channel could not: another candidate may
            code = data.draw(st.sampled_from(DECLINE_CODES[1:]), label="code")
        self._answer(request_id, how not in ("declined", "retriable"), delta, code)

    def _answer(self, request_id: str, succeeded: bool, delta: int, code: str = "05") -> None:
        request = self.channel_pending.pop(request_id)
        callback = ChannelResponded(
            request_id=request.request_id, payment_id=request.payment_id,
            channel=request.channel, operation=request.operation,
            outcome=OK if succeeded else DECLINED, amount_minor=request.amount_minor + delta,
            currency=request.currency, channel_serial=f"ser-{request_id}",
            decline_code="" if succeeded else code, responded_at_ms=self.now_ms)
        self.channel_answered[request_id] = callback
        payment_id = request.payment_id
        before = self.orders[payment_id]
        allowed = {self._answer_expected(before, request, callback)}
        waiting = self._open_attempts(payment_id)  # before a failover adds one

        decision = decide_channel_response(before, callback, self._tick())

        self._decided(payment_id, before, decision, allowed)
        self._answered(before, request, callback, decision, waiting)
        if request.operation in ATTEMPTS and not _sent_back(request) and \
                callback.outcome is OK and _same_money(request, callback):
            # Every success of an attempt for the asked money: kept by its order (at most
            # one), or sent back. Never silently left with us, or with the payee.
            kept = request.request_id in self.kept[payment_id]
            assert kept or request.request_id in self.backed, (
                "a success neither kept nor sent back", request, before.status,
                decision.status)

    def _answer_expected(self, before: Order, request: ChannelRequested,
                         callback: ChannelResponded) -> CommandStatus:
        ok, same, op = callback.outcome is OK, _same_money(request, callback), request.operation
        if _sent_back(request):
            return C.accepted if ok and same else C.compensation_refund_declined
        if op in ATTEMPTS:
            return _attempt_expected(before, request, ok, same)
        if op is OP.capture:
            if before.status is not S.authorized:
                return C.callback_late
            return C.accepted if same or not ok else C.callback_amount_mismatch
        if op is OP.void:
            return C.accepted if before.status is S.authorized else C.callback_late
        if op is OP.refund:
            return C.callback_amount_mismatch if ok and not same else C.accepted
        assert op is OP.reverse, op
        return C.accepted if before.status is S.succeeded else C.callback_late

    def _answered(self, before: Order, request: ChannelRequested, callback: ChannelResponded,
                  decision: Decision, waiting: list[ChannelRequested]) -> None:
        """What the answer did to the money, in the auditor's own terms."""
        payment_id, op, status = before.payment_id, request.operation, decision.status
        ok_same = callback.outcome is OK and _same_money(request, callback)
        if op is OP.void and not _sent_back(request):
            self.voids[payment_id][request.request_id] = "succeeded" if callback.outcome is OK \
                else "declined"
        if op is OP.capture and status is not C.callback_late:
            if status is C.callback_amount_mismatch:
                self.stuck.add(payment_id)
            else:
                self.capture_pending[payment_id] -= request.amount_minor
        if status is C.callback_amount_mismatch or (
                status is C.callback_late and op in ATTEMPTS and before.status is S.timed_out):
            self.stuck.add(payment_id)  # other money: reconciliation and ops decide
        if status in (C.duplicate_payment_refunding, C.late_success_refunding):
            self._charge_sent_back(request, callback, decision)
        if status is not C.accepted:
            return
        if _sent_back(request):
            if op is OP.refund:
                self._park(payment_id, request.channel, request.amount_minor, sign=-1)
            event("sent back", op.value)
        elif op in ATTEMPTS:
            self._attempt_answered(before, request, callback, decision, waiting)
        elif ok_same and op is OP.capture:
            self._book(payment_id, request.channel, request.amount_minor)
        elif ok_same and op is OP.refund:
            self._refunded(payment_id, request.reference, request.amount_minor, decision)
        elif ok_same and op is OP.reverse:
            self._reversed(payment_id)
            assert decision.order.status is S.canceled

    def _attempt_answered(self, before: Order, request: ChannelRequested,
                          callback: ChannelResponded, decision: Decision,
                          waiting: list[ChannelRequested]) -> None:
        """``waiting``: the order's other attempts still open when this answer came."""
        payment_id, after = before.payment_id, decision.order
        if callback.outcome is DECLINED:
            retriable = self._route_to(payment_id, request.channel).retriable_declines
            if before.status is S.processing and not waiting and \
                    callback.decline_code in retriable:
                after_route = self._next_candidate(payment_id)
                if after_route is not None:
                    self._failed_over(before, decision, request, after_route, timeout=False)
                    return
                event("failover", "none left after a retriable decline")
            if before.status in (S.processing, S.timed_out) and waiting:
                assert after.status is before.status, (  # another attempt may still pay
                    "decided while another attempt is open", request, after.status, waiting)
            elif before.status in (S.processing, S.timed_out):
                assert after.status is S.failed
            else:
                assert after.status is before.status
            return
        if not _same_money(request, callback):
            assert after.status is S.amount_mismatch
            return
        assert before.status in (S.processing, S.timed_out), before.status
        self.kept[payment_id].append(request.request_id)
        assert len(self.kept[payment_id]) == 1, ("two successes kept", self.kept[payment_id])
        self.paid_channel[payment_id] = request.channel
        if request.operation is OP.authorize:
            assert after.status is S.authorized
        else:
            assert after.status is S.succeeded
            self._book(payment_id, request.channel, callback.amount_minor)
        if before.status is S.timed_out:
            event("late success", f"accepted: {request.operation.value}")

    def _route_to(self, payment_id: str, channel: str) -> Route:
        """The terms an attempt on ``channel`` was started with (the plan's snapshot)."""
        return next(r for r in self.used[payment_id] if r.channel == channel)

    def _next_candidate(self, payment_id: str) -> Route | None:
        """The plan's first candidate on a channel not tried yet, while attempts remain."""
        plan, used = self.plans[payment_id], self.used[payment_id]
        if len(used) >= plan.max_attempts:
            return None
        tried = {r.channel for r in used}
        return next((c for c in plan.candidates if c.channel not in tried), None)

    def _failed_over(self, before: Order, decision: Decision, failed: ChannelRequested,
                     route: Route, timeout: bool) -> None:
        """The next candidate asked to pay: same operation and money, a request of its own,
        the merchant told why; the abandoned attempt may still answer (first success wins,
        a later one is sent back)."""
        payment_id, after = before.payment_id, decision.order
        used = self.used[payment_id]
        assert len(used) < self.plans[payment_id].max_attempts
        requests = of_type(decision, ChannelRequested)
        assert [(r.channel, r.operation, r.amount_minor, r.reference) for r in requests] == [
            (route.channel, failed.operation, before.amount_minor, f"failover-{len(used)}")], \
            requests
        told = of_type(decision, PaymentStatusChanged)
        assert len(decision.outputs) == 2 and len(told) == 1, decision.outputs
        assert told[0].reason.startswith(f"failover from {failed.channel} to {route.channel}"), \
            told[0].reason
        assert after.status is S.processing and before.status is S.processing
        assert after.retry_routes == before.retry_routes + (route,)
        deadline = self.now_ms + TERMS[route.channel].callback_timeout_ms
        assert after.deadline_ms == (deadline if timeout else max(deadline, before.deadline_ms))
        used.append(route)
        self.failovers[payment_id] += 1
        event("failover", f"{failed.operation.value} {failed.channel} -> {route.channel} after "
              f"{'timeout' if timeout else 'retriable decline'} ({len(used)} attempts)")

    def _charge_sent_back(self, request: ChannelRequested, callback: ChannelResponded,
                          decision: Decision) -> None:
        """A duplicate or late charge: parked in suspense (a sale) and sent back."""
        payment_id = request.payment_id
        self.backed.add(request.request_id)
        backs = of_type(decision, ChannelRequested)
        assert [b.reference for b in backs] == [COMPENSATION_PREFIX + request.request_id]
        if request.operation is OP.sale:
            assert (backs[0].operation, backs[0].amount_minor) == (OP.refund,
                                                                    callback.amount_minor)
            self._park(payment_id, request.channel, callback.amount_minor)
            self.backs[payment_id].append(backs[0])
        else:
            assert backs[0].operation is OP.void
        if decision.status is C.late_success_refunding:  # unless another attempt may pay
            waiting = bool(self._open_attempts(payment_id))
            assert decision.order.status is (S.timed_out if waiting else S.failed)
        event("sent back", f"{decision.status.name} of {request.operation.value}")

    @precondition(lambda self: self.channel_answered)
    @rule(data=st.data(), how=st.sampled_from(["same", "same", "outcome", "amount"]))
    def channel_repeats(self, data, how):
        """The same answer again (a replay), or one contradicting it: the opposite outcome or
        other money (recorded, never applied)."""
        request_id = data.draw(st.sampled_from(sorted(self.channel_answered)), label="request")
        self._repeat(request_id, how)

    def _repeat(self, request_id: str, how: str) -> None:
        callback = self.channel_answered[request_id]
        if how == "outcome":
            callback = callback.model_copy(update={
                "outcome": DECLINED if callback.outcome is OK else OK})
        elif how == "amount":
            callback = callback.model_copy(update={"amount_minor": callback.amount_minor + 1})
        before = self.orders[callback.payment_id]
        allowed = {C.callback_replayed} if how == "same" else {C.callback_late}

        decision = decide_channel_response(before, callback, self._tick())

        self._decided(callback.payment_id, before, decision, allowed)
        if how == "same":
            assert decision.order == before
            assert all(isinstance(m, JournalEntryDecided) for m in decision.outputs)
            assert all(m.entry_id in self.entry_legs for m in decision.outputs)
        else:
            assert decision.outputs == ()
            assert decision.order.model_copy(update={
                "history": before.history, "updated_at_ms": before.updated_at_ms}) == before

    # ------------------------------------------------------------ the ledger

    @precondition(lambda self: self.ledger_queue or self.hold_answers_pending
                  or self.hold_requests_done)
    @rule(data=st.data(), what=st.sampled_from(["work", "work", "answer", "answer", "again"]))
    def ledger_stage(self, data, what):
        """The ledger works a queued hold or release, the order stage gets a hold answer, or
        a hold request is redelivered; each in any order."""
        can = {"work": self.ledger_queue, "answer": self.hold_answers_pending,
               "again": self.hold_requests_done}
        if not can[what]:
            what = next(w for w in ("work", "answer", "again") if can[w])
        if what == "work":
            self._ledger_does(data.draw(st.integers(0, len(self.ledger_queue) - 1),
                                        label="index"))
        elif what == "answer":
            self._hold_answer(data.draw(st.integers(0, len(self.hold_answers_pending) - 1),
                                        label="index"))
        else:
            self._hold_request_again(data.draw(st.sampled_from(sorted(self.hold_requests_done)),
                                               label="hold"))

    def _ledger_does(self, index: int) -> None:
        message = self.ledger_queue.pop(index)
        if isinstance(message, HoldRequested):
            self._place(message)
        else:
            self._release(message)

    def _place(self, req: HoldRequested) -> None:
        """Like the ledger stage: the first decision per hold id is kept and repeated."""
        before = self._account(req.account_id, req.currency)
        earlier = self.hold_decisions.get(req.hold_id)
        available = self.journal_totals[req.account_id] - sum(
            self.hold_model[req.account_id].values())
        fits = accounts.overdraft_unlimited(req.account_id) or available >= req.amount_minor

        after, status = place_hold(before, Hold(hold_id=req.hold_id, payment_id=req.payment_id,
                                                amount_minor=req.amount_minor), earlier)

        if earlier is None:
            assert status is (P.applied if fits else P.insufficient_funds), (status, req)
            self.hold_decisions[req.hold_id] = status
        else:
            assert status is (P.hold_exists if earlier is P.applied else earlier)
        if status is P.applied:
            self.balances[req.account_id] = after
            self.ledger_log.append(req)
            self.hold_model[req.account_id][req.hold_id] = req.amount_minor
        else:
            assert after is before
        placed = status in (P.applied, P.hold_exists)
        self.hold_requests_done.setdefault(req.hold_id, req)
        self.hold_answers_pending.append(HoldResolved(
            hold_id=req.hold_id, payment_id=req.payment_id, account_id=req.account_id,
            placed=placed, reason="" if placed else status.name))

    def _release(self, req: HoldReleaseRequested) -> None:
        holds = self.hold_model[req.account_id]
        if req.account_id not in self.balances:
            assert req.hold_id not in holds
            return
        expected = P.applied if req.hold_id in holds else P.hold_not_found

        after, status = release_hold(self.balances[req.account_id], req.hold_id)

        assert status is expected, (status, req)
        if status is P.applied:
            del holds[req.hold_id]
            self.ledger_log.append(req)
        self.balances[req.account_id] = after

    def _hold_request_again(self, hold_id: str) -> None:
        req = self.hold_requests_done[hold_id]
        first = next(a for a in self.hold_answers_sent + self.hold_answers_pending
                     if a.hold_id == hold_id)
        before = self._account(req.account_id, req.currency)

        self._place(req)

        assert self.hold_answers_pending[-1].placed == first.placed
        assert self._account(req.account_id, req.currency) == before

    def _hold_answer(self, index: int) -> None:
        answer = self.hold_answers_pending.pop(index)
        first_time = all(a.hold_id != answer.hold_id for a in self.hold_answers_sent)
        self.hold_answers_sent.append(answer)
        before = self.orders[answer.payment_id]

        decision = decide_hold_resolved(before, answer, self._tick())

        self._decided(answer.payment_id, before, decision,
                      {C.accepted} if first_time else {C.duplicate})
        if decision.status is C.accepted:
            self._hold_answered(before, answer, decision)

    def _hold_answered(self, before: Order, answer: HoldResolved, decision: Decision) -> None:
        payment_id, after = before.payment_id, decision.order
        internal = self._internal(payment_id)
        if answer.hold_id == _hold_id(payment_id, PAYER_HOLD):
            self._payer_hold_answered(before, answer, decision)
        elif answer.hold_id in self.settle_parts.get(payment_id, {}):
            self._settle_hold_answered(before, answer, decision)
        elif answer.hold_id == _hold_id(payment_id, REVOKE_HOLD):
            if not answer.placed:
                assert after.revocation == "failed"
            elif internal:
                self._reversed(payment_id)
                assert after.status is S.canceled and after.revocation == "succeeded"
            else:
                assert [(r.operation, r.amount_minor) for r in of_type(
                    decision, ChannelRequested)] == [(OP.reverse, before.captured_minor)]
        else:
            refund = next(r for r in before.refunds
                          if _hold_id(payment_id, r.refund_id) == answer.hold_id)
            if answer.placed and internal:
                self._refunded(payment_id, refund.refund_id, refund.amount_minor, decision)
            event("refund hold", "placed" if answer.placed else "refused")

    def _payer_hold_answered(self, before: Order, answer: HoldResolved,
                             decision: Decision) -> None:
        payment_id, after = before.payment_id, decision.order
        origin = self.origin[payment_id]
        event("payer hold", f"{type(origin).__name__} {'placed' if answer.placed else 'refused'}")
        if not answer.placed:
            assert after.status is S.failed and decision.outputs[1:] == ()
            return
        if not self._internal(payment_id):  # a withdrawal: the payout goes out now
            assert [(r.operation, r.amount_minor) for r in of_type(
                decision, ChannelRequested)] == [(OP.payout, origin.amount_minor)]
            assert after.status is S.processing and after.deadline_ms
            return
        self.paid_channel[payment_id] = INTERNAL_CHANNEL
        if isinstance(origin, Pay) and origin.capture is CaptureMode.manual:
            assert after.status is S.authorized
            assert after.deadline_ms == self.now_ms + BALANCE_AUTHORIZATION_TTL_MS
        else:
            assert after.status is S.succeeded
            self._book(payment_id, INTERNAL_CHANNEL, origin.amount_minor)

    # ------------------------------------------------------------ settlement

    @precondition(lambda self: _any_payment_in(self, *SETTLEABLE))
    @rule(data=st.data(), how=st.sampled_from(["right", "right", "right", "refund open",
                                               "other amount", "other currency", "again"]))
    def channel_settles(self, data, how):
        """The channel's settlement line for a payment: usually the money it kept, sometimes
        while a refund is open, with other money, or the same line again."""
        if how == "again" and self.lines_sent:
            self._settle(data.draw(st.sampled_from(self.lines_sent), label="line"))
            return
        payment_id = self._pick(data, *SETTLEABLE)
        fresh = self._unsettled()
        refunding = [pid for pid in sorted(self.orders) if self._refunding(pid)]
        if how == "right" and fresh and data.draw(st.integers(0, 3), label="fresh") < 3:
            payment_id = data.draw(st.sampled_from(fresh), label="order")
        elif how == "refund open" and refunding:
            payment_id = data.draw(st.sampled_from(refunding), label="order")
        line = self._line(payment_id)
        if how == "other amount":
            delta = data.draw(st.sampled_from([-1, 1]), label="delta")
            line = line.model_copy(update={"amount_minor": line.amount_minor + delta})
        elif how == "other currency":
            currency = next(c for c in CURRENCIES if c != line.currency)
            line = line.model_copy(update={"currency": currency})
        self._settle(line)

    def _refunding(self, payment_id: str) -> bool:
        order = self.orders[payment_id]
        return order.revocation in ("holding", "processing") or any(
            r.status in ("holding", "processing") for r in order.refunds)

    def _unsettled(self) -> list[str]:
        """Payments the channel may settle now: paid, no line taken, no refund in flight."""
        return sorted(pid for pid, o in self.orders.items()
                      if o.kind is OrderKind.payment and o.status in SETTLEABLE
                      and pid not in self.settlement and not self._refunding(pid))

    def _line(self, payment_id: str) -> SettlementReported:
        """The channel's line with the money it kept: captured less refunded."""
        order, origin = self.orders[payment_id], self.origin[payment_id]
        return SettlementReported(
            line_id=f"line-{len(self.lines_sent)}", channel=order.paid_via or "acq_a",
            payment_id=payment_id, channel_serial=order.channel_serial,
            amount_minor=self.captured[payment_id] - self.refunded[payment_id],
            currency=origin.currency, settled_on="2026-11-21")

    def _settle(self, line: SettlementReported) -> None:
        payment_id = line.payment_id
        before = self.orders[payment_id]
        allowed = {self._settlement_expected(before, line)}

        decision = decide_settlement(before, line, self._tick())

        self.lines_sent.append(line)
        self._decided(payment_id, before, decision, allowed)
        event("settlement line", decision.status.name)
        if decision.status is C.accepted:
            self._settlement_started(before, decision)

    def _settlement_expected(self, before: Order, line: SettlementReported) -> CommandStatus:
        payment_id = before.payment_id
        if payment_id in self.settlement:
            return C.duplicate
        if before.kind is not OrderKind.payment or before.status not in SETTLEABLE:
            return C.settlement_not_allowed_in_status
        if before.revocation in ("holding", "processing") or any(
                r.status in ("holding", "processing") for r in before.refunds):
            return C.settlement_while_refund_open
        kept = self.captured[payment_id] - self.refunded[payment_id]
        if (line.amount_minor, line.currency) != (kept, self.origin[payment_id].currency):
            return C.settlement_amount_mismatch
        return C.accepted

    def _settle_parts_expected(self, payment_id: str) -> dict[str, int]:
        """What is left of this payment on each merchant's pending account (a merchant whose
        refunds took more than its part has nothing left). One merchant: the auditor's own
        figure; a split: what the postings left (the rounding rule is the domain's)."""
        origin = self.origin[payment_id]
        if origin.split:
            money = self.merchant_money[payment_id]
            return {a: v for a, v in money.items() if v > 0 and not _is_settled(a)}
        left = self.captured[payment_id] - self.fees_booked[payment_id] \
            - self.refunded[payment_id]
        merchant = accounts.merchant_pending(origin.merchant_id, origin.currency)
        return {merchant: left} if left > 0 else {}

    def _settlement_started(self, before: Order, decision: Decision) -> None:
        payment_id, after = before.payment_id, decision.order
        parts = self._settle_parts_expected(payment_id)
        holds = of_type(decision, HoldRequested)
        assert {h.account_id: h.amount_minor for h in holds} == parts, (holds, parts)
        self._clearing_settled(payment_id, decision)
        assert len(holds) == len(parts)
        for held in holds:
            merchant_id = held.account_id.split(":")[1]
            assert held.hold_id == _hold_id(payment_id, SETTLE_HOLD_PREFIX + merchant_id)
        self.settle_parts[payment_id] = {h.hold_id: (h.account_id, h.amount_minor)
                                         for h in holds}
        self.settlement[payment_id] = "holding" if holds else "settled"
        assert after.settlement == self.settlement[payment_id]
        assert after.status is before.status
        event("settlement", f"{len(holds)} merchant parts" if holds else "nothing to move")

    def _clearing_settled(self, payment_id: str, decision: Decision) -> None:
        """The channel paid the line's gross: clearing credited, cash less its fee debited,
        its fee our cost; posted when the line is taken, before the merchant parts move."""
        line = self.lines_sent[-1]
        entries = [e for e in of_type(decision, JournalEntryDecided)
                   if e.reason == "settlement_clearing"]
        assert len(entries) == (1 if line.amount_minor else 0), entries
        model, ccy = self.model[payment_id], line.currency
        if line.amount_minor:
            model[accounts.channel_clearing(line.channel, ccy)] += line.amount_minor
            model[accounts.settlement_cash(line.channel, ccy)] -= \
                line.amount_minor - line.fee_minor
            if line.fee_minor:
                model[accounts.channel_fees(line.channel, ccy)] -= line.fee_minor
        for entry in entries:
            self._post(entry)

    def _settle_hold_answered(self, before: Order, answer: HoldResolved,
                              decision: Decision) -> None:
        """Once every part is answered: all frozen, moved in one entry; else the frozen ones
        released and the settlement left to ops."""
        payment_id, after = before.payment_id, decision.order
        parts, answers = self.settle_parts[payment_id], self.settle_answers[payment_id]
        assert self.settlement[payment_id] == "holding"
        answers[answer.hold_id] = answer.placed
        entries = of_type(decision, JournalEntryDecided)
        releases = of_type(decision, HoldReleaseRequested)
        if len(answers) < len(parts):
            assert decision.outputs == () and after.settlement == "holding"
            return
        if all(answers.values()):
            assert [e.reason for e in entries] == ["settlement"] and not releases
            model = self.model[payment_id]
            for account_id, amount in parts.values():
                model[self._bucket(payment_id, account_id)] -= amount
                model[self._bucket(payment_id, _settled_of(account_id))] += amount
            self.settlement[payment_id] = "settled"
            event("settlement", f"moved for {len(parts)} merchants")
        else:
            assert not entries
            placed = {hold_id for hold_id, ok in answers.items() if ok}
            assert {(r.hold_id, r.account_id) for r in releases} == {
                (hold_id, parts[hold_id][0]) for hold_id in placed}
            self.settlement[payment_id] = "failed"
            event("settlement", f"failed, {len(placed)} of {len(parts)} released")
        assert after.settlement == self.settlement[payment_id]

    # ------------------------------------------------------------ the mandate owner

    @rule(data=st.data(), merchant=st.sampled_from(MERCHANTS),
          mandate_id=st.sampled_from(MANDATE_IDS), key=_keys,
          terminate=st.sampled_from([False, False, True]))
    def mandate_command(self, data, merchant, mandate_id, key, terminate):
        """The payer signs a mandate (or signs again, or otherwise), or terminates one."""
        if terminate:
            self._terminate_mandate(merchant, mandate_id, key)
            return
        currency = data.draw(_currencies, label="currency")
        limit = data.draw(st.integers(1, 3_000), label="limit")
        payer = data.draw(st.sampled_from(BANK_ACCOUNTS), label="payer")
        cmd = SignMandate(merchant_id=merchant, idempotency_key=key, mandate_id=mandate_id,
                          payer_account_id=payer, currency=currency, amount_minor_max=limit)
        mandate_key = cmd.subject_id()
        before = self.mandates.get(mandate_key)
        if before is None:
            expected = M.accepted
        elif _payload(cmd) == _payload(self.mandate_origin[mandate_key]):
            expected = M.duplicate
        else:
            expected = M.mandate_exists_with_different_payload

        decision = decide_mandate_command(before, cmd, self._tick())

        assert decision.code is expected, (decision.code, expected)
        if expected is M.accepted:
            self.mandate_origin[mandate_key] = cmd
            assert decision.mandate.status is MandateStatus.active
        self._mandate_recorded(mandate_key, before, decision.mandate)

    def _terminate_mandate(self, merchant: str, mandate_id: str, key: str) -> None:
        cmd = TerminateMandate(merchant_id=merchant, idempotency_key=key, mandate_id=mandate_id)
        before = self.mandates.get(cmd.subject_id())
        if before is None:
            expected = M.mandate_not_found
        elif before.status is MandateStatus.terminated:
            expected = M.duplicate
        else:
            expected = M.accepted

        decision = decide_mandate_command(before, cmd, self._tick())

        assert decision.code is expected, (decision.code, expected)
        self._mandate_recorded(cmd.subject_id(), before, decision.mandate)

    def _mandate_recorded(self, mandate_key: str, before: Mandate | None,
                          after: Mandate | None) -> None:
        if before is not None:
            assert after is not None
            assert after.status is before.status or before.status is MandateStatus.active
            assert after.collections >= before.collections
        if after is not None:
            assert after.collections == len(self.mandate_counted[mandate_key])
            self.mandates[mandate_key] = after

    @precondition(lambda self: self.checks_pending or self.mandate_answers_pending
                  or self.checks_done)
    @rule(data=st.data(), what=st.sampled_from(["check", "check", "answer", "answer",
                                                "check again", "answer again"]))
    def mandate_stage(self, data, what):
        """The owner answers a collection check, or the order gets the answer; either may
        be redelivered (a check is answered alike and not counted twice; an answer is a
        duplicate)."""
        can = {"check": self.checks_pending, "answer": self.mandate_answers_pending,
               "check again": self.checks_done, "answer again": self.mandate_answers_sent}
        if not can[what]:
            what = next(w for w in ("check", "answer", "check again") if can[w])
        if what == "check":
            index = data.draw(st.integers(0, len(self.checks_pending) - 1), label="index")
            self._owner_checks(self.checks_pending.pop(index))
        elif what == "answer":
            index = data.draw(st.integers(0, len(self.mandate_answers_pending) - 1),
                              label="index")
            self._mandate_answer(self.mandate_answers_pending.pop(index))
        else:
            done = self.checks_done if what == "check again" else self.mandate_answers_sent
            again = data.draw(st.sampled_from(done), label="again")
            if what == "check again":
                self._owner_checks(again)
            else:
                self._mandate_answer(again)

    def _owner_checks(self, check: MandateCheckRequested) -> None:
        before = self.mandates.get(check.mandate_key)
        expected = _mandate_check_expected(before, check)
        if expected is M.accepted:
            self.mandate_counted[check.mandate_key].add(check.payment_id)

        decision = decide_mandate_check(before, check, self._tick())

        assert decision.code is expected, (decision.code, expected)
        event("mandate check", expected.name)
        assert len(decision.outputs) == 1
        answer = decision.outputs[0]
        assert isinstance(answer, MandateChecked) and answer.allowed is (expected is M.accepted)
        self._mandate_recorded(check.mandate_key, before, decision.mandate)
        self.checks_done.append(check)
        self.mandate_answers_pending.append(answer)

    def _mandate_answer(self, answer: MandateChecked) -> None:
        payment_id = answer.payment_id
        before = self.orders[payment_id]
        waiting = before.status is S.created or (
            before.status is S.risk_review and self.review[payment_id] == "approved")
        allowed = {C.accepted} if waiting else {C.duplicate}

        decision = decide_mandate_checked(before, answer, self._tick())

        self._decided(payment_id, before, decision, allowed)
        self.mandate_answers_sent.append(answer)
        if decision.status is not C.accepted:
            return
        if not answer.allowed:
            assert decision.order.status is S.failed
            return
        origin = self.origin[payment_id]
        assert decision.order.status is S.processing
        assert [(r.channel, r.operation, r.amount_minor) for r in of_type(
            decision, ChannelRequested)] == [(before.route.channel, OP.sale,
                                              origin.amount_minor)]

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
        """captured <= authorized, refunds <= captured, and both as the auditor counted."""
        for payment_id, order in self.orders.items():
            assert 0 <= order.captured_minor <= order.authorized_minor <= order.amount_minor
            assert order.captured_minor + order.capture_pending_minor <= order.authorized_minor
            assert 0 <= order.refunded_minor <= order.captured_minor
            succeeded = sum(r.amount_minor for r in order.refunds if r.status == "succeeded")
            assert order.refunded_minor == succeeded
            live = sum(r.amount_minor for r in order.refunds if r.status != "failed")
            assert live <= order.captured_minor
            assert len({r.refund_id for r in order.refunds}) == len(order.refunds)
            assert order.captured_minor == self.captured[payment_id], payment_id
            assert order.refunded_minor == self.refunded[payment_id], payment_id
            assert order.capture_pending_minor == self.capture_pending[payment_id], payment_id

    @invariant()
    def ledger_zero_sum_per_currency(self):
        totals: dict[str, int] = defaultdict(int)
        for balance in self.balances.values():
            totals[balance.currency] += balance.total_minor
        assert all(total == 0 for total in totals.values()), dict(totals)

    @invariant()
    def accounts_keep_their_rules(self):
        """total = available + frozen, frozen = open holds, limits; and every balance is what
        the journal and the hold requests say (a rebuild, kept step by step)."""
        for account_id, balance in self.balances.items():
            check_invariants(balance)
            assert balance.frozen_minor == sum(h.amount_minor for h in balance.holds)
            assert balance.total_minor == balance.available_minor + balance.frozen_minor
            assert len({h.hold_id for h in balance.holds}) == len(balance.holds)
            if not accounts.overdraft_unlimited(account_id):
                assert balance.available_minor >= 0, balance
            assert balance.total_minor == self.journal_totals[account_id], balance
            assert {h.hold_id: h.amount_minor for h in balance.holds} == \
                self.hold_model[account_id], balance

    @invariant()
    def ledger_matches_the_auditors_money(self):
        """Per order and account: what the ledger holds is what the auditor expected."""
        for payment_id in set(self.model) | set(self.actual):
            actual, expected = _nonzero(self.actual[payment_id]), _nonzero(self.model[payment_id])
            assert actual == expected, (payment_id, actual, expected)
        for entry_id, legs in self.entry_legs.items():
            for leg in legs:
                assert f"{entry_id}:{leg.account_id}" in self.applied_postings

    @invariant()
    def merchant_money_kept_through_settlement(self):
        """Settled accounts get money from settlement entries only (checked per entry);
        per order, the merchants' pending plus settled money is what the auditor expects;
        once settled, nothing of the order is left pending but what the refunds took beyond
        the part of the merchant that took the payment."""
        for payment_id, money in self.merchant_money.items():
            expected = sum(v for a, v in self.model[payment_id].items()
                           if a == MERCHANTS_BUCKET or _is_merchant(a))
            assert sum(money.values()) == expected, (payment_id, money, expected)
            order = self.orders[payment_id]
            settlement = self.settlement.get(payment_id, "")
            assert order.settlement == settlement, payment_id
            if settlement != "settled":
                assert not any(_is_settled(a) and v for a, v in money.items()), money
                continue
            primary = accounts.merchant_pending(order.merchant_id, order.currency)
            assert money[primary] <= 0, money
            assert all(v == 0 for a, v in money.items()
                       if a != primary and not _is_settled(a)), money

    @invariant()
    def suspense_holds_only_money_not_yet_returned(self):
        for payment_id, backs in self.backs.items():
            answers = [self.channel_answered.get(b.request_id) for b in backs]
            waiting = sum(b.amount_minor for b, a in zip(backs, answers, strict=True)
                          if a is None or a.outcome is not OK or not _same_money(b, a))
            ccy = self.origin[payment_id].currency
            assert self.actual[payment_id][accounts.suspense(ccy)] == waiting, payment_id

    @invariant()
    def attempts_follow_the_plan(self):
        """Attempts are the plan's first candidate, the payer's own retries and failovers,
        in that record; failovers never beyond the plan's attempts; at most one success is
        kept; and whatever risk held back sent nothing (no request, hold or entry)."""
        for payment_id, order in self.orders.items():
            routes = [order.route.channel] + [r.channel for r in order.retry_routes]
            assert routes == [r.channel for r in self.used[payment_id]], payment_id
            log = self.attempt_log[payment_id]
            if log:
                assert [r.channel for r in log] == routes, (log, routes)
            else:
                assert not order.retry_routes
            assert self.failovers[payment_id] <= self.plans[payment_id].max_attempts - 1
            assert len(self.kept[payment_id]) <= 1
            assert order.review == self.review[payment_id], payment_id
            assert order.risk == self.verdicts[payment_id], payment_id
            if self.review[payment_id] == "pending":
                assert order.status is S.risk_review and order.deadline_ms
            if self.review[payment_id] in HELD_BACK or payment_id in self.risk_declined:
                assert not self.effects[payment_id], payment_id
                assert order.requests == () and order.payer_hold == "", payment_id

    @invariant()
    def open_holds_belong_to_live_purposes(self):
        """A hold stays frozen only while what it is for is undecided (or its release is
        queued), at the amount still owed; and every placed one is there."""
        releasing = {m.hold_id for m in self.ledger_queue if isinstance(m, HoldReleaseRequested)}
        purposes = self._hold_purposes()
        open_holds: dict[str, tuple[str, int]] = {}
        for balance in self.balances.values():
            for hold in balance.holds:
                open_holds[hold.hold_id] = (balance.account_id, hold.amount_minor)
                assert hold.hold_id in purposes, hold
                account_id, amount, live, _ = purposes[hold.hold_id]
                assert account_id == balance.account_id
                assert live or hold.hold_id in releasing, (hold, purposes[hold.hold_id])
                assert not live or hold.amount_minor == amount, (hold, amount)
        for hold_id, (account_id, amount, _, placed) in purposes.items():
            assert not placed or open_holds.get(hold_id) == (account_id, amount), hold_id

    def _hold_purposes(self) -> dict[str, tuple[str, int, bool, bool]]:
        """hold id -> (account, amount owed, live, known to be placed)."""
        purposes = {}
        for payment_id, order in self.orders.items():
            merchant = accounts.merchant_pending(order.merchant_id, order.currency)
            for r in order.refunds:
                purposes[_hold_id(payment_id, r.refund_id)] = (
                    self.refund_account[(payment_id, r.refund_id)], r.amount_minor,
                    r.status in ("holding", "processing"), r.status == "processing")
            answers = self.settle_answers[payment_id]
            for hold_id, (account_id, amount) in self.settle_parts.get(payment_id, {}).items():
                live = self.settlement[payment_id] == "holding"
                purposes[hold_id] = (account_id, amount, live,
                                     live and answers.get(hold_id) is True)
            net = self._revocation_net(payment_id)
            purposes[_hold_id(payment_id, REVOKE_HOLD)] = (
                merchant, net, order.revocation in ("holding", "processing"),
                order.revocation == "processing" and net > 0)
            if order.payer_hold:
                waiting = order.status in PAYER_HOLD_LIVE or (
                    order.status is S.amount_mismatch and order.kind is OrderKind.withdrawal)
                assert order.payer_hold != "placed" or waiting, order.status
                purposes[_hold_id(payment_id, PAYER_HOLD)] = (
                    _payer_wallet(self.origin[payment_id]),
                    order.amount_minor - self.captured[payment_id],
                    order.payer_hold in ("holding", "placed") and waiting,
                    order.payer_hold == "placed")
        return purposes

    # ------------------------------------------------------------ quiescence

    def drain(self):
        """Answer everything outstanding (success and decline in turn, so both endings get
        checked), sweep every deadline, and let the channel settle what it was paid; then
        nothing may be left pending, and nothing frozen but what reconciliation must decide.
        In every other run the channel first goes silent: each order waiting on it reaches
        its deadline (it times out, or fails over) before the answers come."""
        if len(self.attempt_ids) % 2:
            self._channel_goes_silent()
        for step in range(2_000):
            if not self._drain_step(step):
                break
        else:
            raise AssertionError("no quiescence after 2000 steps")
        self._replays_after_settlement()
        assert not (self.channel_pending or self.ledger_queue or self.hold_answers_pending
                    or self.checks_pending or self.mandate_answers_pending)
        self._check_quiescent()
        self._check_rebuild()

    def _channel_goes_silent(self) -> None:
        for payment_id in sorted(self.orders):
            order = self.orders[payment_id]
            if order.status is S.processing and order.deadline_ms and \
                    self._open_attempts(payment_id):
                self._deadline(payment_id, 0)
                self._check_invariants_now()

    def _drain_step(self, step: int) -> bool:
        if self.channel_pending:  # success, a plain decline and a retriable one in turn
            self._answer(next(iter(self.channel_pending)), step % 2 == 0, 0,
                         DECLINE_CODES[1 - step // 2 % 2])
        elif self.ledger_queue:
            self._ledger_does(0)
        elif self.hold_answers_pending:
            self._hold_answer(0)
        elif self.checks_pending:
            self._owner_checks(self.checks_pending.pop(0))
        elif self.mandate_answers_pending:
            self._mandate_answer(self.mandate_answers_pending.pop(0))
        else:
            due = sorted(pid for pid, o in self.orders.items() if o.deadline_ms and not (
                pid in self.stuck and o.capture_pending_minor))
            if due:
                self._deadline(due[0], 0)
            elif not self._end_of_day(step):
                return False
        self._check_invariants_now()
        return True

    def _end_of_day(self, step: int) -> bool:
        """Once nothing else is due, one step of: each paid order refunded once, its line
        settled by the channel, then refunded once more (from the settled account)."""
        unsettled = self._unsettled()
        if self._drain_refund(unsettled, "pending", step):
            return True
        if unsettled:
            self._settle(self._line(unsettled[0]))
            return True
        return self._drain_refund(self._settled_refundable(), "settled", step)

    def _drain_refund(self, payment_ids: list[str], phase: str, step: int) -> bool:
        """The first of these orders not yet refunded in this phase: its merchant refunds
        all that is left or one unit (in turn) under a refund id it has not used."""
        for payment_id in payment_ids:
            order = self.orders[payment_id]
            unused = [rid for rid in REFUND_IDS if rid not in {r.refund_id for r in order.refunds}]
            rest = self._refundable(payment_id)
            if unused and rest > 0 and (payment_id, phase) not in self.drain_refunded:
                self.drain_refunded.add((payment_id, phase))
                self._refund(payment_id, unused[0], rest if step % 2 else 1)
                return True
        return False

    def _replays_after_settlement(self) -> None:
        """The channel repeats its answers for settled payments: each replay re-decides the
        entry booked before (same id, same legs), whichever account the money sits in now."""
        for request_id, callback in sorted(self.channel_answered.items()):
            if self.settlement.get(callback.payment_id) == "settled":
                self._repeat(request_id, "same")
        self._check_invariants_now()

    def _check_invariants_now(self) -> None:
        self.status_only_moves_forward()
        self.order_amounts_consistent()
        self.ledger_zero_sum_per_currency()
        self.accounts_keep_their_rules()
        self.ledger_matches_the_auditors_money()
        self.suspense_holds_only_money_not_yet_returned()
        self.open_holds_belong_to_live_purposes()
        self.merchant_money_kept_through_settlement()
        self.attempts_follow_the_plan()

    def _check_quiescent(self) -> None:
        for payment_id, order in self.orders.items():
            assert order.status not in (S.created, S.risk_review, S.processing)
            assert order.payer_hold != "holding"
            assert order.revocation not in ("holding", "processing")
            assert order.settlement != "holding"
            if order.payer_hold == "placed":  # the payout moved other money: ops decide
                assert order.kind is OrderKind.withdrawal
                assert order.status in (S.amount_mismatch, S.timed_out)
            if payment_id in self.stuck:  # other money reported: left to reconciliation
                event("left to recon", order.status.value)
                continue
            assert order.status is not S.timed_out and order.deadline_ms == 0
            assert order.capture_pending_minor == 0
            assert all(r.status in ("succeeded", "failed") for r in order.refunds)

        purposes = self._hold_purposes()
        for balance in self.balances.values():
            for hold in balance.holds:
                assert purposes[hold.hold_id][2], hold  # only the exceptions above stay

    def _check_rebuild(self) -> None:
        """DESIGN.md §3.8: replaying the journal and the hold log on empty accounts gives the
        same balances."""
        rebuilt: dict[str, AccountBalance] = {}
        for item in self.ledger_log:
            if isinstance(item, Leg):
                account = rebuilt.get(item.account_id) or open_account(item.account_id,
                                                                       item.currency)
                account, status = apply_leg(account, item)
            elif isinstance(item, HoldRequested):
                account = rebuilt.get(item.account_id) or open_account(item.account_id,
                                                                       item.currency)
                account, status = place_hold(account, Hold(
                    hold_id=item.hold_id, payment_id=item.payment_id,
                    amount_minor=item.amount_minor))
            else:
                account, status = release_hold(rebuilt[item.account_id], item.hold_id)
            assert status is P.applied, (status, item)
            rebuilt[item.account_id] = account
        assert rebuilt == self.balances

    def teardown(self):
        # Every run ends quiescent and is checked there, unless a step already failed
        # (draining then would only bury the first failure under a second one).
        if sys.exc_info()[0] is None:
            self.drain()


def _any_payment_in(auditor: PaymentAuditor, *statuses: OrderStatus) -> bool:
    return any(o.status in statuses and o.kind is OrderKind.payment
               for o in auditor.orders.values())


def _attempt_expected(before: Order, request: ChannelRequested, ok: bool,
                      same: bool) -> CommandStatus:
    """A sale, authorization or payout answer: it decides the order, or comes too late."""
    if before.status is S.processing:
        return C.accepted
    if not ok:
        return C.accepted
    if before.status is S.timed_out:
        if not same:
            return C.callback_late
        if TERMS[request.channel].late_success is LateSuccess.accept or \
                request.operation is OP.payout:
            return C.accepted
        return C.late_success_refunding
    if not same or request.operation is OP.payout:
        return C.callback_late
    return C.duplicate_payment_refunding


def _refund_expected(order: Order, refund_id: str, amount: int, settling: bool
                     ) -> CommandStatus:
    """The one status an auditor accepts for a refund: checks in the pinned order."""
    if order.kind is not OrderKind.payment:
        return C.command_not_allowed_for_kind
    existing = next((r for r in order.refunds if r.refund_id == refund_id), None)
    if existing is not None:
        same = existing.amount_minor == amount
        return C.duplicate if same else C.refund_exists_with_different_amount
    if order.status not in (S.succeeded, S.partially_refunded) or order.revocation in (
            "holding", "processing") or settling:
        return C.refund_not_allowed_in_status
    live = sum(r.amount_minor for r in order.refunds if r.status != "failed")
    if live + amount > order.captured_minor:
        return C.refund_exceeds_captured
    return C.accepted


def _mandate_check_expected(mandate: Mandate | None, check: MandateCheckRequested) -> MandateCode:
    if mandate is None:
        return M.mandate_not_found
    if mandate.status is MandateStatus.terminated:
        return M.mandate_terminated
    if check.currency != mandate.currency:
        return M.mandate_currency_mismatch
    if check.amount_minor > mandate.amount_minor_max:
        return M.mandate_exceeds_limit
    return M.accepted


AUDIT_EXAMPLES = int(os.environ.get("PAYCORE_AUDIT_EXAMPLES", "200"))
"""About 17 s on one core at 200. Rare interleavings (a payer's second attempt answered with
other money, then a revocation) need thousands: soak with PAYCORE_AUDIT_EXAMPLES=5000."""
SHRINK_SECONDS = int(os.environ.get("PAYCORE_AUDIT_SHRINK_SECONDS", "150"))
"""Each replay of this machine is slow, and hypothesis shrinks for up to 300 s: as much as
pytest's timeout, which would then cut off the report. Shrinking stops earlier here, and
prints the smallest failing steps found so far."""


class TestPaymentAuditor(PaymentAuditor.TestCase):
    def runTest(self):
        from hypothesis.internal.conjecture import engine  # no public setting for this

        saved = getattr(engine, "MAX_SHRINKING_SECONDS", None)
        engine.MAX_SHRINKING_SECONDS = SHRINK_SECONDS
        try:
            super().runTest()
        finally:
            engine.MAX_SHRINKING_SECONDS = saved

    runTest.is_hypothesis_test = True  # as hypothesis marks its own: statistics and all
    runTest._hypothesis_state_machine_class = PaymentAuditor


TestPaymentAuditor.settings = settings(
    max_examples=AUDIT_EXAMPLES, stateful_step_count=100, deadline=None, database=None,
    print_blob=True, report_multiple_bugs=False,
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
                        accounts.channel_clearing("acq_a", "EUR"), "fees:EUR", "suspense:EUR"]),
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
