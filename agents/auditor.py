"""The auditor stage: one process that reads every partition of ``pay.ledger.entries``
and runs ``domain.audit.Auditor`` over it, continuously.

It is deliberately not a Faust agent: zero-sum is a property of the whole ledger, so one
reader sees all partitions (no consumer group; it starts from the beginning and rebuilds
its model). Each check is a Prometheus counter; each violation also goes to
``pay.deadletter`` with stage ``auditor``, the check, the account and the event's bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from domain.audit import AuditCheck, Auditor, AuditStatus, Violation
from domain.events import HoldChanged, LegApplied
from streams import topics as t
from streams.accounts_config import load_accounts
from streams.envelope import (
    UndecodableEnvelope,
    child,
    dead_letter,
    dead_letter_key,
    decode,
    encode,
)
from streams.metrics import (
    AUDIT_CHECKS,
    AUDIT_EVENTS,
    AUDIT_IN_FLIGHT,
    AUDIT_OPEN_ENTRIES,
    AUDIT_VIOLATIONS,
)
from streams.settings import Settings

log = logging.getLogger(__name__)
STATUS_EVERY_S = 10.0
HEARTBEAT_S = 30.0
"""The status is published when it changes, and at least this often (a quiet auditor and a
dead one must look different: ``age_ms`` in the API's ledger audit status)."""


async def run_auditor(settings: Settings, stop: asyncio.Event) -> Auditor:
    auditor = Auditor(load_accounts(settings.config_dir).limit_of)
    for check in AuditCheck:  # zeros, not gaps: "no violation" is a value an alert can see
        AUDIT_VIOLATIONS.labels(check=check.value)
    bootstrap = settings.bootstrap_servers()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=-1)
    await consumer.start()
    await producer.start()
    try:
        tps = [TopicPartition(t.LEDGER_ENTRIES, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        reported, published = 0.0, None
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            for records in batch.values():
                for record in records:
                    await _audit(auditor, record, producer)
            _export(auditor)
            if time.monotonic() - reported > STATUS_EVERY_S:
                reported = time.monotonic()
                published = await _publish(auditor, producer, published)
                log.info("audit: %s", status(auditor))
    finally:
        await consumer.stop()
        await producer.stop()
    return auditor


async def _publish(auditor: Auditor, producer, published: AuditStatus | None
                   ) -> AuditStatus | None:
    """The status on pay.audit.status when it changed (the API's ledger audit status)."""
    at = int(time.time() * 1000)
    current = auditor.status(at)
    if published is not None and at - published.at_ms < HEARTBEAT_S * 1000 and \
            current.model_copy(update={"at_ms": published.at_ms}) == published:
        return published
    try:
        await producer.send_and_wait(t.AUDIT_STATUS, key=b"auditor", value=encode(
            child(f"audit-status-{at}", current, 0, at)))
    except Exception as exc:  # the next tick publishes again
        log.warning("audit status not published: %r", exc)
        return published
    return current


async def _audit(auditor: Auditor, record, producer) -> None:
    try:
        env = decode(record.value)
    except UndecodableEnvelope as exc:
        log.warning("auditor skipped an undecodable ledger event: %s", exc)
        return
    if not isinstance(env.body, (LegApplied, HoldChanged)):
        log.warning("auditor skipped a %s on %s", type(env.body).__name__, record.topic)
        return
    AUDIT_EVENTS.labels(kind=type(env.body).__name__).inc()
    for violation in auditor.observe(env.body):
        await _report(violation, record, producer)


async def _report(violation: Violation, record, producer) -> None:
    log.error("audit violation %s on %s: %s", violation.check.value, violation.account_id,
              violation.detail)
    reason = f"audit_{violation.check.value}: {violation.account_id}: {violation.detail}"
    value = dead_letter("auditor", reason, record.topic, record.partition, record.offset,
                        record.key, record.value, int(time.time() * 1000))
    await producer.send_and_wait(t.DEADLETTER, key=dead_letter_key(record.key),
                                 value=value)


_exported: dict = {"checked": {}, "violations": {}}


def _export(auditor: Auditor) -> None:
    """Counters move by what changed since the last export; gauges are set."""
    for name, source, metric in (("checked", auditor.checked, AUDIT_CHECKS),
                                 ("violations", auditor.violations, AUDIT_VIOLATIONS)):
        done = _exported[name]
        for check, count in source.items():
            if count > done.get(check, 0):
                metric.labels(check=check.value).inc(count - done.get(check, 0))
                done[check] = count
    for currency, amount in auditor.in_flight_per_currency.items():
        AUDIT_IN_FLIGHT.labels(currency=currency).set(amount)
    AUDIT_OPEN_ENTRIES.set(auditor.open_entries())


def status(auditor: Auditor) -> str:
    return auditor.status(0).model_dump_json(exclude={"at_ms"})
