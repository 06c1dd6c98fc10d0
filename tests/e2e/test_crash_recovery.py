"""SIGKILL the worker in the middle of a stream of payments, restart it, and check that
every payment reaches exactly one final outcome and the ledger is exactly right.

Faust commits offsets after processing; a killed worker re-reads everything after its last
commit, and its tables come back from RocksDB plus changelogs. Effectively-once rests on
every stage being idempotent; this test is what shows it.
"""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest
from helpers import pay

from domain import accounts
from domain.money import fee_minor
from paycore.observe import Observer, audit_totals, command_producer, send_command
from paycore.stack import Stack, wait_until_ready
from streams.rules_config import load_routing
from streams.settings import Settings

pytestmark = pytest.mark.e2e

PAYMENTS = 600
KILLS = 2
ALLOWED_HISTORIES = (
    ["created", "processing", "succeeded"],
    ["created", "processing", "failed"],
    # A worker down for longer than the 2 s test callback timeout times orders out; the
    # late answer then resolves them: wallet successes are accepted, card ones refunded.
    ["created", "processing", "timed_out", "succeeded"],
    ["created", "processing", "timed_out", "failed"],
)


@pytest.fixture
def own_stack(own_settings):
    with Stack(own_settings, with_api=False) as stack:
        wait_until_ready(stack.settings)
        yield stack


def test_worker_sigkilled_mid_stream_loses_and_doubles_nothing(own_stack):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    settings = own_stack.settings
    producer = command_producer(settings.kafka_bootstrap)
    observer = Observer(settings.kafka_bootstrap, settings.partitions, merchant="crash")
    commands = [pay("crash", f"c-{i}", amount_minor=_plain_amount(rng),
                    method=rng.choice(["card", "wallet"])) for i in range(PAYMENTS)]

    in_flight_at_kill = []
    for kill in range(KILLS):
        batch = commands[kill::KILLS]
        for command in batch:
            send_command(producer, command)
        producer.flush()
        sent = (kill + 1) * len(batch)
        target = _finals(observer) + rng.randrange(5, len(batch) // 2)
        observer.wait_until(lambda goal=target: _finals(observer) >= goal, 60)  # part-way
        own_stack.kill("worker-0")
        observer.poll()
        in_flight_at_kill.append(sent - _finals(observer))
        own_stack.restart("worker-0")
    producer.close()
    final = observer.wait_until(lambda: _finals(observer) >= PAYMENTS, 180)
    time.sleep(2)
    observer.poll()

    info = f"seed={seed} in flight at each kill={in_flight_at_kill}"
    print(info)
    assert any(n > 0 for n in in_flight_at_kill), f"{info}: no kill hit work in progress"
    assert final, f"{info}: only {_finals(observer)}/{PAYMENTS} final; " \
        f"{Counter(s.status for s in observer.status.values())}"
    histories = observer.history
    for payment_id, events in histories.items():
        statuses = [e.status for e in events]
        assert statuses in ALLOWED_HISTORIES, (info, payment_id, statuses)
    _assert_ledger_exact(settings, observer, info)
    audit = audit_totals(settings.auditor_metrics_port)  # it ran through both kills
    assert audit["violations"] == 0 and audit["checks"] > 0, (info, audit)
    observer.close()


def _plain_amount(rng: random.Random) -> int:
    """A random amount the simulator treats normally (no magic but the decline, 013)."""
    while True:
        amount = rng.randrange(100, 90_000)
        if amount % 1000 not in (207, 408, 409, 411, 422, 503):
            return amount


def _finals(observer: Observer) -> int:
    return sum(1 for s in observer.status.values() if s.status in ("succeeded", "failed"))


def _assert_ledger_exact(settings: Settings, observer: Observer, info: str) -> None:
    terms = {c.name: c for c in load_routing(settings.config_dir).channels}
    expected_merchant = sum(
        s.amount_minor - fee_minor(s.amount_minor, terms[s.channel].fee_bps,
                                   terms[s.channel].fee_fixed_minor)
        for s in observer.status.values() if s.status == "succeeded")
    merchant = accounts.merchant_pending("crash", "USD")
    observer.wait_until(lambda: observer.balances().get(merchant) == expected_merchant, 30)
    suspense = accounts.suspense("USD")  # late card successes parked, then sent back
    observer.wait_until(lambda: observer.balances().get(suspense, 0) == 0, 30)
    balances = observer.balances()
    assert balances[merchant] == expected_merchant, info
    assert balances.get(suspense, 0) == 0, (info, balances)
    assert sum(balances.values()) == 0, (info, balances)
    assert observer.reported_equals_rebuilt(), (info, observer.latest_legs(), balances)
