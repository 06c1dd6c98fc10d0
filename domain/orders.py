"""The order state machine: one writer per payment id, pure decisions, forward-only status.

``decide_command``, ``decide_channel_response`` and ``decide_hold_resolved`` each take the
current order (or None), the message and ``now_ms`` and return a ``Decision``: the new
order, the messages to emit, and a status code. Expected failures return a code; a broken
invariant is an assertion.
"""

from __future__ import annotations

from enum import Enum, IntEnum
from typing import NamedTuple

from domain import accounts
from domain.commands import Capture, CaptureMode, Message, Pay, Refund, Void
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
from domain.routing import Route


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


S = OrderStatus
# The one place transitions are named. A status may repeat only where a second partial
# capture or refund is itself a step forward.
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.created: frozenset({S.processing, S.risk_review, S.failed}),
    S.risk_review: frozenset({S.processing, S.failed}),
    S.processing: frozenset({S.authorized, S.succeeded, S.failed, S.amount_mismatch}),
    S.authorized: frozenset({S.authorized, S.succeeded, S.canceled, S.failed}),
    S.succeeded: frozenset({S.partially_refunded, S.refunded}),
    S.partially_refunded: frozenset({S.partially_refunded, S.refunded}),
    S.amount_mismatch: frozenset(),
    S.failed: frozenset(),
    S.canceled: frozenset(),
    S.refunded: frozenset(),
}
TERMINAL = frozenset({S.failed, S.canceled, S.refunded})
FINAL_FOR_CLIENTS = TERMINAL | {S.succeeded, S.authorized, S.amount_mismatch}
"""Statuses a waiting client stops at: final, or needing the merchant's next action."""


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
    hold_for_unknown_refund = 14
    capture_exists_with_different_amount = 15
    callback_amount_mismatch = 16
    """A capture or refund the channel reports with other money: recorded, nothing booked,
    left to reconciliation (the pending capture or refund hold stays until resolved)."""

    def transient(self) -> bool:
        return False


class HistoryItem(Message):
    at_ms: int
    status: OrderStatus
    trigger: str
    reason: str


class RefundState(Message):
    refund_id: str
    amount_minor: int
    status: str  # holding | processing | succeeded | failed


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


class Order(Message):
    payment_id: str
    merchant_id: str
    merchant_order_no: str
    fingerprint: str
    method: str
    capture_mode: CaptureMode
    currency: str
    amount_minor: int
    route: Route
    status: OrderStatus
    channel_serial: str = ""
    authorized_minor: int = 0
    captured_minor: int = 0
    capture_pending_minor: int = 0
    refunded_minor: int = 0
    refunds: tuple[RefundState, ...] = ()
    requests: tuple[ChannelRequested, ...] = ()
    applied: tuple[AppliedRequest, ...] = ()
    history: tuple[HistoryItem, ...] = ()
    created_at_ms: int
    updated_at_ms: int


class Decision(NamedTuple):
    order: Order | None
    outputs: tuple[Message, ...]
    status: CommandStatus


def fingerprint_of(cmd: Message) -> str:
    """Same payload, same fingerprint: idempotency compares these, not the raw bytes."""
    return derive_id("fp", cmd.model_dump_json(exclude={"idempotency_key"}))


def _transition(order: Order, to: OrderStatus, trigger: str, reason: str, now_ms: int, **changes):
    """Move the order forward and build the one event that says so."""
    assert to in TRANSITIONS[order.status], (order.status, to)
    item = HistoryItem(at_ms=now_ms, status=to, trigger=trigger, reason=reason)
    moved = order.model_copy(
        update={"status": to, "history": order.history + (item,), "updated_at_ms": now_ms,
                **changes}
    )
    return moved, _status_event(moved, order.status.value, trigger, reason, now_ms)


def _status_event(order: Order, previous: str, trigger: str, reason: str, now_ms: int):
    return PaymentStatusChanged(
        payment_id=order.payment_id, merchant_id=order.merchant_id,
        merchant_order_no=order.merchant_order_no, status=order.status.value,
        previous_status=previous, reason=reason, channel=order.route.channel,
        channel_serial=order.channel_serial, amount_minor=order.amount_minor,
        currency=order.currency, captured_minor=order.captured_minor,
        refunded_minor=order.refunded_minor, at_ms=now_ms, trigger=trigger,
    )


