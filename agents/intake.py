"""Intake: validate raw commands, dead-letter the bad ones, re-key the good ones for dedup.

A command over ``COMMAND_BYTES_MAX`` is refused first, before its bytes are decoded, with a
reason of its own, ``too_large``, rather than as one more ``invalid command``: a client
sending megabytes is not making a typo, and the dead-letter metric (labelled by the
reason's first word) and the console's reason counts show it apart. Its dead letter keeps
only the original's first bytes (``streams.envelope.KEPT_BYTES_MAX``), its size and
SHA-256, so it fits the broker and cannot be replayed: ops discard it.
"""

from __future__ import annotations

from agents._stage import consume
from domain.ids import dedup_key_for, derive_id
from domain.intake import COMMAND_BYTES_MAX, parse_command
from domain.orders import fingerprint_of
from streams import topics as t
from streams.app import Wire, now_ms
from streams.envelope import Envelope
from streams.metrics import COMMANDS


def register(wire: Wire) -> None:
    async def validate(event) -> None:
        size_bytes = len(event.message.value or b"")
        if size_bytes > COMMAND_BYTES_MAX:
            COMMANDS.labels(type="unknown", result="too_large").inc()
            await wire.dead_letter(
                "intake", f"too_large: {size_bytes} bytes > {COMMAND_BYTES_MAX}", event)
            return
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
