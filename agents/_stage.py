"""What every stage loop shares: timing, metrics, and never letting an exception escape.

Faust acks an event when the agent raises, so a raised exception would silently skip it.
Each message is handled inside a guard: an unexpected error sends it to ``pay.deadletter``
with its reason and the loop goes on.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

from streams.app import Wire
from streams.metrics import STAGE_EVENTS, STAGE_SECONDS

log = logging.getLogger(__name__)

Handler = Callable[[object], Awaitable[None]]


async def consume(stage: str, wire: Wire, stream, handle: Handler) -> None:
    events = STAGE_EVENTS.labels(stage=stage)
    seconds = STAGE_SECONDS.labels(stage=stage)
    async for event in stream.events():
        started = time.perf_counter()
        try:
            await handle(event)
        except Exception as exc:  # the guard itself: see module docstring
            log.exception("%s failed on %s[%s]@%s", stage, event.message.topic,
                          event.message.partition, event.message.offset)
            await wire.dead_letter(stage, f"unexpected: {type(exc).__name__}: {exc}", event)
        events.inc()
        seconds.observe(time.perf_counter() - started)


def table(wire: Wire, name: str, help_text: str):
    """A table of bytes keys and JSON bytes rows, co-partitioned with the stage's input.

    Rows are pydantic ``model_dump_json`` bytes: one encode per write, no dict round trip.
    """
    return wire.app.Table(name, partitions=wire.settings.partitions, key_type=bytes,
                          value_type=bytes, help=help_text)
