"""Orders: one writer per payment id. Commands, channel callbacks and ledger answers meet here."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict

from agents._outbox import Outgoing, OutboxEntry, recall, remember
from agents._stage import Nudger, consume, table
from domain.commands import CHANNEL_METHODS, Command, Method, OrderCommand, Pay, TopUp, Withdraw
from domain.events import (
    ChannelOperation,
    ChannelRequested,
    ChannelResponded,
    CommandRejected,
    DeadlineReached,
    ExceptionResolved,
    HoldReleaseRequested,
    HoldRequested,
    HoldResolved,
    JournalEntryDecided,
    MandateChecked,
    MandateCheckRequested,
    PaymentStatusChanged,
    RiskScreened,
    SettlementReported,
)
from domain.orders import (
    FINAL_FOR_CLIENTS,
    CommandStatus,
    Decision,
    Order,
    decide_channel_refund,
    decide_channel_response,
    decide_channel_success,
    decide_command,
    decide_deadline,
    decide_hold_resolved,
    decide_mandate_checked,
    decide_settlement,
)
from domain.ids import derive_id
from domain.order_answers import channel_could_not
from domain.order_state import is_attempt
from domain.recon import ChannelRefundConfirmed, ChannelSuccessConfirmed
from domain.routing import (
    INTERNAL_CHANNEL,
    Breaker,
    ChannelHealth,
    Outcome,
    Payment,
    RoutePlan,
    plan_route,
)
from streams import topics as t
from streams.accounts_config import load_accounts
from streams.app import Wire, now_ms
from streams.envelope import Envelope, child, decode, encode
from streams.metrics import (
    BREAKER_STATE,
    CALLBACKS,
    CHANNEL_ATTEMPTS,
    CHANNEL_SECONDS,
    END_TO_END_SECONDS,
    CHANNEL_SUCCESS_RATE,
    COMMANDS,
    FAILOVERS,
    PAYMENTS_FINAL,
    ROUTING_DECISIONS,
)
from streams.rules_config import watch_routing

# Everything else is refused (a CommandRejected event) or, for channel, ledger and
# reconciliation messages, kept on pay.orders.unapplied for ops: late and contradicting
# callbacks included (reconciliation sees the callbacks itself and classifies them).
log = logging.getLogger(__name__)
_SILENT = (CommandStatus.accepted, CommandStatus.duplicate, CommandStatus.callback_replayed,
           CommandStatus.deadline_not_due)
_FINAL = {s.value for s in FINAL_FOR_CLIENTS}
_ROUTED = CHANNEL_METHODS | {Method.mandate}


class OrderRow(BaseModel):
    """One row per payment id: the order and what was sent for each recent input."""

    model_config = ConfigDict(frozen=True)

    order: Order | None = None
    outbox: tuple[OutboxEntry, ...] = ()


def register(wire: Wire) -> None:
    orders = table(wire, "orders", "payment id -> order state and outbox")
    deadlines = table(wire, "order_deadlines", "payment id -> deadline ms (open ones only)")
    routing = watch_routing(wire.settings.config_dir)
    health = ChannelHealth(routing.current.health)
    place = load_accounts(wire.settings.config_dir).place

    def plan_for(cmd, at: int) -> RoutePlan | None:
        if not isinstance(cmd, (Pay, TopUp, Withdraw)) or cmd.method not in _ROUTED:
            return None
        rules = routing.current
        country = cmd.payer.country or "" if isinstance(cmd, Pay) else ""
        payment = Payment(cmd.subject_id(), cmd.merchant_id, cmd.method, cmd.currency,
                          cmd.amount_minor, country)
        views = health.views([c.name for c in rules.channels], at)
        plan = plan_route(rules, payment, views)
        if plan is not None:
            if plan.probe:
                health.probe_started(plan.probe, at)
            ROUTING_DECISIONS.labels(channel=plan.candidates[0].channel,
                                     rule=plan.rule_id or "none").inc()
        return plan

    async def acknowledge(env: Envelope, at: int) -> None:
        """A channel that re-sends its notifications until acknowledged hears from us each
        time (before we act on it: a lost acknowledgement only costs a repeat)."""
        resp = env.body
        terms = routing.current.channel(resp.channel)
        if terms is None or not terms.notify_until_ack or resp.outcome.value == "pending":
            return
        ack = ChannelRequested(request_id=derive_id("ack", resp.request_id),
                               payment_id=resp.payment_id, channel=resp.channel,
                               operation=ChannelOperation.ack, amount_minor=0,
                               currency=resp.currency, reference=resp.request_id)
        await wire.send(t.CHANNEL_REQUESTS, resp.payment_id, child(env, ack, 0, at))

    def decide(order: Order | None, body, at: int) -> Decision:
        ttl = routing.current.balance_authorization_ttl_ms
        if isinstance(body, RiskScreened):
            cmd = body.command
            # risk computed the fingerprint already: no second hash on the hot path
            plan = plan_for(cmd, at) if order is None or order.fingerprint != \
                body.fingerprint else None
            return decide_command(order, cmd, plan, at, ttl, body.verdict)
        if isinstance(body, OrderCommand):
            return decide_command(order, body, plan_for(body, at), at, ttl)
        if isinstance(body, ChannelResponded):
            return decide_channel_response(order, body, at)
        if isinstance(body, HoldResolved):
            return decide_hold_resolved(order, body, at)
        if isinstance(body, MandateChecked):
            return decide_mandate_checked(order, body, at)
        if isinstance(body, SettlementReported):  # a line reconciliation matched
            return decide_settlement(order, body, at)
        if isinstance(body, ChannelSuccessConfirmed):
            return decide_channel_success(order, body, at)
        if isinstance(body, ChannelRefundConfirmed):
            return decide_channel_refund(order, body, at)
        assert isinstance(body, DeadlineReached), type(body)
        return decide_deadline(order, body, at)

    def track_deadline(key: bytes, order: Order | None) -> None:
        """Keep the sweeper's index in step with the order (the order row decides)."""
        if order is not None and order.deadline_ms:
            deadlines[key] = str(order.deadline_ms).encode()
        elif deadlines.get(key) is not None:
            del deadlines[key]

    async def handle(event) -> None:
        env, at = decode(event.message.value), now_ms()
        key = event.message.key.decode()
        raw = orders.get(event.message.key)
        row = OrderRow.model_validate_json(raw) if raw else OrderRow()
        source = f"{event.message.topic}:{event.message.partition}:{event.message.offset}"
        again = recall(row.outbox, env.message_id, source)
        if isinstance(env.body, ChannelResponded):
            _count_callback(env.body, row.order, again is not None)
            await acknowledge(env, at)
        if again is not None:  # redelivered after a crash: send what we meant to send
            track_deadline(event.message.key, row.order)
            await wire.send_all(again)
            return
        decision = decide(row.order, env.body, at)
        _observe(health, row.order, env.body, decision, at)
        outgoing = _outgoing(env, decision, key, at, place)
        order = decision.order or row.order
        if outgoing or order != row.order:
            updated = OrderRow(order=order, outbox=remember(row.outbox, env.message_id, outgoing,
                                                            source))
            orders[event.message.key] = updated.model_dump_json().encode()
        before = row.order.deadline_ms if row.order else 0
        if isinstance(env.body, DeadlineReached) or (order and order.deadline_ms != before):
            track_deadline(event.message.key, order)
        _count(env.body, decision)
        await wire.send_all(outgoing)

    @wire.app.agent(wire.topic(t.ORDERS, t.CHANNEL_CALLBACKS), name="orders")
    async def order_stage(stream):
        await consume("orders", wire, stream, handle)

    @wire.app.timer(interval=1.0, name="routing_rules_reload")
    async def reload_routing() -> None:
        try:
            if routing.check():
                health.policy = routing.current.health
            at = now_ms()
            for channel in routing.current.channels:
                view = health.view(channel.name, at)
                BREAKER_STATE.labels(channel=channel.name).set(_BREAKER_LEVEL[view.breaker])
                CHANNEL_SUCCESS_RATE.labels(channel=channel.name).set(
                    view.success_rate_bps / 10_000)
        except Exception:  # a timer must not die: the rules in force stay
            log.exception("routing rules check failed")

    sweeper = Nudger(wire, t.ORDERS, "sweeper", lambda key, due_ms: DeadlineReached(
        payment_id=key, deadline_ms=due_ms), "deadline nudge")

    @wire.app.timer(interval=wire.settings.deadline_sweep_ms / 1000, name="order_sweeper")
    async def sweep_deadlines() -> None:
        """Nudge the owner of every order past its deadline; the order decides what it
        means. Reads only this worker's partitions of the (small) deadline index."""
        await sweeper.sweep(deadlines, now_ms(), gauge="orders")


