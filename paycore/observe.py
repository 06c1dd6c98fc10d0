"""Follow paycore's output topics from outside: what a test, the demo or an auditor sees."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Callable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from domain.events import CommandRejected, LegApplied, MandateStatusChanged, PaymentStatusChanged
from streams import topics as t
from streams.envelope import decode


class Observer:
    """Reads pay.events, pay.ledger.entries and pay.deadletter from the beginning.

    With ``merchant`` set, payment events of other merchants are skipped; ledger legs are
    always all kept, because zero-sum is a property of the whole ledger.
    """

    def __init__(self, bootstrap: str, partitions: int, merchant: str | None = None):
        self.merchant = merchant
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      auto_offset_reset="earliest", group_id=None)
        topics = (t.EVENTS, t.LEDGER_ENTRIES, t.DEADLETTER)
        tps = [TopicPartition(name, p) for name in topics for p in range(partitions)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.status: dict[str, PaymentStatusChanged] = {}
        self.history: dict[str, list[PaymentStatusChanged]] = defaultdict(list)
        self.rejections: list[CommandRejected] = []
        self.legs: dict[str, LegApplied] = {}
        self.mandates: dict[str, MandateStatusChanged] = {}
        self.deadletters: list[dict] = []
        self.seen_ids: set[str] = set()
        self.copies_dropped = 0
        """Redelivered copies recognised by message id, as every consumer should."""

    def poll(self, timeout_ms: int = 200) -> int:
        count = 0
        for tp, records in self.consumer.poll(timeout_ms=timeout_ms, max_records=5000).items():
            for record in records:
                count += 1
                if tp.topic == t.DEADLETTER:
                    self.deadletters.append(json.loads(record.value))
                else:
                    env = decode(record.value)
                    if env.message_id in self.seen_ids:
                        self.copies_dropped += 1
                        continue
                    self.seen_ids.add(env.message_id)
                    self._apply(env.body)
        return count

    def _apply(self, body) -> None:
        if self.merchant and getattr(body, "merchant_id", self.merchant) != self.merchant:
            return
        if isinstance(body, PaymentStatusChanged):
            self.history[body.payment_id].append(body)
            self.status[body.payment_id] = body
        elif isinstance(body, CommandRejected):
            self.rejections.append(body)
        elif isinstance(body, MandateStatusChanged):
            self.mandates[body.mandate_key] = body
        elif isinstance(body, LegApplied):
            self.legs[body.posting_id] = body

    def wait_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            if done():
                return True
        return done()

    def balances(self) -> dict[str, int]:
        """Each account's balance rebuilt from the journal (sum of its applied legs)."""
        totals: dict[str, int] = defaultdict(int)
        for leg in self.legs.values():
            totals[leg.account_id] += leg.amount_minor
        return dict(totals)

    def unbalanced_entries(self) -> list[dict]:
        """Journal entries whose legs seen so far do not sum to zero (one not applied yet,
        or lost): each with its payment, the sum and every leg's account and amount."""
        entries: dict[str, list[LegApplied]] = defaultdict(list)
        for leg in self.legs.values():
            entries[leg.entry_id].append(leg)
        return [{"entry_id": entry_id, "payment_id": legs[0].payment_id,
                 "sum_minor": sum(leg.amount_minor for leg in legs),
                 "legs": sorted((leg.account_id, leg.amount_minor) for leg in legs)}
                for entry_id, legs in sorted(entries.items())
                if sum(leg.amount_minor for leg in legs) != 0]

    def latest_legs(self) -> dict[str, LegApplied]:
        """Per account, the leg with the highest sequence: its balance after the last leg."""
        latest: dict[str, LegApplied] = {}
        for leg in self.legs.values():
            if leg.account_id not in latest or leg.sequence > latest[leg.account_id].sequence:
                latest[leg.account_id] = leg
        return latest

    def reported_equals_rebuilt(self) -> bool:
        """Each account's reported balance after its latest leg equals the sum of its legs,
        and its sequence equals the number of legs seen: none lost, none applied twice."""
        rebuilt = self.balances()
        counts: dict[str, int] = defaultdict(int)
        for leg in self.legs.values():
            counts[leg.account_id] += 1
        return all(rebuilt[a] == leg.total_minor and counts[a] == leg.sequence
                   for a, leg in self.latest_legs().items())

    def close(self) -> None:
        self.consumer.close()


def command_producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)


def send_command(producer: KafkaProducer, command: dict) -> None:
    subject = command.get("merchant_order_no") or command.get("mandate_id", "")
    key = f"{command['merchant_id']}:{subject}".encode()
    producer.send(t.COMMANDS, key=key, value=json.dumps(command).encode())


def audit_totals(port: int) -> dict[str, float]:
    """The auditor's checks and violations so far, summed over checks, from its /metrics."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = {"violations": 0.0, "checks": 0.0}
    for line in text.splitlines():
        if line.startswith("paycore_audit_violations_total{"):
            found["violations"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("paycore_audit_checks_total{"):
            found["checks"] += float(line.rsplit(" ", 1)[1])
    return found
