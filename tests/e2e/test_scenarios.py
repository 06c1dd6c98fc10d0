"""Every shipped scenario, in its short form, against a stack of its own (worker, simulator
and auditor as processes; the embedded broker unless PAYCORE_KAFKA_BOOTSTRAP names one).

Each must end with every payment final and every invariant holding (auditor: checks ran,
no violation; ledger zero-sum; balances rebuild; the merchant holds exactly what the
outcomes say), plus what the scenario is about. The commands a run sent are compared with
the load generated again from the seed: same seed, same load, without a second run.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from paycore import scenario as sc
from streams.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

PARTITIONS = 4
SCENARIO_S_MAX = 90
"""A short scenario takes about 35-45 s on two cores (stack start included)."""


def _run(name: str, tmp_path) -> dict:
    scenario = sc.load_scenario(sc.SCENARIOS_DIR / f"{name}.yaml")
    settings = Settings(kafka_bootstrap=os.environ.get("PAYCORE_KAFKA_BOOTSTRAP", ""),
                        partitions=PARTITIONS, data_dir=tmp_path, api_port=0,
                        worker_web_port=0, simulator_metrics_port=0, auditor_metrics_port=0,
                        webhooks_metrics_port=0)
    said: list[str] = []
    started = time.monotonic()

    report = sc.run_scenario(scenario, settings, sc.RunOptions(
        short=True, out_dir=tmp_path / "out", attach=False, say=said.append))

    elapsed_s = time.monotonic() - started
    text = "\n".join(said)
    where = f"scenario {name} seed {scenario.seed} (short)\n{text}"
    assert report["ok"], where
    assert elapsed_s < SCENARIO_S_MAX, where
    _assert_every_payment_final_and_books_balanced(report, where)
    _assert_files_hold_the_seeded_load(scenario.shortened(), report, tmp_path / "out")
    return report


def _assert_every_payment_final_and_books_balanced(report: dict, where: str) -> None:
    payments = report["payments"]
    checks = {c["name"]: c for c in report["invariants"]}
    assert payments["planned"] > 50, where
    assert payments["final"] == payments["sent"] == payments["planned"], where
    assert not set(payments["by_status"]) & sc.OPEN_STATUSES, where
    for name in ("every payment final", "status only moves forward",
                 "ledger zero-sum per currency", "reported balances equal rebuild from journal",
                 "merchant balance equals outcomes", "auditor: checks ran, no violations"):
        assert checks[name]["ok"] is True, (name, where)
    assert report["scenario"]["short"] is True


def _assert_files_hold_the_seeded_load(scenario: sc.Scenario, report: dict, out) -> None:
    """The report on disk is the one returned; the commands sent are the seed's load."""
    assert json.loads((out / "report.json").read_text())["ok"] is True
    assert (out / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    sent = [json.loads(line) for line in (out / "commands.jsonl").read_text().splitlines()]
    again = sc.generate_load(scenario, report["scenario"]["merchant_id"])
    assert sent == [{"at_ms": p.at_ms, "command": p.command} for p in again]


def test_normal_day_every_channel_healthy(tmp_path):
    report = _run("normal-day", tmp_path)

    channels = report["payments"]["by_channel"]
    assert {"card_acquirer", "online_bank", "wallet"} <= set(channels)
    assert report["failovers"]["total"] == 0
    assert report["timeouts"]["timed_out"] == 0
    succeeded = report["payments"]["by_status"]["succeeded"]
    assert succeeded >= 0.8 * report["payments"]["planned"]


def test_card_acquirer_outage_fails_over_to_backup(tmp_path):
    report = _run("card-acquirer-outage", tmp_path)

    outage = report["faults"][0]
    assert outage["kind"] == "outage" and outage["injected"] > 0
    assert outage["detected"] == outage["injected"], outage
    assert report["failovers"]["by_route"].get("card_acquirer -> card_backup", 0) > 0
    assert report["failovers"]["worker_metric"] == report["failovers"]["total"]
    assert outage["ended_on"].get("card_backup", 0) > 0, outage  # routed there meanwhile


def test_wallet_callback_storm_every_copy_absorbed(tmp_path):
    report = _run("wallet-callback-storm", tmp_path)

    injected = {row["kind"]: row["injected"] for row in report["faults"]}
    assert injected["duplicate_callbacks"] > 0 and injected["out_of_order"] > 0
    callbacks = report["callbacks"]
    copies = callbacks["copies_injected_by_channel"]["wallet"]
    assert copies > 0
    assert callbacks["replayed_by_channel"]["wallet"] >= copies, callbacks


def test_bank_timeouts_resolved_by_query_and_late_success(tmp_path):
    report = _run("bank-timeouts", tmp_path)

    timeouts = report["timeouts"]
    assert timeouts["resolved_by_status_query_by_channel"].get("online_bank", 0) > 0
    assert timeouts["after_timeout"].get("late success booked", 0) > 0, timeouts
    assert timeouts["late_successes"] > 0
    assert not [how for how in timeouts["after_timeout"] if how.startswith("still")]
    rows = {(r["channel"], r["kind"]): r for r in report["faults"]}
    assert rows[("online_bank", "no_callback")]["detected"] > 0
    assert rows[("online_bank", "late_callback")]["detected"] == \
        rows[("online_bank", "late_callback")]["injected"] > 0


def test_settlement_drift_every_discrepancy_reported_with_its_kind_and_nothing_else(tmp_path):
    report = _run("settlement-drift", tmp_path)

    settlement = report["settlement"]
    assert settlement["injected"] > 0
    kinds = {row["kind"] for row in settlement["discrepancies"]}
    assert kinds == {"missing_line", "extra_line", "amount_drift", "fee_drift", "wrong_date",
                     "duplicate_line"}
    missed = [r for r in settlement["discrepancies"] if not r["flagged"]]
    assert missed == []  # recall 100%
    assert settlement["false_alarms"] == []  # precision 100%
    assert (settlement["recall"], settlement["precision"]) == (1.0, 1.0)
    assert settlement["exceptions"] == settlement["injected"]
    assert sum(settlement["exceptions_by_kind"].values()) == settlement["injected"]
    assert settlement["orders_settled"] > 0
    assert "pending" not in settlement["by_result"]
    suffixes = sorted(path.rsplit(".", 1)[1] for path in settlement["files"])
    assert "csv" in suffixes and "xml" in suffixes