_BREAKER_LEVEL = {Breaker.closed: 0, Breaker.half_open: 1, Breaker.open: 2}


def _observe(health: ChannelHealth, before: Order | None, body, decision: Decision,
             at: int) -> None:
    """Feed channel health from what the order stage sees: each attempt's first answer
    (success, payer decline, or a retriable decline: a channel error), and timeouts."""
    if before is None or decision.order is None:
        return
    if isinstance(body, ChannelResponded):
        request = next((r for r in before.requests if r.request_id == body.request_id), None)
        if request is None or not is_attempt(request) or request.channel == INTERNAL_CHANNEL \
                or body.outcome.value == "pending" \
                or any(a.request_id == body.request_id for a in before.applied):
            return
        outcome = Outcome.succeeded
        if body.outcome.value == "declined":
            outcome = Outcome.error if channel_could_not(before, body) else Outcome.declined
        first = request.channel == before.route.channel
        started = next((h.at_ms for h in reversed(before.history)
                        if h.reason.startswith(f"attempt on {request.channel}")
                        or (first and h.reason.startswith(("routed", "mandate active")))), 0)
        latency = (body.responded_at_ms or at) - started if started else -1
        health.record(request.channel, outcome, latency, at)
        CHANNEL_ATTEMPTS.labels(channel=request.channel, outcome=outcome.value).inc()
        if latency >= 0:
            CHANNEL_SECONDS.labels(channel=request.channel, outcome=outcome.value).observe(
                latency / 1000)
        if len(decision.order.retry_routes) > len(before.retry_routes):
            FAILOVERS.labels(from_channel=request.channel, cause="retriable_decline",
                             to_channel=decision.order.retry_routes[-1].channel).inc()
    elif isinstance(body, DeadlineReached) and decision.status is CommandStatus.accepted \
            and before.status.value == "processing":
        after = decision.order
        timed_out = after.status.value == "timed_out"
        failed_over = len(after.retry_routes) > len(before.retry_routes)
        if not (timed_out or failed_over):
            return
        silent = {r.channel for r in before.requests if is_attempt(r)
                  and r.channel != INTERNAL_CHANNEL
                  and not any(a.request_id == r.request_id for a in before.applied)}
        for channel in sorted(silent):
            health.record(channel, Outcome.error, -1, at)
            CHANNEL_ATTEMPTS.labels(channel=channel, outcome="timeout").inc()
        if failed_over:
            FAILOVERS.labels(from_channel=(before.retry_routes or (before.route,))[-1].channel,
                             to_channel=after.retry_routes[-1].channel, cause="timeout").inc()


