"""Workarounds for the embedded broker (Tansu 0.6), each for one measured defect.

ListOffsets(latest) answers the last batch's *base* offset + 1 instead of the log end
(two batches of 5 records at offsets 0..9: ListOffsets says 6, Fetch's high watermark says
10). Faust uses ListOffsets to know how far to read a changelog when it recovers a table,
so it would stop early and lose the last records of a multi-record batch. The Fetch
response's high watermark is right, so we ask a fetch instead.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer

log = logging.getLogger(__name__)

PROBE_ATTEMPTS = 20


async def true_end_offsets(consumer: AIOKafkaConsumer, bootstrap: str, partitions) -> dict:
    """End offsets as Fetch reports them: max(ListOffsets, Fetch high watermark)."""
    listed = await consumer.end_offsets(partitions)
    if not partitions:
        return listed
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, fetch_max_wait_ms=50)
    await probe.start()
    try:
        probe.assign(list(partitions))
        for tp in partitions:
            probe.seek(tp, listed[tp])
        for _attempt in range(PROBE_ATTEMPTS):
            await probe.getmany(timeout_ms=500)
            if all(probe.highwater(tp) is not None for tp in partitions):
                break
        else:  # never fall back to the figure we know can be wrong
            missing = [tp for tp in partitions if probe.highwater(tp) is None]
            raise RuntimeError(f"no fetch high watermark for {missing}")
        fixed = {}
        for tp in partitions:
            fetched = probe.highwater(tp)
            fixed[tp] = max(listed[tp], fetched)
            if fixed[tp] != listed[tp]:
                log.info("end offset of %s: ListOffsets %s, Fetch %s", tp, listed[tp], fetched)
        return fixed
    finally:
        await probe.stop()


def patch_faust_highwaters(bootstrap: str) -> None:
    """Make Faust's recovery read changelogs to the true end on this broker."""
    from faust.transport.drivers import aiokafka as driver

    async def _highwaters(self, partitions):
        consumer = self._ensure_consumer()
        if self.consumer.in_transaction:
            return {tp: consumer.last_stable_offset(tp) for tp in partitions}
        return await true_end_offsets(consumer, bootstrap, list(partitions))

    driver.AIOKafkaConsumerThread._highwaters = _highwaters
