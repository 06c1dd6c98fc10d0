"""Fixes to Faust that money depends on, applied once by ``create_app``.

Faust commits a source offset only after ``producer.flush()``, so that every table change
the event made is in its changelog first. But Faust's ``ProducerBuffer.flush`` (where table
writes wait to be handed to the Kafka client) gives up as soon as one message takes more
than 0.1 s to hand over, which is what a busy broker does, and the commit goes on with
changelog records still in the buffer. A worker killed then comes back with the offset
committed and the row change lost: its replacement, rebuilding the table from the
changelog, never sees it. The soak run measured it as ledger postings lost and doubled.

Here the flush waits until the buffer is empty *and* the message taken last has been
handed over (the original checks only the queue, which is empty while that one is still
on its way).
"""

from __future__ import annotations

import asyncio

from faust.transport.producer import ProducerBuffer

_APPLIED = "_paycore_flush_drains"


async def _send_pending(self: ProducerBuffer, fut) -> None:
    self._paycore_in_hand = getattr(self, "_paycore_in_hand", 0) + 1
    try:
        await fut.message.channel.publish_message(fut, wait=False)
    finally:
        self._paycore_in_hand -= 1
        self.message_sent.set()


async def _flush(self: ProducerBuffer) -> None:
    """Return only when every buffered message is with the Kafka client."""
    while self.size or getattr(self, "_paycore_in_hand", 0):
        if self.state != "running":
            if self.size:
                raise RuntimeError("Cannot flush: Producer not Running")
            return  # stopping: the one in hand finishes or the process ends
        self.message_sent.clear()
        try:
            await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)
        except asyncio.TimeoutError:
            continue  # slow broker: keep waiting, never commit past unsent changes


def drain_on_flush() -> None:
    """Install the fix (idempotent)."""
    if getattr(ProducerBuffer, _APPLIED, False):
        return
    ProducerBuffer._send_pending = _send_pending
    ProducerBuffer.flush = _flush
    setattr(ProducerBuffer, _APPLIED, True)
