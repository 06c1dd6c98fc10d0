"""Risk screening and routing through the real broker, worker and simulator, with the
shipped rules (config/risk.yaml, config/routing.yaml; test timeouts from conftest).

Magic amounts: ...503 is declined by the channel with its technical code on a payment's
first attempt, so the order fails over to the next candidate.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter

import pytest
from helpers import pay, read_topic, wait_for_final

from domain.commands import Method
from domain.events import RiskScreened
from domain.ids import payment_id_for
from domain.risk import Verdict
from domain.routing import Payment, plan_route
from paycore.backtest import InputTally, read_input, replay_risk, run_record
from streams import topics as t
from streams.rules_config import load_risk, load_routing

pytestmark = pytest.mark.integration


def _send(producer, command: dict) -> None:
    producer.send(t.COMMANDS, key=command["merchant_order_no"].encode(),
                  value=json.dumps(command).encode())
    producer.flush()


def _reasons(observer, merchant: str, order_no: str) -> list[str]:
    return [f"{e.status}: {e.reason}" for e in observer.history[payment_id_for(merchant,
                                                                              order_no)]]


def _review(merchant: str, order_no: str, decision: str, comment: str = "") -> dict:
    return {"type": "review", "merchant_id": merchant, "merchant_order_no": order_no,
            "idempotency_key": f"review-{order_no}", "decision": decision,
            "reviewer": "ops-anna", "comment": comment}


class TestRisk:
    def test_blocked_device_declined_with_the_rule_and_rules_version(
            self, stack, producer, observer, merchant):
        _send(producer, pay(merchant, "blocked", payer={"device_id": "device-emulator-farm"}))

        final = wait_for_final(observer, merchant, "blocked")

        assert final.status == "failed", _reasons(observer, merchant, "blocked")
        assert "risk decline, score 100: blocked +100 (device device-emulator-farm blocked)" \
            in final.reason
        assert "[rules " in final.reason

    def test_clean_payment_records_the_approving_rules_version(
            self, stack, producer, observer, merchant):
        _send(producer, pay(merchant, "clean", payer={"customer_id": f"c-{merchant}"}))

        final = wait_for_final(observer, merchant, "clean")

        assert final.status == "succeeded"
        first = observer.history[payment_id_for(merchant, "clean")][0]
        assert first.reason.startswith("accepted; risk approve, score 0 [rules ")

    def test_review_then_approve_goes_on_to_the_channel(self, stack, producer, observer,
                                                      merchant):
        # Over the card USD limit (+50) from a payer first seen today (+30): 80, review.
        _send(producer, pay(merchant, "big", amount_minor=6_000_000,
                            payer={"customer_id": f"c-{merchant}"}))
        held = wait_for_final(observer, merchant, "big", statuses={"risk_review"})
        assert held is not None, _reasons(observer, merchant, "big")
        assert "card-usd-large +50" in held.reason and "new-payer-large +30" in held.reason

        _send(producer, _review(merchant, "big", "approve", "called the customer"))

        final = wait_for_final(observer, merchant, "big")
        assert final.status == "succeeded", _reasons(observer, merchant, "big")
        assert final.channel == "card_acquirer"  # over card_backup's amount band
        assert any("approved in review by ops-anna: called the customer" in r
                   for r in _reasons(observer, merchant, "big"))

    def test_review_then_reject_fails_it_and_a_second_decision_is_refused(
            self, stack, producer, observer, merchant):
        _send(producer, pay(merchant, "big", amount_minor=7_000_000))
        assert wait_for_final(observer, merchant, "big", statuses={"risk_review"})

        _send(producer, _review(merchant, "big", "reject"))
        final = wait_for_final(observer, merchant, "big")
        late = _review(merchant, "big", "approve") | {"idempotency_key": "review-again"}
        _send(producer, late)

        assert final.status == "failed"
        assert final.reason == "rejected in review by ops-anna"
        payment_id = payment_id_for(merchant, "big")
        assert observer.wait_until(lambda: any(
            r.payment_id == payment_id and r.code == "review_not_pending"
            for r in observer.rejections), 15)
        assert observer.status[payment_id].status == "failed"

    def test_velocity_counted_per_payer_across_payments(self, stack, producer, observer,
                                                        merchant):
        payer = {"customer_id": f"c-{merchant}"}
        for n in range(51):
            producer.send(t.COMMANDS, key=f"v-{n}".encode(),
                          value=json.dumps(pay(merchant, f"v-{n}", payer=payer)).encode())
        producer.flush()

        finals = [wait_for_final(observer, merchant, f"v-{n}") for n in range(51)]

        assert all(f is not None and f.status == "succeeded" for f in finals)
        firsts = {n: observer.history[payment_id_for(merchant, f"v-{n}")][0].reason
                  for n in range(51)}
        fired = sorted(n for n, reason in firsts.items() if "velocity-count-minute +30" in reason)
        # The payer's 51st payment within a minute fires the rule (max_count 50): exactly one,
        # whichever reached risk last (the topic's order, not the send loop's, decides).
        assert len(fired) == 1, firsts
        assert "51 payments in 60 s (max 50)" in firsts[fired[0]]


class TestRouting:
    def test_retriable_decline_fails_over_to_the_next_candidate(
            self, stack, producer, observer, merchant):
        _send(producer, pay(merchant, "failover", amount_minor=2_503))

        final = wait_for_final(observer, merchant, "failover")

        reasons = _reasons(observer, merchant, "failover")
        assert final.status == "succeeded" and final.channel == "card_backup", reasons
        assert any("failover from card_acquirer to card_backup after retriable decline "
                   "issuer_unavailable (attempt 2 of 2)" in r for r in reasons), reasons

    def test_retriable_decline_without_another_candidate_fails(
            self, stack, producer, observer, merchant):
        _send(producer, pay(merchant, "no-alt", amount_minor=2_503, method="wallet"))

        final = wait_for_final(observer, merchant, "no-alt")

        assert final.status == "failed"
        assert final.reason == "declined: wallet_unavailable"

    def test_weighted_split_routes_each_payment_as_the_rules_say(
            self, stack, producer, observer, merchant):
        rules = load_routing(stack.settings.config_dir)
        orders = [f"eur-{n}" for n in range(30)]
        for order_no in orders:
            command = pay(merchant, order_no, amount_minor=1_000, currency="EUR")
            producer.send(t.COMMANDS, key=order_no.encode(), value=json.dumps(command).encode())
        producer.flush()

        finals = {o: wait_for_final(observer, merchant, o) for o in orders}

        expected = {o: plan_route(rules, Payment(payment_id_for(merchant, o), merchant,
                                                 Method.card, "EUR", 1_000)
                                  ).candidates[0].channel for o in orders}
        assert {o: f.channel for o, f in finals.items()} == expected
        assert set(expected.values()) == {"card_acquirer", "card_backup"}

    def test_routing_and_risk_metrics_exported(self, stack, producer, observer, merchant):
        _send(producer, pay(merchant, "metrics", amount_minor=4_503))
        assert wait_for_final(observer, merchant, "metrics").status == "succeeded"

        port = stack.settings.worker_web_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        text = text.decode()

        assert 'paycore_risk_decisions_total{decision="approve"}' in text
        assert 'paycore_routing_decisions_total{channel="card_acquirer",rule="card-default"}' \
            in text
        assert 'paycore_channel_failovers_total{cause="retriable_decline",' \
               'from_channel="card_acquirer",to_channel="card_backup"}' in text
        assert 'paycore_channel_attempts_total{channel="card_acquirer",outcome="error"}' in text
        assert 'paycore_channel_breaker_state{channel="card_acquirer"}' in text
        assert 'paycore_config_info{file="routing.yaml",version="' in text


class TestBacktestReproducesLive:
    def test_recorded_risk_input_replayed_with_the_live_rules_gives_the_live_verdicts(
            self, stack, stack_settings, producer, observer, merchant, tmp_path):
        # A mix that fires rules: velocity (one payer, 55 payments), blocklist, review.
        payer = {"customer_id": f"c-{merchant}", "country": "DE", "card_country": "US"}
        commands = [pay(merchant, f"bt-{n}", amount_minor=1_000 + n, payer=payer)
                    for n in range(55)]
        commands.append(pay(merchant, "bt-blocked", payer={"ip": "198.51.100.9"}))
        commands.append(pay(merchant, "bt-big", amount_minor=9_000_000, payer=payer))
        for command in commands:
            producer.send(t.COMMANDS, key=command["merchant_order_no"].encode(),
                          value=json.dumps(command).encode())
        producer.flush()
        for command in commands:
            assert wait_for_final(observer, merchant, command["merchant_order_no"],
                                  statuses={"succeeded", "failed", "risk_review"})
        out = tmp_path / "risk.jsonl"

        assert run_record(stack_settings, out) == 0
        rules = load_risk(stack_settings.config_dir)
        replayed: dict[str, Verdict] = {}
        for screening in replay_risk(read_input(out.read_bytes().splitlines(),
                                                InputTally()), rules):
            replayed.setdefault(screening.payment_id, screening.verdict)

        live: dict[str, Verdict] = {}
        for _, env in read_topic(stack_settings.kafka_bootstrap, t.ORDERS,
                                 stack_settings.partitions,
                                 lambda body: isinstance(body, RiskScreened),
                                 want=10**9, timeout_s=8):
            live.setdefault(env.body.payment_id, env.body.verdict)
        mine = {payment_id_for(merchant, c["merchant_order_no"]) for c in commands}
        assert mine <= set(live) and mine <= set(replayed)
        assert replayed == live  # every payment screened since the stack started
        # The payer's 56 payments reach risk in the topic's order, not the send loop's: the
        # 51st to 56th fire velocity (+30 on top of the country mismatch's +25: review).
        decisions = Counter(live[p].decision.value for p in mine)
        fired = Counter(h.rule_id for p in mine for h in live[p].hits)
        assert (fired["velocity-count-minute"], fired["card-country"], fired["blocked"]) == \
            (6, 56, 1), fired
        assert decisions["decline"] == 2 and decisions["approve"] + decisions["review"] == 55
        assert decisions["review"] in (5, 6), decisions
