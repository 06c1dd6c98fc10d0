"""Answers to an order: channel callbacks, the ledger's hold answers, the mandate check and
the sweeper's deadlines. Each is applied once, in state-machine order; a replay re-emits
the same money effects (same ids), never re-applies them.
"""

from __future__ import annotations

from domain import accounts
from domain.commands import CaptureMode, Method
from domain.events import (
    ChannelOperation,
    ChannelOutcome,
    ChannelRequested,
    ChannelResponded,
    DeadlineReached,
    HoldReleaseRequested,
    HoldRequested,
    HoldResolved,
    MandateChecked,
    SettlementReported,
)
from domain.ids import derive_id
from domain.order_state import (
    CHANNEL_REFUND_PREFIX,
    COMPENSATION_PREFIX,
    PAYER_HOLD,
    RECONCILIATION,
    REVOKE_HOLD,
    SETTLE_HOLD_PREFIX,
    AppliedRequest,
    CommandStatus,
    Decision,
    Order,
    OrderKind,
    OrderStatus,
    RefundState,
    SettleHold,
    channel_request,
    hold_id_for,
    merchant_funds,
    note,
    noted_event,
    open_requests,
    refund_funds,
    transition,
)
from domain.postings import (
    capture_entry,
    clearing_settlement_entry,
    pending_by_merchant,
    refund_entry,
    reversal_entry,
    settlement_entry,
    suspense_in_entry,
    suspense_out_entry,
)
from domain.routing import INTERNAL_CHANNEL, LateSuccess, Route

S = OrderStatus
C = CommandStatus
EXPIRY_VOIDS_MAX = 3
"""An expired authorization whose void the channel keeps declining is left to ops after
this many voids."""
OK = ChannelOutcome.succeeded
DECLINED = ChannelOutcome.declined


# ---------------------------------------------------------------- sending


def send(order: Order, request: ChannelRequested, now_ms: int):
    """Record a request; an internal one (money that never leaves our ledger) is answered
    on the spot, so balance payments and transfers run the same state machine."""
    order = order.model_copy(update={"requests": order.requests + (request,)})
    if request.channel != INTERNAL_CHANNEL:
        return order, (request,)
    answer = ChannelResponded(
        request_id=request.request_id, payment_id=order.payment_id, channel=request.channel,
        operation=request.operation, outcome=OK, amount_minor=request.amount_minor,
        currency=request.currency, channel_serial=derive_id("int", request.request_id),
        responded_at_ms=now_ms)
    decided = decide_channel_response(order, answer, now_ms)
    assert decided.status is C.accepted, decided.status
    return decided.order, decided.outputs


def paid_route(order: Order) -> Route:
    return order.route_for(order.paid_via or order.route.channel)


def _merchant_voids(requests) -> list[ChannelRequested]:
    return [r for r in requests if r.operation is ChannelOperation.void
            and not r.reference.startswith(COMPENSATION_PREFIX)]


def void_outstanding(order: Order) -> bool:
    return bool(_merchant_voids(open_requests(order, ChannelOperation.void)))


def request_void(order: Order, trigger: str, reason: str, now_ms: int) -> Decision:
    """One void at a time: while one is outstanding, or once one succeeded, a void is a
    duplicate; after a declined void it may be tried again."""
    voids = _merchant_voids(order.requests)
    declined = {a.request_id for a in order.applied if a.outcome is DECLINED}
    if any(r.request_id not in declined for r in voids):
        return Decision(order, (), C.duplicate)
    if order.status is not S.authorized or order.capture_pending_minor:
        return Decision(order, (), C.void_not_allowed_in_status)
    request = channel_request(order, paid_route(order), ChannelOperation.void, 0,
                              f"void-{len(voids)}")
    updated, sent = send(note(order, trigger, reason, now_ms), request, now_ms)
    return Decision(updated, sent, C.accepted)


def start_attempt(order: Order, route: Route, reference: str, before: tuple, now_ms: int
                  ) -> Decision:
    """Ask ``route``'s channel to pay the order (first attempt, payer's retry, failover)."""
    op = {OrderKind.withdrawal: ChannelOperation.payout}.get(order.kind, ChannelOperation.sale)
    if order.capture_mode is CaptureMode.manual:
        op = ChannelOperation.authorize
    request = channel_request(order, route, op, order.amount_minor, reference)
    deadline = now_ms + route.callback_timeout_ms if route.callback_timeout_ms else 0
    deadline = max(deadline, order.deadline_ms)
    trigger = order.history[-1].trigger
    if order.status is S.processing:
        moved = note(order, trigger, f"attempt on {route.channel}: {route.reason}", now_ms)
        moved = moved.model_copy(update={"deadline_ms": deadline})
        events: tuple = ()
    else:
        plan = order.route_plan
        why = f"routed: {route.reason}"
        if plan is not None and plan.scores and route.channel != INTERNAL_CHANNEL:
            why += f"; candidates {plan.scores} [routing {plan.version or '?'}]"
        moved, event = transition(order, S.processing, trigger, why, now_ms,
                                  deadline_ms=deadline)
        events = (event,)
    moved, sent = send(moved, request, now_ms)
    return Decision(moved, before + events + sent, C.accepted)