def _channel_request(order: Order, op: ChannelOperation, amount_minor: int, reference: str = ""):
    return ChannelRequested(
        request_id=derive_id("req", order.payment_id, order.route.channel, op.value, reference),
        payment_id=order.payment_id, channel=order.route.channel, operation=op,
        amount_minor=amount_minor, currency=order.currency, reference=reference,
    )


def _note(order: Order, trigger: str, reason: str, now_ms: int) -> Order:
    """Record something in the history without changing status (ignored or late messages)."""
    item = HistoryItem(at_ms=now_ms, status=order.status, trigger=trigger, reason=reason)
    return order.model_copy(update={"history": order.history + (item,), "updated_at_ms": now_ms})


# ---------------------------------------------------------------- commands


def decide_command(order: Order | None, cmd: Message, route: Route | None, now_ms: int) -> Decision:
    """Ids, idempotency, fields, lookups, limits: in that order, for every command."""
    if order is not None:
        assert order.payment_id == payment_id_for(cmd.merchant_id, cmd.merchant_order_no)
    if isinstance(cmd, Pay):
        return _create(order, cmd, route, now_ms)
    if order is None:
        return Decision(None, (), CommandStatus.order_not_found)
    if isinstance(cmd, Capture):
        return _capture(order, cmd, now_ms)
    if isinstance(cmd, Void):
        return _void(order, now_ms)
    assert isinstance(cmd, Refund), type(cmd)
    return _refund(order, cmd, now_ms)


def _create(order: Order | None, cmd: Pay, route: Route | None, now_ms: int) -> Decision:
    fingerprint = fingerprint_of(cmd)
    if order is not None:
        if order.fingerprint != fingerprint:
            return Decision(order, (), CommandStatus.order_exists_with_different_payload)
        # Same order again (redelivery): re-emit the first request; downstream is idempotent.
        return Decision(order, order.requests[:1], CommandStatus.duplicate)
    if route is None:
        return Decision(None, (), CommandStatus.no_route)
    created = Order(
        payment_id=payment_id_for(cmd.merchant_id, cmd.merchant_order_no),
        merchant_id=cmd.merchant_id, merchant_order_no=cmd.merchant_order_no,
        fingerprint=fingerprint, method=cmd.method.value, capture_mode=cmd.capture,
        currency=cmd.currency, amount_minor=cmd.amount_minor, route=route,
        status=S.created, created_at_ms=now_ms, updated_at_ms=now_ms,
        history=(HistoryItem(at_ms=now_ms, status=S.created, trigger="pay", reason="accepted"),),
    )
    first_event = _status_event(created, "", "pay", "accepted", now_ms)
    op = ChannelOperation.sale if cmd.capture is CaptureMode.auto else ChannelOperation.authorize
    request = _channel_request(created, op, cmd.amount_minor)
    moved, event = _transition(created, S.processing, "pay", f"routed: {route.reason}", now_ms,
                               requests=(request,))
    return Decision(moved, (first_event, event, request), CommandStatus.accepted)


def _capture(order: Order, cmd: Capture, now_ms: int) -> Decision:
    reference = f"capture-{cmd.idempotency_key}"
    request_id = _channel_request(order, ChannelOperation.capture, 0, reference).request_id
    earlier = next((r for r in order.requests if r.request_id == request_id), None)
    if earlier is not None:
        if cmd.amount_minor is not None and cmd.amount_minor != earlier.amount_minor:
            return Decision(order, (), CommandStatus.capture_exists_with_different_amount)
        return Decision(order, (), CommandStatus.duplicate)
    if order.status is not S.authorized or _void_outstanding(order):
        return Decision(order, (), CommandStatus.capture_not_allowed_in_status)
    remaining = order.authorized_minor - order.captured_minor - order.capture_pending_minor
    amount = remaining if cmd.amount_minor is None else cmd.amount_minor
    if amount <= 0 or amount > remaining:
        return Decision(order, (), CommandStatus.capture_exceeds_authorized)
    request = _channel_request(order, ChannelOperation.capture, amount, reference)
    assert request.request_id == request_id
    updated = _note(order, "capture", f"capture of {amount} requested", now_ms).model_copy(
        update={"capture_pending_minor": order.capture_pending_minor + amount,
                "requests": order.requests + (request,)})
    return Decision(updated, (request,), CommandStatus.accepted)


def _void_outstanding(order: Order) -> bool:
    applied = {a.request_id for a in order.applied}
    return any(r.operation is ChannelOperation.void and r.request_id not in applied
               for r in order.requests)


