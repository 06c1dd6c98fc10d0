"""Follow whole topics from the beginning, every partition, outside any consumer group:
what a read model does (the API's, the webhook stage's endpoint book)."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.tansu import true_end_offsets


async def follow(bootstrap: str, topics: tuple[str, ...], partitions: int,
                 apply: Callable[[bytes], None], caught_up: asyncio.Event,
                 stop: asyncio.Event, on_batch: Callable[[], object] | None = None,
                 on_idle: Callable[[int], None] | None = None) -> None:
    """Apply every record's value in order; set ``caught_up`` once the ends seen at start are
    reached; after each non-empty batch await ``on_batch`` (waiters to wake). After a poll
    that found nothing, ``on_idle(ms)`` with the wall-clock ms the poll started: every record
    produced before then has been applied."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for topic in topics for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await true_end_offsets(consumer, bootstrap, tps)
        while not stop.is_set():
            polled_ms = int(time.time() * 1000)
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            for records in batch.values():
                for record in records:
                    apply(record.value)
            if not batch and on_idle is not None and caught_up.is_set():
                on_idle(polled_ms)
            if not caught_up.is_set():
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                    caught_up.set()
            if batch and on_batch is not None:
                await on_batch()
    finally:
        await consumer.stop()


async def follow_records(bootstrap: str, topics: tuple[str, ...], partitions: int,
                         apply: Callable[[str, bytes | None, bytes, int], None],
                         caught_up: asyncio.Event, stop: asyncio.Event,
                         on_batch: Callable[[], object] | None = None) -> None:
    """``follow`` for a reader that needs to know where each record came from: ``apply``
    gets the topic, the key, the value and the record's timestamp (ms)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for topic in topics for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await true_end_offsets(consumer, bootstrap, tps)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            for tp, records in batch.items():
                for record in records:
                    apply(tp.topic, record.key, record.value, record.timestamp)
            if not caught_up.is_set():
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                    caught_up.set()
            if batch and on_batch is not None:
                await on_batch()
    finally:
        await consumer.stop()