FAILOVER_PREFIX = "failover-"
NOT_FOUND = "not_found"
"""A status query's answer for a request the channel never received: nothing was
charged, so the payment may safely be tried elsewhere."""


def channel_could_not(order: Order, resp: ChannelResponded) -> bool:
    """A technical decline (the channel's fault, not the payer's): fail over, and count it
    against the channel's health."""
    return resp.decline_code in order.route_for(resp.channel).retriable_declines or (
        resp.via_query and resp.decline_code == NOT_FOUND)


def failover(order: Order, failed: ChannelRequested, cause: str, now_ms: int
             ) -> Decision | None:
    """The next untried candidate of the routing plan, if attempts remain; else None.
    Never after a success: callers only ask while the order is unpaid."""
    plan = order.route_plan
    if plan is None:
        return None
    used = (order.route, *order.retry_routes)
    if len(used) >= plan.max_attempts:
        return None
    tried = {r.channel for r in used}
    after = next((c for c in plan.candidates if c.channel not in tried), None)
    if after is None:
        return None
    order = order.model_copy(update={"retry_routes": order.retry_routes + (after,)})
    order, event = noted_event(order, failed.operation.value,
                               f"failover from {failed.channel} to {after.channel} after "
                               f"{cause} (attempt {len(used) + 1} of {plan.max_attempts})",
                               now_ms)
    return start_attempt(order, after, f"{FAILOVER_PREFIX}{len(used)}", (event,), now_ms)


def send_reversal(order: Order, now_ms: int) -> Decision:
    request = channel_request(order, paid_route(order), ChannelOperation.reverse,
                              order.captured_minor)
    updated, sent = send(note(order, "revoke", "reversal sent to the channel", now_ms),
                         request, now_ms)
    return Decision(updated, sent, C.accepted)


def _release_payer_hold(order: Order) -> tuple[Order, tuple]:
    if order.payer_hold != "placed":
        return order, ()
    release = HoldReleaseRequested(hold_id=hold_id_for(order.payment_id, PAYER_HOLD),
                                   payment_id=order.payment_id,
                                   account_id=order.payer_account_id)
    return order.model_copy(update={"payer_hold": "closed"}), (release,)


# ---------------------------------------------------------------- channel callbacks


def decide_channel_response(order: Order | None, resp: ChannelResponded, now_ms: int) -> Decision:
    if order is None:
        return Decision(None, (), C.order_not_found)
    request = next((r for r in order.requests if r.request_id == resp.request_id), None)
    if request is None:
        noted = note(order, resp.operation.value, f"callback for unknown request "
                     f"{resp.request_id} ignored", now_ms)
        return Decision(noted, (), C.callback_for_unknown_request)
    if resp.outcome is ChannelOutcome.pending:  # a redirect: the outcome comes later
        said = f"{request.channel} took the request: waiting for the payer and its notification"
        if any(h.reason == said for h in order.history):
            return Decision(order, (), C.callback_replayed)
        return Decision(note(order, request.operation.value, said, now_ms), (), C.accepted)
    applied = next((a for a in order.applied if a.request_id == resp.request_id), None)
    if applied is not None and (applied.outcome is not resp.outcome
                                or applied.amount_minor != resp.amount_minor
                                or applied.currency != resp.currency):
        return _late(order, resp, now_ms, f"contradicts the earlier {applied.outcome.value} "
                     f"of {applied.amount_minor} {applied.currency}")
    if applied is not None:
        return Decision(order, _replay(order, applied), C.callback_replayed)
    record = AppliedRequest(request_id=request.request_id, operation=request.operation,
                            outcome=resp.outcome, amount_minor=resp.amount_minor,
                            currency=resp.currency, reference=request.reference,
                            applied_at_ms=now_ms)
    order = order.model_copy(update={"applied": order.applied + (record,)})
    return _RESPONSE_HANDLERS[request.operation](order, request, resp, now_ms)


def _late(order: Order, resp: ChannelResponded, now_ms: int, why: str = "") -> Decision:
    """Recorded, never applied: reconciliation and ops resolve it (pay.recon.exceptions)."""
    why = why or f"in status {order.status.value}"
    noted = note(order, resp.operation.value, f"late {resp.outcome.value} {why}: recorded",
                 now_ms)
    return Decision(noted, (), C.callback_late)


def _other_money(request: ChannelRequested, resp: ChannelResponded) -> bool:
    return resp.amount_minor != request.amount_minor or resp.currency != request.currency


def _on_attempt(order: Order, request, resp, now_ms) -> Decision:
    """Sale, authorization or payout: the answer that decides the order itself."""
    if order.status is S.processing:
        if resp.outcome is DECLINED:
            return _attempt_declined(order, request, resp, now_ms)
        if resp.via_query and not _other_money(request, resp):
            return _succeed(order, request, resp, "by status query: ", now_ms)
        if _other_money(request, resp):
            reason = (f"channel reported {resp.amount_minor} {resp.currency}, "
                      f"expected {request.amount_minor} {request.currency}")
            moved, event = transition(order, S.amount_mismatch, request.operation.value, reason,
                                      now_ms, channel_serial=resp.channel_serial,
                                      paid_via=request.channel, deadline_ms=0)
            return Decision(moved, (event,), C.accepted)
        return _succeed(order, request, resp, "", now_ms)
    if order.status is S.timed_out:
        return _after_timeout(order, request, resp, now_ms)
    if resp.outcome is DECLINED:
        noted = note(order, request.operation.value, f"attempt on {request.channel} declined "
                     f"({resp.decline_code}) after the order was decided", now_ms)
        return Decision(noted, (), C.accepted)
    return _park_and_refund(order, request, resp, C.duplicate_payment_refunding,
                            "duplicate payment", now_ms)


