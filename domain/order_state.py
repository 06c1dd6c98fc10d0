"""The order: its statuses, the one table of allowed transitions, its result codes and row.

Pure data and small helpers shared by the decisions in ``domain.orders`` (commands) and
``domain.order_answers`` (channel callbacks, ledger and mandate answers, deadlines).
"""

from __future__ import annotations

from enum import Enum, IntEnum
from typing import NamedTuple

from domain import accounts
from domain.commands import CaptureMode, Message, SplitShare
from domain.events import ChannelOperation, ChannelOutcome, ChannelRequested, PaymentStatusChanged
from domain.ids import derive_id
from domain.risk import Verdict
from domain.routing import Route, RoutePlan


class OrderKind(str, Enum):
    payment = "payment"
    transfer = "transfer"
    topup = "topup"
    withdrawal = "withdrawal"


class OrderStatus(str, Enum):
    created = "created"
    risk_review = "risk_review"
    processing = "processing"
    authorized = "authorized"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"
    partially_refunded = "partially_refunded"
    refunded = "refunded"
    amount_mismatch = "amount_mismatch"
    """Exception: the channel took other money than asked. Nothing booked; ops decide."""
    timed_out = "timed_out"
    """Exception: no answer by the channel's deadline. A late answer still resolves it."""


S = OrderStatus
# The one place transitions are named. A status may repeat only where a second partial
# capture or refund is itself a step forward.
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.created: frozenset({S.processing, S.risk_review, S.failed}),
    S.risk_review: frozenset({S.processing, S.failed}),
    S.processing: frozenset({S.authorized, S.succeeded, S.failed, S.amount_mismatch,
                             S.timed_out}),
    S.timed_out: frozenset({S.authorized, S.succeeded, S.failed}),
    S.authorized: frozenset({S.authorized, S.succeeded, S.canceled, S.failed}),
    S.succeeded: frozenset({S.partially_refunded, S.refunded, S.canceled}),
    S.partially_refunded: frozenset({S.partially_refunded, S.refunded}),
    S.amount_mismatch: frozenset(),
    S.failed: frozenset(),
    S.canceled: frozenset(),
    S.refunded: frozenset(),
}
TERMINAL = frozenset({S.failed, S.canceled, S.refunded})
RECONCILIATION = "reconciliation"
RECONCILED_EXITS = {S.failed: frozenset({S.succeeded})}
"""The one way out of a terminal status: reconciliation, with the channel's proof that it
took the money (a callback or a settlement line for the full amount), makes a failed order
succeed (issue 7's auto-resolution; off unless the channel's recon rule allows it). No
client command, callback or deadline takes it."""
FINAL_FOR_CLIENTS = TERMINAL | {S.succeeded, S.authorized, S.amount_mismatch, S.timed_out,
                                S.risk_review}
"""Statuses a waiting client stops at: final, or needing a next action (the merchant's
capture, ops' risk review)."""


class CommandStatus(IntEnum):
    """One member per reason, numbers fixed forever (TigerBeetle style)."""

    accepted = 0
    duplicate = 1
    order_exists_with_different_payload = 2
    order_not_found = 3
    no_route = 4
    capture_not_allowed_in_status = 5
    capture_exceeds_authorized = 6
    void_not_allowed_in_status = 7
    refund_not_allowed_in_status = 8
    refund_exceeds_captured = 9
    refund_exists_with_different_amount = 10
    callback_for_unknown_request = 11
    callback_replayed = 12
    callback_late = 13
    hold_for_unknown_purpose = 14
    capture_exists_with_different_amount = 15
    callback_amount_mismatch = 16
    """A capture or refund the channel reports with other money: recorded, nothing booked,
    left to reconciliation (the pending capture or refund hold stays until resolved)."""
    order_already_paid = 17
    """Another attempt on an order that already succeeded or is authorized."""
    order_already_final = 18
    """Another attempt on an order that already failed: use a new merchant order no."""
    revoke_not_allowed_in_status = 19
    revoke_not_allowed_for_split = 20
    command_not_allowed_for_kind = 21
    """A payment follow-up (capture, void, refund, revoke) on a transfer, top-up or payout."""
    deadline_not_due = 22
    mandate_answer_unexpected = 23
    duplicate_payment_refunding = 24
    """A second success for one order (payer switched channel): refunded automatically."""
    late_success_refunding = 25
    """A success after the order timed out, on a channel whose rule is to refund it."""
    compensation_refund_declined = 26
    """The channel refused to take back a duplicate or late charge: for ops."""
    settlement_not_allowed_in_status = 27
    settlement_amount_mismatch = 28
    """The channel settled other money than the order kept: for reconciliation."""
    settlement_while_refund_open = 29
    """A refund or revocation is in flight: settle once it is decided (ops re-drive)."""
    revoke_after_settlement = 30
    review_not_pending = 31
    """A review decision for an order not (or no longer) held for review."""
    attempt_refused_by_risk = 32
    """A payer's retry by another method that risk would not approve outright."""
    order_held_for_review = 33
    """A payer's retry while the order waits for an ops review: nothing is sent."""
    confirmation_not_applicable = 34
    """Reconciliation confirmed a channel success or refund the order cannot take (another
    amount, no such attempt, a status it cannot leave): the exception stays with ops."""
    exception_already_resolved = 35
    """Another action already resolved this reconciliation exception (the same action again
    is a duplicate)."""
    action_not_allowed_for_kind = 36
    """The action does not apply to this kind of exception (``domain.resolutions.ALLOWED``)."""
    resolution_facts_differ_from_order = 37
    """The exception names another channel, currency or amount than the order has."""
    resolution_not_applicable_in_status = 38
    """The order's status (or an open refund, a settlement) rules the action out now."""
    resolution_differs_from_preview = 39
    """The entries the order would post are not the ones ops confirmed: preview again."""
    refund_not_allowed_for_settled_line = 40
    """The channel has already paid the money over in a settlement line: refunding it through
    the channel would take it twice; accept the channel's result, then refund the payment."""

    def transient(self) -> bool:
        return False


