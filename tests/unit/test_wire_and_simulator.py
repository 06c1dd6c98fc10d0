"""Envelopes, config loading and the channel simulator's decisions: no broker needed."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import pytest

from domain.commands import Pay
from domain.events import ChannelOperation, ChannelOutcome, ChannelRequested
from simulators.channel import (
    CARD_NOTIFY_AFTER_MS,
    LATE_BY_MS,
    MAGIC_BLACK_HOLE_MINOR,
    MAGIC_DECLINE_MINOR,
    MAGIC_LATE_MINOR,
    MAGIC_SILENT_MINOR,
    answer,
    latency_ms,
    query_answer,
)
from streams.channels_config import SimulatorProfile
from streams.rules_config import load_routing
from streams.config import ConfigError
from streams.envelope import Envelope, UndecodableEnvelope, child, decode, encode

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "config"


def request(request_id: str = "req_1", amount_minor: int = 1_000,
            operation: ChannelOperation = ChannelOperation.sale) -> ChannelRequested:
    return ChannelRequested(request_id=request_id, payment_id="pay_1", channel="wallet",
                            operation=operation, amount_minor=amount_minor, currency="USD")


class TestEnvelope:
    def test_round_trip_keeps_id_trace_and_body(self):
        body = Pay(merchant_id="m", idempotency_key="k", merchant_order_no="o",
                   amount_minor=5, currency="EUR", method="card")
        env = Envelope("msg_1", "trace_1", 123, body)

        back = decode(encode(env))

        assert back == env

    def test_natural_id_survives_a_different_cause(self):
        first = child("cause-a", request(), 2, 1)
        again = child("cause-b", request(), 0, 99)

        assert first.message_id == again.message_id

    def test_events_without_identity_take_cause_and_index(self):
        body = Pay(merchant_id="m", idempotency_key="k", merchant_order_no="o",
                   amount_minor=5, currency="EUR", method="card")

        ids = {child(cause, body, i, 0).message_id for cause in ("a", "b") for i in (0, 1)}

        assert len(ids) == 4

    @pytest.mark.parametrize("raw", [b"", b"{}", b'{"kind":"Nope","id":"1","trace":"t",'
                                     b'"at_ms":0,"body":{}}', b"\xff\xfe"])
    def test_undecodable_raises_its_own_error(self, raw):
        with pytest.raises(UndecodableEnvelope):
            decode(raw)


class TestConfig:
    def test_shipped_channels_load(self):
        channels = load_routing(SHIPPED_CONFIG).channels

        assert {c.name for c in channels} >= {"card_acquirer", "wallet", "online_bank"}

    def test_bad_line_rejected_with_file_and_line(self, tmp_path):
        text = (SHIPPED_CONFIG / "routing.yaml").read_text()
        lines = text.splitlines()
        bad_line = next(i for i, line in enumerate(lines) if "fee_bps: 50" in line)
        lines[bad_line] = lines[bad_line].replace("50", "-50")
        (tmp_path / "routing.yaml").write_text("\n".join(lines))

        with pytest.raises(ConfigError) as caught:
            load_routing(tmp_path)

        assert f"routing.yaml:{bad_line + 1}:" in str(caught.value)
        assert "fee_bps" in str(caught.value)

    def test_unknown_field_rejected(self, tmp_path):
        (tmp_path / "routing.yaml").write_text(
            "channels:\n  - name: x\n    kind: card\n    methods: [card]\n"
            "    currencies: [USD]\n    colour: blue\n")

        with pytest.raises(ConfigError, match=r"routing.yaml:6: channels.0.colour"):
            load_routing(tmp_path)

    def test_not_yaml_rejected_with_line(self, tmp_path):
        (tmp_path / "routing.yaml").write_text("channels:\n  - name: [unclosed\n")

        with pytest.raises(ConfigError, match=r"routing.yaml:\d+: not valid YAML"):
            load_routing(tmp_path)


class TestSimulator:
    def test_same_seed_same_answer(self):
        profile = SimulatorProfile(decline_bps=5_000, latency_ms_median=30)

        first = [answer(request(f"r{i}"), profile, seed=7, at_ms=0) for i in range(50)]
        again = [answer(request(f"r{i}"), profile, seed=7, at_ms=0) for i in range(50)]
        other = [answer(request(f"r{i}"), profile, seed=8, at_ms=0) for i in range(50)]

        assert first == again
        assert first != other

    def test_magic_amount_always_declined(self):
        profile = SimulatorProfile(decline_bps=0)

        reply = answer(request(amount_minor=4_000 + MAGIC_DECLINE_MINOR), profile, 1, 0)

        assert reply.response.outcome is ChannelOutcome.declined
        assert reply.response.decline_code == profile.decline_codes[0]

    def test_decline_rate_follows_profile(self):
        profile = SimulatorProfile(decline_bps=2_000)

        declined = sum(answer(request(f"r{i}"), profile, 3, 0).response.outcome
                       is ChannelOutcome.declined for i in range(5_000))

        assert 850 <= declined <= 1_150  # 20% of 5,000, well inside 5 sigma

    def test_follow_up_operations_not_randomly_declined(self):
        profile = SimulatorProfile(decline_bps=10_000)

        reply = answer(request(operation=ChannelOperation.refund), profile, 1, 0)

        assert reply.response.outcome is ChannelOutcome.succeeded

    def test_latency_median_and_tail_follow_profile(self):
        profile = SimulatorProfile(latency_ms_median=40, latency_ms_p99=200)
        rng = random.Random(5)

        samples = sorted(latency_ms(rng, profile) for _ in range(20_000))

        assert 36 <= statistics.median(samples) <= 44
        assert 170 <= samples[int(0.99 * len(samples))] <= 235

    def test_zero_latency_profile_answers_at_once(self):
        profile = SimulatorProfile(latency_ms_median=0, latency_ms_p99=0)

        assert answer(request(), profile, 1, 0).latency_ms == 0


class TestCallbackIdentity:
    def test_contradicting_answer_is_not_a_copy_of_the_first(self):
        from domain.events import ChannelResponded

        def said(outcome: ChannelOutcome, amount_minor: int) -> str:
            body = ChannelResponded(
                request_id="req_1", payment_id="pay_1", channel="wallet",
                operation=ChannelOperation.sale, outcome=outcome, amount_minor=amount_minor,
                currency="USD", channel_serial="s1")
            return child("any-cause", body, 0, 0).message_id

        first = said(ChannelOutcome.declined, 1_000)

        assert said(ChannelOutcome.declined, 1_000) == first
        assert said(ChannelOutcome.succeeded, 1_000) != first
        assert said(ChannelOutcome.declined, 900) != first


class TestStatusQuery:
    """What a simulated channel says when the core asks about an attempt."""

    PROFILE = SimulatorProfile(decline_bps=0, latency_ms_median=40, latency_ms_p99=40)

    @staticmethod
    def query(about: ChannelRequested, n: int = 1) -> ChannelRequested:
        return ChannelRequested(request_id=f"q{n}", payment_id="pay_1", channel="wallet",
                                operation=ChannelOperation.query,
                                amount_minor=about.amount_minor, currency="USD",
                                reference=f"{about.request_id}/{about.operation.value}/{n}")

    def test_lost_callback_found_once_decided(self):
        sale = request(amount_minor=2_000 + MAGIC_SILENT_MINOR)
        known = answer(sale, self.PROFILE, 7, at_ms=1_000)
        assert known.deliveries_ms == ()  # the callback never comes

        early = query_answer(self.query(sale), known, 1_000, 1_000 + known.latency_ms - 1)
        found = query_answer(self.query(sale), known, 1_000, 1_000 + known.latency_ms)

        assert early is None  # still processing
        assert found == known.response.model_copy(
            update={"via_query": True, "responded_at_ms": 1_000 + known.latency_ms})

    def test_late_answer_still_processing_when_asked(self):
        sale = request(amount_minor=3_000 + MAGIC_LATE_MINOR)
        known = answer(sale, self.PROFILE, 7, at_ms=0, callback_timeout_ms=3_000)

        assert known.latency_ms == 3_000 + LATE_BY_MS
        assert query_answer(self.query(sale), known, 0, 3_000 + LATE_BY_MS - 1) is None

    def test_black_hole_answers_no_query(self):
        sale = request(amount_minor=2_000 + MAGIC_BLACK_HOLE_MINOR)
        known = answer(sale, self.PROFILE, 7, at_ms=0)

        assert known.deliveries_ms == () and not known.answers_queries
        assert query_answer(self.query(sale), known, 0, 10**9) is None

    def test_unknown_request_is_not_found_for_the_attempt(self):
        sale = request("req_never_seen", operation=ChannelOperation.authorize)

        reply = query_answer(self.query(sale, n=2), None, 0, 5_000)

        assert (reply.request_id, reply.operation, reply.outcome, reply.decline_code,
                reply.via_query) == ("req_never_seen", ChannelOperation.authorize,
                                     ChannelOutcome.declined, "not_found", True)


class TestProtocols:
    """Each channel kind's own shape: card answers then notifies, a bank redirects then
    notifies, a wallet notifies until acknowledged."""

    def reply(self, protocol: str, amount_minor: int = 1_000):
        profile = SimulatorProfile(protocol=protocol, latency_ms_median=40, latency_ms_p99=40)
        return answer(request(amount_minor=amount_minor), profile, 7, at_ms=0)

    def test_card_answer_then_asynchronous_notification(self):
        card = self.reply("card")

        assert card.deliveries_ms == (card.latency_ms, card.latency_ms + CARD_NOTIFY_AFTER_MS)
        assert card.redirect is None and not card.until_ack

    def test_bank_redirects_first(self):
        bank = self.reply("bank")

        assert bank.redirect.outcome is ChannelOutcome.pending
        assert bank.redirect.request_id == bank.response.request_id
        assert bank.deliveries_ms == (bank.latency_ms,) and not bank.until_ack

    def test_wallet_notifies_until_acknowledged(self):
        wallet = self.reply("wallet")

        assert wallet.until_ack and wallet.deliveries_ms == (wallet.latency_ms,)

    def test_lost_wallet_notification_is_not_resent(self):
        assert not self.reply("wallet", 2_000 + MAGIC_SILENT_MINOR).until_ack