def _attempt_declined(order: Order, request, resp, now_ms) -> Decision:
    trigger = request.operation.value
    if open_requests(order, ChannelOperation.sale, ChannelOperation.authorize):
        noted = note(order, trigger, f"attempt on {request.channel} declined: "
                     f"{resp.decline_code}; another attempt is open", now_ms)
        return Decision(noted, (), C.accepted)
    if channel_could_not(order, resp):
        moved = failover(order, request, f"retriable decline {resp.decline_code}", now_ms)
        if moved is not None:
            return moved
    order, release = _release_payer_hold(order)
    how = " (by status query)" if resp.via_query else ""
    moved, event = transition(order, S.failed, trigger, f"declined: {resp.decline_code}{how}",
                              now_ms, channel_serial=resp.channel_serial, deadline_ms=0)
    return Decision(moved, (event, *release), C.accepted)


def _succeed(order: Order, request, resp, how: str, now_ms: int) -> Decision:
    trigger = request.operation.value
    paid = {"channel_serial": resp.channel_serial, "paid_via": request.channel}
    if request.operation is ChannelOperation.authorize:
        ttl = order.route_for(request.channel).authorization_ttl_ms
        moved, event = transition(order, S.authorized, trigger, how + "authorized", now_ms,
                                  authorized_minor=resp.amount_minor, deadline_ms=now_ms + ttl,
                                  **paid)
        return Decision(moved, (event,), C.accepted)
    closed = {"payer_hold": "closed"} if order.payer_hold == "placed" else {}
    moved, event = transition(order, S.succeeded, trigger, how + "captured", now_ms,
                              authorized_minor=resp.amount_minor, deadline_ms=0,
                              captured_minor=resp.amount_minor, **paid, **closed)
    return Decision(moved, (event, capture_entry(moved, request, now_ms)), C.accepted)


def _after_timeout(order: Order, request, resp, now_ms) -> Decision:
    """A late answer resolves a timed-out order: a decline fails it; a success is booked or
    sent back, as the channel's rule says (a payout that left is always booked). A decline
    while another attempt is open waits for that attempt, as it does in processing."""
    if resp.outcome is DECLINED:
        if open_requests(order, ChannelOperation.sale, ChannelOperation.authorize):
            noted = note(order, request.operation.value, f"late decline on {request.channel}: "
                         f"{resp.decline_code}; another attempt is open", now_ms)
            return Decision(noted, (), C.accepted)
        order, release = _release_payer_hold(order)
        moved, event = transition(order, S.failed, request.operation.value,
                                  f"late decline: {resp.decline_code}", now_ms, deadline_ms=0)
        return Decision(moved, (event, *release), C.accepted)
    if _other_money(request, resp):
        return _late(order, resp, now_ms, f"with other money ({resp.amount_minor} "
                     f"{resp.currency}) after the timeout")
    rule = order.route_for(request.channel).late_success
    if rule is LateSuccess.accept or order.kind is OrderKind.withdrawal:
        return _succeed(order, request, resp, "late success accepted: ", now_ms)
    parked = _park_and_refund(order, request, resp, C.late_success_refunding,
                              "late success", now_ms, announce=False)
    if open_requests(parked.order, ChannelOperation.sale, ChannelOperation.authorize):
        return parked  # the payer's other attempt may still pay the order
    moved, event = transition(parked.order, S.failed, request.operation.value,
                              "late success refunded by rule", now_ms, deadline_ms=0)
    return Decision(moved, parked.outputs + (event,), parked.status)


def _park_and_refund(order: Order, request, resp, code: CommandStatus, what: str, now_ms: int,
                     announce: bool = True) -> Decision:
    """Money the order must not keep: booked to suspense and refunded through the channel.
    ``announce`` tells the merchant in an event (unless a transition will say it anyway)."""
    if _other_money(request, resp):
        return _late(order, resp, now_ms, f"{what} with other money")
    if request.operation is ChannelOperation.payout:
        return _late(order, resp, now_ms, f"{what} of a payout")
    route = order.route_for(request.channel)
    back = channel_request(order, route, ChannelOperation.refund, resp.amount_minor,
                           COMPENSATION_PREFIX + request.request_id)
    parked = suspense_in_entry(order, request, resp.amount_minor, now_ms)
    if request.operation is ChannelOperation.authorize:  # nothing captured: just void it
        back = channel_request(order, route, ChannelOperation.void, 0,
                               COMPENSATION_PREFIX + request.request_id)
        parked = None
    reason = f"{what} on {request.channel}: sending it back"
    noted, event = noted_event(order, request.operation.value, reason, now_ms)
    if not announce:
        event = None
    noted = noted.model_copy(update={"requests": noted.requests + (back,)})
    return Decision(noted, tuple(m for m in (parked, back, event) if m is not None), code)