def _void(order: Order, now_ms: int) -> Decision:
    """One void at a time: while one is outstanding, or once one succeeded, a void is a
    duplicate; after a declined void the merchant may try again."""
    voids = [r for r in order.requests if r.operation is ChannelOperation.void]
    outcomes = {a.request_id: a.outcome for a in order.applied}
    if any(outcomes.get(r.request_id) is not ChannelOutcome.declined for r in voids):
        return Decision(order, (), CommandStatus.duplicate)
    if order.status is not S.authorized or order.capture_pending_minor:
        return Decision(order, (), CommandStatus.void_not_allowed_in_status)
    request = _channel_request(order, ChannelOperation.void, 0, f"void-{len(voids)}")
    updated = _note(order, "void", "void requested", now_ms).model_copy(
        update={"requests": order.requests + (request,)})
    return Decision(updated, (request,), CommandStatus.accepted)


def _refund(order: Order, cmd: Refund, now_ms: int) -> Decision:
    existing = next((r for r in order.refunds if r.refund_id == cmd.refund_id), None)
    if existing is not None:
        if existing.amount_minor != cmd.amount_minor:
            return Decision(order, (), CommandStatus.refund_exists_with_different_amount)
        return Decision(order, (), CommandStatus.duplicate)
    if order.status not in (S.succeeded, S.partially_refunded):
        return Decision(order, (), CommandStatus.refund_not_allowed_in_status)
    committed = sum(r.amount_minor for r in order.refunds if r.status != "failed")
    if committed + cmd.amount_minor > order.captured_minor:
        return Decision(order, (), CommandStatus.refund_exceeds_captured)
    hold = HoldRequested(
        hold_id=derive_id("hold", order.payment_id, cmd.refund_id), payment_id=order.payment_id,
        account_id=accounts.merchant_pending(order.merchant_id, order.currency),
        currency=order.currency, amount_minor=cmd.amount_minor,
    )
    refund = RefundState(refund_id=cmd.refund_id, amount_minor=cmd.amount_minor, status="holding")
    updated = _note(order, "refund", f"refund {cmd.refund_id} of {cmd.amount_minor}: "
                    "holding merchant funds", now_ms).model_copy(
        update={"refunds": order.refunds + (refund,)})
    return Decision(updated, (hold,), CommandStatus.accepted)


# ---------------------------------------------------------------- ledger answers


def decide_hold_resolved(order: Order | None, answer: HoldResolved, now_ms: int) -> Decision:
    if order is None:
        return Decision(None, (), CommandStatus.order_not_found)
    refund = next((r for r in order.refunds
                   if derive_id("hold", order.payment_id, r.refund_id) == answer.hold_id), None)
    if refund is None:
        return Decision(order, (), CommandStatus.hold_for_unknown_refund)
    if refund.status != "holding":
        return Decision(order, (), CommandStatus.duplicate)
    if not answer.placed:
        updated = _set_refund(order, refund.refund_id, "failed")
        updated = _note(updated, "hold", f"refund {refund.refund_id} failed: {answer.reason}",
                        now_ms)
        return Decision(updated, (_status_event(updated, updated.status.value, "refund",
                                                f"refund failed: {answer.reason}", now_ms),),
                        CommandStatus.accepted)
    request = _channel_request(order, ChannelOperation.refund, refund.amount_minor,
                               refund.refund_id)
    updated = _set_refund(order, refund.refund_id, "processing").model_copy(
        update={"requests": order.requests + (request,)})
    return Decision(_note(updated, "hold", f"refund {refund.refund_id} sent to channel", now_ms),
                    (request,), CommandStatus.accepted)


def _set_refund(order: Order, refund_id: str, status: str) -> Order:
    refunds = tuple(r.model_copy(update={"status": status}) if r.refund_id == refund_id else r
                    for r in order.refunds)
    return order.model_copy(update={"refunds": refunds})


# ---------------------------------------------------------------- channel callbacks


