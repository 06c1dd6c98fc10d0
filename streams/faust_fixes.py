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

Fourth, Faust's stream skips, unprocessed, a message fetched in an earlier generation or
taken while the flow is stopped for a rebalance, and acks it (so the lag does not grow),
and the ack was recorded to be committed like any other. During the revocation, when the
partition's committed offset has been dropped, any run of acked offsets is committed, and
after it a run of skipped messages from the committed offset is committed too: the
messages were never processed. With three workers, rebalances come often enough that
10-minute soaks lost 158 and 144 payments, and with this fix and the next 0 of 7,155 (but
44 of 7,367 with another seed: the sixth fix). Here such acks release the message (the
rebalance does not wait for it) but record nothing: each assignment seeks back to the
committed offset, so at worst a message processed then is read again.

Fifth, Faust takes a jump in a partition's offsets (a message more than one past the last
one read) for a gap in the log, as compaction leaves, and counts the missing offsets as
processed. paycore's topics have no gaps, yet with three workers such jumps came after
rebalances (36 in a 10-minute soak): a worker sought to the committed offset (391) and was
then handed 414 first, and 392..413 counted as processed. Where the fetch position came
from is not known (a fetch may outlive a seek; the embedded broker may take a stale
member's commit), nor whether those messages had been processed elsewhere. Here such a
message is not handed on: the partition is read again from the offset due (one past the
last read, or the committed offset if that is further), and only a gap that stays after
``REREAD_TRIES_MAX`` reads is taken as real.

Sixth, at the end of a rebalance Faust resumes the partitions and only then seeks them to
their committed offsets, and a restarted worker's stages without tables run during its
table recovery, seconds before that seek: their first messages come from wherever the
Kafka client's position stood, and their acks are committed while the committed offset is
not known (so no check that the run starts there can apply). A three-worker soak traced
offset by offset (``PAYCORE_TRACE_OFFSETS``): pay.commands[1] committed at 301, a worker
given it handled 335 before its seek, and a restarted worker handled 368.. and committed
385; 302..367 were never processed (323 payments lost in that run). Here, in each
generation, a partition's messages are not handed on and its offsets not committed until
Faust's seek to the committed offsets has been done for it (``_perform_seek``); the stall
watch does that seek itself if it never came.

Seventh, Faust runs the Kafka client in a thread of its own, with its own event loop, but
its ``Consumer.seek`` calls the client's ``seek`` from the caller's thread, the main one.
The client's fetcher, meanwhile, walks its fetched records in the other thread: in a
30-minute soak a seek (the stall watch's) deleted a partition's records under it, the
fetcher died of a ``KeyError`` and took the worker with it. Here the seek is handed to
the client's thread (``_seek``), as Faust's own ``seek_wait`` and commits already are. (It
was not where the fifth fix's jumps came from: the next 30-minute soak still had 267.)

Eighth, a rebalance during table recovery adds the new assignment's standby partitions
with no known offset (None), and recovery then seeks them to None: the client refuses
(``ValueError: Offset must be a positive integer``), recovery crashes and the worker with
it (three times in that soak). Here a standby partition with no known offset is sought
from the start of its changelog, as one with nothing persisted is (``_seek_offsets``).

Ninth, Faust's seeks set a partition's read offset, which everywhere else is the last
offset read, to the offset *sought*: after the seek to the committed offset the message
there counted as read. The fifth fix then took the next offset as due, and when a fetch
started ahead (a three-worker soak: committed 2752, the first message fetched 2816) it read
the partition again from 2753; 2752 came only 35 s later, from the stall watch, after the
ledger had applied 2753 and 2754 to its account, so the ledger took it for a redelivery and
a leg of a journal entry was never applied (the ledger summed to +89,841; two 30-minute
soaks before, not traced, ended at +35,263, a sale's clearing leg missing, and at
+4,760,303). Here a seek leaves the read offset one before the offset sought
(``_consumer_seek``, ``_perform_seek``), and a message below the committed offset (a stale
fetch), which the read offset kept out before, is not handed on (``_getmany``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Optional

from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer, ThreadDelegateConsumer, ensure_TP
from faust.transport.producer import ProducerBuffer
from faust.types.tuples import TP, ack_lock
from faust.utils.functional import consecutive_numbers
from mode.utils.futures import notify

from streams import offset_trace
from streams.metrics import PARTITION_REREADS

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
    committed offset (gaps in the log, such as compacted records, count as acked); nothing
    while the committed offset is not known for this generation (see ``_perform_seek``)."""
    if not _sought(self, tp):
        return None
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


_original_ack = Consumer.ack


def _ack(self: Consumer, message) -> bool:
    """Faust's ack, except for a message of an earlier generation or acked while the flow
    is stopped (a rebalance): it no longer holds the rebalance up, but its offset is not
    recorded to be committed. Faust's stream acks such messages *without processing them*
    (it skips them, and acks so the lag does not grow), and recorded, their offsets were
    committed: during the revocation, when the partition's committed offset is not known
    and any run of acked offsets commits, or after it, as a run from the committed offset
    made of skipped messages. A message processed and acked then only loses its commit:
    every assignment seeks back to the committed offset, so it is read again."""
    app = self.app
    if app.flow_control.is_active() and message.generation_id in (
            None, app.consumer_generation_id):
        return _original_ack(self, message)
    with ack_lock:
        if not message.acked:
            offset_trace.record("skipped", message.tp.topic, message.tp.partition, message.offset)
            message.acked = True
            self._unacked_messages.discard(message)
            notify(self._waiting_for_ack)
    return False


REREAD_TRIES_MAX = 20
"""Re-reads of one partition at one offset before a gap is taken as real (and, as Faust
does, counted as processed): the broker then has no records there to give."""
_original_getmany = Consumer.getmany


async def _getmany(self: Consumer, timeout: float):
    """Faust's batch of fetched messages, minus any that would leave a gap: a message past
    the offset due for its partition is not handed on; the partition is read again from
    that offset, and the rest of its batch is dropped."""
    held: set[TP] = set()
    rereads: dict[TP, tuple[int, int]] = self.__dict__.setdefault("_paycore_rereads", {})
    async for tp, message in _original_getmany(self, timeout):
        if tp in held:
            continue
        if not _sought(self, tp) and self.app.topics.acks_enabled_for(message.topic):
            held.add(tp)  # fetched from wherever the client stood: read again after the seek
            _count_reread("before_seek")
            continue
        read = self._read_offset[tp]
        committed = self._committed_offset[tp]
        if committed is not None and message.offset < committed \
                and self.app.topics.acks_enabled_for(message.topic):
            continue  # processed before it was committed: a stale fetch's copy
        # The next offset due: one past the last read, or the committed offset if that is
        # further (those before it were processed, here or by the partition's last owner).
        due = None if read is None else read + 1 if committed is None else \
            max(read + 1, committed)
        if due is not None and message.offset > due \
                and self.app.topics.acks_enabled_for(message.topic):
            at, tries = rereads.get(tp, (due, 0))
            tries = tries + 1 if at == due else 1
            if tries <= REREAD_TRIES_MAX:
                rereads[tp] = (due, tries)
                held.add(tp)
                _count_reread("jump")
                log.warning("%s[%d]: fetched %d while %d was due (last read %d, committed %s):"
                            " reading it again from %d rather than skip %d messages",
                            tp.topic, tp.partition, message.offset, due, read, committed, due,
                            message.offset - due)
                try:
                    await self.seek(tp, due)
                except Exception as exc:  # revoked meanwhile: its next owner reads it
                    log.warning("%s[%d]: could not seek back (%r)", tp.topic, tp.partition, exc)
                self._read_offset[tp] = due - 1  # as the seek does; also if it failed
                continue
            log.error("%s[%d]: still no records between %d and %d after %d reads: taking "
                      "the gap as real", tp.topic, tp.partition, due, message.offset, tries)
        if rereads:
            rereads.pop(tp, None)
        yield tp, message


async def _consumer_seek(self: Consumer, partition: TP, offset: int) -> None:
    """Faust's ``Consumer.seek``, but the read offset (the last offset read) is left one
    before the offset sought, not at it: the message there has not been read yet."""
    await self._seek(partition, offset)
    self._read_offset[ensure_TP(partition)] = offset - 1  # -1 at the start: 0 is due


_original_perform_seek = Consumer.perform_seek


async def _perform_seek(self: Consumer) -> None:
    """Faust's seek of every assigned partition to its committed offset, remembered per
    partition with the generation it was done in. Until then, in each new generation, the
    partition's messages are not handed on and its offset is not committed: Faust resumes
    the partitions *before* this seek (and a restarted worker's stateless stages during its
    table recovery), so the first messages came from wherever the client's position stood
    (a three-worker soak: the committed offset 301, messages handled from 335 and, on a
    restarted worker, from 368, its commit of 385 made without the committed offset known,
    302..367 never processed). The seek sets the position; reading starts there. The Kafka
client seeks only to a committed offset above 0, so a partition with nothing committed is
sought to its start here: its messages dropped before the seek are read again."""
    generation = self.app.consumer_generation_id
    await _original_perform_seek(self)
    assigned = self.assignment()
    for tp in assigned:  # Faust set the read offset to the committed one: none read there yet
        committed = self._committed_offset.get(tp)
        if committed is not None and self._read_offset.get(tp) == committed:
            self._read_offset[tp] = committed - 1 if committed > 0 else None
    sought = self.__dict__.setdefault("_paycore_sought", {})
    # The client seeks only to a committed offset above 0: nothing committed, from the start.
    # All at once, within one seek's time (Faust gives the whole of this seek a deadline).
    starts = [tp for tp in assigned if self._committed_offset.get(tp) is None
              and self.app.topics.acks_enabled_for(tp.topic)]
    results = await asyncio.gather(*(self.seek(tp, 0) for tp in starts),
                                   return_exceptions=True)
    failed = {tp: result for tp, result in zip(starts, results, strict=True)
              if isinstance(result, BaseException)}
    for tp, exc in sorted(failed.items()):  # not sought: the stall watch seeks again
        log.warning("%s[%d]: could not seek to its start (%r)", tp.topic, tp.partition, exc)
    sought.update(dict.fromkeys(set(assigned) - set(failed), generation))


def _sought(consumer: Consumer, tp: TP) -> bool:
    """Sought to its committed offset in the current generation."""
    sought = consumer.__dict__.get("_paycore_sought", {})
    return sought.get(tp, -1) == consumer.app.consumer_generation_id


def _count_reread(reason: str) -> None:
    PARTITION_REREADS.labels(reason=reason).inc()


STALL_S = 30.0
"""A partition with messages past its committed offset, none of them in a handler, and its
committed offset unchanged for this long is read again from the committed offset."""


class StallWatch:
    """The backstop for any way a partition can stop without a sign: its messages past the
    committed offset were fetched but dropped (a read offset set late, after a seek), skipped
    (in a rebalance) or never fetched (a fetch position ahead of the committed offset). Each
    tick, a partition that holds messages past its committed offset, none being handled, and
    whose committed offset has not moved for ``STALL_S``, is sought back to it. At worst a
    slow partition is read again: the stages are idempotent."""

    def __init__(self, stall_s: float = STALL_S) -> None:
        self.stall_s = stall_s
        self.since: dict[TP, tuple[int, float]] = {}
        self.unsought_since: Optional[float] = None

    async def tick(self, app, now: float) -> list[TP]:
        consumer = app.consumer
        if not app.flow_control.is_active() or app.rebalancing:
            self.since.clear()
            self.unsought_since = None
            return []
        if await self._seek_if_never_sought(app, now):
            return []
        busy = {m.tp for m in list(consumer._unacked_messages)}
        stalled = []
        for tp in consumer.assignment():
            committed = consumer._committed_offset.get(tp)
            end = consumer.highwater(tp)
            if committed is None or end is None or end <= committed or tp in busy \
                    or not app.topics.acks_enabled_for(tp.topic):
                self.since.pop(tp, None)
                continue
            at, since = self.since.get(tp, (committed, now))
            if at != committed or now - since >= self.stall_s:  # moved, or read again now
                if at == committed:
                    stalled.append(tp)
                since = now
            self.since[tp] = (committed, since)
        for tp in stalled:
            committed = consumer._committed_offset[tp]
            _count_reread("stalled")
            log.warning("%s[%d]: %d messages past its committed offset %d and no progress for "
                        "%.0fs: reading it again from there", tp.topic, tp.partition,
                        consumer.highwater(tp) - committed, committed, self.stall_s)
            try:
                await consumer.seek(tp, committed)
            except Exception as exc:
                log.warning("%s[%d]: could not seek back (%r)", tp.topic, tp.partition, exc)
        return stalled

    async def _seek_if_never_sought(self, app, now: float) -> bool:
        """Partitions not sought to their committed offset in this generation (Faust's seek
        at the end of the rebalance failed or timed out) are read from nowhere: after
        ``stall_s`` the seek is done here."""
        consumer = app.consumer
        unsought = [tp for tp in consumer.assignment()
                    if not _sought(consumer, tp) and app.topics.acks_enabled_for(tp.topic)]
        if not unsought:
            self.unsought_since = None
            return False
        if self.unsought_since is None:
            self.unsought_since = now
        if now - self.unsought_since < self.stall_s:
            return False
        _count_reread("stalled")
        log.warning("%d partitions (%s[%d] first) not sought to their committed offsets for "
                    "%.0fs since the rebalance: seeking now", len(unsought),
                    unsought[0].topic, unsought[0].partition, self.stall_s)
        self.unsought_since = None
        try:
            await consumer.perform_seek()
        except Exception as exc:
            log.warning("could not seek to the committed offsets (%r)", exc)
        return True


def watch_for_stalls(app, every_s: float = 5.0) -> StallWatch:
    """Run a ``StallWatch`` on the app's timer (once per app)."""
    watch = StallWatch()

    @app.timer(every_s)
    async def stall_watch() -> None:
        await watch.tick(app, time.monotonic())

    return watch


SEEK_TIMEOUT_S = 30.0


async def _seek(self: ThreadDelegateConsumer, partition: TP, offset: int) -> None:
    """The client's seek, run in the client's thread; the caller waits for it, for
    ``SEEK_TIMEOUT_S`` at most (a thread that has stopped never answers)."""
    await asyncio.wait_for(self._thread.call_thread(self._thread.seek, partition, offset),
                           SEEK_TIMEOUT_S)


_original_seek_offsets = Recovery._seek_offsets


async def _seek_offsets(self: Recovery, consumer, tps, offsets, title: str) -> None:
    """Faust's seek of changelog partitions to where their reading starts; an offset not
    known (None, a partition added by a rebalance during recovery) is Faust's -1, nothing
    read yet, so the reading starts at the changelog's beginning. Set in ``offsets`` itself:
    Faust also subtracts from it when it counts what is left to read."""
    for tp in tps:
        if offsets.get(tp) is None:
            offsets[tp] = -1
    await _original_seek_offsets(self, consumer, tps, offsets, title)


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
    Consumer.getmany = _getmany
    Consumer.perform_seek = _perform_seek
    Consumer.seek = _consumer_seek
    Consumer.ack = _ack
    ThreadDelegateConsumer._seek = _seek
    Recovery._seek_offsets = _seek_offsets
    setattr(ProducerBuffer, _APPLIED, True)
