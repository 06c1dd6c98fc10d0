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
"""

from __future__ import annotations

import asyncio

from faust.transport.producer import ProducerBuffer

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


def drain_on_flush() -> None:
    """Install the fix (idempotent)."""
    if getattr(ProducerBuffer, _APPLIED, False):
        return
    ProducerBuffer._paycore_put = 0  # per buffer once incremented: messages buffered,
    ProducerBuffer._paycore_sent = 0  # and handed over
    ProducerBuffer.put = _put
    ProducerBuffer._send_pending = _send_pending
    ProducerBuffer.flush = _flush
    setattr(ProducerBuffer, _APPLIED, True)
