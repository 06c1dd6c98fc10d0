"""Intake: validate raw commands, dead-letter the bad ones, re-key the good ones for dedup."""

from __future__ import annotations

from agents._stage import consume
from domain.ids import dedup_key_for, derive_id
from domain.intake import parse_command
from domain.orders import fingerprint_of
from streams import topics as t
from streams.app import Wire, now_ms
from streams.envelope import Envelope
from streams.metrics import COMMANDS


def register(wire: Wire) -> None:
    async def validate(event) -> None:
        cmd, reason = parse_command(event.message.value)
        if cmd is None:
            COMMANDS.labels(type="unknown", result="invalid").inc()
            await wire.dead_letter("intake", f"invalid command: {reason}", event)
            return
        key = dedup_key_for(cmd.merchant_id, cmd.idempotency_key)
        message_id = derive_id("cmd", key, fingerprint_of(cmd))
        trace = _header(event, "trace_id") or message_id
        await wire.send(t.DEDUP, key, Envelope(message_id, trace, now_ms(), cmd))

    @wire.app.agent(wire.topics[t.COMMANDS], name="intake")
    async def intake(stream):
        await consume("intake", wire, stream, validate)


def _header(event, name: str) -> str:
    for key, value in event.message.headers or ():
        if key == name and value:
            return value.decode(errors="replace")[:64]
    return ""
