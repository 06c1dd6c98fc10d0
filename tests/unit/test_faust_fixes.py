"""Faust's producer buffer, flushed before every offset commit, hands over every table
change first, however slow the broker is (see streams/faust_fixes.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.transport.producer import ProducerBuffer

from streams.faust_fixes import drain_on_flush

HAND_OVER_S = 0.25  # longer than the 0.1 s after which Faust's own flush gave up


class SlowChannel:
    """A topic whose client takes its time to accept each record (a busy broker)."""

    def __init__(self) -> None:
        self.handed: list[int] = []

    async def publish_message(self, fut, wait: bool = False) -> None:
        await asyncio.sleep(HAND_OVER_S)
        self.handed.append(fut.n)


def test_flush_returns_only_when_every_buffered_change_is_handed_over():
    drain_on_flush()
    drain_on_flush()  # idempotent

    async def run() -> tuple[list[int], int]:
        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
        channel = SlowChannel()
        await buffer.start()
        try:
            for n in range(3):
                buffer.put(SimpleNamespace(n=n, message=SimpleNamespace(channel=channel)))
            await buffer.flush()
            return list(channel.handed), buffer.size
        finally:
            await buffer.stop()

    handed, left = asyncio.run(run())

    assert (handed, left) == ([0, 1, 2], 0)


def test_flush_ends_under_steady_load_once_what_came_before_it_is_sent():
    drain_on_flush()

    async def run() -> tuple[int, int]:
        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
        channel = SlowChannel()
        await buffer.start()
        stop = asyncio.Event()

        async def keep_writing() -> None:  # a stream never done changing its tables
            n = 100
            while not stop.is_set():
                buffer.put(SimpleNamespace(n=n, message=SimpleNamespace(channel=channel)))
                n += 1
                await asyncio.sleep(HAND_OVER_S / 2)

        try:
            for n in range(2):
                buffer.put(SimpleNamespace(n=n, message=SimpleNamespace(channel=channel)))
            writer = asyncio.ensure_future(keep_writing())
            await asyncio.wait_for(buffer.flush(), timeout=5)
            waiting = buffer.size
            stop.set()
            await writer
            await buffer.flush()  # the rest, so that the buffer stops empty
            return channel.handed[:2], waiting
        finally:
            await buffer.stop()

    first, left = asyncio.run(run())

    assert first == [0, 1] and left > 0  # flushed what came first while more waited


# ---------------------------------------------------------------- the offset to commit


def bookkeeping(committed: int | None, acked: list[int], gaps: tuple[tuple[int, int], ...] = ()):
    """A consumer's per-partition state, as ``Consumer._new_offset`` reads it."""
    from collections import defaultdict

    from intervaltree import IntervalTree

    tp = ("pay.commands", 0)
    tree = IntervalTree()
    for begin, end in gaps:
        tree.addi(begin, end)
    return tp, SimpleNamespace(
        _acked=defaultdict(list, {tp: list(acked)}),
        _acked_index=defaultdict(set, {tp: set(acked)}),
        _committed_offset=defaultdict(lambda: None, {tp: committed}),
        _gap=defaultdict(IntervalTree, {tp: tree}),
        _paycore_sought={tp: 3}, app=SimpleNamespace(consumer_generation_id=3))


def new_offset(state, tp):
    from faust.transport.consumer import Consumer

    drain_on_flush()
    return Consumer._new_offset(state, tp)


def test_the_message_at_the_committed_offset_is_not_skipped():
    # Offset 100 is committed (next to process); 101 was acked by a handler that finished
    # during a rebalance. Faust itself committed 102 here, and 100 was never processed.
    tp, state = bookkeeping(committed=100, acked=[101])
    assert new_offset(state, tp) is None
    state._acked[tp].append(100)
    state._acked_index[tp].add(100)
    assert new_offset(state, tp) == 102


