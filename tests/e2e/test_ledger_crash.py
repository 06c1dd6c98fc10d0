"""Thousands of postings straight into the ledger, a SIGKILL in the middle, a restart,
then every posting fed again: each applied exactly once, balances equal a rebuild from
the journal and the test's own arithmetic, and the auditor process saw no violation.

While the worker is down, each of its ledger tables' RocksDB partitions must hold exactly
its changelog read up to the offset it records (``streams/table_store.py``: rows reach
RocksDB only with their acked changelog records), and the restarted worker keeps that
state instead of rebuilding it (``streams/local_state.py``).
"""

from __future__ import annotations

import random
import signal
import time
from collections import defaultdict

import pytest

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from rocksdict import AccessType, Options, Rdict

from domain import accounts
from domain.events import JournalEntryDecided, Leg
from paycore.observe import Observer, audit_totals
from paycore.stack import Stack, wait_until_ready
from streams import local_state, membership
from streams import topics as t
from streams.accounts_config import load_accounts
from streams.app import group_of
from streams.envelope import child, encode
from streams.table_store import AckedStore

pytestmark = pytest.mark.e2e

WALLETS = 40
TRANSFERS = 3_000
FUNDING_MINOR = 100_000


@pytest.fixture
def own_stack(own_settings):
    with Stack(own_settings, with_api=False, with_simulator=False) as stack:
        wait_until_ready(stack.settings, with_simulator=False)
        yield stack


def _entries(rng: random.Random) -> list[JournalEntryDecided]:
    """Fund each wallet from a clearing account, then random transfers with a fee leg.
    Amounts stay far below the funding, so no debit can be refused."""
    ccy, clearing, fees = "USD", accounts.channel_clearing("bank", "USD"), accounts.fee_revenue(
        "USD")
    wallets = [accounts.customer_wallet(f"crash-w{i}", ccy) for i in range(WALLETS)]
    out = [JournalEntryDecided(
        entry_id=f"je_fund_{i}", payment_id=f"pay_fund_{i}", reason="funding", decided_at_ms=0,
        legs=(Leg(account_id=clearing, currency=ccy, amount_minor=-FUNDING_MINOR),
              Leg(account_id=w, currency=ccy, amount_minor=FUNDING_MINOR)))
        for i, w in enumerate(wallets)]
    for n in range(TRANSFERS):
        source, target = rng.sample(wallets, 2)
        amount, fee = rng.randrange(2, 50), rng.randrange(0, 2)
        legs = [Leg(account_id=source, currency=ccy, amount_minor=-amount),
                Leg(account_id=target, currency=ccy, amount_minor=amount - fee)]
        if fee:
            legs.append(Leg(account_id=fees, currency=ccy, amount_minor=fee))
        out.append(JournalEntryDecided(entry_id=f"je_t_{n}", payment_id=f"pay_t_{n}",
                                       reason="transfer", decided_at_ms=0, legs=tuple(legs)))
    return out


def _publish(producer: KafkaProducer, entries, place) -> int:
    """As the order stage does: one copy per row an entry touches, keyed by that row."""
    sent = 0
    for entry in entries:
        value = encode(child(f"cause-{entry.entry_id}", entry, 0, 0))
        for row in dict.fromkeys(place(leg.account_id, entry.payment_id) for leg in entry.legs):
            producer.send(t.LEDGER_POSTINGS, key=row.encode(), value=value)
            sent += 1
    producer.flush()
    return sent


