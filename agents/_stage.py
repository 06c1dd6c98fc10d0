"""What every stage loop shares: timing, metrics, retries, and never skipping a message.

Faust acks an event when the agent raises, so a raised exception would silently skip it.
Each message is handled inside a guard:
- a transient failure (the broker unreachable, a send timing out) retries the whole
  handler with backoff; handlers are idempotent (outbox, input offsets), so that is safe;
- anything else is a property of the message: it goes to ``pay.deadletter`` with its reason;
- if even that cannot be done, the process exits without acking, so that the message is
  delivered again after the restart instead of being lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Awaitable, Callable

from aiokafka.errors import KafkaError, KafkaTimeoutError
from faust.exceptions import ProducerSendError

from streams import offset_trace
from streams.app import Wire
from streams.envelope import child
from streams.faust_fixes import EXIT_CANNOT_PROCEED  # the supervisor restarts us
from streams.metrics import DUE_ROWS, OVERDUE, STAGE_EVENTS, STAGE_SECONDS
from streams.table_store import AckedTable

log = logging.getLogger(__name__)

Handler = Callable[[object], Awaitable[None]]

def transient(exc: BaseException) -> bool:
    """Retryable: broker unreachable or slow. Faust wraps send errors in ProducerSendError,
    so look at the cause. A non-retriable KafkaError (a message too large, say) is a
    property of the message and is dead-lettered instead."""
    if isinstance(exc, ProducerSendError):
        return exc.__cause__ is None or transient(exc.__cause__)
    if isinstance(exc, KafkaTimeoutError):
        return True
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False))
    return isinstance(exc, (asyncio.TimeoutError, ConnectionError))

RETRIES_MAX = 8
BACKOFF_S_MAX = 5.0


async def consume(stage: str, wire: Wire, stream, handle: Handler) -> None:
    events = STAGE_EVENTS.labels(stage=stage)
    seconds = STAGE_SECONDS.labels(stage=stage)
    async for event in stream.events():
        started = time.perf_counter()
        await guarded(stage, wire, event, handle)
        if offset_trace.enabled():
            m = event.message
            offset_trace.record("handled", m.topic, m.partition, m.offset, stage)
        events.inc()
        seconds.observe(time.perf_counter() - started)
        # Not held while waiting for the next one: a message read by two agents (the
        # callbacks) whose other copy a rebalance cleared from its buffer stays unacked,
        # and a reference here would keep it alive, and the rebalance waiting for it.
        del event


async def guarded(stage: str, wire: Wire, event, handle: Handler) -> None:
    where = f"{event.message.topic}[{event.message.partition}]@{event.message.offset}"
    for attempt in range(RETRIES_MAX):
        try:
            await handle(event)
            return
        except Exception as exc:  # the guard itself: see module docstring
            if transient(exc):
                delay = min(BACKOFF_S_MAX, 0.1 * 2**attempt)
                log.warning("%s: transient %r on %s, retry in %.1fs", stage, exc, where, delay)
                await asyncio.sleep(delay)
                continue
            log.exception("%s failed on %s", stage, where)
            await _dead_letter(stage, wire, event, f"unexpected: {type(exc).__name__}: {exc}")
            return
    _give_up(stage, where, "transient failures did not clear")


async def _dead_letter(stage: str, wire: Wire, event, reason: str) -> None:
    for attempt in range(RETRIES_MAX):
        try:
            await wire.dead_letter(stage, reason, event)
            return
        except Exception as exc:
            log.warning("%s: dead-letter send failed: %r", stage, exc)
            await asyncio.sleep(min(BACKOFF_S_MAX, 0.1 * 2**attempt))
    _give_up(stage, "dead-letter", reason)


def _give_up(stage: str, where: str, why: str) -> None:
    log.critical("%s cannot proceed on %s (%s): exiting without ack", stage, where, why)
    logging.shutdown()
    os._exit(EXIT_CANNOT_PROCEED)


RENUDGE_MS = 10_000
"""A nudge not acted on by then (lost in a crash) is sent again."""
OVERDUE_MS = 3 * RENUDGE_MS
"""A row this far past its deadline was nudged three times and is still there: stuck."""


class Nudger:
    """A sweeper's timer body: every key of a ``key -> due ms`` index that is due gets a
    message (``nudge(key, due_ms)``) sent on ``topic``, keyed by it; the owner of the row
    decides what it means. A nudge is not repeated for ``RENUDGE_MS``. Reads only this
    worker's partitions of the index."""

    def __init__(self, wire: Wire, topic: str, source: str, nudge, what: str) -> None:
        self.wire, self.topic, self.source, self.nudge, self.what = (
            wire, topic, source, nudge, what)
        self.nudged: dict[tuple[bytes, int], int] = {}

    async def sweep(self, index, at_ms: int, gauge: str | None = None) -> None:
        """``gauge`` names the index in ``paycore_deadline_index_rows`` and
        ``paycore_overdue_rows`` (rows still there ``OVERDUE_MS`` past their deadline: the
        nudge was sent, nothing moved them; for orders, stuck payments)."""
        rows = [(key, int(value)) for key, value in index.items()]
        due = [(key, due_ms) for key, due_ms in rows if due_ms <= at_ms]
        if gauge is not None:
            DUE_ROWS.labels(index=gauge).set(len(rows))
            OVERDUE.labels(index=gauge).set(
                sum(1 for _key, due_ms in due if at_ms - due_ms > OVERDUE_MS))
        for key, due_ms in due:
            if at_ms - self.nudged.get((key, due_ms), -RENUDGE_MS) < RENUDGE_MS:
                continue
            body = self.nudge(key.decode(), due_ms)
            try:
                await self.wire.send(self.topic, key.decode(),
                                     child(self.source, body, 0, at_ms))
            except Exception as exc:  # a timer must not die: the row stays, next tick retries
                log.warning("%s for %s not sent (%r); retrying", self.what, key, exc)
                return
            self.nudged[(key, due_ms)] = at_ms
        for stale in [k for k, sent in self.nudged.items() if at_ms - sent > 6 * RENUDGE_MS]:
            del self.nudged[stale]


def table(wire: Wire, name: str, help_text: str):
    """A table of bytes keys and JSON bytes rows, co-partitioned with the stage's input.

    Rows are pydantic ``model_dump_json`` bytes: one encode per write, no dict round trip.
    Each partition is its own RocksDB, sized by the settings (``table_options``); its rows
    reach it once their changelog records are acked (``streams/table_store.py``) unless
    ``table_rows_after_ack`` is off.
    """
    kwargs = dict(partitions=wire.settings.partitions, key_type=bytes, value_type=bytes,
                  help=help_text, options=table_options(wire.settings))
    if not wire.settings.table_rows_after_ack:
        return wire.app.Table(name, **kwargs)
    app = wire.app
    return app.tables.add(AckedTable(app, name=name, beacon=app.tables.beacon, **kwargs))


def table_options(settings) -> dict[str, int]:
    """Faust's RocksDB options for one table partition: small write buffers and block
    cache, so that memory stays bounded by the partitions a worker holds, not its writes."""
    mb = 1024 * 1024
    return {"write_buffer_size": settings.table_memtable_mb * mb,
            "max_write_buffer_number": 2,
            "block_cache_size": settings.table_block_cache_mb * mb}