def test_a_run_from_the_committed_offset_is_committed_up_to_its_first_hole():
    tp, state = bookkeeping(committed=100, acked=[100, 101, 102, 104])
    assert new_offset(state, tp) == 103
    assert state._acked[tp] == [104]
    state._committed_offset[tp] = 103
    assert new_offset(state, tp) is None  # 103 not processed: nothing moves


def test_acks_older_than_the_committed_offset_do_not_move_it_back():
    # Acked before the partition went to another worker, who committed up to 500 since.
    tp, state = bookkeeping(committed=500, acked=[105, 500, 501])
    assert new_offset(state, tp) == 502
    assert 105 not in state._acked_index[tp]


def test_gaps_in_the_log_count_as_processed():
    tp, state = bookkeeping(committed=100, acked=[100, 105], gaps=((101, 105),))
    assert new_offset(state, tp) == 106


def test_a_partition_never_committed_commits_its_first_run():
    tp, state = bookkeeping(committed=None, acked=[0, 1, 2])
    assert new_offset(state, tp) == 3


# ---------------------------------------------------------------- the wait before a rebalance


def test_a_rebalance_waiting_forever_for_an_unacked_message_exits_to_be_restarted(monkeypatch):
    from faust.transport.consumer import Consumer

    from streams import faust_fixes

    drain_on_flush()
    exits: list[int] = []

    async def never_empty(self) -> None:
        while not exits:  # as Faust's: cancelling it does not end it
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass

    monkeypatch.setattr(faust_fixes, "_original_wait_empty", never_empty)
    monkeypatch.setattr(faust_fixes.logging, "shutdown", lambda: None)
    monkeypatch.setattr(faust_fixes, "WAIT_EMPTY_MAX_S", 0.2)
    monkeypatch.setattr(faust_fixes, "_exit", exits.append)
    stuck = SimpleNamespace(tp=SimpleNamespace(topic="pay.channel.callbacks", partition=4),
                            offset=176)
    consumer = SimpleNamespace(_unacked_messages=[stuck])
    asyncio.run(Consumer.wait_empty(consumer))
    assert exits == [faust_fixes.EXIT_CANNOT_PROCEED]


def test_a_rebalance_whose_messages_are_acked_in_time_goes_on():
    from faust.transport.consumer import Consumer

    from streams import faust_fixes

    drain_on_flush()
    waited: list[bool] = []

    async def empties_soon(self) -> None:
        await asyncio.sleep(0.05)
        waited.append(True)

    original = faust_fixes._original_wait_empty
    faust_fixes._original_wait_empty = empties_soon
    try:
        asyncio.run(Consumer.wait_empty(SimpleNamespace(_unacked_messages=set())))
    finally:
        faust_fixes._original_wait_empty = original
    assert waited == [True]


# ---------------------------------------------------------------- a fetch that skips ahead


def fetching(batches: list[list[int]], read: int, monkeypatch, committed: int | None = None,
             nothing_committed: bool = False):
    """A consumer whose fetches give these offsets of one partition, batch by batch, and
    whose drain loop (played here) records each message handed on as read."""
    from faust.transport.consumer import Consumer

    from streams import faust_fixes

    from faust.types.tuples import TP

    drain_on_flush()
    tp = TP("pay.commands", 1)
    fetches = iter(batches)
    seeks: list[int] = []

    async def original(self, timeout):
        for offset in next(fetches):
            yield tp, SimpleNamespace(offset=offset, topic=tp.topic)

    async def seek(partition, offset):  # as the fixed one: the one before counts as read
        seeks.append(offset)
        consumer._read_offset[partition] = offset - 1

    monkeypatch.setattr(faust_fixes, "_original_getmany", original)
    consumer = SimpleNamespace(
        _read_offset={tp: read}, _committed_offset={
            tp: None if nothing_committed else read if committed is None else committed},
        seek=seek, _paycore_sought={tp: 3},
        app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
                            consumer_generation_id=3))

    async def drain() -> list[int]:
        handed = []
        for _ in batches:
            async for _tp, message in Consumer.getmany(consumer, 1.0):
                handed.append(message.offset)
                consumer._read_offset[tp] = message.offset
        return handed

    return asyncio.run(drain()), seeks


