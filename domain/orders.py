"""The order state machine: one writer per payment id, pure decisions, forward-only status.

``decide_command`` (here) and ``decide_channel_response``, ``decide_hold_resolved``,
``decide_mandate_checked`` and ``decide_deadline`` (in ``domain.order_answers``) each take
the current order (or None), the message and ``now_ms`` and return a ``Decision``: the new
order, the messages to emit, and a status code. Expected failures return a code; a broken
invariant is an assertion.

Products: a payment by card, bank or wallet goes through a channel; by ``balance`` it is
paid from the payer's wallet (frozen first, then debited: try/confirm/cancel); by
``mandate`` it is collected through the bank channel once the mandate's owner says the
mandate is active. Transfers, top-ups and withdrawals are orders of their own kind.
"""

from __future__ import annotations

from domain import accounts
from domain.commands import (
    CHANNEL_METHODS,
    Capture,
    CaptureMode,
    Message,
    Method,
    OrderCommand,
    Pay,
    Refund,
    ResolveException,
    Review,
    ReviewDecision,
    Revoke,
    TopUp,
    Transfer,
    Void,
    Withdraw,
)
from domain.events import ChannelOperation, HoldRequested, MandateCheckRequested
from domain.ids import mandate_key_for
from domain.order_answers import (
    decide_channel_refund,
    decide_channel_response,
    decide_channel_success,
    decide_deadline,
    decide_hold_resolved,
    decide_mandate_checked,
    decide_settlement,
    paid_route,
    request_void,
    send,
    send_reversal,
    start_attempt,
    void_outstanding,
)
from domain.order_state import (
    FINAL_FOR_CLIENTS,
    PAYER_HOLD,
    REVOKE_HOLD,
    TERMINAL,
    TRANSITIONS,
    AppliedRequest,
    CommandStatus,
    Decision,
    HistoryItem,
    Order,
    OrderKind,
    OrderStatus,
    RefundState,
    channel_request,
    fingerprint_of,
    hold_id_for,
    merchant_funds,
    note,
    noted_event,
    status_event,
    transition,
)
from domain.postings import capture_entry, refund_entry, revocation_amounts
from domain.resolutions import decide_resolution
from domain.risk import RiskDecision, Verdict
from domain.routing import Route, RoutePlan, internal_plan

__all__ = [
    "FINAL_FOR_CLIENTS", "TERMINAL", "TRANSITIONS", "AppliedRequest", "CommandStatus",
    "Decision", "HistoryItem", "Order", "OrderKind", "OrderStatus", "RefundState",
    "capture_entry", "decide_channel_response", "decide_command", "decide_deadline",
    "decide_hold_resolved", "decide_mandate_checked", "decide_settlement", "fingerprint_of",
    "decide_channel_success", "decide_channel_refund",
    "refund_entry",
]

S = OrderStatus
BALANCE_AUTHORIZATION_TTL_MS = 7 * 86_400_000


def decide_command(order: Order | None, cmd: Message, plan: RoutePlan | Route | None,
                   now_ms: int,
                   balance_authorization_ttl_ms: int = BALANCE_AUTHORIZATION_TTL_MS,
                   verdict: Verdict | None = None) -> Decision:
    """Ids, idempotency, fields, lookups, limits: in that order, for every command.

    ``plan`` is the routing decision for the command's method (None if no channel takes
    it; a bare Route is a plan of one; balance pay and transfers get the internal route).
    ``verdict`` is risk's (None: not screened, as for follow-up commands).
    """
    assert isinstance(cmd, OrderCommand), type(cmd)
    if order is not None:
        assert order.payment_id == cmd.subject_id()
    if isinstance(plan, Route):
        plan = RoutePlan(candidates=(plan,), rule_id="", version="", scores="")
    if isinstance(cmd, (Pay, Transfer, TopUp, Withdraw)):
        if order is not None:
            return _again(order, cmd, plan.candidates[0] if plan else None, now_ms, verdict)
        if _internal(cmd):
            plan = internal_plan(balance_authorization_ttl_ms)
        if plan is None:
            return Decision(None, (), CommandStatus.no_route)
        return _create(cmd, plan, now_ms, verdict)
    if order is None:
        return Decision(None, (), CommandStatus.order_not_found)
    if isinstance(cmd, Review):
        return _review(order, cmd, now_ms)
    if isinstance(cmd, ResolveException):
        return decide_resolution(order, cmd, now_ms)
    if order.kind is not OrderKind.payment:
        return Decision(order, (), CommandStatus.command_not_allowed_for_kind)
    if isinstance(cmd, Capture):
        return _capture(order, cmd, now_ms)
    if isinstance(cmd, Void):
        return request_void(order, "void", "void requested", now_ms)
    if isinstance(cmd, Revoke):
        return _revoke(order, now_ms)
    assert isinstance(cmd, Refund), type(cmd)
    return _refund(order, cmd, now_ms)


