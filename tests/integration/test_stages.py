"""Each stage's output on its own topic, on a real broker with the real worker process."""

from __future__ import annotations

import json

import pytest
from helpers import pay, read_topic, wait_for_final

from domain import accounts
from domain.commands import Pay
from domain.events import (
    ChannelRequested,
    ChannelResponded,
    CommandRejected,
    JournalEntryDecided,
    RiskScreened,
)
from domain.ids import payment_id_for
from streams import topics as t
from streams.accounts_config import load_accounts

pytestmark = pytest.mark.integration


def _send(producer, command: dict) -> None:
    producer.send(t.COMMANDS, key=command["merchant_order_no"].encode(),
                  value=json.dumps(command).encode())
    producer.flush()


class TestDedup:
    def test_same_key_different_payload_rejected_as_conflict(
            self, stack, producer, observer, merchant):
        _send(producer, pay(merchant, "o1", amount_minor=1_000))
        wait_for_final(observer, merchant, "o1")
        _send(producer, pay(merchant, "o1", amount_minor=2_000))

        observer.wait_until(lambda: any(r.merchant_id == merchant for r in observer.rejections),
                            15)

        rejected = [r for r in observer.rejections if r.merchant_id == merchant]
        assert [r.code for r in rejected] == ["conflict_different_payload"]
        assert observer.status[payment_id_for(merchant, "o1")].amount_minor == 1_000

    def test_same_key_same_payload_applied_once(self, stack, stack_settings, producer,
                                                observer, merchant):
        command = pay(merchant, "twice")
        _send(producer, command)
        _send(producer, command)
        wait_for_final(observer, merchant, "twice")

        forwarded = read_topic(stack_settings.kafka_bootstrap, t.RISK,
                               stack_settings.partitions,
                               lambda b: isinstance(b, Pay) and b.merchant_id == merchant,
                               timeout_s=5, want=2)
        screened = read_topic(stack_settings.kafka_bootstrap, t.ORDERS,
                              stack_settings.partitions,
                              lambda b: isinstance(b, RiskScreened)
                              and b.command.merchant_id == merchant, timeout_s=5, want=2)
        requests = read_topic(stack_settings.kafka_bootstrap, t.CHANNEL_REQUESTS,
                              stack_settings.partitions,
                              lambda b: b.payment_id == payment_id_for(merchant, "twice"),
                              timeout_s=3, want=3)

        assert len(forwarded) == 2  # both are screened (the same verdict, the same message
        assert len(screened) == 2   # id) and reach the order stage, which absorbs the second
        assert len({env.message_id for _, env in screened}) == 1
        assert len({env.message_id for _, env in requests}) == 1
        history = observer.history[payment_id_for(merchant, "twice")]
        assert [e.status for e in history] == ["created", "processing", "succeeded"]


class TestOrdersAndChannel:
    def test_order_emits_channel_request_keyed_by_payment_id(
            self, stack, stack_settings, producer, observer, merchant):
        _send(producer, pay(merchant, "req", amount_minor=4_321, method="wallet"))
        payment_id = payment_id_for(merchant, "req")

        requests = read_topic(stack_settings.kafka_bootstrap, t.CHANNEL_REQUESTS,
                              stack_settings.partitions,
                              lambda b: isinstance(b, ChannelRequested)
                              and b.payment_id == payment_id)
        callbacks = read_topic(stack_settings.kafka_bootstrap, t.CHANNEL_CALLBACKS,
                               stack_settings.partitions,
                               lambda b: isinstance(b, ChannelResponded)
                               and b.payment_id == payment_id)

        key, env = requests[0]
        assert key == payment_id.encode()
        assert (env.body.channel, env.body.operation.value, env.body.amount_minor) == \
            ("wallet", "sale", 4_321)
        assert callbacks[0][1].body.request_id == env.body.request_id
        assert callbacks[0][0] == payment_id.encode()

    def test_decline_fails_order_without_posting(self, stack, stack_settings, producer,
                                                 observer, merchant):
        _send(producer, pay(merchant, "declined", amount_minor=5_013))

        final = wait_for_final(observer, merchant, "declined")

        assert final.status == "failed"
        assert "declined" in final.reason
        entries = read_topic(stack_settings.kafka_bootstrap, t.LEDGER_POSTINGS,
                             stack_settings.partitions,
                             lambda b: getattr(b, "payment_id", "") == final.payment_id,
                             timeout_s=2)
        assert entries == []


class TestLedger:
    def test_success_posts_balanced_entry_to_each_account_partition(
            self, stack, stack_settings, producer, observer, merchant):
        _send(producer, pay(merchant, "paid", amount_minor=10_000))
        final = wait_for_final(observer, merchant, "paid")
        account = accounts.merchant_pending(merchant, "USD")

        observer.wait_until(lambda: account in observer.balances(), 15)
        postings = read_topic(stack_settings.kafka_bootstrap, t.LEDGER_POSTINGS,
                              stack_settings.partitions,
                              lambda b: isinstance(b, JournalEntryDecided)
                              and b.payment_id == final.payment_id, want=3)

        assert final.status == "succeeded"
        place = load_accounts(stack_settings.config_dir).place  # the fee account is split
        assert sorted(k.decode() for k, _ in postings) == sorted(
            place(leg.account_id, final.payment_id) for leg in postings[0][1].body.legs)
        assert sum(leg.amount_minor for leg in postings[0][1].body.legs) == 0
        # card_acquirer: 180 bps + 20 minor fixed on 10,000 -> fee 200
        assert observer.balances()[account] == 9_800


class TestRejections:
    def test_refund_over_captured_rejected_with_code(self, stack, producer, observer,
                                                     merchant):
        _send(producer, pay(merchant, "small", amount_minor=1_000))
        wait_for_final(observer, merchant, "small")
        _send(producer, {"type": "refund", "merchant_id": merchant, "idempotency_key": "r-big",
                         "merchant_order_no": "small", "refund_id": "r1",
                         "amount_minor": 5_000})

        observer.wait_until(lambda: any(r.merchant_id == merchant for r in observer.rejections),
                            15)

        rejected = [r for r in observer.rejections if r.merchant_id == merchant]
        assert isinstance(rejected[0], CommandRejected)
        assert rejected[0].code == "refund_exceeds_captured"