def test_a_fetch_that_starts_past_the_next_offset_is_read_again_not_skipped(monkeypatch):
    # Seen after rebalances with three workers: committed 391, the first message fetched
    # was 414. Faust counted 392..413 as a gap, processed, and those payments were lost.
    handed, seeks = fetching([[414, 415, 416], [392, 393, 394]], read=391,
                             monkeypatch=monkeypatch)
    assert (handed, seeks) == ([392, 393, 394], [392])


def test_a_fetch_that_starts_at_a_committed_offset_ahead_of_the_last_read_passes(monkeypatch):
    # The partition's last owner committed 1055 while this worker had read to 957: 1055 is
    # due, not a jump (reading 958.. again would only redo what was committed).
    handed, seeks = fetching([[1055, 1056]], read=957, committed=1055, monkeypatch=monkeypatch)
    assert (handed, seeks) == ([1055, 1056], [])


def test_a_jump_past_a_committed_offset_ahead_of_the_last_read_reads_from_it(monkeypatch):
    handed, seeks = fetching([[1070], [1055]], read=957, committed=1055, monkeypatch=monkeypatch)
    assert (handed, seeks) == ([1055], [1055])


def test_messages_in_order_pass_untouched(monkeypatch):
    handed, seeks = fetching([[391, 392], [393]], read=390, monkeypatch=monkeypatch)
    assert (handed, seeks) == ([391, 392, 393], [])


def test_a_gap_that_stays_is_taken_as_real_after_the_rereads(monkeypatch):
    from streams.faust_fixes import REREAD_TRIES_MAX

    handed, seeks = fetching([[414]] * (REREAD_TRIES_MAX + 1) + [[415]], read=391,
                             monkeypatch=monkeypatch)
    assert (handed, seeks) == ([414, 415], [392] * REREAD_TRIES_MAX)  # never past 392


# ---------------------------------------------------------------- acks of skipped messages


class Fetched(SimpleNamespace):
    __hash__ = object.__hash__  # kept in a (weak) set, as Faust's messages are


def acking(active: bool, generation: int, message_generation: int | None):
    """A consumer at ``generation``, its flow ``active`` or stopped, and a message of one
    partition fetched in ``message_generation``, acked by a stream."""
    from faust.transport.consumer import Consumer
    from faust.types.tuples import TP

    drain_on_flush()
    tp = TP("pay.commands", 0)
    message = Fetched(tp=tp, offset=740, topic=tp.topic, acked=False,
                      generation_id=message_generation)
    consumer = bookkeeping(committed=None, acked=[])[1]
    consumer._acked, consumer._acked_index = {tp: []}, {tp: set()}
    consumer._committed_offset = {tp: 700}
    consumer._unacked_messages, consumer._waiting_for_ack, consumer._n_acked = (
        {message}, None, 0)
    consumer.app = SimpleNamespace(
        consumer_generation_id=generation,
        flow_control=SimpleNamespace(is_active=lambda: active),
        topics=SimpleNamespace(acks_enabled_for=lambda topic: True))
    recorded = Consumer.ack(consumer, message)
    return recorded, consumer._acked[tp], message.acked, consumer._unacked_messages


def test_a_message_acked_in_its_generation_with_the_flow_running_is_recorded():
    assert acking(active=True, generation=6, message_generation=6)[:3] == (True, [740], True)


def test_a_message_of_an_earlier_generation_is_acked_but_not_committed():
    # Faust's stream skips it unprocessed, and acks it; committed, it was lost.
    recorded, acked, done, unacked = acking(active=True, generation=6, message_generation=5)
    assert (recorded, acked, done, unacked) == (False, [], True, set())


def test_a_message_acked_during_a_rebalance_is_acked_but_not_committed():
    recorded, acked, done, unacked = acking(active=False, generation=5, message_generation=5)
    assert (recorded, acked, done, unacked) == (False, [], True, set())


# ---------------------------------------------------------------- a partition that stops