def _count_callback(body: ChannelResponded, order: Order | None, copy: bool) -> None:
    """Channel answers by what became of them: applied, a replayed copy, late or
    contradicting (for reconciliation), for a request or order we do not know."""
    if copy:
        result = "replayed"
    elif order is None:
        result = "unknown_order"
    elif not any(r.request_id == body.request_id for r in order.requests):
        result = "unknown_request"
    else:
        applied = next((a for a in order.applied if a.request_id == body.request_id), None)
        if applied is None:
            result = "applied"
        elif (applied.outcome, applied.amount_minor) == (body.outcome, body.amount_minor):
            result = "replayed"
        else:
            result = "contradicting"
    CALLBACKS.labels(channel=body.channel, result=result).inc()


def _count(body, decision: Decision) -> None:
    if isinstance(body, RiskScreened):
        body = body.command
    if isinstance(body, Command):
        COMMANDS.labels(type=body.type, result=decision.status.name).inc()
    for output in decision.outputs:
        if isinstance(output, PaymentStatusChanged) and output.status in _FINAL \
                and decision.order is not None:
            PAYMENTS_FINAL.labels(status=output.status, method=decision.order.method,
                                  channel=output.channel).inc()
            if output.previous_status not in _FINAL:  # the first final, not a later refund
                END_TO_END_SECONDS.labels(status=output.status).observe(
                    max(0, output.at_ms - decision.order.created_at_ms) / 1000)


def _outgoing(env: Envelope, decision: Decision, key: str, at: int, place
              ) -> list[Outgoing]:
    """Every message this decision sends, encoded once: topic, key and exact bytes.
    ``place(account_id, payment_id)`` names the ledger row (hot accounts are split)."""
    out: list[Outgoing] = []
    if decision.status not in _SILENT:
        out.append(_rejection(env, decision, key, at))
    for index, body in enumerate(decision.outputs):
        value = encode(child(env, body, index, at)).decode()
        for topic, out_key in _routes(body, place):
            out.append(Outgoing(topic=topic, key=out_key, value=value))
    return out


def _rejection(env: Envelope, decision: Decision, key: str, at: int) -> Outgoing:
    body = env.body.command if isinstance(env.body, RiskScreened) else env.body
    if not isinstance(body, Command):
        # Late, contradicting or unknown answers: kept for ops (recon classifies callbacks).
        return Outgoing(topic=t.UNAPPLIED, key=key,
                        value=encode(child(env, body, 0, at)).decode())
    rejected = CommandRejected(
        payment_id=key, merchant_id=body.merchant_id,
        merchant_order_no=getattr(body, "merchant_order_no", ""),
        command_type=body.type, idempotency_key=body.idempotency_key,
        code=decision.status.name, reason=decision.status.name.replace("_", " "), at_ms=at)
    return Outgoing(topic=t.EVENTS, key=key, value=encode(child(env, rejected, 0, at)).decode())


def _routes(body, place) -> list[tuple[str, str]]:
    """Topic and key for an output; a journal entry goes once to each account's partition."""
    if isinstance(body, (PaymentStatusChanged, ExceptionResolved)):
        return [(t.EVENTS, body.payment_id)]
    if isinstance(body, ChannelRequested):
        return [(t.CHANNEL_REQUESTS, body.payment_id)]
    if isinstance(body, JournalEntryDecided):
        rows = dict.fromkeys(place(leg.account_id, body.payment_id) for leg in body.legs)
        return [(t.LEDGER_POSTINGS, row) for row in rows]
    if isinstance(body, (HoldRequested, HoldReleaseRequested)):
        return [(t.LEDGER_POSTINGS, place(body.account_id, body.payment_id))]
    if isinstance(body, MandateCheckRequested):
        return [(t.MANDATES, body.mandate_key)]
    raise AssertionError(f"no topic for {type(body).__name__}")