# Hold purposes cannot collide with refund ids: "~" is not allowed in an Identifier.
PAYER_HOLD = "~payer"
REVOKE_HOLD = "~revoke"
SETTLE_HOLD_PREFIX = "~settle-"
COMPENSATION_PREFIX = "~back-"
CHANNEL_REFUND_PREFIX = "chrefund_"
"""Refund ids of refunds the channel made by itself (reconciliation posts them)."""


def hold_id_for(payment_id: str, purpose: str) -> str:
    return derive_id("hold", payment_id, purpose)


def merchant_funds(order: Order) -> str:
    """Where the merchant's money for this order sits now: pending, or settled after the
    channel settled it (refunds after settlement are taken from there)."""
    if order.settlement == "settled":
        return accounts.merchant_settled(order.merchant_id, order.currency)
    return accounts.merchant_pending(order.merchant_id, order.currency)


def refund_funds(order: Order, refund_id: str) -> str:
    """The account a refund's hold was placed on: a replay after settlement re-decides the
    same entry."""
    refund = next(r for r in order.refunds if r.refund_id == refund_id)
    return refund.account_id or accounts.merchant_pending(order.merchant_id, order.currency)


class HistoryItem(Message):
    at_ms: int
    status: OrderStatus
    trigger: str
    reason: str


class RefundState(Message):
    refund_id: str
    amount_minor: int
    status: str  # holding | processing | succeeded | failed
    account_id: str = ""
    """Where its hold was placed, so its debit or release goes there even if the order
    settled since ('' in rows from before settlement: the merchant's pending account)."""


class SettleHold(Message):
    """One merchant's part of a settlement: frozen on pending, then moved to settled."""

    merchant_id: str
    account_id: str
    amount_minor: int
    status: str  # holding | placed | refused | released


class AppliedRequest(Message):
    request_id: str
    operation: ChannelOperation
    outcome: ChannelOutcome
    amount_minor: int
    currency: str
    """What the channel reported, which may differ from what we asked (amount mismatch)."""
    reference: str
    applied_at_ms: int
    """When it was applied: a replay re-emits its effects stamped with this, byte-identical."""


class Resolution(Message):
    """One ops resolution the order applied (``resolve_exception``)."""

    exception_id: str
    action: str
    at_ms: int


