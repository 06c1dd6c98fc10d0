"""The one Faust App factory. Workers, the API and tests all build their App here."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import faust

from streams import topics as t
from streams.envelope import Envelope, dead_letter, dead_letter_key, encode
from streams.faust_fixes import drain_on_flush, watch_for_stalls
from streams.metrics import ASSIGNED_PARTITIONS, DEADLETTERS, REBALANCE_SECONDS, REBALANCES
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
        """Send pre-encoded messages (``agents._outbox.Outgoing``), in order."""
        for item in outgoing:
            await self.topics[item.topic].send(key=item.key_bytes(), value=item.value.encode())

    async def dead_letter(self, stage: str, reason: str, event) -> None:
        """Park an unprocessable message with its reason; never raises past the agent."""
        msg = event.message
        record = dead_letter(stage, reason, msg.topic, msg.partition, msg.offset, msg.key,
                             msg.value, now_ms())
        DEADLETTERS.labels(stage=stage, reason=reason.split(":", 1)[0][:40]).inc()
        log.warning("dead-letter from %s: %s", stage, reason)
        await self.topics[t.DEADLETTER].send(key=dead_letter_key(msg.key), value=record)


class RebalanceSensor(faust.Sensor):
    """Rebalances this process went through, how long each took (table recovery
    included), and how many partitions it holds afterwards."""

    def __init__(self, app_id: str) -> None:
        super().__init__()
        self.app_id = app_id
        REBALANCES.labels(app=app_id)  # zero before the first: increase() sees that one

    def on_rebalance_start(self, app) -> dict:
        REBALANCES.labels(app=self.app_id).inc()
        return {"time_start": time.monotonic()}

    def on_rebalance_end(self, app, state: dict) -> None:
        REBALANCE_SECONDS.labels(app=self.app_id).observe(
            time.monotonic() - state["time_start"])
        ASSIGNED_PARTITIONS.labels(app=self.app_id).set(len(app.consumer.assignment()))


def group_of(settings: Settings) -> str:
    """The app's consumer group: Faust names it after the app id and its version."""
    return settings.app_id if settings.app_version == 1 else \
        f"{settings.app_id}-v{settings.app_version}"


def webhooks_app_id(settings: Settings) -> str:
    """The webhook deliverer's app id (its consumer group, tables and changelogs)."""
    return f"{settings.app_id}-webhooks"


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
    drain_on_flush()
    if settings.embedded_broker:
        from streams.tansu import patch_faust_fetch_wait, patch_faust_highwaters

        patch_faust_highwaters(settings.bootstrap_servers())
        patch_faust_fetch_wait()
    app = faust.App(settings.app_id, **conf)
    app.sensors.add(RebalanceSensor(settings.app_id))
    watch_for_stalls(app)
    wire = Wire(app=app, settings=settings)
    for name in t.ALL:
        wire.topics[name] = wire.topic(name)
    return wire