def _on_capture(order: Order, request, resp, now_ms) -> Decision:
    if order.status is not S.authorized:
        return _late(order, resp, now_ms)
    assert order.capture_pending_minor >= request.amount_minor
    pending = order.capture_pending_minor - request.amount_minor
    if resp.outcome is DECLINED:
        noted = note(order, "capture", f"capture declined: {resp.decline_code}", now_ms)
        return Decision(noted.model_copy(update={"capture_pending_minor": pending}), (),
                        C.accepted)
    if _other_money(request, resp):
        return _money_mismatch(order, request, resp, now_ms)
    captured = order.captured_minor + request.amount_minor
    assert captured <= order.authorized_minor
    done = captured == order.authorized_minor
    to = S.succeeded if done else S.authorized
    changes = {"deadline_ms": 0} if done else {}
    if done and order.payer_hold == "placed":
        changes["payer_hold"] = "closed"
    moved, event = transition(order, to, "capture", f"captured {request.amount_minor}", now_ms,
                              captured_minor=captured, capture_pending_minor=pending, **changes)
    return Decision(moved, (event, capture_entry(moved, request, now_ms)), C.accepted)


def _on_void(order: Order, request, resp, now_ms) -> Decision:
    if request.reference.startswith(COMPENSATION_PREFIX):
        return _on_compensation(order, request, resp, now_ms)
    if order.status is not S.authorized:
        return _late(order, resp, now_ms)
    if resp.outcome is DECLINED:
        noted = note(order, "void", f"void declined: {resp.decline_code}", now_ms)
        tries = len(_merchant_voids(order.requests))
        if not noted.deadline_ms and tries < EXPIRY_VOIDS_MAX:  # an expiry's void: again later
            retry_ms = max(paid_route(order).callback_timeout_ms, 1_000)
            noted = noted.model_copy(update={"deadline_ms": now_ms + retry_ms})
        return Decision(noted, (), C.accepted)
    order, release = _release_payer_hold(order)
    to = S.succeeded if order.captured_minor else S.canceled
    moved, event = transition(order, to, "void", "remainder released", now_ms, deadline_ms=0)
    return Decision(moved, (event, *release), C.accepted)


def _on_reverse(order: Order, request, resp, now_ms) -> Decision:
    if order.status is not S.succeeded:
        return _late(order, resp, now_ms)
    if resp.outcome is DECLINED or _other_money(request, resp):
        why = resp.decline_code if resp.outcome is DECLINED else "other money reported"
        release = HoldReleaseRequested(
            hold_id=hold_id_for(order.payment_id, REVOKE_HOLD), payment_id=order.payment_id,
            account_id=accounts.merchant_pending(order.merchant_id, order.currency))
        updated, event = noted_event(order.model_copy(update={"revocation": "failed"}),
                                     "revoke", f"revocation refused: {why}", now_ms)
        return Decision(updated, (event, release), C.accepted)
    moved, event = transition(order.model_copy(update={"revocation": "succeeded"}), S.canceled,
                              "revoke", "revoked before settlement", now_ms)
    return Decision(moved, (event, reversal_entry(moved, request, now_ms)), C.accepted)


def _on_refund(order: Order, request, resp, now_ms) -> Decision:
    if request.reference.startswith(COMPENSATION_PREFIX):
        return _on_compensation(order, request, resp, now_ms)
    hold = HoldReleaseRequested(
        hold_id=hold_id_for(order.payment_id, request.reference), payment_id=order.payment_id,
        account_id=refund_funds(order, request.reference))
    if resp.outcome is OK and _other_money(request, resp):
        return _money_mismatch(order, request, resp, now_ms)
    if resp.outcome is DECLINED:
        updated, event = noted_event(_set_refund(order, request.reference, "failed"), "refund",
                                     f"refund {request.reference} declined: "
                                     f"{resp.decline_code}", now_ms)
        return Decision(updated, (event, hold), C.accepted)
    refund = next(r for r in order.refunds if r.refund_id == request.reference)
    return _refunded(order, refund, request, f"refunded {request.amount_minor}", now_ms)


def _refunded(order: Order, refund, request: ChannelRequested, reason: str, now_ms: int
              ) -> Decision:
    refunded = order.refunded_minor + request.amount_minor
    assert refunded <= order.captured_minor
    to = S.refunded if refunded == order.captured_minor else S.partially_refunded
    order = _set_refund(order, refund.refund_id, "succeeded")
    moved, event = transition(order, to, "refund", reason, now_ms, refunded_minor=refunded)
    return Decision(moved, (event, refund_entry(moved, request, now_ms)), C.accepted)


def _on_compensation(order: Order, request, resp, now_ms) -> Decision:
    """The channel's answer to sending back a duplicate or late charge."""
    if resp.outcome is DECLINED or _other_money(request, resp):
        why = resp.decline_code if resp.outcome is DECLINED else "other money reported"
        noted = note(order, request.operation.value, f"sending back {request.amount_minor} "
                     f"on {request.channel} refused: {why}; for ops", now_ms)
        return Decision(noted, (), C.compensation_refund_declined)
    noted = note(order, request.operation.value,
                 f"{request.amount_minor} sent back on {request.channel}", now_ms)
    if request.operation is ChannelOperation.void:
        return Decision(noted, (), C.accepted)
    return Decision(noted, (suspense_out_entry(order, request, now_ms),), C.accepted)