class Order(Message):
    payment_id: str
    merchant_id: str
    merchant_order_no: str
    fingerprint: str
    kind: OrderKind = OrderKind.payment
    method: str
    capture_mode: CaptureMode
    currency: str
    amount_minor: int
    route: Route
    """The first attempt's route; ``retry_routes`` holds the later attempts (the payer's
    own retries and failovers)."""
    route_plan: RoutePlan | None = None
    """The routing decision: candidates in failover order, rule, scores, rules version."""
    risk: Verdict | None = None
    """Risk's verdict, with the rules that fired and the rules version."""
    review: str = ""
    """'' | pending | approved | rejected | expired: the ops review of a held order."""
    retry_routes: tuple[Route, ...] = ()
    attempt_fingerprints: tuple[str, ...] = ()
    """Payloads of the payer's later attempts: a copy of one is a duplicate, not a third."""
    status: OrderStatus
    payer_account_id: str = ""
    """Ledger account the money comes from (balance, transfer, payout) or goes to (top-up)."""
    payee_account_id: str = ""
    """A transfer's destination account."""
    mandate_id: str = ""
    split: tuple[SplitShare, ...] = ()
    payer_hold: str = ""
    """'' (none) | holding | placed | refused | closed: the try/confirm/cancel freeze."""
    revocation: str = ""
    """'' | holding | processing | succeeded | failed."""
    settlement: str = ""
    """'' | holding | settled | failed: merchant funds moved from pending to settled."""
    settle_holds: tuple[SettleHold, ...] = ()
    settled_on: str = ""
    paid_via: str = ""
    """The channel whose success made the order succeed (attempts may differ)."""
    deadline_ms: int = 0
    """When the sweeper must look again (callback timeout, authorization expiry); 0: never."""
    channel_serial: str = ""
    authorized_minor: int = 0
    captured_minor: int = 0
    capture_pending_minor: int = 0
    refunded_minor: int = 0
    refunds: tuple[RefundState, ...] = ()
    requests: tuple[ChannelRequested, ...] = ()
    applied: tuple[AppliedRequest, ...] = ()
    history: tuple[HistoryItem, ...] = ()
    resolutions: tuple[Resolution, ...] = ()
    """Reconciliation exceptions of this payment that ops resolved, each once."""
    created_at_ms: int
    updated_at_ms: int

    def route_for(self, channel: str) -> Route:
        return next(r for r in (self.route, *self.retry_routes) if r.channel == channel)


class Decision(NamedTuple):
    order: Order | None
    outputs: tuple[Message, ...]
    status: CommandStatus


def fingerprint_of(cmd: Message) -> str:
    """Same payload, same fingerprint: idempotency compares these, not the raw bytes."""
    return derive_id("fp", cmd.model_dump_json(exclude={"idempotency_key"}))


def transition(order: Order, to: OrderStatus, trigger: str, reason: str, now_ms: int,
               **changes):
    """Move the order forward and build the one event that says so."""
    assert to in TRANSITIONS[order.status] or (
        trigger == RECONCILIATION and to in RECONCILED_EXITS.get(order.status, ())), (
        order.status, to)
    item = HistoryItem(at_ms=now_ms, status=to, trigger=trigger, reason=reason)
    moved = order.model_copy(
        update={"status": to, "history": order.history + (item,), "updated_at_ms": now_ms,
                **changes}
    )
    return moved, status_event(moved, order.status.value, trigger, reason, now_ms)


def status_event(order: Order, previous: str, trigger: str, reason: str, now_ms: int):
    return PaymentStatusChanged(
        payment_id=order.payment_id, merchant_id=order.merchant_id,
        merchant_order_no=order.merchant_order_no, status=order.status.value,
        previous_status=previous, reason=reason, channel=order.paid_via or order.route.channel,
        channel_serial=order.channel_serial, amount_minor=order.amount_minor,
        currency=order.currency, captured_minor=order.captured_minor,
        refunded_minor=order.refunded_minor, at_ms=now_ms, trigger=trigger,
    )


def note(order: Order, trigger: str, reason: str, now_ms: int) -> Order:
    """Record something in the history without changing status (ignored or late messages)."""
    item = HistoryItem(at_ms=now_ms, status=order.status, trigger=trigger, reason=reason)
    return order.model_copy(update={"history": order.history + (item,), "updated_at_ms": now_ms})


def noted_event(order: Order, trigger: str, reason: str, now_ms: int):
    """A note the merchant must hear about (a refund failed, a duplicate is going back)."""
    noted = note(order, trigger, reason, now_ms)
    return noted, status_event(noted, noted.status.value, trigger, reason, now_ms)


def channel_request(order: Order, route: Route, op: ChannelOperation, amount_minor: int,
                    reference: str = "") -> ChannelRequested:
    return ChannelRequested(
        request_id=derive_id("req", order.payment_id, route.channel, op.value, reference),
        payment_id=order.payment_id, channel=route.channel, operation=op,
        amount_minor=amount_minor, currency=order.currency, reference=reference,
    )


def is_attempt(request: ChannelRequested) -> bool:
    """Requests that pay the order itself (one per attempt)."""
    return request.operation in (ChannelOperation.sale, ChannelOperation.authorize,
                                 ChannelOperation.payout)


def open_requests(order: Order, *ops: ChannelOperation) -> list[ChannelRequested]:
    applied = {a.request_id for a in order.applied}
    return [r for r in order.requests if r.operation in ops and r.request_id not in applied]