def _internal(cmd: OrderCommand) -> bool:
    return isinstance(cmd, Transfer) or (isinstance(cmd, Pay) and cmd.method is Method.balance)


# ---------------------------------------------------------------- creation


def _create(cmd: Pay | Transfer | TopUp | Withdraw, plan: RoutePlan, now_ms: int,
            verdict: Verdict | None) -> Decision:
    created = _new_order(cmd, plan, now_ms).model_copy(update={"risk": verdict})
    if verdict is not None:  # the verdict and its rules version, on the record
        first = created.history[0].model_copy(update={"reason": f"accepted; {verdict.summary()}"})
        created = created.model_copy(update={"history": (first,)})
    first_event = status_event(created, "", cmd.type, created.history[0].reason, now_ms)
    if verdict is not None and verdict.decision is RiskDecision.decline:
        moved, event = transition(created, S.failed, "risk", verdict.summary(), now_ms)
        return Decision(moved, (first_event, event), CommandStatus.accepted)
    if verdict is not None and verdict.decision is RiskDecision.review:
        moved, event = transition(created, S.risk_review, "risk", verdict.summary(), now_ms,
                                  review="pending",
                                  deadline_ms=now_ms + verdict.review_ttl_ms)
        return Decision(moved, (first_event, event), CommandStatus.accepted)
    return _proceed(created, (first_event,), now_ms)


def _proceed(order: Order, before: tuple, now_ms: int) -> Decision:
    """Risk let it through: check the mandate, freeze the payer's funds, or pay."""
    if order.method == Method.mandate.value and order.kind is OrderKind.payment:
        check = MandateCheckRequested(
            payment_id=order.payment_id,
            mandate_key=mandate_key_for(order.merchant_id, order.mandate_id),
            merchant_id=order.merchant_id, mandate_id=order.mandate_id,
            amount_minor=order.amount_minor, currency=order.currency)
        return Decision(order, (*before, check), CommandStatus.accepted)
    if order.payer_account_id and order.kind is not OrderKind.topup:
        return _freeze_payer_funds(order, before, now_ms)
    return start_attempt(order, order.route, "", before, now_ms)


def _review(order: Order, cmd: Review, now_ms: int) -> Decision:
    """Ops decide on a held order: approve lets it go on, reject fails it."""
    wanted = "approved" if cmd.decision is ReviewDecision.approve else "rejected"
    if order.review == wanted:
        return Decision(order, (), CommandStatus.duplicate)
    if order.status is not S.risk_review or order.review != "pending":
        return Decision(order, (), CommandStatus.review_not_pending)
    said = f"by {cmd.reviewer}" + (f": {cmd.comment}" if cmd.comment else "")
    if cmd.decision is ReviewDecision.reject:
        moved, event = transition(order, S.failed, "review", f"rejected in review {said}",
                                  now_ms, review="rejected", deadline_ms=0)
        return Decision(moved, (event,), CommandStatus.accepted)
    approved, event = noted_event(order.model_copy(update={"review": "approved",
                                                          "deadline_ms": 0}),
                                  "review", f"approved in review {said}", now_ms)
    return _proceed(approved, (event,), now_ms)