def _money_mismatch(order: Order, request, resp, now_ms) -> Decision:
    """The channel moved other money than we asked: book nothing, leave it to recon."""
    reason = (f"{request.operation.value} reported as {resp.amount_minor} {resp.currency}, "
              f"asked {request.amount_minor} {request.currency}: nothing booked")
    return Decision(note(order, request.operation.value, reason, now_ms), (),
                    C.callback_amount_mismatch)


_RESPONSE_HANDLERS = {
    ChannelOperation.sale: _on_attempt,
    ChannelOperation.authorize: _on_attempt,
    ChannelOperation.payout: _on_attempt,
    ChannelOperation.ack: lambda order, request, resp, now_ms: _late(
        order, resp, now_ms, "addressed to an acknowledgement"),
    ChannelOperation.query: lambda order, request, resp, now_ms: _late(
        order, resp, now_ms, "addressed to a status query itself (answers name the attempt)"),
    ChannelOperation.capture: _on_capture,
    ChannelOperation.void: _on_void,
    ChannelOperation.refund: _on_refund,
    ChannelOperation.reverse: _on_reverse,
}


def _replay(order: Order, applied: AppliedRequest) -> tuple:
    """Re-derive the money effect of an applied callback: same entry id, so applied once."""
    if applied.outcome is not OK:
        return ()
    request = next(r for r in order.requests if r.request_id == applied.request_id)
    if _other_money(request, applied):  # recorded for recon, never booked: nothing to replay
        return ()
    if request.reference.startswith(COMPENSATION_PREFIX):
        if request.operation is ChannelOperation.refund:
            return (suspense_out_entry(order, request, applied.applied_at_ms),)
        return ()
    back = next((r for r in order.requests
                 if r.reference == COMPENSATION_PREFIX + request.request_id), None)
    if back is not None:  # a duplicate or late charge parked in suspense
        if back.operation is ChannelOperation.refund:
            return (suspense_in_entry(order, request, applied.amount_minor,
                                      applied.applied_at_ms),)
        return ()
    if applied.operation in (ChannelOperation.sale, ChannelOperation.capture,
                             ChannelOperation.payout):
        if order.status is S.amount_mismatch or _other_money(request, applied):
            return ()
        return (capture_entry(order, request, applied.applied_at_ms),)
    if applied.operation is ChannelOperation.refund:
        return (refund_entry(order, request, applied.applied_at_ms),)
    if applied.operation is ChannelOperation.reverse and order.revocation == "succeeded":
        return (reversal_entry(order, request, applied.applied_at_ms),)
    return ()


# ---------------------------------------------------------------- ledger answers


def decide_hold_resolved(order: Order | None, answer: HoldResolved, now_ms: int) -> Decision:
    if order is None:
        return Decision(None, (), C.order_not_found)
    if answer.hold_id == hold_id_for(order.payment_id, PAYER_HOLD):
        return _on_payer_hold(order, answer, now_ms)
    if answer.hold_id == hold_id_for(order.payment_id, REVOKE_HOLD):
        return _on_revoke_hold(order, answer, now_ms)
    part = next((p for p in order.settle_holds if hold_id_for(
        order.payment_id, SETTLE_HOLD_PREFIX + p.merchant_id) == answer.hold_id), None)
    if part is not None:
        return _on_settle_hold(order, part, answer, now_ms)
    refund = next((r for r in order.refunds
                   if hold_id_for(order.payment_id, r.refund_id) == answer.hold_id), None)
    if refund is None:
        return Decision(order, (), C.hold_for_unknown_purpose)
    if refund.status != "holding":
        return Decision(order, (), C.duplicate)
    if not answer.placed:
        updated, event = noted_event(_set_refund(order, refund.refund_id, "failed"), "refund",
                                     f"refund {refund.refund_id} failed: {answer.reason}",
                                     now_ms)
        return Decision(updated, (event,), C.accepted)
    request = channel_request(order, paid_route(order), ChannelOperation.refund,
                              refund.amount_minor, refund.refund_id)
    if refund.refund_id.startswith(CHANNEL_REFUND_PREFIX):  # the channel did it already
        return _refunded(order, refund, request, "refunded by the channel itself "
                         f"({refund.amount_minor}), posted by reconciliation", now_ms)
    updated = note(_set_refund(order, refund.refund_id, "processing"), "refund",
                   f"refund {refund.refund_id} sent to channel", now_ms)
    updated, sent = send(updated, request, now_ms)
    return Decision(updated, sent, C.accepted)


