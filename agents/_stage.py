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
import weakref
from typing import Awaitable, Callable

from aiokafka.errors import KafkaError, KafkaTimeoutError
from faust.exceptions import ProducerSendError
from faust.streams import _current_event, current_event

from streams.app import Wire
from streams.envelope import child
from streams.metrics import BATCH_EVENTS, DUE_ROWS, OVERDUE, STAGE_EVENTS, STAGE_SECONDS

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
EXIT_CANNOT_PROCEED = 75  # EX_TEMPFAIL: the supervisor restarts us, the input is redelivered


BATCH_EVENTS_MAX = 500
"""Events a stage takes at once: each table key it writes is written (one changelog message)
once per batch, however many of the batch's events changed it."""
BATCH_WITHIN_S = 0.004
"""How long a stage waits for more events before it handles a batch that is not full: the
latency a quiet stage adds per hop, traded for fewer changelog messages under load."""


async def consume(stage: str, wire: Wire, stream, handle: Handler) -> None:
    """Handle the stream batch by batch, each event in order and guarded, then write back
    every table row the batch changed. Faust acks a batch's events when the next batch is
    asked for: after its rows are written, as it acks a single event after its handler."""
    events = STAGE_EVENTS.labels(stage=stage)
    seconds = STAGE_SECONDS.labels(stage=stage)
    sizes = BATCH_EVENTS.labels(stage=stage)
    async for batch in stream.take_events(BATCH_EVENTS_MAX, within=BATCH_WITHIN_S):
        sizes.observe(len(batch))
        for event in batch:
            started = time.perf_counter()
            _current_event.set(weakref.ref(event))  # tables read this event's partition
            await guarded(stage, wire, event, handle)
            events.inc()
            seconds.observe(time.perf_counter() - started)
        for pending in wire.tables:
            pending.flush()


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


_DELETED = object()


class BatchedTable:
    """A Faust table seen through the batch being handled: reads see the batch's own
    writes at once, and each key changed is written to the table (its RocksDB row and one
    changelog message) once, when the batch ends (``flush``), under the event that last
    changed it, so the row lands in that event's partition as a direct write would.

    Only what the stages use: ``get``, ``[key] = value``, ``del``, ``items``."""

    def __init__(self, table) -> None:
        self.table = table
        self.pending: dict[bytes, tuple[object, object]] = {}

    def get(self, key: bytes, default=None):
        hit = self.pending.get(key)
        if hit is None:
            return self.table.get(key, default)
        return default if hit[0] is _DELETED else hit[0]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.pending[key] = (value, current_event())

    def __delitem__(self, key: bytes) -> None:
        self.pending[key] = (_DELETED, current_event())

    def items(self):
        pending = dict(self.pending)
        for key, value in self.table.items():
            if key not in pending:
                yield key, value
        for key, (value, _event) in pending.items():
            if value is not _DELETED:
                yield key, value

    def flush(self) -> int:
        """Write every pending key; returns how many."""
        pending, self.pending = self.pending, {}
        for key, (value, event) in pending.items():
            # No event: a test's dict table (a Faust table refuses, as for a direct write).
            token = _current_event.set(weakref.ref(event) if event is not None else None)
            try:
                if value is not _DELETED:
                    self.table[key] = value
                elif self.table.get(key) is not None:
                    del self.table[key]
            finally:
                _current_event.reset(token)
        return len(pending)


def table(wire: Wire, name: str, help_text: str) -> BatchedTable:
    """A table of bytes keys and JSON bytes rows, co-partitioned with the stage's input,
    written back once per batch (``BatchedTable``).

    Rows are pydantic ``model_dump_json`` bytes: one encode per write, no dict round trip.
    """
    faust_table = wire.app.Table(name, partitions=wire.settings.partitions, key_type=bytes,
                                 value_type=bytes, help=help_text)
    batched = BatchedTable(faust_table)
    wire.tables.append(batched)
    return batched
