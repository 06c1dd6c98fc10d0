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
