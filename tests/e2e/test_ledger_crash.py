"""Thousands of postings straight into the ledger, a SIGKILL in the middle, a restart,
then every posting fed again: each applied exactly once, balances equal a rebuild from
the journal and the test's own arithmetic, and the auditor process saw no violation.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

import pytest

from kafka import KafkaProducer

from domain import accounts
from domain.events import JournalEntryDecided, Leg
from paycore.observe import Observer, audit_totals
from paycore.stack import Stack, wait_until_ready
from streams import topics as t
from streams.accounts_config import load_accounts
from streams.envelope import child, encode

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
    own_stack.restart("worker-0")
    done = observer.wait_until(lambda: len(observer.legs) >= legs_total, 240)
    _publish(producer, entries[: len(entries) // 2], place)  # the same postings again
    time.sleep(5)
    observer.poll(timeout_ms=1_000)
    producer.close()

    info = f"seed={seed} postings={postings} legs applied at kill={at_kill}/{legs_total}"
    print(info)
    assert 0 < at_kill < legs_total, f"{info}: the kill did not land mid-stream"
    assert done and len(observer.legs) == legs_total, (info, len(observer.legs))
    assert observer.balances() == _expected(entries, place), info
    assert observer.reported_equals_rebuilt(), info
    assert sum(observer.balances().values()) == 0, info
    audit = audit_totals(settings.auditor_metrics_port)
    assert audit["violations"] == 0, (info, audit)
    assert audit["checks"] >= legs_total, (info, audit)
    observer.close()


def _expected(entries, place) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for entry in entries:
        for leg in entry.legs:
            totals[place(leg.account_id, entry.payment_id)] += leg.amount_minor
    return dict(totals)
