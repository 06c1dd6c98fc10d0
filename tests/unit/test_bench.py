"""The benchmark's own arithmetic: what it offers, counts and reports (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from paycore import bench
from streams.channels_config import load_simulators
from streams.settings import ROOT


class TestLoad:
    def test_bench_config_answers_at_once_and_never_declines(self, tmp_path):
        out = bench.bench_config(ROOT / "config", tmp_path / "config")

        profiles = load_simulators(out).simulators

        assert profiles
        assert all((p.latency_ms_median, p.latency_ms_p99, p.decline_bps) == (0, 0, 0)
                   for p in profiles)
        assert sorted(p.name for p in out.glob("*.yaml")) == \
            sorted(p.name for p in (ROOT / "config").glob("*.yaml"))

    def test_commands_avoid_every_simulator_magic_amount_and_every_payer_pays_once(self):
        commands = bench.bench_commands("run", 5_000)

        magic = {13, 207, 408, 409, 411, 422, 503}
        assert not [c for c in commands if c["amount_minor"] % 1000 in magic]
        assert len({c["payer"]["customer_id"] for c in commands}) == 5_000
        assert len({c["idempotency_key"] for c in commands}) == 5_000
        assert {c["method"] for c in commands} == {"card", "wallet"}
        assert all(isinstance(c["amount_minor"], int) and c["amount_minor"] > 0
                   for c in commands)

    @pytest.mark.parametrize("rate, measured, offered", [
        ("max", None, 0.0), ("250", None, 250.0), ("half", 300.0, 150.0)])
    def test_offered_rate(self, rate, measured, offered):
        assert bench.offered_per_s(rate, measured) == offered

    def test_half_rate_needs_a_max_run_first(self):
        with pytest.raises(AssertionError):
            bench.offered_per_s("half", None)


class TestCounting:
    def test_grown_counts_each_topics_new_messages_and_leaves_out_the_relay(self):
        before = {("pay.events", 0): 10, ("pay.events", 1): 5, ("bench.relay.x.in", 0): 0}
        after = {("pay.events", 0): 16, ("pay.events", 1): 9, ("pay.orders", 0): 3,
                 ("bench.relay.x.in", 0): 1000, ("pay.idle", 0): 0}

        assert bench.grown(before, after) == {"pay.events": 10, "pay.orders": 3}

    def test_percentiles_of_a_known_spread(self):
        values = [float(v) for v in range(1, 101)]

        assert bench.percentiles(values) == {"p50": 51.0, "p95": 96.0, "p99": 100.0,
                                             "max": 100.0}
        assert bench.percentiles([]) == {}

    def test_hot_spots_split_own_time_from_time_on_the_stack(self):
        collapsed = "\n".join([
            "main (cli.py:1);handle (orders.py:10);decide (orders.py:20) 30",
            "main (cli.py:1);handle (orders.py:10) 10",
            "main (cli.py:1);select (selectors.py:5) 60",
            "garbage line"])

        spots = {s["function"]: s for s in bench.hot_spots(collapsed)}

        assert spots["main (cli.py)"]["total_pct"] == 100.0
        assert spots["handle (orders.py)"]["total_pct"] == 40.0
        assert spots["(self) decide (orders.py)"]["self_pct"] == 30.0
        assert spots["(self) select (selectors.py)"]["self_pct"] == 60.0
        assert spots["(self) handle (orders.py)"]["self_pct"] == 10.0


class TestReport:
    def test_ratio_to_the_ceiling_counts_messages_per_payment(self):
        run = bench.RunResult(
            workers=1, rate="max", payments=1000, statuses={"succeeded": 1000},
            load_seconds=10.0, payments_per_s=100.0, latency_ms={}, booked_latency_ms={},
            recon={}, messages={"pay.events": 40_000}, messages_per_payment=40.0,
            mean_record_bytes=500.0, stages={}, cpu_share={}, peak_rss_mb={"worker-0": 1})
        relay = {"messages": 10, "record_bytes": 500, "seconds": 1, "messages_per_s": 8000.0}

        doc = bench.report([run], relay, bench.BenchOptions(out_dir=Path("x")))

        assert doc["runs"][0]["ceiling_payments_per_s"] == 200.0  # 8,000 / 40
        assert doc["runs"][0]["ratio_to_ceiling"] == 0.5
