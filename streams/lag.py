"""Consumer lag per group, topic and partition: the log end offset minus the group's
committed offset, measured from outside the workers (by the auditor process). A worker that
dies or stalls then shows as lag that grows, where a worker measuring itself would simply
stop reporting."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaAdminClient
from kafka import TopicPartition as KafkaTP

from streams import topics as t
from streams.app import group_of, webhooks_app_id
from streams.metrics import CONSUMER_LAG, CONSUMER_LAG_CHECKS
from streams.settings import Settings

log = logging.getLogger(__name__)

LAG_EVERY_S = 5.0
TIMEOUT_S = 10.0

Lag = dict[tuple[str, str, int], int]


def watched_groups(settings: Settings) -> list[str]:
    """The payment workers' group and the webhook deliverer's."""
    return [group_of(settings),
            group_of(settings.model_copy(update={"app_id": webhooks_app_id(settings)}))]


def committed_offsets(admin: KafkaAdminClient, settings: Settings, groups: list[str]
                      ) -> dict[tuple[str, TopicPartition], int]:
    """What each group committed, on paycore's topics. Partitions are named: the embedded
    broker answers an OffsetFetch for "all partitions" with nothing."""
    tps = [KafkaTP(topic, p) for topic in t.ALL for p in range(settings.partitions)]
    found = admin.list_group_offsets({group: tps for group in groups})
    return {(group, TopicPartition(tp.topic, tp.partition)): meta.offset
            for group, offsets in found.items() for tp, meta in offsets.items()
            if meta.offset >= 0}


async def measure(admin: KafkaAdminClient, consumer: AIOKafkaConsumer, settings: Settings,
                  groups: list[str]) -> Lag:
    """(group, topic, partition) -> messages behind, for every partition a group committed."""
    committed = await asyncio.to_thread(committed_offsets, admin, settings, groups)
    tps = sorted({tp for _group, tp in committed})
    if not tps:
        return {}
    if settings.embedded_broker:  # Tansu's ListOffsets under-reports: ask a fetch
        from streams.tansu import true_end_offsets

        ends = await true_end_offsets(consumer, settings.bootstrap_servers(), tps)
    else:
        ends = await consumer.end_offsets(tps)
    return {(group, tp.topic, tp.partition): max(0, ends[tp] - offset)
            for (group, tp), offset in committed.items()}


def export(lag: Lag, exported: set) -> set:
    """Set the gauges; a partition no longer committed by a group loses its series."""
    for labels in exported - set(lag):
        with contextlib.suppress(KeyError):
            CONSUMER_LAG.remove(labels[0], labels[1], str(labels[2]))
    for (group, topic, partition), behind in lag.items():
        CONSUMER_LAG.labels(group, topic, str(partition)).set(behind)
    return set(lag)


async def run_lag_exporter(settings: Settings, stop: asyncio.Event) -> None:
    """Measure every ``LAG_EVERY_S`` until ``stop``; a failed measurement is counted and
    the gauges keep their last values (Prometheus shows their age)."""
    bootstrap = settings.bootstrap_servers()
    admin = await asyncio.to_thread(KafkaAdminClient, bootstrap_servers=bootstrap,
                                    request_timeout_ms=5000, client_id="paycore-lag")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)
    groups, exported = watched_groups(settings), set()
    await consumer.start()
    try:
        while not stop.is_set():
            try:
                lag = await asyncio.wait_for(measure(admin, consumer, settings, groups),
                                             TIMEOUT_S)
                exported = export(lag, exported)
                CONSUMER_LAG_CHECKS.labels(result="ok").inc()
            except Exception as exc:  # the exporter must outlive a broker hiccup
                CONSUMER_LAG_CHECKS.labels(result="failed").inc()
                log.warning("consumer lag not measured: %r", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), LAG_EVERY_S)
    finally:
        await consumer.stop()
        await asyncio.to_thread(admin.close)
