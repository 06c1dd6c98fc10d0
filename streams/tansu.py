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


FETCH_MAX_WAIT_MS = 100


def patch_faust_fetch_wait(wait_ms: int = FETCH_MAX_WAIT_MS) -> None:
    """Faust asks every fetch to wait up to 1.5 s for data (hard-coded). Kafka answers a
    fetch as soon as data arrives; this broker holds it for the whole wait, so each hop
    of a payment could cost up to 1.5 s. Ask for short waits instead."""
    from faust.transport.drivers import aiokafka as driver

    real = driver.aiokafka.AIOKafkaConsumer
    if getattr(real, "_paycore_short_wait", False):
        return

    class ShortWaitConsumer(real):
        _paycore_short_wait = True

        def __init__(self, *args, **kwargs):
            if kwargs.get("fetch_max_wait_ms", 0) > wait_ms:
                kwargs["fetch_max_wait_ms"] = wait_ms
            super().__init__(*args, **kwargs)

    driver.aiokafka = _ModuleWith(driver.aiokafka, AIOKafkaConsumer=ShortWaitConsumer)


class _ModuleWith:
    """A module seen through a few replaced attributes (only for Faust's driver)."""

    def __init__(self, module, **replaced) -> None:
        self._module, self._replaced = module, replaced

    def __getattr__(self, name: str):
        if name in self._replaced:
            return self._replaced[name]
        return getattr(self._module, name)