def watched(committed: int, end: int, busy: bool = False, flowing: bool = True):
    """An app whose one partition has ``end`` as its high watermark and ``committed`` as
    its committed offset, a message of it in a handler if ``busy``; and its seeks."""
    from faust.types.tuples import TP

    tp = TP("pay.commands", 1)
    seeks: list[tuple[TP, int]] = []

    async def seek(partition, offset):
        seeks.append((partition, offset))

    consumer = SimpleNamespace(
        assignment=lambda: {tp}, _committed_offset={tp: committed},
        highwater=lambda _tp: end, seek=seek, _paycore_sought={tp: 3},
        _unacked_messages=[SimpleNamespace(tp=tp)] if busy else [])
    app = SimpleNamespace(
        consumer=consumer, rebalancing=False, consumer_generation_id=3,
        flow_control=SimpleNamespace(is_active=lambda: flowing),
        topics=SimpleNamespace(acks_enabled_for=lambda topic: True))
    consumer.app = app
    return app, tp, seeks


def ticks(watch, app, at: list[float]) -> list:
    async def run():
        return [await watch.tick(app, now) for now in at]

    return asyncio.run(run())


def test_a_partition_with_messages_left_and_no_progress_is_read_again_from_its_commit():
    # Seen in a chaos run: pay.commands[1] committed at 223 with 5 messages after it, none
    # handled, for two minutes after the last rebalance; 5 payments never went on.
    from streams.faust_fixes import StallWatch

    app, tp, seeks = watched(committed=223, end=228)
    found = ticks(StallWatch(stall_s=30), app, [0, 10, 29, 31, 40])
    assert found == [[], [], [], [tp], []] and seeks == [(tp, 223)]


def test_a_partition_that_moves_on_is_left_alone():
    from streams.faust_fixes import StallWatch

    app, tp, seeks = watched(committed=223, end=228)
    watch = StallWatch(stall_s=30)
    ticks(watch, app, [0, 20])
    app.consumer._committed_offset[tp] = 225  # progress: the clock starts again
    assert ticks(watch, app, [40, 49]) == [[], []] and seeks == []


def test_a_partition_read_to_its_end_or_in_a_handler_or_in_a_rebalance_is_not_stalled():
    from streams.faust_fixes import StallWatch

    for app, _tp, seeks in (watched(committed=228, end=228), watched(223, 228, busy=True),
                            watched(223, 228, flowing=False)):
        assert ticks(StallWatch(stall_s=30), app, [0, 31, 62]) == [[], [], []]
        assert seeks == []


# ---------------------------------------------------------------- before the seek


def test_nothing_is_committed_before_the_partition_is_sought_in_this_generation():
    # A restarted worker handled pay.commands[1] from 368 (where its client stood) and
    # committed 385 before it knew the committed offset (301): 302..367 were lost.
    tp, state = bookkeeping(committed=None, acked=[368, 369, 370])
    state.app.consumer_generation_id = 4  # a new generation, no seek in it yet
    assert new_offset(state, tp) is None
    state._paycore_sought[tp] = 4
    assert new_offset(state, tp) == 371  # never committed before: the first run counts


def test_messages_fetched_before_the_seek_are_not_handed_on(monkeypatch):
    from faust.transport.consumer import Consumer

    from faust.types.tuples import TP

    drain_on_flush()
    tp = TP("pay.commands", 1)
    fetched = iter([[335, 336], [301, 302]])

    async def original(self, timeout):
        for offset in next(fetched):
            yield tp, SimpleNamespace(offset=offset, topic=tp.topic)

    async def seek_to_committed(self):  # as Faust's: the committed offsets it found
        self._committed_offset[tp] = 301

    from streams import faust_fixes

    monkeypatch.setattr(faust_fixes, "_original_getmany", original)
    monkeypatch.setattr(faust_fixes, "_original_perform_seek", seek_to_committed)
    consumer = SimpleNamespace(
        _read_offset={tp: None}, _committed_offset={tp: None}, assignment=lambda: {tp},
        app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
                            consumer_generation_id=4))

    async def run() -> list[int]:
        handed = [m.offset async for _tp, m in Consumer.getmany(consumer, 1.0)]
        await Consumer.perform_seek(consumer)  # the end of the rebalance
        handed += [m.offset async for _tp, m in Consumer.getmany(consumer, 1.0)]
        return handed

    assert asyncio.run(run()) == [301, 302]
    assert consumer._paycore_sought == {tp: 4}


