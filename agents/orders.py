"""Orders: one writer per payment id. Commands, channel callbacks and ledger answers meet here."""

from __future__ import annotations

from agents._stage import consume, table
from domain.commands import Command, Pay
from domain.events import (
    ChannelRequested,
    ChannelResponded,
    CommandRejected,
    HoldReleaseRequested,
    HoldRequested,
    HoldResolved,
    JournalEntryDecided,
    PaymentStatusChanged,
)
from domain.orders import (
    FINAL_FOR_CLIENTS,
    CommandStatus,
    Decision,
    Order,
    decide_channel_response,
    decide_command,
    decide_hold_resolved,
)
from domain.routing import choose_route
from streams import topics as t
from streams.app import Wire, now_ms
from streams.channels_config import load_channels
from streams.envelope import Envelope, child, decode
from streams.metrics import COMMANDS, PAYMENTS_FINAL

# Everything else is refused (a CommandRejected event) or, for channel and ledger messages,
# an exception for reconciliation and ops: late and contradicting callbacks included.
_SILENT = (CommandStatus.accepted, CommandStatus.duplicate, CommandStatus.callback_replayed)


def register(wire: Wire) -> None:
    orders = table(wire, "orders", "payment id -> order state")
    channels = tuple(c.terms() for c in load_channels(wire.settings.config_dir).channels)

    def decide(order: Order | None, body, at: int) -> Decision:
        if isinstance(body, Command):
            route = choose_route(channels, body.method, body.currency) \
                if isinstance(body, Pay) else None
            return decide_command(order, body, route, at)
        if isinstance(body, ChannelResponded):
            return decide_channel_response(order, body, at)
        assert isinstance(body, HoldResolved), type(body)
        return decide_hold_resolved(order, body, at)

    async def handle(event) -> None:
        env, at = decode(event.message.value), now_ms()
        key = event.message.key.decode()
        raw = orders.get(event.message.key)
        before = Order.model_validate_json(raw) if raw else None
        decision = decide(before, env.body, at)
        if decision.order is not None and decision.order != before:
            orders[event.message.key] = decision.order.model_dump_json().encode()
        if isinstance(env.body, Command):
            COMMANDS.labels(type=env.body.type, result=decision.status.name).inc()
        if decision.status not in _SILENT:
            await _reject(wire, env, decision, key, at)
        for index, output in enumerate(decision.outputs):
            await _emit(wire, child(env, output, index, at), decision.order)

    @wire.app.agent(wire.topic(t.ORDERS, t.CHANNEL_CALLBACKS), name="orders")
    async def order_stage(stream):
        await consume("orders", wire, stream, handle)


async def _reject(wire: Wire, env: Envelope, decision: Decision, key: str, at: int) -> None:
    body = env.body
    if not isinstance(body, Command):
        await wire.send(t.RECON_EXCEPTIONS, key, child(env, body, 0, at))
        return
    rejected = CommandRejected(
        payment_id=key, merchant_id=body.merchant_id, merchant_order_no=body.merchant_order_no,
        command_type=body.type, idempotency_key=body.idempotency_key,
        code=decision.status.name, reason=decision.status.name.replace("_", " "), at_ms=at)
    await wire.send(t.EVENTS, key, child(env, rejected, 0, at))


async def _emit(wire: Wire, env: Envelope, order: Order | None) -> None:
    body = env.body
    if isinstance(body, PaymentStatusChanged):
        if body.status in {s.value for s in FINAL_FOR_CLIENTS} and order is not None:
            PAYMENTS_FINAL.labels(status=body.status, method=order.method,
                                  channel=body.channel).inc()
        await wire.send(t.EVENTS, body.payment_id, env)
    elif isinstance(body, ChannelRequested):
        await wire.send(t.CHANNEL_REQUESTS, body.payment_id, env)
    elif isinstance(body, JournalEntryDecided):
        # One copy per account partition; each applies only its own legs, by posting id.
        for account_id in dict.fromkeys(leg.account_id for leg in body.legs):
            await wire.send(t.LEDGER_POSTINGS, account_id, env)
    elif isinstance(body, (HoldRequested, HoldReleaseRequested)):
        await wire.send(t.LEDGER_POSTINGS, body.account_id, env)
    else:
        raise AssertionError(f"no topic for {type(body).__name__}")
