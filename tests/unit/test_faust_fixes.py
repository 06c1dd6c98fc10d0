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
