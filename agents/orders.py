"""Orders: one writer per payment id. Commands, channel callbacks and ledger answers meet here."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict

from agents._outbox import Outgoing, OutboxEntry, recall, remember
from agents._stage import consume, table
from domain.commands import CHANNEL_METHODS, Command, Method, OrderCommand, Pay, TopUp, Withdraw
from domain.events import (
    ChannelRequested,
    ChannelResponded,
    CommandRejected,
    DeadlineReached,
    HoldReleaseRequested,
    HoldRequested,
    HoldResolved,
    JournalEntryDecided,
    MandateChecked,
    MandateCheckRequested,
    PaymentStatusChanged,
    SettlementReported,
)
from domain.orders import (
    FINAL_FOR_CLIENTS,
    CommandStatus,
    Decision,
    Order,
    decide_channel_response,
    decide_command,
    decide_deadline,
    decide_hold_resolved,
    decide_mandate_checked,
    decide_settlement,
)
from domain.routing import choose_route
from streams import topics as t
from streams.accounts_config import load_accounts
from streams.app import Wire, now_ms
from streams.channels_config import load_channels
from streams.envelope import Envelope, child, decode, encode
from streams.metrics import COMMANDS, PAYMENTS_FINAL

# Everything else is refused (a CommandRejected event) or, for channel and ledger messages,
# an exception for reconciliation and ops: late and contradicting callbacks included.
log = logging.getLogger(__name__)
_SILENT = (CommandStatus.accepted, CommandStatus.duplicate, CommandStatus.callback_replayed,
           CommandStatus.deadline_not_due)
_FINAL = {s.value for s in FINAL_FOR_CLIENTS}
_ROUTED = CHANNEL_METHODS | {Method.mandate}
RENUDGE_MS = 10_000
"""A deadline nudge not acted on by then (lost in a crash) is sent again."""


class OrderRow(BaseModel):
    """One row per payment id: the order and what was sent for each recent input."""

    model_config = ConfigDict(frozen=True)

    order: Order | None = None
    outbox: tuple[OutboxEntry, ...] = ()


def register(wire: Wire) -> None:
    orders = table(wire, "orders", "payment id -> order state and outbox")
    deadlines = table(wire, "order_deadlines", "payment id -> deadline ms (open ones only)")
    config = load_channels(wire.settings.config_dir)
    channels = tuple(c.terms() for c in config.channels)
    place = load_accounts(wire.settings.config_dir).place

    def decide(order: Order | None, body, at: int) -> Decision:
        if isinstance(body, OrderCommand):
            route = None
            if isinstance(body, (Pay, TopUp, Withdraw)) and body.method in _ROUTED:
                route = choose_route(channels, body.method, body.currency)
            return decide_command(order, body, route, at, config.balance_authorization_ttl_ms)
        if isinstance(body, ChannelResponded):
            return decide_channel_response(order, body, at)
        if isinstance(body, HoldResolved):
            return decide_hold_resolved(order, body, at)
        if isinstance(body, MandateChecked):
            return decide_mandate_checked(order, body, at)
        if isinstance(body, SettlementReported):
            return decide_settlement(order, body, at)
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
        again = recall(row.outbox, env.message_id)
        if again is not None:  # redelivered after a crash: send what we meant to send
            track_deadline(event.message.key, row.order)
            await wire.send_all(again)
            return
        decision = decide(row.order, env.body, at)
        outgoing = _outgoing(env, decision, key, at, place)
        order = decision.order or row.order
        if outgoing or order != row.order:
            updated = OrderRow(order=order, outbox=remember(row.outbox, env.message_id, outgoing))
            orders[event.message.key] = updated.model_dump_json().encode()
        before = row.order.deadline_ms if row.order else 0
        if isinstance(env.body, DeadlineReached) or (order and order.deadline_ms != before):
            track_deadline(event.message.key, order)
        _count(env.body, decision)
        await wire.send_all(outgoing)

    @wire.app.agent(wire.topic(t.ORDERS, t.CHANNEL_CALLBACKS, t.SETTLEMENTS), name="orders")
    async def order_stage(stream):
        await consume("orders", wire, stream, handle)

    nudged: dict[tuple[bytes, int], int] = {}

    @wire.app.timer(interval=wire.settings.deadline_sweep_ms / 1000, name="order_sweeper")
    async def sweep_deadlines() -> None:
        """Nudge the owner of every order past its deadline; the order decides what it
        means. Reads only this worker's partitions of the (small) deadline index."""
        at = now_ms()
        due = [(key, int(value)) for key, value in deadlines.items() if int(value) <= at]
        for key, deadline_ms in due:
            if at - nudged.get((key, deadline_ms), -RENUDGE_MS) < RENUDGE_MS:
                continue
            body = DeadlineReached(payment_id=key.decode(), deadline_ms=deadline_ms)
            try:
                await wire.send(t.ORDERS, key.decode(), child("sweeper", body, 0, at))
            except Exception as exc:  # a timer must not die: the row stays, next tick retries
                log.warning("deadline nudge for %s not sent (%r); retrying", key, exc)
                return
            nudged[(key, deadline_ms)] = at
        for stale in [k for k, sent in nudged.items() if at - sent > 6 * RENUDGE_MS]:
            del nudged[stale]


def _count(body, decision: Decision) -> None:
    if isinstance(body, Command):
        COMMANDS.labels(type=body.type, result=decision.status.name).inc()
    for output in decision.outputs:
        if isinstance(output, PaymentStatusChanged) and output.status in _FINAL \
                and decision.order is not None:
            PAYMENTS_FINAL.labels(status=output.status, method=decision.order.method,
                                  channel=output.channel).inc()


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
    body = env.body
    if not isinstance(body, Command):
        # Late, contradicting or unknown channel/ledger answers: for reconciliation and ops.
        return Outgoing(topic=t.RECON_EXCEPTIONS, key=key,
                        value=encode(child(env, body, 0, at)).decode())
    rejected = CommandRejected(
        payment_id=key, merchant_id=body.merchant_id,
        merchant_order_no=getattr(body, "merchant_order_no", ""),
        command_type=body.type, idempotency_key=body.idempotency_key,
        code=decision.status.name, reason=decision.status.name.replace("_", " "), at_ms=at)
    return Outgoing(topic=t.EVENTS, key=key, value=encode(child(env, rejected, 0, at)).decode())


def _routes(body, place) -> list[tuple[str, str]]:
    """Topic and key for an output; a journal entry goes once to each account's partition."""
    if isinstance(body, PaymentStatusChanged):
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