def _on_payer_hold(order: Order, answer: HoldResolved, now_ms: int) -> Decision:
    """Confirm or cancel: with the payer's funds frozen, the money moves; without, it fails."""
    if order.payer_hold != "holding":
        return Decision(order, (), C.duplicate)
    assert order.status is S.processing, order.status
    if not answer.placed:
        moved, event = transition(order, S.failed, "hold", f"funds not frozen: {answer.reason}",
                                  now_ms, payer_hold="refused")
        return Decision(moved, (event,), C.accepted)
    order = note(order, "hold", f"{order.amount_minor} frozen on {order.payer_account_id}",
                 now_ms).model_copy(update={"payer_hold": "placed"})
    op = ChannelOperation.sale
    if order.kind is OrderKind.withdrawal:
        op = ChannelOperation.payout
    elif order.capture_mode.value == "manual":
        op = ChannelOperation.authorize
    request = channel_request(order, order.route, op, order.amount_minor)
    timeout_ms = order.route.callback_timeout_ms
    order = order.model_copy(update={"deadline_ms": now_ms + timeout_ms if timeout_ms else 0})
    updated, sent = send(order, request, now_ms)
    return Decision(updated, sent, C.accepted)


def _on_revoke_hold(order: Order, answer: HoldResolved, now_ms: int) -> Decision:
    if order.revocation != "holding":
        return Decision(order, (), C.duplicate)
    if not answer.placed:
        updated, event = noted_event(order.model_copy(update={"revocation": "failed"}),
                                     "revoke", f"revocation failed: {answer.reason}", now_ms)
        return Decision(updated, (event,), C.accepted)
    return send_reversal(order.model_copy(update={"revocation": "processing"}), now_ms)


def _set_refund(order: Order, refund_id: str, status: str) -> Order:
    refunds = tuple(r.model_copy(update={"status": status}) if r.refund_id == refund_id else r
                    for r in order.refunds)
    return order.model_copy(update={"refunds": refunds})


# ---------------------------------------------------------------- mandate, deadlines


def decide_mandate_checked(order: Order | None, answer: MandateChecked, now_ms: int
                           ) -> Decision:
    if order is None:
        return Decision(None, (), C.order_not_found)
    if order.method != Method.mandate.value:
        return Decision(order, (), C.mandate_answer_unexpected)
    waiting = order.status is S.created or (order.status is S.risk_review
                                            and order.review == "approved")
    if not waiting:
        return Decision(order, (), C.duplicate)
    if not answer.allowed:
        moved, event = transition(order, S.failed, "mandate", f"mandate refused: {answer.code}",
                                  now_ms)
        return Decision(moved, (event,), C.accepted)
    request = channel_request(order, order.route, ChannelOperation.sale, order.amount_minor)
    deadline = now_ms + order.route.callback_timeout_ms if order.route.callback_timeout_ms else 0
    moved, event = transition(order, S.processing, "mandate",
                              f"mandate active; collecting from {answer.payer_account_id}",
                              now_ms, payer_account_id=answer.payer_account_id,
                              deadline_ms=deadline)
    moved, sent = send(moved, request, now_ms)
    return Decision(moved, (event, *sent), C.accepted)


FOLLOW_UP_QUERIES_MAX = 8
"""Queries about an attempt still unknown after the order timed out, each twice as far
apart as the one before (capped at ``FOLLOW_UP_GAP_MS_MAX``): a channel that was down
answers once it is back. After these, reconciliation resolves it."""
FOLLOW_UP_GAP_MS_MAX = 3_600_000


def _queries_about(order: Order, attempt: ChannelRequested) -> int:
    return sum(1 for r in order.requests if r.operation is ChannelOperation.query
               and r.reference.split("/")[0] == attempt.request_id)


def query_status(order: Order, attempt: ChannelRequested, now_ms: int) -> Decision | None:
    """Ask the channel what became of a silent attempt, if it takes queries and we have
    not asked as often as it allows; None when it is time to give up waiting for it."""
    route = order.route_for(attempt.channel)
    asked = _queries_about(order, attempt)
    if asked >= route.status_queries_max:
        return None
    return _send_query(order, attempt, asked, f"query {asked + 1} of "
                       f"{route.status_queries_max}", route.status_query_timeout_ms, now_ms)


def _follow_up(order: Order, attempt: ChannelRequested, now_ms: int) -> Decision | None:
    """A timed-out order keeps asking, ever less often, until the channel answers."""
    route = order.route_for(attempt.channel)
    asked = _queries_about(order, attempt)
    extra = asked - route.status_queries_max
    if not route.status_queries_max or extra >= FOLLOW_UP_QUERIES_MAX:
        return None
    gap = min(route.status_query_timeout_ms * 2 ** (extra + 1), FOLLOW_UP_GAP_MS_MAX)
    return _send_query(order, attempt, asked, f"follow-up {extra + 1} of "
                       f"{FOLLOW_UP_QUERIES_MAX} while the outcome is unknown", gap, now_ms)


def _send_query(order: Order, attempt: ChannelRequested, asked: int, which: str,
                wait_ms: int, now_ms: int) -> Decision:
    route = order.route_for(attempt.channel)
    query = channel_request(order, route, ChannelOperation.query, attempt.amount_minor,
                            f"{attempt.request_id}/{attempt.operation.value}/{asked + 1}")
    noted = note(order, "deadline", f"no answer from {attempt.channel}: asking its status "
                 f"({which})", now_ms)
    noted = noted.model_copy(update={"deadline_ms": now_ms + wait_ms})
    updated, sent = send(noted, query, now_ms)
    return Decision(updated, sent, C.accepted)


