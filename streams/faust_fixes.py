"""Fixes to Faust that money depends on, applied once by ``create_app``.

Faust commits a source offset only after ``producer.flush()``, so that every table change
the event made is in its changelog first. But Faust's ``ProducerBuffer.flush`` (where table
writes wait to be handed to the Kafka client) gives up as soon as one message takes more
than 0.1 s to hand over, which is what a busy broker does, and the commit goes on with
changelog records still in the buffer. A worker killed then comes back with the offset
committed and the row change lost: its replacement, rebuilding the table from the
changelog, never sees it.

Here the flush waits until every message buffered *before it was called* has been handed
over (counted, so the one taken last counts only once it is sent). Not until the buffer is
empty: under steady load it never is, and a flush waiting for that would hold the commit,
and the rebalance that commits on revocation, for as long as the load lasts.

Second, the offset Faust commits for a partition is the end of the first run of acked
offsets, and it checks that the run starts at the committed offset with an off-by-one:
``min(acked) - committed > 1`` lets a run that starts one past it through, so the message
at the committed offset itself is skipped without ever being processed. That happens
after a rebalance: a message in flight while its partition was revoked is acked once the
revocation has dropped the partition's bookkeeping, so the ack is kept; the partition comes
back (to the same worker) at the committed offset just before it, and the next commit
jumps over that message, whose turn comes only after the seek. If the partition moves on
before it comes, the message is never processed: in a soak with worker kills, one command
in forty was lost that way. Here the run must start at the committed offset, and acked
offsets below it (left over from before a rebalance) are dropped instead of committed,
which would move the committed offset back.

Third, a rebalance first waits for every message handed to an agent to be acked
(``Consumer.wait_empty``), with no limit. A message read by two agents (the channel's
callbacks go to the order stage and to reconciliation) whose copy was cleared from one
agent's buffer by the revocation can stay referenced and unacked, and the wait then never
ends: the worker holds its partitions, the group cannot rebalance, and nothing moves (seen
twice in soaks, the group stuck for minutes; the stage loop no longer holds its last event,
``agents._stage.consume``, the likely cause). Here the wait is also bounded: a handler takes
seconds at most (its retries give up well within the bound), so past it the worker exits
without acking, as a stage does when it cannot proceed; its supervisor restarts it and the
unacked messages are delivered again, to handlers that are idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Optional

from faust.transport.consumer import Consumer
from faust.transport.producer import ProducerBuffer
from faust.types.tuples import TP
from faust.utils.functional import consecutive_numbers

log = logging.getLogger(__name__)

_APPLIED = "_paycore_flush_drains"
_original_put = ProducerBuffer.put
_original_flush = ProducerBuffer.flush


def _put(self: ProducerBuffer, fut) -> None:
    self._paycore_put += 1
    _original_put(self, fut)


async def _send_pending(self: ProducerBuffer, fut) -> None:
    try:
        await fut.message.channel.publish_message(fut, wait=False)
    finally:
        self._paycore_sent += 1
        self.message_sent.set()


async def _flush(self: ProducerBuffer) -> None:
    """Return once every message buffered before this call is with the Kafka client."""
    if self.app is not None and self.app.conf.producer_threaded:
        return await _original_flush(self)  # the thread's queue: not counted here
    target = self._paycore_put
    while self._paycore_sent < target:
        if self.state != "running":
            if self.size:
                raise RuntimeError("Cannot flush: Producer not Running")
            return  # stopping: the one in hand finishes or the process ends
        self.message_sent.clear()
        try:
            await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)
        except asyncio.TimeoutError:
            continue  # slow broker: keep waiting, never commit past unsent changes


def _new_offset(self: Consumer, tp: TP) -> Optional[int]:
    """The offset to commit for ``tp``: one past the run of acked offsets that starts at the
    committed offset (gaps in the log, such as compacted records, count as acked)."""
    acked = self._acked[tp]
    committed = self._committed_offset[tp]
    if acked and committed is not None:
        stale = [offset for offset in acked if offset < committed]
        if stale:  # acked before a rebalance: committed already, or to be read again
            acked[:] = [offset for offset in acked if offset >= committed]
            self._acked_index[tp].difference_update(stale)
    if not acked:
        return None
    gap_for_tp = self._gap[tp]
    if gap_for_tp:  # as Faust does: the gaps up to the highest acked offset are acked
        max_offset = max(acked)
        candidates = sorted(gap_for_tp.overlap(0, max_offset), key=lambda x: x.begin)
        if candidates:
            filled = [o for entry in candidates for o in range(entry.begin, entry.end)]
            acked.extend(filled)
            gap_for_tp.chop(0, max(filled[-1], max_offset + 1))
    acked.sort()
    if committed is not None and acked[0] > committed:
        return None  # the message at the committed offset is not processed yet
    batch = next(consecutive_numbers(acked))
    acked[:len(batch)] = []
    self._acked_index[tp].difference_update(batch)
    return batch[-1] + 1


WAIT_EMPTY_MAX_S = 60.0
EXIT_CANNOT_PROCEED = 75
"""EX_TEMPFAIL: the supervisor restarts the worker and its unacked input is delivered again
(also the exit of a stage that cannot proceed, ``agents._stage``)."""
_original_wait_empty = Consumer.wait_empty
_exit = os._exit


async def _wait_empty(self: Consumer) -> None:
    """Faust's wait for in-flight messages, for ``WAIT_EMPTY_MAX_S`` at most. A timer, not
    a cancellation: Faust's wait swallows ``CancelledError`` and would go on waiting."""
    watchdog = asyncio.get_running_loop().call_later(WAIT_EMPTY_MAX_S, _stuck, self)
    try:
        await _original_wait_empty(self)
    finally:
        watchdog.cancel()


def _stuck(consumer: Consumer) -> None:
    waiting = sorted(f"{m.tp.topic}[{m.tp.partition}]@{m.offset}"
                     for m in list(consumer._unacked_messages))[:10]
    log.critical("rebalance: messages still unacked after %.0fs (%s): exiting without ack, "
                 "to be restarted and have them delivered again", WAIT_EMPTY_MAX_S,
                 ", ".join(waiting))
    logging.shutdown()
    _exit(EXIT_CANNOT_PROCEED)


def drain_on_flush() -> None:
    """Install the fixes (idempotent)."""
    if getattr(ProducerBuffer, _APPLIED, False):
        return
    ProducerBuffer._paycore_put = 0  # per buffer once incremented: messages buffered,
    ProducerBuffer._paycore_sent = 0  # and handed over
    ProducerBuffer.put = _put
    ProducerBuffer._send_pending = _send_pending
    ProducerBuffer.flush = _flush
    Consumer._new_offset = _new_offset
    Consumer.wait_empty = _wait_empty
    setattr(ProducerBuffer, _APPLIED, True)
