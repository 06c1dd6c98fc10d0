"""Mandates: one writer per mandate. Sign, terminate, and answer collection checks."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from agents._outbox import Outgoing, OutboxEntry, recall, remember
from agents._stage import consume, table
from domain.commands import MandateCommand
from domain.events import CommandRejected, MandateChecked, MandateCheckRequested
from domain.mandates import (
    Mandate,
    MandateCode,
    MandateDecision,
    decide_mandate_check,
    decide_mandate_command,
)
from streams import topics as t
from streams.app import Wire, now_ms
from streams.envelope import Envelope, child, decode, encode
from streams.metrics import COMMANDS

_SILENT = (MandateCode.accepted, MandateCode.duplicate)


class MandateRow(BaseModel):
    """The mandate and what was sent for each recent input, in one row (see orders)."""

    model_config = ConfigDict(frozen=True)

    mandate: Mandate | None = None
    outbox: tuple[OutboxEntry, ...] = ()


def register(wire: Wire) -> None:
    mandates = table(wire, "mandates", "mandate key -> mandate and outbox")

    async def handle(event) -> None:
        env, at = decode(event.message.value), now_ms()
        raw = mandates.get(event.message.key)
        row = MandateRow.model_validate_json(raw) if raw else MandateRow()
        again = recall(row.outbox, env.message_id)
        if again is not None:
            await wire.send_all(again)
            return
        if isinstance(env.body, MandateCommand):
            decision = decide_mandate_command(row.mandate, env.body, at)
            COMMANDS.labels(type=env.body.type, result=decision.code.name).inc()
        else:
            assert isinstance(env.body, MandateCheckRequested), type(env.body)
            decision = decide_mandate_check(row.mandate, env.body, at)
        outgoing = _outgoing(env, decision, event.message.key.decode(), at)
        updated = MandateRow(mandate=decision.mandate or row.mandate,
                             outbox=remember(row.outbox, env.message_id, outgoing))
        if updated != row:
            mandates[event.message.key] = updated.model_dump_json().encode()
        await wire.send_all(outgoing)

    @wire.app.agent(wire.topics[t.MANDATES], name="mandates")
    async def mandate_stage(stream):
        await consume("mandates", wire, stream, handle)


def _outgoing(env: Envelope, decision: MandateDecision, key: str, at: int) -> list[Outgoing]:
    out: list[Outgoing] = []
    body = env.body
    if isinstance(body, MandateCommand) and decision.code not in _SILENT:
        rejected = CommandRejected(
            payment_id=key, merchant_id=body.merchant_id, merchant_order_no="",
            command_type=body.type, idempotency_key=body.idempotency_key,
            code=decision.code.name, reason=decision.code.name.replace("_", " "), at_ms=at)
        out.append(Outgoing(topic=t.EVENTS, key=key,
                            value=encode(child(env, rejected, 0, at)).decode()))
    for index, output in enumerate(decision.outputs):
        value = encode(child(env, output, index, at)).decode()
        if isinstance(output, MandateChecked):
            out.append(Outgoing(topic=t.ORDERS, key=output.payment_id, value=value))
        else:
            out.append(Outgoing(topic=t.EVENTS, key=key, value=value))
    return out
