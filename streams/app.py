"""The one Faust App factory. Workers, the API and tests all build their App here."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import faust

from streams import topics as t
from streams.envelope import Envelope, dead_letter, encode
from streams.metrics import DEADLETTERS
from streams.settings import Settings

log = logging.getLogger(__name__)

RAW = {"key_serializer": "raw", "value_serializer": "raw"}


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Wire:
    """The App plus its topics: what a stage needs to read and write."""

    app: faust.App
    settings: Settings
    topics: dict[str, faust.TopicT] = field(default_factory=dict)

    def topic(self, *names: str) -> faust.TopicT:
        """A topic handle; several names make one stream (same keys, same partitions)."""
        return self.app.topic(*names, partitions=self.settings.partitions, **RAW)

    async def send(self, topic: str, key: str, env: Envelope) -> None:
        await self.topics[topic].send(key=key.encode(), value=encode(env))

    async def send_all(self, outgoing) -> None:
        """Send pre-encoded messages (``topic``, ``key``, ``value`` str), in order."""
        for item in outgoing:
            await self.topics[item.topic].send(key=item.key.encode(), value=item.value.encode())

    async def dead_letter(self, stage: str, reason: str, event) -> None:
        """Park an unprocessable message with its reason; never raises past the agent."""
        msg = event.message
        record = dead_letter(stage, reason, msg.topic, msg.partition, msg.offset, msg.key,
                             msg.value, now_ms())
        DEADLETTERS.labels(stage=stage, reason=reason.split(":", 1)[0][:40]).inc()
        log.warning("dead-letter from %s: %s", stage, reason)
        await self.topics[t.DEADLETTER].send(key=msg.key, value=record)


def create_app(settings: Settings, **overrides) -> Wire:
    """Build the Faust App and declare every topic. Stages attach themselves afterwards."""
    brokers = [f"kafka://{h}" for h in settings.bootstrap_servers().split(",")]
    conf = dict(
        version=settings.app_version,
        broker=brokers,
        store=settings.table_store,
        datadir=str(settings.data_dir / "worker"),
        topic_partitions=settings.partitions,
        topic_allow_declare=True,
        autodiscover=False,
        web_enabled=False,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=1,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        **RAW,
    )
    conf.update(overrides)
    if settings.embedded_broker:
        from streams.tansu import patch_faust_fetch_wait, patch_faust_highwaters

        patch_faust_highwaters(settings.bootstrap_servers())
        patch_faust_fetch_wait()
    app = faust.App(settings.app_id, **conf)
    wire = Wire(app=app, settings=settings)
    for name in t.ALL:
        wire.topics[name] = wire.topic(name)
    return wire
