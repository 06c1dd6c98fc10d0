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
        _gap=defaultdict(IntervalTree, {tp: tree}))


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