def decide_channel_response(order: Order | None, resp: ChannelResponded, now_ms: int) -> Decision:
    """Apply a channel's answer once, in state-machine order; replays re-emit, never re-apply."""
    if order is None:
        return Decision(None, (), CommandStatus.order_not_found)
    request = next((r for r in order.requests if r.request_id == resp.request_id), None)
    if request is None:
        noted = _note(order, resp.operation.value, f"callback for unknown request "
                      f"{resp.request_id} ignored", now_ms)
        return Decision(noted, (), CommandStatus.callback_for_unknown_request)
    applied = next((a for a in order.applied if a.request_id == resp.request_id), None)
    if applied is not None and (applied.outcome is not resp.outcome
                                or applied.amount_minor != resp.amount_minor
                                or applied.currency != resp.currency):
        return _late(order, resp, now_ms, f"contradicts the earlier {applied.outcome.value} "
                     f"of {applied.amount_minor} {applied.currency}")
    if applied is not None:
        return Decision(order, _replay(order, applied), CommandStatus.callback_replayed)
    record = AppliedRequest(request_id=request.request_id, operation=request.operation,
                            outcome=resp.outcome, amount_minor=resp.amount_minor,
                            currency=resp.currency, reference=request.reference,
                            applied_at_ms=now_ms)
    order = order.model_copy(update={"applied": order.applied + (record,)})
    handler = _RESPONSE_HANDLERS[request.operation]
    return handler(order, request, resp, now_ms)


def _late(order: Order, resp: ChannelResponded, now_ms: int, why: str = "") -> Decision:
    """Recorded, never applied: reconciliation and ops resolve it (pay.recon.exceptions)."""
    why = why or f"in status {order.status.value}"
    noted = _note(order, resp.operation.value, f"late {resp.outcome.value} {why}: recorded",
                  now_ms)
    return Decision(noted, (), CommandStatus.callback_late)


def _on_sale_or_authorize(order, request, resp, now_ms) -> Decision:
    if order.status is not S.processing:
        return _late(order, resp, now_ms)
    trigger = request.operation.value
    serial = {"channel_serial": resp.channel_serial}
    if resp.outcome is ChannelOutcome.declined:
        moved, event = _transition(order, S.failed, trigger, f"declined: {resp.decline_code}",
                                   now_ms, **serial)
        return Decision(moved, (event,), CommandStatus.accepted)
    if resp.amount_minor != request.amount_minor or resp.currency != request.currency:
        reason = (f"channel reported {resp.amount_minor} {resp.currency}, "
                  f"expected {request.amount_minor} {request.currency}")
        moved, event = _transition(order, S.amount_mismatch, trigger, reason, now_ms, **serial)
        return Decision(moved, (event,), CommandStatus.accepted)
    if request.operation is ChannelOperation.authorize:
        moved, event = _transition(order, S.authorized, trigger, "authorized", now_ms,
                                   authorized_minor=resp.amount_minor, **serial)
        return Decision(moved, (event,), CommandStatus.accepted)
    moved, event = _transition(order, S.succeeded, trigger, "captured", now_ms,
                               authorized_minor=resp.amount_minor,
                               captured_minor=resp.amount_minor, **serial)
    return Decision(moved, (event, capture_entry(moved, request, now_ms)), CommandStatus.accepted)


def _on_capture(order, request, resp, now_ms) -> Decision:
    if order.status is not S.authorized:
        return _late(order, resp, now_ms)
    assert order.capture_pending_minor >= request.amount_minor
    pending = order.capture_pending_minor - request.amount_minor
    if resp.outcome is ChannelOutcome.declined:
        noted = _note(order, "capture", f"capture declined: {resp.decline_code}", now_ms)
        return Decision(noted.model_copy(update={"capture_pending_minor": pending}), (),
                        CommandStatus.accepted)
    if _other_money(request, resp):
        return _money_mismatch(order, request, resp, now_ms)
    captured = order.captured_minor + request.amount_minor
    assert captured <= order.authorized_minor
    to = S.succeeded if captured == order.authorized_minor else S.authorized
    moved, event = _transition(order, to, "capture", f"captured {request.amount_minor}", now_ms,
                               captured_minor=captured, capture_pending_minor=pending)
    return Decision(moved, (event, capture_entry(moved, request, now_ms)), CommandStatus.accepted)


def _on_void(order, request, resp, now_ms) -> Decision:
    if order.status is not S.authorized:
        return _late(order, resp, now_ms)
    if resp.outcome is ChannelOutcome.declined:
        noted = _note(order, "void", f"void declined: {resp.decline_code}", now_ms)
        return Decision(noted, (), CommandStatus.accepted)
    to = S.succeeded if order.captured_minor else S.canceled
    moved, event = _transition(order, to, "void", "remainder released", now_ms)
    return Decision(moved, (event,), CommandStatus.accepted)


