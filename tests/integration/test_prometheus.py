"""The dashboards and alert rules against a real Prometheus (Debian's, installed by
``make test``) scraping a real stack under a short load with faults and bad input.

Every Grafana panel's query is run through Prometheus's HTTP API: each must return data,
and each must have moved (a value above zero at some point of the run) unless the panel
counts something that must not happen here (a ledger violation, a stuck payment). Every
alert rule evaluates without error. The dashboards are drawn to PNG from the scraped
series, for people to look at: ``.paycore/artifacts/dashboards/``.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid

import httpx
import pytest
from pydantic import SecretStr

from paycore import dashboards, prometheus
from paycore import scenario as sc
from paycore.hooks import Receiver
from paycore.observe import command_producer
from paycore.stack import Stack, wait_until_ready
from streams import topics as t
from streams.broker import free_port
from streams.settings import ROOT

pytestmark = pytest.mark.integration

ARTIFACTS = ROOT / ".paycore" / "artifacts" / "dashboards"
MERCHANT = "m-observed"

SCENARIO = """
name: observability
description: cards, wallets and banks; an acquirer outage (its breaker opens, cards fail
  over), declines the backup acquirer takes back, doubled wallet callbacks, refunds the
  wallet makes itself, and a settlement report with drift.
seed: 9009
duration_s: 24
payers: 400
channels:
  card_acquirer: {callback_timeout_ms: 2000, status_query_timeout_ms: 500,
                  failover_on_timeout: true}
  card_backup: {callback_timeout_ms: 2000, status_query_timeout_ms: 500}
load:
  - {from_s: 0, to_s: 24, rate_per_s: 8, methods: {card: 5, wallet: 3, bank: 2},
     currencies: {USD: 3, EUR: 1}, amount_min_minor: 500, amount_max_minor: 30000}
faults:
  - {channel: card_acquirer, kind: outage, from_s: 4, to_s: 16}
  - {channel: card_backup, kind: success_after_decline, from_s: 0, to_s: 24, rate_bps: 1000}
  - {channel: wallet, kind: duplicate_callbacks, from_s: 0, to_s: 24, rate_bps: 3000}
  - {channel: wallet, kind: channel_refund, from_s: 0, to_s: 24, rate_bps: 1000}
settlement:
  drift: {missing_lines: 1, amount_drifts: 1, fee_drifts: 1, duplicate_lines: 1}
  wait_s: 20
