"""Risk scoring (``domain/risk.py``) and its rules file (``config/risk.yaml``).

Every rule kind is pinned at its boundary (at the limit: silent; one past it: fires), the
thresholds at theirs. Velocity is counted per payer row, this payment included, earlier ones
strictly inside the window, a payer's retry of the same payment once. A redelivered command
gets the verdict it got the first time and leaves the row alone. A property replays random
traffic twice and checks the verdicts are identical (the backtest relies on it) and that the
velocity count matches a small model of the window.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from domain.commands import Method, Pay, Payer, TopUp, Transfer, Withdraw
from domain.orders import fingerprint_of
from domain.risk import (
    Blocklist,
    PayerActivity,
    RiskDecision,
    RiskRules,
    facts_of,
    payer_key,
    screen,
)
from streams.config import ConfigError
from streams.rules_config import load_risk, version_of

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
T0 = 1_700_000_000_000
MINUTE_MS = 60_000


def pay(order: str = "o-1", amount: int = 1_000, currency: str = "USD",
        method: Method = Method.card, merchant: str = "m-1", **payer) -> Pay:
    return Pay(merchant_id=merchant, idempotency_key=f"k-{order}", merchant_order_no=order,
               amount_minor=amount, currency=currency, method=method, payer=Payer(**payer))


def risk_rules(*rules: dict, review: int = 50, decline: int = 100,
               categories: dict[str, str] | None = None, version: str = "") -> RiskRules:
    """Rules built from plain dicts, as the YAML loader hands them over (union on kind)."""
    return RiskRules.model_validate({
        "thresholds": {"review": review, "decline": decline},
        "merchant_categories": categories or {}, "rules": list(rules), "version": version,
    })


def verdict_of(rules: RiskRules, cmd, at_ms: int = T0, row: PayerActivity | None = None):
    return screen(row, cmd, fingerprint_of(cmd), at_ms, rules)[1]


def fired(rules: RiskRules, cmd, **kw) -> list[str]:
    return [h.rule_id for h in verdict_of(rules, cmd, **kw).hits]


def amount_limit(max_minor: int, **kw) -> dict:
    return {"id": "limit", "kind": "amount_limit", "score": 10, "max_minor": max_minor, **kw}


def velocity(window_ms: int = MINUTE_MS, rule_id: str = "vel", **kw) -> dict:
    return {"id": rule_id, "kind": "velocity", "score": 10, "window_ms": window_ms, **kw}


class TestAmountLimit:
    @pytest.mark.parametrize("amount,hits", [(4_999, []), (5_000, []), (5_001, ["limit"])])
    def test_fires_only_above_max(self, amount, hits):
        rules = risk_rules(amount_limit(5_000))

        found = fired(rules, pay(amount=amount))

        assert found == hits

    def test_reason_names_amount_and_limit(self):
        rules = risk_rules(amount_limit(5_000))

        verdict = verdict_of(rules, pay(amount=5_001))

        assert verdict.hits[0].reason == "amount 5001 USD over 5000"
        assert verdict.score == 10

    @pytest.mark.parametrize("cmd,hits", [
        (pay(amount=9_000, method=Method.card, currency="USD"), ["limit"]),
        (pay(amount=9_000, method=Method.bank, currency="USD"), []),
        (pay(amount=9_000, method=Method.card, currency="EUR"), []),
    ])
    def test_applies_only_to_its_methods_and_currency(self, cmd, hits):
        rules = risk_rules(amount_limit(5_000, methods=["card"], currency="USD"))

        found = fired(rules, cmd)

        assert found == hits

    def test_applies_only_to_its_command_types(self):
        rules = risk_rules(amount_limit(5_000, types=["withdraw"]))
        out = Withdraw(merchant_id="m-1", idempotency_key="k", merchant_order_no="w-1",
                       account_id="a-1", amount_minor=5_001, currency="USD")
        into = TopUp(merchant_id="m-1", idempotency_key="k", merchant_order_no="t-1",
                     account_id="a-1", amount_minor=5_001, currency="USD", method=Method.card)

        found = (fired(rules, out), fired(rules, into), fired(rules, pay(amount=5_001)))

        assert found == (["limit"], [], [])


class TestVelocityCount:
    def test_fires_when_count_exceeds_max_including_this_payment(self):
        rules = risk_rules(velocity(max_count=2))
        row, first = screen(None, pay("o-1"), "fp-1", T0, rules)
        row, second = screen(row, pay("o-2"), "fp-2", T0 + 1, rules)

        row, third = screen(row, pay("o-3"), "fp-3", T0 + 2, rules)

        assert [v.hits for v in (first, second)] == [(), ()]
        assert [h.rule_id for h in third.hits] == ["vel"]
        assert third.hits[0].reason == "3 payments in 60 s (max 2)"

    @pytest.mark.parametrize("gap_ms,hits", [
        (MINUTE_MS - 1, ["vel"]),   # strictly inside the window: counted
        (MINUTE_MS, []),            # exactly one window back: outside
        (MINUTE_MS + 1, []),
    ])
    def test_earlier_payment_counts_only_strictly_inside_window(self, gap_ms, hits):
        rules = risk_rules(velocity(max_count=1))
        row, _ = screen(None, pay("o-1"), "fp-1", T0, rules)

        _, verdict = screen(row, pay("o-2"), "fp-2", T0 + gap_ms, rules)

        assert [h.rule_id for h in verdict.hits] == hits

    def test_counted_per_payer_row(self):
        rules = risk_rules(velocity(max_count=1))
        alice, bob = pay("o-1", account_id="alice"), pay("o-2", account_id="bob")
        rows: dict[str, PayerActivity] = {}
        verdicts = []

        for cmd in (alice, bob, pay("o-3", account_id="alice")):
            key = payer_key(cmd)
            rows[key], verdict = screen(rows.get(key), cmd, fingerprint_of(cmd), T0, rules)
            verdicts.append([h.rule_id for h in verdict.hits])

        assert verdicts == [[], [], ["vel"]]
        assert sorted(rows) == ["acct:alice", "acct:bob"]
        assert len(rows["acct:alice"].seen) == 2

    def test_payer_retry_of_same_payment_counted_once(self):
        rules = risk_rules(velocity(max_count=1))
        first = pay("o-1", amount=1_000)
        retry = pay("o-1", amount=1_500)   # same payment id, other payload
        row, _ = screen(None, first, fingerprint_of(first), T0, rules)

        row, again = screen(row, retry, fingerprint_of(retry), T0 + 10, rules)
        _, other = screen(row, pay("o-2"), "fp-o-2", T0 + 20, rules)

        assert fingerprint_of(first) != fingerprint_of(retry)
        assert again.hits == ()
        assert [s.payment_id for s in row.seen] == [first.subject_id()]
        assert other.hits[0].reason == "2 payments in 60 s (max 1)"


class TestVelocitySum:
    @pytest.mark.parametrize("second_minor,hits", [(4_000, []), (4_001, ["vel"])])
    def test_fires_only_when_sum_exceeds_max(self, second_minor, hits):
        rules = risk_rules(velocity(max_sum_minor=10_000, currency="USD"))
        row, _ = screen(None, pay("o-1", amount=6_000), "fp-1", T0, rules)

        _, verdict = screen(row, pay("o-2", amount=second_minor), "fp-2", T0 + 1, rules)

        assert [h.rule_id for h in verdict.hits] == hits

    def test_other_currency_not_summed(self):
        rules = risk_rules(velocity(max_sum_minor=10_000, currency="USD"))
        row, _ = screen(None, pay("o-1", amount=9_000, currency="EUR"), "fp-1", T0, rules)

        _, verdict = screen(row, pay("o-2", amount=9_000), "fp-2", T0 + 1, rules)

        assert verdict.hits == ()

    @pytest.mark.parametrize("fields,message", [
        ({}, "max_count or max_sum_minor"),
        ({"max_sum_minor": 10}, "currency: required with max_sum_minor"),
        ({"max_count": 1, "window_ms": 999}, "greater than or equal to 1000"),
    ])
    def test_incomplete_rule_refused(self, fields, message):
        with pytest.raises(ValidationError, match=message):
            risk_rules(velocity(**fields))

    def test_history_is_longest_window(self):
        rules = risk_rules(velocity(rule_id="a", window_ms=MINUTE_MS, max_count=5),
                           velocity(rule_id="b", window_ms=3_600_000, max_count=50))

        assert rules.history_ms() == 3_600_000


class TestRedelivery:
    def test_redelivered_command_gets_same_verdict_and_row_unchanged(self):
        old = risk_rules(amount_limit(500), version="v-old")
        new = risk_rules(version="v-new")   # the rule is gone by the time the copy comes
        cmd = pay("o-1", amount=1_000)
        fingerprint = fingerprint_of(cmd)
        row, first = screen(None, cmd, fingerprint, T0, old)
        row, _ = screen(row, pay("o-2"), "fp-o-2", T0 + 5, old)

        again_row, again = screen(row, cmd, fingerprint, T0 + 10 * MINUTE_MS, new)

        assert again == first
        assert (again.score, again.version) == (10, "v-old")
        assert again_row == row

    def test_same_payment_other_payload_is_screened_afresh(self):
        rules = risk_rules(amount_limit(500))
        cmd, changed = pay("o-1", amount=100), pay("o-1", amount=1_000)
        row, first = screen(None, cmd, fingerprint_of(cmd), T0, rules)

        _, second = screen(row, changed, fingerprint_of(changed), T0 + 1, rules)

        assert (first.score, second.score) == (0, 10)


class TestBlocklist:
    RULE = {"id": "blocked", "kind": "blocklist", "score": 100,
            "accounts": ["bad-acct"], "cards": ["card-stolen"], "devices": ["dev-farm"],
            "ip_ranges": ["198.51.100.0/24", "2001:db8:bad::/48"]}

    @pytest.mark.parametrize("payer,hits", [
        ({"account_id": "bad-acct"}, ["blocked"]),
        ({"customer_id": "bad-acct"}, ["blocked"]),
        ({"account_id": "good-acct"}, []),
        ({"card_fingerprint": "card-stolen"}, ["blocked"]),
        ({"card_fingerprint": "card-fine"}, []),
        ({"device_id": "dev-farm"}, ["blocked"]),
        ({"device_id": "dev-phone"}, []),
    ])
    def test_fires_on_listed_ids_only(self, payer, hits):
        rules = risk_rules(self.RULE)

        found = fired(rules, pay(**payer))

        assert found == hits

    @pytest.mark.parametrize("ip,hits", [
        ("198.51.100.0", ["blocked"]),
        ("198.51.100.255", ["blocked"]),
        ("198.51.99.255", []),
        ("198.51.101.0", []),
        ("2001:db8:bad::1", ["blocked"]),
        ("2001:db8:bad:ffff:ffff:ffff:ffff:ffff", ["blocked"]),
        ("2001:db8:bae::", []),
        ("2001:db8:bac:ffff::1", []),
    ])
    def test_ip_ranges_v4_and_v6(self, ip, hits):
        rules = risk_rules(self.RULE)

        found = fired(rules, pay(ip=ip))

        assert found == hits

    @pytest.mark.parametrize("ip,hits", [
        ("::ffff:198.51.100.7", ["blocked"]),   # the IPv4 address, as dual-stack servers log it
        ("::ffff:198.51.101.7", []),
    ])
    def test_ipv4_mapped_ipv6_address_matches_ipv4_range(self, ip, hits):
        rules = risk_rules(self.RULE)

        found = fired(rules, pay(ip=ip))

        assert found == hits

    def test_reason_names_range(self):
        rules = risk_rules(self.RULE)

        verdict = verdict_of(rules, pay(ip="2001:db8:bad::7"))

        assert verdict.hits[0].reason == "ip in blocked range 2001:db8:bad::/48"
        assert verdict.decision is RiskDecision.decline

    def test_blocked_transfer_source_account(self):
        rules = risk_rules(self.RULE)
        cmd = Transfer(merchant_id="m-1", idempotency_key="k", merchant_order_no="x-1",
                       from_account_id="bad-acct", to_account_id="a-2", amount_minor=10,
                       currency="USD")

        found = fired(rules, cmd)

        assert found == ["blocked"]

    @pytest.mark.parametrize("cidr", ["10.0.0.0/33", "300.1.2.0/24", "2001:db8::/129", "nope"])
    def test_bad_cidr_refused(self, cidr):
        with pytest.raises(ValidationError, match="not an IP range"):
            Blocklist(id="b", kind="blocklist", score=1, ip_ranges=("10.0.0.0/8", cidr))


class TestNewAccount:
    RULE = {"id": "new", "kind": "new_account", "score": 30, "age_ms": 86_400_000,
            "max_minor": 2_000}

    @pytest.mark.parametrize("age_ms,amount,hits", [
        (0, 2_000, []),                     # at the amount limit: silent
        (0, 2_001, ["new"]),
        (86_400_000 - 1, 2_001, ["new"]),   # still younger than age_ms
        (86_400_000, 2_001, []),            # exactly age_ms old: no longer new
    ])
    def test_fires_for_young_payer_above_max(self, age_ms, amount, hits):
        rules = risk_rules(self.RULE)
        row = PayerActivity(first_seen_ms=T0)

        found = fired(rules, pay(amount=amount), at_ms=T0 + age_ms, row=row)

        assert found == hits

    def test_first_seen_is_first_screening_time(self):
        rules = risk_rules(self.RULE)
        row, _ = screen(None, pay("o-1", amount=10), "fp-1", T0, rules)

        row, verdict = screen(row, pay("o-2", amount=5_000), "fp-2", T0 + 86_400_000, rules)

        assert row.first_seen_ms == T0
        assert verdict.hits == ()


class TestCountryMismatch:
    RULE = {"id": "geo", "kind": "country_mismatch", "score": 25}

    @pytest.mark.parametrize("payer,hits", [
        ({"country": "DE", "card_country": "FR"}, ["geo"]),
        ({"country": "DE", "card_country": "DE"}, []),
        ({"country": "DE"}, []),
        ({"card_country": "FR"}, []),
    ])
    def test_fires_only_when_both_known_and_different(self, payer, hits):
        rules = risk_rules(self.RULE)

        found = fired(rules, pay(**payer))

        assert found == hits


class TestMerchantCategory:
    RULE = {"id": "bet", "kind": "merchant_category", "score": 50, "categories": ["7995"],
            "max_minor": 100_000}

    @pytest.mark.parametrize("merchant,amount,hits", [
        ("casino", 100_000, []),
        ("casino", 100_001, ["bet"]),
        ("grocer", 100_001, []),
        ("unlisted", 100_001, []),
    ])
    def test_fires_for_listed_category_above_max(self, merchant, amount, hits):
        rules = risk_rules(self.RULE, categories={"casino": "7995", "grocer": "5411"})

        found = fired(rules, pay(merchant=merchant, amount=amount))

        assert found == hits


class TestThresholds:
    @pytest.mark.parametrize("score,decision,ttl_ms", [
        (0, RiskDecision.approve, 0),
        (49, RiskDecision.approve, 0),
        (50, RiskDecision.review, 3_600_000),
        (99, RiskDecision.review, 3_600_000),
        (100, RiskDecision.decline, 0),
        (250, RiskDecision.decline, 0),
    ])
    def test_score_maps_to_decision(self, score, decision, ttl_ms):
        rule = amount_limit(0, score=score)
        rules = RiskRules.model_validate({"thresholds": {"review": 50, "decline": 100},
                                         "review_ttl_ms": 3_600_000, "rules": [rule]})

        verdict = verdict_of(rules, pay())

        assert (verdict.score, verdict.decision, verdict.review_ttl_ms) == (score, decision,
                                                                           ttl_ms)

    def test_scores_of_fired_rules_add_up(self):
        rules = risk_rules(amount_limit(0, id="a", score=30), amount_limit(0, id="b", score=25),
                           amount_limit(10**9, id="c", score=40))

        verdict = verdict_of(rules, pay())

        assert [h.rule_id for h in verdict.hits] == ["a", "b"]
        assert (verdict.score, verdict.decision) == (55, RiskDecision.review)

    def test_decline_below_review_refused(self):
        with pytest.raises(ValidationError, match="at least the review threshold"):
            risk_rules(review=60, decline=59)

    def test_duplicate_rule_ids_refused(self):
        with pytest.raises(ValidationError, match="is used twice"):
            risk_rules(amount_limit(1), amount_limit(2))


class TestPayerKey:
    @pytest.mark.parametrize("payer,key", [
        ({"account_id": "a", "customer_id": "c", "card_fingerprint": "f", "device_id": "d"},
         "acct:a"),
        ({"customer_id": "c", "card_fingerprint": "f", "device_id": "d"}, "cust:c"),
        ({"card_fingerprint": "f", "device_id": "d"}, "card:f"),
        ({"device_id": "d", "ip": "10.0.0.1", "country": "DE"}, "dev:d"),
    ])
    def test_pay_keyed_by_most_specific_payer_id(self, payer, key):
        assert payer_key(pay(**payer)) == key

    def test_unnamed_payer_screened_alone_per_payment(self):
        one, two = pay("o-1", ip="10.0.0.1"), pay("o-2", ip="10.0.0.1")

        keys = (payer_key(one), payer_key(two))

        assert keys == (f"pay:{one.subject_id()}", f"pay:{two.subject_id()}")
        assert keys[0] != keys[1]

    def test_wallet_commands_keyed_by_their_account(self):
        transfer = Transfer(merchant_id="m", idempotency_key="k", merchant_order_no="o",
                            from_account_id="src", to_account_id="dst", amount_minor=1,
                            currency="USD")
        topup = TopUp(merchant_id="m", idempotency_key="k", merchant_order_no="o",
                      account_id="w1", amount_minor=1, currency="USD", method=Method.card)
        withdraw = Withdraw(merchant_id="m", idempotency_key="k", merchant_order_no="o",
                            account_id="w2", amount_minor=1, currency="USD")

        keys = [payer_key(c) for c in (transfer, topup, withdraw)]

        assert keys == ["acct:src", "acct:w1", "acct:w2"]
        assert facts_of(transfer).method is Method.balance
        assert facts_of(withdraw).accounts == ("w2",)


class TestRiskFile:
    def test_shipped_file_loads(self):
        raw = (CONFIG_DIR / "risk.yaml").read_bytes()

        rules = load_risk(CONFIG_DIR)

        assert rules.version == version_of(raw)
        assert len(rules.version) == 10
        assert (rules.thresholds.review, rules.thresholds.decline) == (50, 100)
        assert [r.kind for r in rules.rules] == [
            "amount_limit", "amount_limit", "velocity", "velocity", "blocklist",
            "new_account", "country_mismatch", "merchant_category"]
        assert rules.history_ms() == 3_600_000

    def test_shipped_file_declines_stolen_card_and_stamps_version(self):
        rules = load_risk(CONFIG_DIR)

        verdict = verdict_of(rules, pay(card_fingerprint="card-stolen-0001"))

        assert verdict.decision is RiskDecision.decline
        assert [h.rule_id for h in verdict.hits] == ["blocked"]
        assert verdict.version == rules.version

    @staticmethod
    def _broken(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
        text = (CONFIG_DIR / "risk.yaml").read_text()
        assert text.count(old) == 1, old
        lines = text.splitlines(keepends=True)
        line = next(i for i, s in enumerate(lines, 1) if old in s)
        path = tmp_path / "risk.yaml"
        path.write_text(text.replace(old, new))
        return path, line

    def test_negative_velocity_window_refused_naming_line_and_field(self, tmp_path):
        path, line = self._broken(tmp_path, "window_ms: 60000", "window_ms: -5")

        with pytest.raises(ConfigError) as caught:
            load_risk(tmp_path, path)

        message = str(caught.value)
        assert f"risk.yaml:{line}: rules.2.velocity.window_ms:" in message
        assert "greater than or equal to 1000" in message
        assert message.count("\n") == 0   # one problem, one line

    def test_bad_cidr_refused_at_load_naming_line(self, tmp_path):
        path, line = self._broken(tmp_path, "198.51.100.0/24", "198.51.100.0/33")

        with pytest.raises(ConfigError) as caught:
            load_risk(tmp_path, path)

        assert f"risk.yaml:{line}: rules.4.blocklist.ip_ranges:" in str(caught.value)
        assert "not an IP range: '198.51.100.0/33'" in str(caught.value)

    def test_duplicate_rule_id_refused_naming_its_line(self, tmp_path):
        path, line = self._broken(tmp_path, "id: betting-large", "id: card-country")

        with pytest.raises(ConfigError) as caught:
            load_risk(tmp_path, path)

        assert "rules.7.id: Value error, rule id card-country is used twice" in str(caught.value)
        assert f"risk.yaml:{line}:" in str(caught.value)

    def test_unknown_rule_kind_refused_naming_line(self, tmp_path):
        path, line = self._broken(tmp_path, "kind: country_mismatch", "kind: country_match")

        with pytest.raises(ConfigError) as caught:
            load_risk(tmp_path, path)

        assert f"risk.yaml:{line - 1}: rules.6:" in str(caught.value)


# ---------------------------------------------------------------- properties

WINDOW_MS = 10_000
VELOCITY_RULES_MAX = 40
PAYERS = (
    Payer(account_id="a-1"),
    Payer(customer_id="c-1", country="DE", card_country="FR"),
    Payer(card_fingerprint="card-1", ip="198.51.100.7"),
    Payer(device_id="dev-1"),
    Payer(ip="2001:db8::1"),   # unnamed: alone per payment
)
# One velocity rule per count: rule ``v<k>`` fires iff more than k payments are in the
# window, so the count is 1 + the number of ``v`` rules that fired.
PROPERTY_RULES = risk_rules(
    *(velocity(WINDOW_MS, rule_id=f"v{k}", max_count=k, score=1)
      for k in range(1, VELOCITY_RULES_MAX + 1)),
    {"id": "new", "kind": "new_account", "score": 1, "age_ms": 15_000, "max_minor": 1_000},
    {"id": "geo", "kind": "country_mismatch", "score": 1},
    {"id": "usd-sum", "kind": "velocity", "score": 1, "window_ms": WINDOW_MS,
     "max_sum_minor": 6_000, "currency": "USD"},
    amount_limit(3_000, id="big", score=1),
    review=20, decline=30, version="prop",
)
steps = st.tuples(
    st.sampled_from([0, 0, 0, 1, 1, 2, 3, 4]),                   # payer, mostly a few
    st.integers(0, 7),                                           # merchant order
    st.sampled_from([500, 2_000, 4_000]),                        # amount
    st.sampled_from(["USD", "EUR"]),
    st.one_of(st.sampled_from([0, 0, 1, 1_000, 2_500, WINDOW_MS - 1, WINDOW_MS,
                               WINDOW_MS + 1]),
              st.integers(0, 2 * WINDOW_MS)),                    # time since last step
)


def _command(payer: int, order: int, amount: int, currency: str) -> Pay:
    return Pay(merchant_id="m-1", idempotency_key=f"k-{order}-{amount}",
               merchant_order_no=f"o-{order}", amount_minor=amount, currency=currency,
               method=Method.card, payer=PAYERS[payer])


def _replay(script) -> tuple[list, dict]:
    rows: dict[str, PayerActivity] = {}
    verdicts, at_ms = [], T0
    for payer, order, amount, currency, gap_ms in script:
        at_ms += gap_ms
        cmd = _command(payer, order, amount, currency)
        key = payer_key(cmd)
        rows[key], verdict = screen(rows.get(key), cmd, fingerprint_of(cmd), at_ms,
                                    PROPERTY_RULES)
        verdicts.append(verdict)
    return verdicts, rows


def _count(verdict) -> int:
    return 1 + sum(1 for h in verdict.hits if h.rule_id.startswith("v"))


class TestScreenProperties:
    @settings(max_examples=80, deadline=None, database=None)
    @given(st.lists(steps, min_size=4, max_size=30))
    def test_replay_gives_identical_verdicts_and_rows(self, script):
        first, first_rows = _replay(script)

        second, second_rows = _replay(script)

        assert second == first
        assert second_rows == first_rows

    @settings(max_examples=80, deadline=None, database=None)
    @given(st.lists(steps, min_size=4, max_size=30))
    def test_velocity_count_matches_window_model(self, script):
        verdicts, _ = _replay(script)
        ids: dict[str, set[str]] = {}           # payer -> payment ids screened so far
        window: dict[str, dict[str, int]] = {}  # payer -> payment id -> counted at_ms
        answered: dict[tuple[str, str, str], object] = {}
        at_ms = T0

        for step, verdict in zip(script, verdicts, strict=True):
            payer, order, amount, currency, gap_ms = step
            at_ms += gap_ms
            cmd = _command(payer, order, amount, currency)
            key, pid, fp = payer_key(cmd), cmd.subject_id(), fingerprint_of(cmd)
            ids.setdefault(key, set()).add(pid)
            seen = window.setdefault(key, {})
            count = _count(verdict)
            assert 1 <= count <= len(ids[key]), (key, count, ids[key])
            if (key, pid, fp) in answered:           # redelivered: the same answer
                assert verdict == answered[key, pid, fp]
                continue
            answered[key, pid, fp] = verdict
            if pid not in seen:                      # a new payment for this payer
                earlier = sum(1 for t in seen.values() if at_ms - WINDOW_MS < t <= at_ms)
                assert count == 1 + earlier, (key, pid, seen, at_ms)
                seen[pid] = at_ms
            for old, t in list(seen.items()):        # the row forgets what no window needs
                if t < at_ms - WINDOW_MS:
                    del seen[old]
