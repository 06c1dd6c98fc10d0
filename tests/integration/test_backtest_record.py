"""``paycore risk record`` against a real broker: every record, all partitions, in order."""

from __future__ import annotations

import json
import uuid

import pytest
from kafka import KafkaProducer

from domain.commands import Method, Pay, Payer
from domain.risk import payer_key
from paycore.backtest import InputTally, backtest_risk, read_input, run_record
from streams.broker import ensure_topics
from streams.envelope import Envelope, encode
from streams.rules_config import load_risk
from streams.settings import Settings

pytestmark = pytest.mark.integration

PAYMENTS = 40


def test_record_writes_every_record_when_batches_hold_many(kafka_bootstrap, tmp_path):
    topic = f"risk-record-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, (topic,), 3)
    sent = []
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=50, acks="all")
    for n in range(PAYMENTS):  # few payers, so partitions get multi-record batches
        cmd = Pay(merchant_id="m-rec", idempotency_key=f"k-{n}", merchant_order_no=f"o-{n}",
                  amount_minor=1_000 + n, currency="EUR", method=Method.card,
                  payer=Payer(customer_id=f"cust-{n % 4}"))
        value = encode(Envelope(f"msg-{n}", "trace", 1_000 * n, cmd))
        producer.send(topic, key=payer_key(cmd).encode(), value=value)
        sent.append(value)
    producer.flush()
    producer.close()
    out = tmp_path / "commands.jsonl"

    code = run_record(Settings(kafka_bootstrap=kafka_bootstrap), out, topic=topic)

    lines = out.read_bytes().splitlines()
    assert code == 0
    assert sorted(lines) == sorted(sent)
    for customer in range(4):  # each payer's commands in the order they were sent
        mine = [v for v in lines if f'"cust-{customer}"'.encode() in v]
        assert mine == [v for v in sent if f'"cust-{customer}"'.encode() in v]
    rules = load_risk(Settings().config_dir)
    report = backtest_risk(read_input(lines, InputTally()), rules, rules)
    assert (report["screened"], report["changed"]) == (PAYMENTS, 0)
    assert json.loads(lines[0])["kind"] == "Pay"
