"""Orders: one writer per payment id. Commands, channel callbacks and ledger answers meet here."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from agents._outbox import Outgoing, OutboxEntry, recall, remember
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
from streams.envelope import Envelope, child, decode, encode
from streams.metrics import COMMANDS, PAYMENTS_FINAL

# Everything else is refused (a CommandRejected event) or, for channel and ledger messages,
# an exception for reconciliation and ops: late and contradicting callbacks included.
_SILENT = (CommandStatus.accepted, CommandStatus.duplicate, CommandStatus.callback_replayed)
_FINAL = {s.value for s in FINAL_FOR_CLIENTS}


class OrderRow(BaseModel):
    """One row per payment id: the order and what was sent for each recent input."""

    model_config = ConfigDict(frozen=True)

    order: Order | None = None
    outbox: tuple[OutboxEntry, ...] = ()


def register(wire: Wire) -> None:
    orders = table(wire, "orders", "payment id -> order state and outbox")
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
        row = OrderRow.model_validate_json(raw) if raw else OrderRow()
        again = recall(row.outbox, env.message_id)
        if again is not None:  # redelivered after a crash: send what we meant to send
            await wire.send_all(again)
            return
        decision = decide(row.order, env.body, at)
        outgoing = _outgoing(env, decision, key, at)
        order = decision.order or row.order
        if outgoing or order != row.order:
            updated = OrderRow(order=order, outbox=remember(row.outbox, env.message_id, outgoing))
            orders[event.message.key] = updated.model_dump_json().encode()
        _count(env.body, decision)
        await wire.send_all(outgoing)

    @wire.app.agent(wire.topic(t.ORDERS, t.CHANNEL_CALLBACKS), name="orders")
    async def order_stage(stream):
        await consume("orders", wire, stream, handle)


def _count(body, decision: Decision) -> None:
    if isinstance(body, Command):
        COMMANDS.labels(type=body.type, result=decision.status.name).inc()
    for output in decision.outputs:
        if isinstance(output, PaymentStatusChanged) and output.status in _FINAL \
                and decision.order is not None:
            PAYMENTS_FINAL.labels(status=output.status, method=decision.order.method,
                                  channel=output.channel).inc()


def _outgoing(env: Envelope, decision: Decision, key: str, at: int) -> list[Outgoing]:
    """Every message this decision sends, encoded once: topic, key and exact bytes."""
    out: list[Outgoing] = []
    if decision.status not in _SILENT:
        out.append(_rejection(env, decision, key, at))
    for index, body in enumerate(decision.outputs):
        value = encode(child(env, body, index, at)).decode()
        for topic, out_key in _routes(body):
            out.append(Outgoing(topic=topic, key=out_key, value=value))
    return out


def _rejection(env: Envelope, decision: Decision, key: str, at: int) -> Outgoing:
    body = env.body
    if not isinstance(body, Command):
        # Late, contradicting or unknown channel/ledger answers: for reconciliation and ops.
        return Outgoing(topic=t.RECON_EXCEPTIONS, key=key,
                        value=encode(child(env, body, 0, at)).decode())
    rejected = CommandRejected(
        payment_id=key, merchant_id=body.merchant_id, merchant_order_no=body.merchant_order_no,
        command_type=body.type, idempotency_key=body.idempotency_key,
        code=decision.status.name, reason=decision.status.name.replace("_", " "), at_ms=at)
    return Outgoing(topic=t.EVENTS, key=key, value=encode(child(env, rejected, 0, at)).decode())


def _routes(body) -> list[tuple[str, str]]:
    """Topic and key for an output; a journal entry goes once to each account's partition."""
    if isinstance(body, PaymentStatusChanged):
        return [(t.EVENTS, body.payment_id)]
    if isinstance(body, ChannelRequested):
        return [(t.CHANNEL_REQUESTS, body.payment_id)]
    if isinstance(body, JournalEntryDecided):
        return [(t.LEDGER_POSTINGS, a) for a in dict.fromkeys(leg.account_id for leg in body.legs)]
    if isinstance(body, (HoldRequested, HoldReleaseRequested)):
        return [(t.LEDGER_POSTINGS, body.account_id)]
    raise AssertionError(f"no topic for {type(body).__name__}")