def _on_refund(order, request, resp, now_ms) -> Decision:
    hold = HoldReleaseRequested(
        hold_id=derive_id("hold", order.payment_id, request.reference),
        payment_id=order.payment_id,
        account_id=accounts.merchant_pending(order.merchant_id, order.currency))
    if resp.outcome is ChannelOutcome.succeeded and _other_money(request, resp):
        return _money_mismatch(order, request, resp, now_ms)
    if resp.outcome is ChannelOutcome.declined:
        updated = _note(_set_refund(order, request.reference, "failed"), "refund",
                        f"refund {request.reference} declined: {resp.decline_code}", now_ms)
        event = _status_event(updated, updated.status.value, "refund",
                              f"refund declined: {resp.decline_code}", now_ms)
        return Decision(updated, (event, hold), CommandStatus.accepted)
    refunded = order.refunded_minor + request.amount_minor
    assert refunded <= order.captured_minor
    to = S.refunded if refunded == order.captured_minor else S.partially_refunded
    order = _set_refund(order, request.reference, "succeeded")
    moved, event = _transition(order, to, "refund", f"refunded {request.amount_minor}", now_ms,
                               refunded_minor=refunded)
    return Decision(moved, (event, refund_entry(moved, request, now_ms)), CommandStatus.accepted)


def _other_money(request: ChannelRequested, resp: ChannelResponded) -> bool:
    return resp.amount_minor != request.amount_minor or resp.currency != request.currency


def _money_mismatch(order, request, resp, now_ms) -> Decision:
    """The channel moved other money than we asked: book nothing, leave it to recon."""
    reason = (f"{request.operation.value} reported as {resp.amount_minor} {resp.currency}, "
              f"asked {request.amount_minor} {request.currency}: nothing booked")
    return Decision(_note(order, request.operation.value, reason, now_ms), (),
                    CommandStatus.callback_amount_mismatch)


_RESPONSE_HANDLERS = {
    ChannelOperation.sale: _on_sale_or_authorize,
    ChannelOperation.authorize: _on_sale_or_authorize,
    ChannelOperation.capture: _on_capture,
    ChannelOperation.void: _on_void,
    ChannelOperation.refund: _on_refund,
}


def _replay(order: Order, applied: AppliedRequest) -> tuple[Message, ...]:
    """Re-derive the money effect of an applied callback: same entry id, so applied once."""
    if applied.outcome is not ChannelOutcome.succeeded:
        return ()
    request = next(r for r in order.requests if r.request_id == applied.request_id)
    if applied.operation in (ChannelOperation.sale, ChannelOperation.capture):
        if order.status is S.amount_mismatch:
            return ()
        return (capture_entry(order, request, applied.applied_at_ms),)
    if applied.operation is ChannelOperation.refund:
        return (refund_entry(order, request, applied.applied_at_ms),)
    return ()


# ---------------------------------------------------------------- ledger postings


def capture_entry(order: Order, request: ChannelRequested, now_ms: int) -> JournalEntryDecided:
    """Channel owes us the gross; the merchant is owed the net; we earn the fee."""
    ccy, amount = order.currency, request.amount_minor
    fee = fee_minor(amount, order.route.fee_bps, order.route.fee_fixed_minor)
    legs = [
        Leg(account_id=accounts.channel_clearing(order.route.channel, ccy), currency=ccy,
            amount_minor=-amount),
        Leg(account_id=accounts.merchant_pending(order.merchant_id, ccy), currency=ccy,
            amount_minor=amount - fee),
    ]
    if fee:
        legs.append(Leg(account_id=accounts.fee_revenue(ccy), currency=ccy, amount_minor=fee))
    return _entry(order, request, "capture", legs, now_ms)


def refund_entry(order: Order, request: ChannelRequested, now_ms: int) -> JournalEntryDecided:
    """The merchant's held funds go back through the channel; the fee is not returned."""
    ccy, amount = order.currency, request.amount_minor
    legs = [
        Leg(account_id=accounts.merchant_pending(order.merchant_id, ccy), currency=ccy,
            amount_minor=-amount, hold_id=derive_id("hold", order.payment_id, request.reference)),
        Leg(account_id=accounts.channel_clearing(order.route.channel, ccy), currency=ccy,
            amount_minor=amount),
    ]
    return _entry(order, request, "refund", legs, now_ms)


def _entry(order, request, reason, legs, now_ms) -> JournalEntryDecided:
    entry = JournalEntryDecided(
        entry_id=derive_id("je", request.request_id), payment_id=order.payment_id,
        reason=reason, legs=tuple(legs), decided_at_ms=now_ms)
    assert sum(leg.amount_minor for leg in entry.legs) == 0, entry
    assert len({leg.account_id for leg in entry.legs}) == len(entry.legs), entry
    return entry