def decide_deadline(order: Order | None, reached: DeadlineReached, now_ms: int) -> Decision:
    """The sweeper says a deadline passed: time out a silent channel, expire an
    authorization. Stale or early nudges change nothing."""
    if order is None:
        return Decision(None, (), C.order_not_found)
    due = order.deadline_ms and reached.deadline_ms == order.deadline_ms \
        and now_ms >= order.deadline_ms
    if not due:
        return Decision(order, (), C.deadline_not_due)
    cleared = order.model_copy(update={"deadline_ms": 0})
    if order.status is S.risk_review and order.review == "pending":
        moved, event = transition(cleared, S.failed, "deadline",
                                  "risk review expired: nobody decided in time", now_ms,
                                  review="expired")
        return Decision(moved, (event,), C.accepted)
    attempts = open_requests(order, ChannelOperation.sale, ChannelOperation.authorize,
                             ChannelOperation.payout)
    if order.status is S.processing and attempts:
        latest = attempts[-1]
        asked = query_status(cleared, latest, now_ms)
        if asked is not None:
            return asked
        # Never a payout: money that may have left cannot be called back (a sale's second
        # success can be refunded; a second payout cannot).
        if order.route_for(latest.channel).failover_on_timeout and \
                latest.operation is not ChannelOperation.payout:
            moved = failover(cleared, latest, "no answer in time", now_ms)
            if moved is not None:
                return moved
        moved, event = transition(cleared, S.timed_out, "deadline",
                                  f"no answer from {latest.channel} in time: outcome "
                                  "unknown; a late answer is still applied by rule", now_ms)
        route = order.route_for(latest.channel)
        if route.status_queries_max:  # ask again later, ever less often
            moved = moved.model_copy(update={
                "deadline_ms": now_ms + route.status_query_timeout_ms * 2})
        return Decision(moved, (event,), C.accepted)
    if order.status is S.timed_out and attempts:
        asked = _follow_up(cleared, attempts[-1], now_ms)
        return asked if asked is not None else Decision(cleared, (), C.accepted)
    if order.status is S.authorized:
        voided = request_void(cleared, "deadline", "authorization expired: voiding", now_ms)
        if voided.status is C.accepted:
            return voided
        if order.capture_pending_minor:  # look again once the capture is answered
            retry_ms = max(order.route_for(order.paid_via or order.route.channel)
                           .callback_timeout_ms, 1_000)
            return Decision(order.model_copy(update={"deadline_ms": now_ms + retry_ms}), (),
                            C.accepted)
    return Decision(cleared, (), C.accepted)


# ---------------------------------------------------------------- settlement

_SETTLEABLE = frozenset({S.succeeded, S.partially_refunded, S.refunded})


def decide_settlement(order: Order | None, report: SettlementReported, now_ms: int
                      ) -> Decision:
    """The channel settled this payment: each merchant's part moves from pending to settled
    (frozen first, like every debit; moved once every part is frozen)."""
    if order is None:
        return Decision(None, (), C.order_not_found)
    if order.settlement:
        return Decision(order, (), C.duplicate)
    if order.status not in _SETTLEABLE or order.kind is not OrderKind.payment:
        return Decision(order, (), C.settlement_not_allowed_in_status)
    if any(r.status in ("holding", "processing") for r in order.refunds) or \
            order.revocation in ("holding", "processing"):
        return Decision(order, (), C.settlement_while_refund_open)
    if (report.amount_minor, report.currency) != (
            order.captured_minor - order.refunded_minor, order.currency):
        return Decision(order, (), C.settlement_amount_mismatch)
    owed = pending_by_merchant(order)
    parts = tuple(SettleHold(merchant_id=account.split(":")[1], account_id=account,
                             amount_minor=amount, status="holding")
                  for account, amount in sorted(owed.items()))
    settled = {"settled_on": report.settled_on}
    clearing = tuple(e for e in (clearing_settlement_entry(order, report, now_ms),) if e)
    if not parts:  # refunded in full: nothing left to move
        noted, event = noted_event(order.model_copy(update={"settlement": "settled",
                                                            **settled}),
                                   "settlement", f"settled on {report.settled_on}: nothing "
                                   "left to move", now_ms)
        return Decision(noted, (event, *clearing), C.accepted)
    holds = tuple(HoldRequested(
        hold_id=hold_id_for(order.payment_id, SETTLE_HOLD_PREFIX + p.merchant_id),
        payment_id=order.payment_id, account_id=p.account_id, currency=order.currency,
        amount_minor=p.amount_minor) for p in parts)
    noted = note(order, "settlement", f"settled by {report.channel} on {report.settled_on}: "
                 "freezing merchant funds", now_ms)
    return Decision(noted.model_copy(update={"settlement": "holding", "settle_holds": parts,
                                             **settled}), (*clearing, *holds), C.accepted)