def _new_order(cmd: Pay | Transfer | TopUp | Withdraw, plan: RoutePlan, now_ms: int
               ) -> Order:
    ccy = cmd.currency
    fields: dict = {"method": Method.balance.value, "capture_mode": CaptureMode.auto}
    if isinstance(cmd, Pay):
        fields = {"method": cmd.method.value, "capture_mode": cmd.capture,
                  "mandate_id": cmd.mandate_id or "", "split": cmd.split}
        if cmd.method is Method.balance:
            fields["payer_account_id"] = accounts.customer_wallet(cmd.payer.account_id, ccy)
    elif isinstance(cmd, Transfer):
        fields.update(kind=OrderKind.transfer,
                      payer_account_id=accounts.customer_wallet(cmd.from_account_id, ccy),
                      payee_account_id=accounts.customer_wallet(cmd.to_account_id, ccy))
    else:
        kind = OrderKind.topup if isinstance(cmd, TopUp) else OrderKind.withdrawal
        fields.update(kind=kind, method=cmd.method.value,
                      payer_account_id=accounts.customer_wallet(cmd.account_id, ccy))
    return Order(
        payment_id=cmd.subject_id(), merchant_id=cmd.merchant_id,
        merchant_order_no=cmd.merchant_order_no, fingerprint=fingerprint_of(cmd),
        currency=ccy, amount_minor=cmd.amount_minor, route=plan.candidates[0],
        route_plan=plan, status=S.created,
        created_at_ms=now_ms, updated_at_ms=now_ms, **fields,
        history=(HistoryItem(at_ms=now_ms, status=S.created, trigger=cmd.type,
                             reason="accepted"),),
    )


def _freeze_payer_funds(order: Order, before: tuple, now_ms: int) -> Decision:
    """Try phase: the order waits in ``processing`` until the payer's hold is answered."""
    hold = HoldRequested(hold_id=hold_id_for(order.payment_id, PAYER_HOLD),
                         payment_id=order.payment_id, account_id=order.payer_account_id,
                         currency=order.currency, amount_minor=order.amount_minor)
    moved, event = transition(order, S.processing, order.history[0].trigger,
                              f"freezing {order.amount_minor} on {order.payer_account_id}",
                              now_ms, payer_hold="holding")
    return Decision(moved, (*before, event, hold), CommandStatus.accepted)


def _again(order: Order, cmd: Pay | Transfer | TopUp | Withdraw, route: Route | None,
           now_ms: int, verdict: Verdict | None = None) -> Decision:
    """The same order again: a copy, a payer's second attempt, or a conflict."""
    fingerprint = fingerprint_of(cmd)
    if fingerprint in order.attempt_fingerprints:  # a copy of a later attempt
        return Decision(order, (), CommandStatus.duplicate)
    if order.fingerprint == fingerprint:
        # Same order again (a new key, same payload): re-send the first channel request,
        # which downstream drops by its id if it already has it.
        first = [r for r in order.requests if r.channel != "internal"][:1]
        return Decision(order, tuple(first), CommandStatus.duplicate)
    if not _is_other_attempt(order, cmd):
        return Decision(order, (), CommandStatus.order_exists_with_different_payload)
    if order.status in TERMINAL - {S.refunded, S.canceled}:
        return Decision(order, (), CommandStatus.order_already_final)
    if order.status is S.risk_review:
        return Decision(order, (), CommandStatus.order_held_for_review)
    if order.status is not S.processing:
        return Decision(order, (), CommandStatus.order_already_paid)
    if route is None:
        return Decision(order, (), CommandStatus.no_route)
    if verdict is not None and verdict.decision is not RiskDecision.approve:
        noted = note(order, "pay", f"payer's attempt by {cmd.method.value} refused: "
                     f"{verdict.summary()}", now_ms)
        return Decision(noted, (), CommandStatus.attempt_refused_by_risk)
    attempt = len(order.retry_routes) + 1
    order = order.model_copy(update={
        "retry_routes": order.retry_routes + (route,),
        "attempt_fingerprints": order.attempt_fingerprints + (fingerprint,)})
    order = note(order, "pay", f"payer switched to {cmd.method.value}: attempt {attempt + 1}",
                 now_ms)
    return start_attempt(order, route, f"attempt-{attempt}", (), now_ms)


def _is_other_attempt(order: Order, cmd) -> bool:
    """The payer tries another channel method for the same order and money."""
    return (isinstance(cmd, Pay) and order.kind is OrderKind.payment
            and cmd.method in CHANNEL_METHODS and order.method in {m.value for m in
                                                                   CHANNEL_METHODS}
            and cmd.amount_minor == order.amount_minor and cmd.currency == order.currency
            and cmd.capture is order.capture_mode and cmd.split == order.split)


# ---------------------------------------------------------------- follow-ups