def test_partitions_never_sought_after_a_rebalance_are_sought_by_the_watch():
    from streams.faust_fixes import StallWatch

    app, tp, _seeks = watched(committed=223, end=223)
    app.consumer_generation_id = 4  # sought in 3 only
    performed = []

    async def perform_seek():
        performed.append(True)
        app.consumer._paycore_sought[tp] = 4

    app.consumer.perform_seek = perform_seek
    watch = StallWatch(stall_s=30)
    ticks(watch, app, [0, 10, 29])
    assert performed == []
    ticks(watch, app, [31, 40, 80])
    assert performed == [True]


def test_a_partition_with_nothing_committed_is_sought_to_its_start(monkeypatch):
    # The Kafka client's seek_to_committed leaves such a partition where it stood: its
    # messages dropped before the seek would never come again.
    from faust.transport.consumer import Consumer
    from faust.types.tuples import TP

    from streams import faust_fixes

    drain_on_flush()
    commands, changelog = TP("pay.commands", 0), TP("paycore-orders-changelog", 0)
    seeks = []

    async def nothing_committed(self):
        pass

    async def seek(tp, offset):
        seeks.append((tp, offset))

    consumer = SimpleNamespace(
        _committed_offset={}, assignment=lambda: {commands, changelog}, seek=seek,
        app=SimpleNamespace(consumer_generation_id=2, topics=SimpleNamespace(
            acks_enabled_for=lambda topic: topic == "pay.commands")))
    monkeypatch.setattr(faust_fixes, "_original_perform_seek", nothing_committed)
    asyncio.run(Consumer.perform_seek(consumer))
    assert seeks == [(commands, 0)]
    assert consumer._paycore_sought == {commands: 2, changelog: 2}


def test_a_partition_whose_seek_to_its_start_fails_is_left_unsought(monkeypatch):
    # Not marked sought: its messages stay held, and the stall watch seeks it again.
    from faust.transport.consumer import Consumer
    from faust.types.tuples import TP

    from streams import faust_fixes

    drain_on_flush()
    commands, orders = TP("pay.commands", 0), TP("pay.orders", 0)

    async def nothing_committed(self):
        pass

    async def seek(tp, offset):
        if tp == commands:
            raise asyncio.TimeoutError()

    consumer = SimpleNamespace(
        _committed_offset={orders: 7}, _read_offset={orders: 7},
        assignment=lambda: {commands, orders}, seek=seek,
        app=SimpleNamespace(consumer_generation_id=3, topics=SimpleNamespace(
            acks_enabled_for=lambda topic: True)))
    monkeypatch.setattr(faust_fixes, "_original_perform_seek", nothing_committed)
    asyncio.run(Consumer.perform_seek(consumer))
    assert consumer._paycore_sought == {orders: 3}
    assert consumer._read_offset == {orders: 6}  # the last read: 7 is due


def test_a_seek_runs_in_the_kafka_clients_thread_not_the_callers():
    # The client's fetcher walks its records in that thread; a seek from the main one
    # deleted a partition's records under it (KeyError, the worker crashed).
    import threading

    from faust.transport.consumer import ThreadDelegateConsumer
    from faust.types.tuples import TP
    from mode.threads import QueueServiceThread

    drain_on_flush()
    seeks = []

    class ClientThread(QueueServiceThread):
        def seek(self, tp, offset):
            seeks.append((tp, offset, threading.get_ident()))

    async def main():
        thread = ClientThread()
        await thread.start()
        try:
            await ThreadDelegateConsumer._seek(SimpleNamespace(_thread=thread),
                                               TP("pay.commands", 1), 42)
        finally:
            await thread.stop()

    asyncio.run(main())
    assert [(tp.partition, offset) for tp, offset, _ in seeks] == [(1, 42)]
    assert seeks[0][2] != threading.get_ident()


