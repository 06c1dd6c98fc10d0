"""On the embedded broker, Faust's consumers ask for short fetch waits (see streams/tansu.py)."""

from __future__ import annotations

import asyncio

from faust.transport.drivers import aiokafka as driver

from streams.tansu import FETCH_MAX_WAIT_MS, patch_faust_fetch_wait


def test_faust_consumers_get_the_short_wait_and_other_settings_pass_through():
    real = driver.aiokafka

    async def waits() -> tuple[int, int]:
        made = [driver.aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1",
                                                 fetch_max_wait_ms=wait, group_id=None)
                for wait in (1_500, 20)]
        return tuple(c._fetch_max_wait_ms for c in made)

    try:
        patch_faust_fetch_wait()
        patch_faust_fetch_wait()  # idempotent: wrapped once

        assert asyncio.run(waits()) == (FETCH_MAX_WAIT_MS, 20)
        assert driver.aiokafka.TopicPartition is real.TopicPartition
    finally:
        driver.aiokafka = real