def _capture(order: Order, cmd: Capture, now_ms: int) -> Decision:
    reference = f"capture-{cmd.idempotency_key}"
    route = paid_route(order)
    request_id = channel_request(order, route, ChannelOperation.capture, 0, reference).request_id
    earlier = next((r for r in order.requests if r.request_id == request_id), None)
    if earlier is not None:
        if cmd.amount_minor is not None and cmd.amount_minor != earlier.amount_minor:
            return Decision(order, (), CommandStatus.capture_exists_with_different_amount)
        return Decision(order, (), CommandStatus.duplicate)
    if order.status is not S.authorized or void_outstanding(order):
        return Decision(order, (), CommandStatus.capture_not_allowed_in_status)
    remaining = order.authorized_minor - order.captured_minor - order.capture_pending_minor
    amount = remaining if cmd.amount_minor is None else cmd.amount_minor
    if amount <= 0 or amount > remaining:
        return Decision(order, (), CommandStatus.capture_exceeds_authorized)
    request = channel_request(order, route, ChannelOperation.capture, amount, reference)
    updated = note(order, "capture", f"capture of {amount} requested", now_ms).model_copy(
        update={"capture_pending_minor": order.capture_pending_minor + amount})
    updated, sent = send(updated, request, now_ms)
    return Decision(updated, sent, CommandStatus.accepted)


def _revoke(order: Order, now_ms: int) -> Decision:
    """Cancel before settlement: an authorization is voided; a captured payment without
    refunds is reversed in full, our fee included. Not retried after a refused reversal."""
    if order.revocation:
        if order.revocation == "failed":
            return Decision(order, (), CommandStatus.revoke_not_allowed_in_status)
        return Decision(order, (), CommandStatus.duplicate)
    if order.status is S.authorized:
        decided = request_void(order, "revoke", "revocation: voiding the authorization", now_ms)
        if decided.status is CommandStatus.void_not_allowed_in_status:
            return Decision(order, (), CommandStatus.revoke_not_allowed_in_status)
        return decided
    if order.settlement:
        return Decision(order, (), CommandStatus.revoke_after_settlement)
    if order.split:
        return Decision(order, (), CommandStatus.revoke_not_allowed_for_split)
    if order.status is not S.succeeded or order.refunds:
        return Decision(order, (), CommandStatus.revoke_not_allowed_in_status)
    net, _ = revocation_amounts(order)
    if net == 0:  # the fee took it all: nothing to freeze at the merchant
        return send_reversal(order.model_copy(update={"revocation": "processing"}), now_ms)
    hold = HoldRequested(
        hold_id=hold_id_for(order.payment_id, REVOKE_HOLD), payment_id=order.payment_id,
        account_id=accounts.merchant_pending(order.merchant_id, order.currency),
        currency=order.currency, amount_minor=net)
    updated = note(order, "revoke", f"revocation: freezing {net} of merchant funds", now_ms)
    return Decision(updated.model_copy(update={"revocation": "holding"}), (hold,),
                    CommandStatus.accepted)


def _refund(order: Order, cmd: Refund, now_ms: int) -> Decision:
    existing = next((r for r in order.refunds if r.refund_id == cmd.refund_id), None)
    if existing is not None:
        if existing.amount_minor != cmd.amount_minor:
            return Decision(order, (), CommandStatus.refund_exists_with_different_amount)
        return Decision(order, (), CommandStatus.duplicate)
    if order.status not in (S.succeeded, S.partially_refunded) or order.revocation in (
            "holding", "processing") or order.settlement == "holding":
        return Decision(order, (), CommandStatus.refund_not_allowed_in_status)
    committed = sum(r.amount_minor for r in order.refunds if r.status != "failed")
    if committed + cmd.amount_minor > order.captured_minor:
        return Decision(order, (), CommandStatus.refund_exceeds_captured)
    hold = HoldRequested(
        hold_id=hold_id_for(order.payment_id, cmd.refund_id), payment_id=order.payment_id,
        account_id=merchant_funds(order), currency=order.currency,
        amount_minor=cmd.amount_minor,
    )
    refund = RefundState(refund_id=cmd.refund_id, amount_minor=cmd.amount_minor,
                         status="holding", account_id=hold.account_id)
    updated = note(order, "refund", f"refund {cmd.refund_id} of {cmd.amount_minor}: "
                   "holding merchant funds", now_ms).model_copy(
        update={"refunds": order.refunds + (refund,)})
    return Decision(updated, (hold,), CommandStatus.accepted)


