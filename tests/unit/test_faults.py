"""Channel faults: which requests a plan hits, and what each fault does to the answer."""

from __future__ import annotations

import pytest

from domain.events import ChannelOperation, ChannelOutcome, ChannelRequested
from simulators.channel import AFTERTHOUGHT_MS, LATE_BY_MS, answer, with_faults
from simulators.faults import Drawn, Fault, FaultKind, FaultPlan, draw
from streams.channels_config import SimulatorProfile

PROFILE = SimulatorProfile(decline_bps=0, latency_ms_median=100, latency_ms_p99=100,
                           unavailable_code="issuer_unavailable")
T0 = 1_700_000_000_000


def request(request_id: str = "req_1", op: ChannelOperation = ChannelOperation.sale,
            amount_minor: int = 1_000) -> ChannelRequested:
    return ChannelRequested(request_id=request_id, payment_id="pay_1", channel="card",
                            operation=op, amount_minor=amount_minor, currency="EUR")


def plan(*faults: Fault, seed: int = 7) -> FaultPlan:
    return FaultPlan(scenario="s", seed=seed, start_ms=T0, faults=faults)


def hit(kind: FaultKind, op: ChannelOperation = ChannelOperation.sale, **fault):
    req = request(op=op)
    reply = answer(req, PROFILE, 7, T0)
    drawn = [Drawn(Fault(channel="card", kind=kind, from_s=0, to_s=10, **fault), 0.5)]
    return reply, with_faults(reply, req, drawn, PROFILE, late_after_ms=3_000, seed=7)


class TestDraw:
    def test_only_inside_the_window_and_only_its_channel(self):
        p = plan(Fault(channel="card", kind=FaultKind.outage, from_s=5, to_s=10))

        assert draw(p, "card", "r", T0 + 4_999) == []
        assert [d.fault.kind for d in draw(p, "card", "r", T0 + 5_000)] == [FaultKind.outage]
        assert draw(p, "wallet", "r", T0 + 6_000) == []
        assert draw(p, "card", "r", T0 + 10_000) == []

    def test_rate_hits_its_share_and_the_same_requests_for_a_seed(self):
        p = plan(Fault(channel="card", kind=FaultKind.no_callback, from_s=0, to_s=10,
                       rate_bps=3_000))
        ids = [f"req_{n}" for n in range(4_000)]

        hits = {i for i in ids if draw(p, "card", i, T0 + 1)}
        again = {i for i in ids if draw(p, "card", i, T0 + 2)}
        other = {i for i in ids if draw(plan(*p.faults, seed=8), "card", i, T0 + 1)}

        assert 1_050 <= len(hits) <= 1_350
        assert hits == again and hits != other

    def test_window_must_end_after_it_starts(self):
        with pytest.raises(ValueError, match="to_s"):
            Fault(channel="card", kind=FaultKind.outage, from_s=5, to_s=5)


class TestWithFaults:
    def test_outage_loses_the_request(self):
        assert hit(FaultKind.outage)[1] is None

    def test_decline_spike_uses_the_technical_code(self):
        _, faulty = hit(FaultKind.decline_spike)

        assert (faulty.response.outcome, faulty.response.decline_code) == (
            ChannelOutcome.declined, "issuer_unavailable")

    def test_duplicates_and_out_of_order_deliver_again(self):
        plain, dup = hit(FaultKind.duplicate_callbacks)
        _, reorder = hit(FaultKind.out_of_order)
        first = plain.deliveries_ms[0]

        assert dup.deliveries_ms == (first, first + 50, first + 300)
        assert reorder.deliveries_ms[0] == first
        assert 1_000 <= reorder.deliveries_ms[1] - first < 5_000

    def test_no_callback_keeps_the_answer_for_queries(self):
        plain, lost = hit(FaultKind.no_callback)

        assert lost.deliveries_ms == () and lost.response == plain.response

    def test_late_callback_after_timeout_and_queries(self):
        _, late = hit(FaultKind.late_callback)

        assert late.latency_ms == late.deliveries_ms[0] == 3_000 + LATE_BY_MS

    def test_slow_scales_latency_by_progress_through_the_window(self):
        plain, slow = hit(FaultKind.slow, slow_factor_pct=500)  # halfway: x3

        assert slow.latency_ms == plain.latency_ms * 3
        assert slow.response.responded_at_ms == T0 + slow.latency_ms

    @pytest.mark.parametrize("kind,reported", [(FaultKind.amount_mismatch, 999),
                                               (FaultKind.partial_payment, 500)])
    def test_money_faults(self, kind, reported):
        assert hit(kind)[1].response.amount_minor == reported

    def test_success_after_decline_declines_then_says_it_took_the_money(self):
        plain, faulty = hit(FaultKind.success_after_decline)

        assert faulty.response.outcome is ChannelOutcome.declined
        [(due_ms, took)] = faulty.afterwards
        assert due_ms == max(faulty.deliveries_ms) + AFTERTHOUGHT_MS
        assert (took.request_id, took.outcome, took.amount_minor) == (
            plain.response.request_id, ChannelOutcome.succeeded, 1_000)

    def test_channel_refund_answers_a_refund_nobody_asked_for(self):
        plain, faulty = hit(FaultKind.channel_refund)

        assert faulty.response == plain.response
        [(due_ms, back)] = faulty.afterwards
        assert due_ms == max(faulty.deliveries_ms) + AFTERTHOUGHT_MS
        assert back.operation is ChannelOperation.refund
        assert back.request_id != plain.response.request_id
        assert (back.outcome, back.amount_minor) == (ChannelOutcome.succeeded, 1_000)

    def test_afterthoughts_only_change_a_success(self):
        req = request(amount_minor=1_013)  # the magic decline amount
        reply = answer(req, PROFILE, 7, T0)
        for kind in (FaultKind.success_after_decline, FaultKind.channel_refund):
            drawn = [Drawn(Fault(channel="card", kind=kind, from_s=0, to_s=10), 0.5)]
            assert with_faults(reply, req, drawn, PROFILE, 3_000, 7).afterwards == ()

    def test_follow_ups_take_only_outages_and_repeats(self):
        plain, faulty = hit(FaultKind.decline_spike, op=ChannelOperation.refund)

        assert faulty.response == plain.response
        assert hit(FaultKind.outage, op=ChannelOperation.refund)[1] is None