def test_ledger_sigkilled_mid_stream_applies_each_posting_once(own_stack):
    seed = random.randrange(1 << 30)
    settings = own_stack.settings
    datadir = settings.data_dir / "worker-0"
    place = load_accounts(settings.config_dir).place
    entries = _entries(random.Random(seed))
    observer = Observer(settings.kafka_bootstrap, settings.partitions, merchant="nobody")
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                             linger_ms=5)
    postings = sum(len({place(leg.account_id, e.payment_id) for leg in e.legs})
                   for e in entries)
    legs_total = sum(len(e.legs) for e in entries)

    _publish(producer, entries, place)
    observer.wait_until(lambda: len(observer.legs) >= legs_total // 3, 120)
    own_stack.kill("worker-0")
    at_kill = len(observer.legs)
    prefixes = {name: _rocksdb_is_changelog_prefix(settings, name)
                for name in ("accounts", "applied_ids")}
    own_stack.restart("worker-0")
    done = observer.wait_until(lambda: len(observer.legs) >= legs_total, 240)
    _publish(producer, entries[: len(entries) // 2], place)  # the same postings again
    time.sleep(5)
    observer.poll(timeout_ms=1_000)
    producer.close()

    info = f"seed={seed} postings={postings} legs applied at kill={at_kill}/{legs_total}"
    print(info)
    assert 0 < at_kill < legs_total, f"{info}: the kill did not land mid-stream"
    assert all(rows > 0 for rows in prefixes.values()), (info, prefixes)
    log = own_stack.part("worker-0").log_path.read_text(errors="replace")
    assert "its local state is kept" in log, "the killed worker's state was not kept"
    assert "did not leave group" in log, "the killed run's membership was not ended"
    assert done and len(observer.legs) == legs_total, (info, len(observer.legs))
    assert observer.balances() == _expected(entries, place), info
    assert observer.reported_equals_rebuilt(), info
    assert sum(observer.balances().values()) == 0, info
    audit = audit_totals(settings.auditor_metrics_port)
    assert audit["violations"] == 0, (info, audit)
    assert audit["checks"] >= legs_total, (info, audit)
    observer.close()

    # A clean stop (SIGTERM) leaves neither the crash marker nor a membership to end
    assert membership.read(datadir) is not None, "the restarted worker recorded no member id"
    own_stack.kill("worker-0", signal.SIGTERM)
    assert own_stack.part("worker-0").process.returncode == 0
    assert not (datadir / local_state.MARKER).exists(), "a clean stop kept the crash marker"
    assert membership.read(datadir) is None, "a clean stop kept its member id to end"


def _expected(entries, place) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for entry in entries:
        for leg in entry.legs:
            totals[place(leg.account_id, entry.payment_id)] += leg.amount_minor
    return dict(totals)


def _rocksdb_is_changelog_prefix(settings, table: str) -> int:
    """Compare every RocksDB partition of ``table`` left by the killed worker with its
    changelog folded up to the offset that partition records; the rows compared."""
    found = sorted((settings.data_dir / "worker-0").glob(f"**/{table}-*.db"))
    assert found, f"no RocksDB of {table} under the worker's data directory"
    topic = f"{group_of(settings)}-{table}-changelog"
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                             enable_auto_commit=False, consumer_timeout_ms=2_000)
    compared = 0
    try:
        for path in found:
            partition = int(path.name.removesuffix(".db").rsplit("-", 1)[1])
            db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
            try:
                local = dict(db.items())
            finally:
                db.close()
            recorded = int(local.pop(AckedStore.offset_key, b"-1"))
            folded: dict[bytes, bytes] = {}
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            last = -1
            deadline = time.monotonic() + 30
            while last < recorded and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    for record in records:
                        if record.offset <= recorded:
                            if record.value is None:
                                folded.pop(record.key, None)
                            else:
                                folded[record.key] = record.value
                        last = max(last, record.offset)
            assert last >= recorded, f"{topic}[{partition}]: read to {last} of {recorded}"
            differ = sum(1 for k in local if k in folded and local[k] != folded[k])
            assert local == folded, (f"{topic}[{partition}] up to {recorded}: RocksDB only "
                                     f"{sorted(set(local) - set(folded))[:5]}, changelog "
                                     f"only {sorted(set(folded) - set(local))[:5]}, "
                                     f"{differ} differ")
            compared += len(local)
    finally:
        consumer.close()
    return compared