"""

MAY_STAY_ZERO = {
    "Stuck payments": "a stuck payment is a failure of this run",
    "Audit violations": "a violation is a failure of this run",
    "Violations by check": "a violation is a failure of this run",
    "Money in flight by currency (minor units)": "an entry is in flight between two legs "
    "being applied: usually for less than a scrape interval",
    "Entries in flight": "the same moment counted in entries: a gauge that is back at zero "
    "before most scrapes (it failed CI once by staying zero)",
    "Rebalances (1h)": "one member per group here: each process's only rebalance is its "
    "first join, before its first scrape (the next panel shows it)",
}


def _rules(url: str) -> list[dict]:
    body = httpx.get(f"{url}/api/v1/rules", timeout=10).json()
    return [rule for group in body["data"]["groups"] for rule in group["rules"]]


def test_every_panel_query_returns_data_and_every_rule_evaluates(own_settings, tmp_path):
    assert prometheus.available(), "prometheus is not installed: run " \
        "scripts/install-system-deps.sh (make test does)"
    source = tmp_path / "observability.yaml"
    source.write_text(SCENARIO)
    scenario = sc.load_scenario(source)
    key = f"key-{uuid.uuid4().hex}"
    settings = own_settings.model_copy(update={
        "config_dir": sc.write_config(scenario, own_settings.config_dir, tmp_path / "config"),
        "simulator_seed": scenario.seed, "prometheus_port": free_port(),
        "prometheus_scrape_interval": "1s", "api_keys": {MERCHANT: SecretStr(key)},
        "webhook_allow_private": True, "webhook_backoff_ms": 200})
    hooks = Receiver(fail_first=1, fail_every=5)
    with Stack(settings, workers=1, with_prometheus=True) as stack:
        url = stack.prometheus_url()
        wait_until_ready(stack.settings)
        jobs = {"paycore-workers", "paycore-api", "paycore-simulator", "paycore-auditor",
                "paycore-webhooks"}
        dashboards.wait_for_scrapes(url, jobs)
        started = time.time()
        api = f"http://127.0.0.1:{stack.settings.api_port}"
        httpx.put(f"{api}/v1/webhooks/endpoint", json={"url": hooks.url}, timeout=15,
                  headers={"Authorization": f"Bearer {key}"}).raise_for_status()
        _bad_input(stack.settings.kafka_bootstrap)
        _large_tickets(api, key)
        _reload_rules(stack.settings.config_dir)
        (tmp_path / "out").mkdir()
        sc.drive(scenario, stack.settings, MERCHANT, tmp_path / "out", print, "attached")
        _bad_input(stack.settings.kafka_bootstrap)  # again: a counter's first value is no rate
        time.sleep(3)  # a last scrape and rule evaluation of the settled state
        end = time.time()

        queries = dashboards.panel_queries()
        answers = dashboards.evaluate(url, queries, window_s=30, at=end)
        run_s = int(end - started) + 5
        peaks = dashboards.evaluate(url, [
            dashboards.PanelQuery(q.dashboard, q.panel, f"max_over_time(({q.expr})[{run_s}s:2s])",
                                  q.legend) for q in queries], window_s=30, at=end)
        rules = _rules(url)
        shutil.rmtree(ARTIFACTS, ignore_errors=True)
        pngs = dashboards.render(url, dashboards.OUT_DIR, ARTIFACTS, started, end, window_s=30)
        (ARTIFACTS / "panels.txt").write_text(dashboards.check_table(answers) + "\n")
    hooks.close()

    table = dashboards.check_table(answers)
    print(table)
    assert len(queries) >= 50, table
    empty = [f"{a.query.dashboard} / {a.query.panel}: {a.error or 'no series'}"
             for a in answers if not a.series]
    assert not empty, "\n".join(empty) + "\n" + table
    moved = {(p.query.dashboard, p.query.panel) for p in peaks if any(v > 0 for v in p.values)}
    still = sorted({f"{p.query.dashboard} / {p.query.panel}" for p in peaks
                    if p.query.panel not in MAY_STAY_ZERO
                    and (p.query.dashboard, p.query.panel) not in moved})
    assert not still, "never moved during the run:\n" + "\n".join(still)
    for must_be_zero in ("Stuck payments", "Audit violations", "Violations by check"):
        values = [v for a in answers if a.query.panel == must_be_zero for v in a.values]
        assert values and all(v == 0 for v in values), (must_be_zero, values)

    assert len(rules) >= 10
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not broken, broken
    firing = {r["name"] for r in rules if r.get("state") == "firing"}
    assert not firing & {"LedgerAuditViolation", "PaymentsStuck"}, firing
    assert len(pngs) == len(dashboards.BOARDS)
    assert all(p.stat().st_size > 20_000 for p in pngs), [p.stat().st_size for p in pngs]


def _bad_input(bootstrap: str) -> None:
    """Commands the intake must dead-letter: the dead-letter panels need a reason."""
    producer = command_producer(bootstrap)
    for value in (b"not json", json.dumps({"type": "pay", "amount_minor": -5}).encode()):
        producer.send(t.COMMANDS, key=b"bad", value=value)
    producer.flush()
    producer.close()


def _large_tickets(api: str, key: str) -> None:
    """Card payments over the risk rules' limits, over HTTP: rule hits, reviews (50,000.00
    and more) and a decline (500,000.00 and more)."""
    for i, amount in enumerate((6_000_000, 6_000_001, 60_000_000)):
        httpx.post(f"{api}/v1/payments", timeout=15, json={
            "merchant_order_no": f"large-{i}", "amount": amount, "currency": "USD",
            "method": "card"}, headers={"Authorization": f"Bearer {key}",
                                        "Idempotency-Key": f"large-{i}"}).raise_for_status()


def _reload_rules(config_dir) -> None:
    """A risk analyst's edit: the reload panels count it."""
    path = config_dir / "risk.yaml"
    path.write_text(path.read_text() + "\n# tuned during the observability test\n")