def test_standby_partitions_with_no_known_offset_are_read_from_the_start():
    # A rebalance during recovery adds standbys with offset None; the client refused a seek
    # to None (ValueError) and recovery crashed.
    from collections import Counter

    from faust.tables.recovery import Recovery
    from faust.types.tuples import TP

    drain_on_flush()
    added, known = TP("paycore-orders-changelog", 3), TP("paycore-orders-changelog", 4)
    sought = []

    async def seek_wait(offsets):
        sought.append(dict(offsets))

    offsets = Counter({added: None, known: 17})
    asyncio.run(Recovery._seek_offsets(SimpleNamespace(), SimpleNamespace(seek_wait=seek_wait),
                                       {added, known}, offsets, "standby"))
    assert sought == [{added: 0, known: 17}]
    assert offsets[added] == -1  # what Faust counts from: nothing read yet


def test_after_a_seek_the_message_at_the_offset_sought_is_due_not_read():
    # Faust left the read offset at the offset sought; the jump check then took the next
    # one as due and sought past the committed message (2752), which the ledger, getting it
    # after 2753, took for a redelivery: a leg never applied.
    from faust.transport.consumer import Consumer
    from faust.types.tuples import TP

    drain_on_flush()
    tp = TP("pay.ledger.postings", 2)
    sought = []

    async def client_seek(partition, offset):
        sought.append((partition, offset))

    consumer = SimpleNamespace(_seek=client_seek, _read_offset={tp: 2760})
    asyncio.run(Consumer.seek(consumer, tp, 2752))
    assert sought == [(tp, 2752)] and consumer._read_offset[tp] == 2751
    asyncio.run(Consumer.seek(consumer, tp, 0))
    assert consumer._read_offset[tp] == -1  # 0 is due: a fetch starting later is a jump


def test_a_partition_never_committed_and_fetched_ahead_is_read_from_its_start(monkeypatch):
    # Sought to 0 (nothing committed), the first fetch gave 5: 0..4 are read first.
    handed, seeks = fetching([[5, 6], [0, 1]], read=-1, nothing_committed=True,
                             monkeypatch=monkeypatch)
    assert (handed, seeks) == ([0, 1], [0])


def test_the_seek_to_committed_leaves_the_committed_message_due(monkeypatch):
    from faust.transport.consumer import Consumer
    from faust.types.tuples import TP

    from streams import faust_fixes

    drain_on_flush()
    tp = TP("pay.ledger.postings", 2)

    async def as_faust_does(self):  # Faust's perform_seek: the read offset = the committed
        self._committed_offset[tp] = 2752
        self._read_offset[tp] = 2752

    consumer = SimpleNamespace(
        _committed_offset={}, _read_offset={}, assignment=lambda: {tp},
        app=SimpleNamespace(consumer_generation_id=9, topics=SimpleNamespace(
            acks_enabled_for=lambda topic: True)))
    monkeypatch.setattr(faust_fixes, "_original_perform_seek", as_faust_does)
    asyncio.run(Consumer.perform_seek(consumer))
    assert consumer._read_offset[tp] == 2751


def test_a_fetch_ahead_right_after_the_seek_reads_from_the_committed_offset(monkeypatch):
    # The soak's case once the read offset is right: 2816 fetched first, 2752 due.
    handed, seeks = fetching([[2816, 2817], [2752, 2753]], read=2751, committed=2752,
                             monkeypatch=monkeypatch)
    assert (handed, seeks) == ([2752, 2753], [2752])


def test_a_stale_copy_below_the_committed_offset_is_not_handed_on(monkeypatch):
    handed, seeks = fetching([[2750, 2751, 2752, 2753]], read=2751, committed=2752,
                             monkeypatch=monkeypatch)
    assert (handed, seeks) == ([2752, 2753], [])
