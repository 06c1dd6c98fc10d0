"""A read model of payments fed by ``pay.events``: every API replica keeps its own copy.

It also follows ``pay.ledger.entries`` (balances, journals) and the reconciliation topics
(``pay.recon.status``, ``pay.recon.exceptions``) for the recon report."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from datetime import date

from aiokafka import AIOKafkaConsumer, TopicPartition

from collections import deque

from domain.accounts import logical_account
from domain.events import (
    CommandRejected,
    HoldChanged,
    LegApplied,
    MandateStatusChanged,
    PaymentStatusChanged,
)
from domain.recon import ReconException, ReconStatus
from paycore import recon_report
from streams import topics as t
from streams.envelope import UndecodableEnvelope, decode
from streams.tansu import true_end_offsets

log = logging.getLogger(__name__)
JOURNAL_KEPT = 1_000
RECON_EXCEPTIONS_KEPT = 10_000
FOLLOWED = (t.EVENTS, t.LEDGER_ENTRIES, t.RECON_STATUS, t.RECON_EXCEPTIONS)


class ReconView:
    """Each recon partition's latest status and the most recent exceptions (bounded),
    deduplicated by ``exception_id``: the inputs of ``paycore.recon_report.build``."""

    def __init__(self, exceptions_max: int = RECON_EXCEPTIONS_KEPT) -> None:
        assert exceptions_max > 0
        self.statuses: dict[int, ReconStatus] = {}
        self.exceptions: OrderedDict[str, ReconException] = OrderedDict()
        """exception id -> the exception, oldest received first."""
        self.exceptions_max = exceptions_max

    def apply(self, body: ReconStatus | ReconException) -> None:
        if isinstance(body, ReconStatus):
            kept = self.statuses.get(body.partition)
            if kept is None or body.at_ms >= kept.at_ms:
                self.statuses[body.partition] = body
        elif body.exception_id not in self.exceptions:
            self.exceptions[body.exception_id] = body
            while len(self.exceptions) > self.exceptions_max:
                self.exceptions.popitem(last=False)

    def report(self, today: date) -> dict:
        return recon_report.build(list(self.statuses.values()),
                                  list(self.exceptions.values()), today)


class PaymentsView:
    """Latest status and history per payment, and waiters for status changes."""

    def __init__(self) -> None:
        self.payments: dict[str, dict] = {}
        self.by_order_no: dict[tuple[str, str], str] = {}
        self.rejections: dict[str, list[dict]] = {}
        self.mandates: dict[str, dict] = {}
        self.rows: dict[str, LegApplied | HoldChanged] = {}
        """Per ledger row (account or sub-account): its latest change, by version."""
        self.sub_accounts: dict[str, set[str]] = {}
        self.journal: dict[str, deque] = {}
        """Per account: its most recent legs, newest last (bounded)."""
        self.changed = asyncio.Condition()
        self.caught_up = asyncio.Event()
        self.recon = ReconView()
        self._seen_ids: set[str] = set()

    def apply(self, body) -> None:
        if isinstance(body, PaymentStatusChanged):
            row = self.payments.setdefault(body.payment_id, {"history": []})
            row.update(body.model_dump(exclude={"previous_status", "reason", "trigger", "at_ms"}))
            row["history"].append({"status": body.status, "reason": body.reason,
                                   "trigger": body.trigger, "at_ms": body.at_ms})
            self.by_order_no[(body.merchant_id, body.merchant_order_no)] = body.payment_id
        elif isinstance(body, (LegApplied, HoldChanged)):
            self._ledger(body)
        elif isinstance(body, MandateStatusChanged):
            row = self.mandates.setdefault(body.mandate_key, {"history": []})
            row.update(body.model_dump(exclude={"previous_status", "at_ms"}))
            row["history"].append({"status": body.status, "at_ms": body.at_ms})
        elif isinstance(body, CommandRejected):
            self.rejections.setdefault(body.payment_id, []).append(body.model_dump())

    def _ledger(self, body: LegApplied | HoldChanged) -> None:
        latest = self.rows.get(body.account_id)
        if latest is None or body.version > latest.version:
            self.rows[body.account_id] = body
        account = logical_account(body.account_id)
        self.sub_accounts.setdefault(account, set()).add(body.account_id)
        if isinstance(body, LegApplied):
            self.journal.setdefault(account, deque(maxlen=JOURNAL_KEPT)).append(body)

    def balance(self, account_id: str) -> dict | None:
        """One exact figure for an account, adding up a hot account's sub-accounts."""
        rows = [self.rows[r] for r in sorted(self.sub_accounts.get(account_id, ()))]
        if not rows:
            return None
        return {"account_id": account_id, "currency": rows[0].currency,
                "total_minor": sum(r.total_minor for r in rows),
                "available_minor": sum(r.available_minor for r in rows),
                "frozen_minor": sum(r.frozen_minor for r in rows),
                "sub_accounts": len(rows)}

    async def follow(self, bootstrap: str, partitions: int, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for topic in FOLLOWED for p in range(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await true_end_offsets(consumer, bootstrap, tps)
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=1000)
                for records in batch.values():
                    for record in records:
                        self._apply_raw(record.value)
                if not self.caught_up.is_set():
                    positions = [await consumer.position(tp) for tp in tps]
                    if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                        self.caught_up.set()
                if batch:
                    async with self.changed:
                        self.changed.notify_all()
        finally:
            await consumer.stop()

    def _apply_raw(self, raw: bytes) -> None:
        try:
            env = decode(raw)
        except UndecodableEnvelope as exc:
            log.warning("read model skipped an undecodable event: %s", exc)
            return
        if isinstance(env.body, (ReconStatus, ReconException)):
            self.recon.apply(env.body)  # idempotent as it is: no message id kept
            return
        if env.message_id in self._seen_ids:
            return  # a redelivered copy: same deterministic id
        self._seen_ids.add(env.message_id)
        self.apply(env.body)
