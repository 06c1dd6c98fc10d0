"""Routing (``domain/routing.py``), channel health, and the watched rules files.

Eligibility is pinned by method, currency and amount band (inclusive); rules match first
wins; each strategy orders the candidates its way; the payment id decides weighted splits and
exploration, so a replay routes the same. ``ChannelHealth`` is driven with explicit times:
the breaker opens at its error rate once it has enough samples, half-opens after
``breaker_open_ms``, lets exactly one probe through, and the probe's outcome closes or
re-opens it. ``Watched`` keeps the rules in force when the file turns bad.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from domain.commands import Method
from domain.routing import (
    Breaker,
    ChannelHealth,
    HealthPolicy,
    HealthView,
    Outcome,
    Payment,
    RoutingRules,
    plan_route,
)
from streams.config import ConfigError
from streams.rules_config import load_routing, version_of, watch_routing

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
T0 = 1_700_000_000_000


def channel(name: str, methods=("card",), currencies=("EUR",), **kw) -> dict:
    return {"name": name, "methods": list(methods), "currencies": list(currencies), **kw}


def routing(*channels: dict, rules=(), health: dict | None = None, **kw) -> RoutingRules:
    return RoutingRules.model_validate({"channels": list(channels), "rules": list(rules),
                                        "health": health or {}, **kw})


def payment(payment_id: str = "pay_1", amount: int = 1_000, currency: str = "EUR",
            method: Method = Method.card, merchant: str = "m-1", country: str = "") -> Payment:
    return Payment(payment_id, merchant, method, currency, amount, country)


def names(plan) -> list[str]:
    return [c.channel for c in plan.candidates]


def view(samples=0, success_bps=10_000, breaker=Breaker.closed) -> HealthView:
    return HealthView(samples, success_bps, 10_000 - success_bps, 100, breaker)


SICK = view(samples=30, success_bps=3_000)
HEALTHY = view(samples=30, success_bps=9_500)


class TestEligibility:
    RULES = routing(
        channel("cards", methods=["card"], currencies=["EUR", "USD"]),
        channel("banks", methods=["bank", "mandate"], currencies=["EUR"]),
        channel("band", methods=["card"], currencies=["EUR"], amount_min_minor=100,
                amount_max_minor=1_000, priority=200),
    )

    @pytest.mark.parametrize("method,currency,amount,expected", [
        (Method.card, "EUR", 500, ["cards", "band"]),
        (Method.card, "USD", 500, ["cards"]),
        (Method.bank, "EUR", 500, ["banks"]),
        (Method.mandate, "EUR", 500, ["banks"]),
        (Method.card, "EUR", 99, ["cards"]),
        (Method.card, "EUR", 100, ["cards", "band"]),
        (Method.card, "EUR", 1_000, ["cards", "band"]),
        (Method.card, "EUR", 1_001, ["cards"]),
    ])
    def test_candidates_by_method_currency_and_amount_band(self, method, currency, amount,
                                                           expected):
        plan = plan_route(self.RULES, payment(method=method, currency=currency, amount=amount))

        assert names(plan) == expected
        assert plan.rule_id == ""

    @pytest.mark.parametrize("method,currency", [(Method.wallet, "EUR"), (Method.bank, "USD")])
    def test_no_plan_when_no_channel_takes_payment(self, method, currency):
        plan = plan_route(self.RULES, payment(method=method, currency=currency))

        assert plan is None

    def test_route_carries_channel_terms(self):
        rules = routing(channel("a", fee_bps=180, fee_fixed_minor=20, callback_timeout_ms=9_000,
                                failover_on_timeout=True, retriable_declines=["busy"]),
                        max_attempts=3)

        plan = plan_route(rules, payment())

        route = plan.candidates[0]
        assert (route.fee_bps, route.fee_fixed_minor, route.callback_timeout_ms) == (180, 20,
                                                                                    9_000)
        assert route.failover_on_timeout and route.retriable_declines == ("busy",)
        assert plan.max_attempts == 3


class TestRuleMatching:
    CHANNELS = (channel("a", priority=10), channel("b", priority=20), channel("c", priority=30))

    def test_first_matching_rule_wins(self):
        first = {"id": "first", "when": {"methods": ["card"]}, "channels": ["c"]}
        second = {"id": "second", "when": {"currencies": ["EUR"]}, "channels": ["b"]}

        one = plan_route(routing(*self.CHANNELS, rules=[first, second]), payment())
        other = plan_route(routing(*self.CHANNELS, rules=[second, first]), payment())

        assert (one.rule_id, names(one)) == ("first", ["c"])
        assert (other.rule_id, names(other)) == ("second", ["b"])

    @pytest.mark.parametrize("when,pay,matched", [
        ({"amount_min_minor": 1_000}, payment(amount=999), False),
        ({"amount_min_minor": 1_000}, payment(amount=1_000), True),
        ({"amount_max_minor": 1_000}, payment(amount=1_000), True),
        ({"amount_max_minor": 1_000}, payment(amount=1_001), False),
        ({"merchants": ["shop-*"]}, payment(merchant="shop-7"), True),
        ({"merchants": ["shop-*"]}, payment(merchant="myshop-7"), False),
        ({"payer_countries": ["DE"]}, payment(country="DE"), True),
        ({"payer_countries": ["DE"]}, payment(country="FR"), False),
        ({"payer_countries": ["DE"]}, payment(country=""), False),
        ({"currencies": ["USD"]}, payment(currency="EUR"), False),
    ])
    def test_rule_conditions_else_next_rule(self, when, pay, matched):
        rules = routing(*self.CHANNELS, rules=[{"id": "special", "when": when,
                                                "channels": ["c"]},
                                               {"id": "fallback", "channels": ["b"]}])

        plan = plan_route(rules, pay)

        assert plan.rule_id == ("special" if matched else "fallback")
        assert names(plan) == (["c"] if matched else ["b"])

    def test_no_rule_orders_by_priority_then_name(self):
        rules = routing(channel("zeta", priority=5), channel("beta", priority=10),
                        channel("alpha", priority=10))

        plan = plan_route(rules, payment())

        assert names(plan) == ["zeta", "alpha", "beta"]
        assert plan.candidates[0].reason == "no rule: by priority"


class TestPriorityStrategy:
    def test_rule_list_order_overrides_channel_priority(self):
        rules = routing(channel("a", priority=1), channel("b", priority=2),
                        channel("c", priority=3),
                        rules=[{"id": "r", "strategy": "priority", "channels": ["c", "a"]}])

        plan = plan_route(rules, payment())

        assert names(plan) == ["c", "a"]
        assert plan.candidates[0].reason == "rule r (priority)"

    def test_listed_channel_that_cannot_take_payment_is_skipped(self):
        rules = routing(channel("a"), channel("usd", currencies=["USD"]),
                        rules=[{"id": "r", "channels": ["usd", "a"]}])

        plan = plan_route(rules, payment(currency="EUR"))

        assert names(plan) == ["a"]


class TestCheapestStrategy:
    RULES = routing(channel("fixed", fee_fixed_minor=100, priority=1),
                    channel("percent", fee_bps=100, priority=2),
                    rules=[{"id": "cheap", "strategy": "cheapest"}])

    @pytest.mark.parametrize("amount,expected", [
        (5_000, ["percent", "fixed"]),    # 50 < 100
        (10_000, ["fixed", "percent"]),   # 100 = 100: priority breaks the tie
        (20_000, ["fixed", "percent"]),   # 100 < 200
    ])
    def test_lowest_fee_for_amount_first(self, amount, expected):
        plan = plan_route(self.RULES, payment(amount=amount))

        assert names(plan) == expected

    def test_fee_rounds_half_up(self):
        rules = routing(channel("a", fee_bps=150, fee_fixed_minor=7))

        fees = [rules.channels[0].fee_minor(a) for a in (33, 34, 100)]

        assert fees == [7 + 0, 7 + 1, 7 + 2]   # 0.495 -> 0, 0.51 -> 1, 1.5 -> 2

    def test_shipped_rules_cheapest_for_large_cards(self):
        rules = load_routing(CONFIG_DIR)

        within = plan_route(rules, payment(amount=1_000_000, currency="USD"))
        above_backup = plan_route(rules, payment(amount=6_000_000, currency="USD"))

        assert (within.rule_id, names(within)) == ("card-large-cheapest",
                                                   ["card_backup", "card_acquirer"])
        assert names(above_backup) == ["card_acquirer"]


class TestWeightedStrategy:
    RULES = routing(channel("a"), channel("b"), channel("c"),
                    rules=[{"id": "split", "strategy": "weighted",
                            "weights": {"a": 70, "b": 30}}])

    def test_split_lands_near_weights_over_many_payments(self):
        firsts = Counter(plan_route(self.RULES, payment(f"pay_{i:05d}")).candidates[0].channel
                         for i in range(4_000))

        assert set(firsts) == {"a", "b"}
        assert 0.67 <= firsts["a"] / 4_000 <= 0.73
        assert firsts["a"] + firsts["b"] == 4_000

    def test_same_payment_same_first_channel(self):
        ids = [f"pay_{i}" for i in range(200)]

        once = [names(plan_route(self.RULES, payment(i))) for i in ids]
        again = [names(plan_route(routing(*[c.model_dump() for c in self.RULES.channels],
                                          rules=[r.model_dump() for r in self.RULES.rules]),
                                  payment(i, amount=2_000))) for i in ids]

        assert once == again
        assert {tuple(n) for n in once} == {("a", "b"), ("b", "a")}

    def test_channel_without_weight_is_not_a_candidate(self):
        plan = plan_route(self.RULES, payment())

        assert "c" not in names(plan)

    def test_shipped_eur_card_split(self):
        rules = load_routing(CONFIG_DIR)

        firsts = Counter(plan_route(rules, payment(f"p{i}")).candidates[0].channel
                         for i in range(2_000))

        assert 0.66 <= firsts["card_acquirer"] / 2_000 <= 0.74
        assert firsts["card_acquirer"] + firsts["card_backup"] == 2_000

    @pytest.mark.parametrize("rule,message", [
        ({"id": "w", "strategy": "weighted"}, "weights: required"),
        ({"id": "w", "strategy": "weighted", "weights": {"a": 0}}, "weights: must be positive"),
        ({"id": "w", "strategy": "priority", "weights": {"a": 1}}, "only for strategy weighted"),
    ])
    def test_bad_weights_refused(self, rule, message):
        with pytest.raises(ValidationError, match=message):
            routing(channel("a"), rules=[rule])


class TestRulesValidation:
    @pytest.mark.parametrize("rule", [
        {"id": "r", "channels": ["a", "nope"]},
        {"id": "r", "strategy": "weighted", "weights": {"a": 1, "nope": 1}},
    ])
    def test_unknown_channel_in_rule_refused(self, rule):
        with pytest.raises(ValidationError, match=r"rule r names unknown channels \['nope'\]"):
            routing(channel("a"), rules=[rule])

    def test_unknown_channel_refused_at_file_load(self, tmp_path):
        text = (CONFIG_DIR / "routing.yaml").read_text()
        path = tmp_path / "routing.yaml"
        path.write_text(text.replace("channels: [card_acquirer, card_backup]",
                                     "channels: [card_acquirer, card_spare]"))

        with pytest.raises(ConfigError, match=r"routing\.yaml:\d+: .*unknown channels"):
            load_routing(tmp_path, path)

    def test_unknown_channel_error_names_the_rule_line(self, tmp_path):
        text = (CONFIG_DIR / "routing.yaml").read_text()
        lines = text.splitlines()
        rule_line = lines.index("  - id: card-default") + 1
        channels_line = lines.index("    channels: [card_acquirer, card_backup]") + 1
        path = tmp_path / "routing.yaml"
        path.write_text(text.replace("[card_acquirer, card_backup]", "[card_acquirer, nope]"))

        with pytest.raises(ConfigError) as caught:
            load_routing(tmp_path, path)

        line = int(str(caught.value).split("routing.yaml:")[1].split(":")[0])
        assert rule_line <= line <= channels_line, str(caught.value)

    def test_balance_method_refused_for_channel(self):
        with pytest.raises(ValidationError, match="balance is paid inside the ledger"):
            routing(channel("a", methods=["card", "balance"]))

    def test_shipped_file_loads_with_version(self):
        rules = load_routing(CONFIG_DIR)

        assert rules.version == version_of((CONFIG_DIR / "routing.yaml").read_bytes())
        assert [c.name for c in rules.channels] == ["card_acquirer", "card_backup",
                                                    "online_bank", "wallet"]
        assert plan_route(rules, payment()).version == rules.version


# ---------------------------------------------------------------- health

POLICY = HealthPolicy(window_ms=60_000, min_samples=20, min_success_rate_bps=5_000,
                      exploration_bps=0, breaker_error_rate_bps=5_000, breaker_min_samples=10,
                      breaker_open_ms=30_000)


def record_many(health: ChannelHealth, name: str, outcomes, at_ms: int = T0) -> None:
    for outcome in outcomes:
        health.record(name, outcome, 100, at_ms)


def opened(name: str = "a", at_ms: int = T0) -> ChannelHealth:
    health = ChannelHealth(POLICY)
    record_many(health, name, [Outcome.error] * 10, at_ms)
    assert health.breaker(name, at_ms) is Breaker.open
    return health


class TestBreakerOpens:
    def test_stays_closed_below_min_samples(self):
        health = ChannelHealth(POLICY)

        record_many(health, "a", [Outcome.error] * 9)

        assert health.breaker("a", T0) is Breaker.closed
        assert health.view("a", T0).error_rate_bps == 10_000

    @pytest.mark.parametrize("errors,breaker", [(4, Breaker.closed), (5, Breaker.open)])
    def test_opens_at_error_rate_threshold(self, errors, breaker):
        health = ChannelHealth(POLICY)

        record_many(health, "a", [Outcome.succeeded] * (10 - errors) + [Outcome.error] * errors)

        assert health.breaker("a", T0) is breaker

    def test_payer_declines_do_not_count_as_errors(self):
        health = ChannelHealth(POLICY)

        record_many(health, "a", [Outcome.declined] * 20)

        assert health.breaker("a", T0) is Breaker.closed
        assert health.view("a", T0)[:3] == (20, 0, 0)

    def test_old_samples_leave_window(self):
        health = ChannelHealth(POLICY)
        record_many(health, "a", [Outcome.error] * 5, at_ms=T0)

        record_many(health, "a", [Outcome.succeeded] * 5, at_ms=T0 + 60_001)

        assert health.view("a", T0 + 60_001)[:3] == (5, 10_000, 0)
        assert health.breaker("a", T0 + 60_001) is Breaker.closed


class TestBreakerProbe:
    def test_half_opens_after_open_ms(self):
        health = opened()

        states = [health.breaker("a", T0 + dt) for dt in (0, 29_999, 30_000)]

        assert states == [Breaker.open, Breaker.open, Breaker.half_open]

    def test_one_probe_only(self):
        health = opened("a")
        rules = routing(channel("a", priority=1), channel("b", priority=2),
                        health=POLICY.model_dump())
        now = T0 + 30_000
        first = plan_route(rules, payment("pay_1"), health.views(["a", "b"], now))
        health.probe_started(first.probe, now)

        second = plan_route(rules, payment("pay_2"), health.views(["a", "b"], now + 1))

        assert (first.probe, names(first)) == ("a", ["a", "b"])
        assert (second.probe, names(second)) == ("", ["b"])

    def test_probe_success_closes(self):
        health = opened()
        health.probe_started("a", T0 + 30_000)

        health.record("a", Outcome.succeeded, 80, T0 + 30_100)

        assert health.breaker("a", T0 + 30_100) is Breaker.closed
        assert health.view("a", T0 + 30_100).samples == 0   # judged afresh

    def test_probe_declined_by_payer_closes(self):
        health = opened()
        health.probe_started("a", T0 + 30_000)

        health.record("a", Outcome.declined, 80, T0 + 30_100)

        assert health.breaker("a", T0 + 30_100) is Breaker.closed

    def test_only_first_half_open_channel_probes(self):
        health = opened("a")
        record_many(health, "b", [Outcome.error] * 10)
        rules = routing(channel("a", priority=1), channel("b", priority=2),
                        channel("c", priority=3), health=POLICY.model_dump())

        plan = plan_route(rules, payment(), health.views(["a", "b", "c"], T0 + 30_000))

        assert plan.probe == "a"
        assert names(plan) == ["a", "c", "b"]

    def test_probe_error_reopens_for_another_open_ms(self):
        health = opened()
        health.probe_started("a", T0 + 30_000)

        health.record("a", Outcome.error, -1, T0 + 31_000)

        states = [health.breaker("a", T0 + dt) for dt in (31_000, 60_999, 61_000)]
        assert states == [Breaker.open, Breaker.open, Breaker.half_open]

    def test_lost_probe_frees_slot_after_open_ms(self):
        health = opened()
        health.probe_started("a", T0 + 30_000)

        states = [health.breaker("a", T0 + dt) for dt in (30_001, 59_999, 60_000)]

        assert states == [Breaker.open, Breaker.open, Breaker.half_open]


class TestHealthOrdering:
    RULES = routing(channel("a", priority=1), channel("b", priority=2),
                    channel("c", priority=3), health=POLICY.model_dump())

    def test_unhealthy_channel_moves_behind_healthy(self):
        health = {"a": SICK, "b": HEALTHY}

        plans = [plan_route(self.RULES, payment(f"pay_{i}"), health) for i in range(200)]

        assert {tuple(names(p)) for p in plans} == {("b", "c", "a")}

    @pytest.mark.parametrize("samples,success_bps,expected", [
        (19, 0, ["a", "b", "c"]),        # too few samples: no judgement yet
        (20, 4_999, ["b", "c", "a"]),
        (20, 5_000, ["a", "b", "c"]),    # at the minimum success rate: healthy
    ])
    def test_demoted_only_with_min_samples_below_min_success(self, samples, success_bps,
                                                             expected):
        health = {"a": view(samples=samples, success_bps=success_bps)}

        plan = plan_route(self.RULES, payment(), health)

        assert names(plan) == expected

    @pytest.mark.parametrize("p50_ms,expected", [(2_000, ["a", "b", "c"]),
                                                 (2_001, ["b", "c", "a"])])
    def test_slow_channel_moves_behind_healthy(self, p50_ms, expected):
        rules = routing(channel("a", priority=1), channel("b", priority=2),
                        channel("c", priority=3),
                        health={**POLICY.model_dump(), "max_latency_p50_ms": 2_000,
                                "exploration_bps": 0})
        health = {"a": HEALTHY._replace(latency_p50_ms=p50_ms)}

        assert names(plan_route(rules, payment(), health)) == expected

    def test_exploration_share_tries_demoted_first(self):
        explore = POLICY.model_copy(update={"exploration_bps": 1_000}).model_dump()
        rules = routing(*[c.model_dump() for c in self.RULES.channels], health=explore)
        health = {"a": SICK}

        plans = [plan_route(rules, payment(f"pay_{i:05d}"), health) for i in range(4_000)]

        explored = [p for p in plans if p.candidates[0].channel == "a"]
        assert 0.08 <= len(explored) / 4_000 <= 0.12
        assert {tuple(names(p)) for p in explored} == {("a", "b", "c")}
        assert all("(exploring a)" in p.candidates[0].reason for p in explored)
        assert {tuple(names(p)) for p in plans if p not in explored} == {("b", "c", "a")}

    def test_open_breaker_channel_left_out(self):
        health = {"a": view(breaker=Breaker.open), "b": SICK}

        plan = plan_route(self.RULES, payment(), health)

        assert names(plan) == ["c", "b"]

    def test_every_breaker_open_still_routed(self):
        health = ChannelHealth(POLICY)
        for name in ("a", "b", "c"):
            record_many(health, name, [Outcome.error] * 10)

        plan = plan_route(self.RULES, payment(), health.views(["a", "b", "c"], T0 + 1))

        assert plan is not None
        assert names(plan) == ["a", "b", "c"]
        assert plan.probe == ""
        assert "breaker open" in plan.scores


class TestWatched:
    @staticmethod
    def _write(path: Path, text: str, mtime_s: int) -> None:
        path.write_text(text)
        os.utime(path, (mtime_s, mtime_s))

    def test_bad_file_refused_and_valid_change_applied(self, tmp_path):
        good = (CONFIG_DIR / "routing.yaml").read_text()
        path = tmp_path / "routing.yaml"
        self._write(path, good, 1_000)
        watched = watch_routing(tmp_path)
        before = watched.current

        self._write(path, good.replace("max_attempts: 2", "max_attempts: 9"), 2_000)
        refused = watched.check()
        kept = watched.current
        changed = good.replace("max_attempts: 2", "max_attempts: 3")
        self._write(path, changed, 3_000)
        applied = watched.check()

        assert (refused, kept) == (False, before)
        assert applied is True
        assert watched.current.max_attempts == 3
        assert watched.version == version_of(changed.encode()) != before.version

    def test_unknown_channel_refused_old_rules_stay(self, tmp_path):
        good = (CONFIG_DIR / "routing.yaml").read_text()
        path = tmp_path / "routing.yaml"
        self._write(path, good, 1_000)
        watched = watch_routing(tmp_path)
        version = watched.version

        self._write(path, good.replace("[card_acquirer, card_backup]", "[card_ghost]"), 2_000)
        refused = watched.check()

        assert refused is False
        assert watched.version == version
        assert names(plan_route(watched.current, payment(currency="USD"))) == [
            "card_acquirer", "card_backup"]

    def test_unchanged_or_touched_file_not_reloaded(self, tmp_path):
        path = tmp_path / "routing.yaml"
        self._write(path, (CONFIG_DIR / "routing.yaml").read_text(), 1_000)
        watched = watch_routing(tmp_path)
        version = watched.version

        untouched = watched.check()
        self._write(path, path.read_text(), 2_000)   # touched, same bytes
        touched = watched.check()

        assert (untouched, touched) == (False, False)
        assert watched.version == version