def _on_settle_hold(order: Order, part: SettleHold, answer: HoldResolved, now_ms: int
                    ) -> Decision:
    if part.status != "holding" or order.settlement != "holding":
        return Decision(order, (), C.duplicate)
    status = "placed" if answer.placed else "refused"
    parts = tuple(p.model_copy(update={"status": status}) if p == part else p
                  for p in order.settle_holds)
    order = order.model_copy(update={"settle_holds": parts})
    if any(p.status == "holding" for p in parts):
        return Decision(order, (), C.accepted)
    if all(p.status == "placed" for p in parts):
        moved = order.model_copy(update={"settlement": "settled"})
        moved, event = noted_event(moved, "settlement", f"settled on {order.settled_on}",
                                   now_ms)
        return Decision(moved, (event, settlement_entry(moved, now_ms)), C.accepted)
    releases = tuple(HoldReleaseRequested(
        hold_id=hold_id_for(order.payment_id, SETTLE_HOLD_PREFIX + p.merchant_id),
        payment_id=order.payment_id, account_id=p.account_id)
        for p in parts if p.status == "placed")
    released = tuple(p.model_copy(update={"status": "released"}) if p.status == "placed"
                     else p for p in parts)
    failed, event = noted_event(order.model_copy(update={"settlement": "failed",
                                                         "settle_holds": released}),
                                "settlement", f"settlement not booked: {answer.reason}; "
                                "for ops", now_ms)
    return Decision(failed, (event, *releases), C.accepted)


# ---------------------------------------------------------------- reconciliation's confirmations


def decide_channel_success(order: Order | None, confirmed, now_ms: int) -> Decision:
    """Reconciliation proved the channel took the order's money (``ChannelSuccessConfirmed``)
    while the order says failed, timed out or still processing: the order succeeds on the
    attempt that channel answered, and the capture is posted. Anything else stays with ops."""
    if order is None:
        return Decision(None, (), C.order_not_found)
    if order.status in (S.succeeded, S.partially_refunded, S.refunded):
        return Decision(order, (), C.duplicate)
    attempts = [r for r in order.requests if r.channel == confirmed.channel
                and r.operation in (ChannelOperation.sale,)
                and r.amount_minor == confirmed.amount_minor
                and r.currency == confirmed.currency]
    if order.status not in (S.failed, S.timed_out, S.processing) or not attempts \
            or order.payer_hold != "" \
            or order.kind is not OrderKind.payment:
        return Decision(order, (), C.confirmation_not_applicable)
    request = attempts[-1]
    if any(r.reference == COMPENSATION_PREFIX + request.request_id for r in order.requests):
        # Its money was parked and is on its way back to the payer: not the order's.
        return Decision(order, (), C.confirmation_not_applicable)
    serial = confirmed.channel_serial or derive_id("recon", request.request_id)
    # The attempt's success is recorded as applied (replacing what the channel first said),
    # so a later answer for it is a replay and settlement and revocation see the capture.
    record = AppliedRequest(request_id=request.request_id, operation=request.operation,
                            outcome=OK, amount_minor=confirmed.amount_minor,
                            currency=confirmed.currency, reference=request.reference,
                            applied_at_ms=now_ms)
    applied = tuple(a for a in order.applied if a.request_id != request.request_id)
    paid = {"channel_serial": serial, "paid_via": request.channel}
    moved, event = transition(order, S.succeeded, RECONCILIATION,
                              f"by reconciliation: {confirmed.evidence}; captured", now_ms,
                              authorized_minor=confirmed.amount_minor, deadline_ms=0,
                              captured_minor=confirmed.amount_minor,
                              applied=applied + (record,), **paid)
    return Decision(moved, (event, capture_entry(moved, request, now_ms)), C.accepted)


def decide_channel_refund(order: Order | None, confirmed, now_ms: int) -> Decision:
    """Reconciliation found a refund the channel made by itself (``ChannelRefundConfirmed``):
    it is posted like a merchant's refund (the merchant's funds frozen, then moved back),
    except that nothing is sent to the channel."""
    if order is None:
        return Decision(None, (), C.order_not_found)
    if any(r.request_id == confirmed.request_id for r in order.requests):
        return Decision(order, (), C.duplicate)  # a refund we asked for: not the channel's own
    refund_id = derive_id(CHANNEL_REFUND_PREFIX.rstrip("_"), confirmed.request_id)
    if any(r.refund_id == refund_id for r in order.refunds):
        return Decision(order, (), C.duplicate)
    committed = sum(r.amount_minor for r in order.refunds if r.status != "failed")
    busy = any(r.status in ("holding", "processing") for r in order.refunds) or \
        order.revocation in ("holding", "processing")
    if order.status not in (S.succeeded, S.partially_refunded) or busy \
            or confirmed.currency != order.currency or order.settlement == "holding" \
            or committed + confirmed.amount_minor > order.captured_minor:
        return Decision(order, (), C.confirmation_not_applicable)
    hold = HoldRequested(
        hold_id=hold_id_for(order.payment_id, refund_id), payment_id=order.payment_id,
        account_id=merchant_funds(order), currency=order.currency,
        amount_minor=confirmed.amount_minor)
    refund = RefundState(refund_id=refund_id, amount_minor=confirmed.amount_minor,
                         status="holding", account_id=hold.account_id)
    updated = note(order, "refund", f"{confirmed.evidence}: {confirmed.amount_minor}; "
                   "holding merchant funds", now_ms).model_copy(
        update={"refunds": order.refunds + (refund,)})
    return Decision(updated, (hold,), C.accepted)
