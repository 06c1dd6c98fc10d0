"""Intake on a real broker: malformed commands are dead-lettered with a reason naming the
field, and the stage keeps going."""

from __future__ import annotations

import json

import pytest
from helpers import pay, read_topic, wait_for_final

from domain.commands import Pay
from streams import topics as t

pytestmark = pytest.mark.integration

BAD = {
    "not-json": (b"{not json at all", "not JSON"),
    "wrong-fields": (json.dumps({"type": "pay", "merchant": "x"}).encode(), "merchant_id"),
    "negative": (None, "amount_minor"),
    "unknown-currency": (None, "currency"),
}


class TestMalformedCommands:
    def test_bad_commands_dead_lettered_with_reason_then_valid_processed(
            self, stack, producer, observer, merchant):
        negative = pay(merchant, "neg", amount_minor=-5)
        unknown = pay(merchant, "ccy", currency="XYZ")
        payloads = [BAD["not-json"][0], BAD["wrong-fields"][0],
                    json.dumps(negative).encode(), json.dumps(unknown).encode()]
        for i, raw in enumerate(payloads):
            producer.send(t.COMMANDS, key=f"{merchant}-bad-{i}".encode(), value=raw)
        producer.send(t.COMMANDS, key=merchant.encode(),
                      value=json.dumps(pay(merchant, "good")).encode())
        producer.flush()

        final = wait_for_final(observer, merchant, "good")
        def ours() -> list[dict]:
            return [d for d in observer.deadletters
                    if (d["key"].get("text") or "").startswith(f"{merchant}-bad-")]

        observer.wait_until(lambda: len(ours()) == 4, 10)

        assert final is not None and final.status == "succeeded"
        reasons = {d["key"]["text"]: d["reason"] for d in ours()}
        assert "not JSON" in reasons[f"{merchant}-bad-0"]
        assert "merchant_id" in reasons[f"{merchant}-bad-1"]
        assert "amount_minor" in reasons[f"{merchant}-bad-2"]
        assert "currency" in reasons[f"{merchant}-bad-3"]
        assert all(d["stage"] == "intake" for d in ours())
        kept = {d["key"]["text"]: d["value"]["text"] for d in ours()}
        assert kept[f"{merchant}-bad-0"] == "{not json at all"
        assert json.loads(kept[f"{merchant}-bad-2"])["amount_minor"] == -5

    def test_valid_command_rekeyed_by_merchant_and_idempotency_key(
            self, stack, stack_settings, producer, merchant):
        producer.send(t.COMMANDS, key=b"any-client-key",
                      value=json.dumps(pay(merchant, "rekey")).encode())
        producer.flush()

        found = read_topic(stack_settings.kafka_bootstrap, t.DEDUP, stack_settings.partitions,
                           lambda b: isinstance(b, Pay) and b.merchant_id == merchant)

        assert len(found) == 1
        key, env = found[0]
        assert key == f"{merchant}\x1fk-rekey".encode()
        assert env.body.merchant_order_no == "rekey"
        assert env.message_id.startswith("cmd_")
