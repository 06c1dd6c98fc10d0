"""The recon report from the broker: ``paycore recon report`` and ``GET /v1/ops/recon/report``.

Statuses are produced for recon partitions 900 and up, which the stack's own recon stage
(partitions 0..N-1) never publishes, and for a channel of this test's own: the assertions
look at those contributions only, never at totals.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from domain.recon import ExceptionKind, ReconException, ReconStatus, Tally
from streams import topics as t
from streams.envelope import child, encode

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def utc_today() -> date:
    return datetime.now(timezone.utc).date()


def produce_recon(producer, first_partition: int, today: date) -> dict:
    """Two partitions' statuses (an older one last, which must not win) and one exception
    sent twice (at-least-once delivery). Returns what the report should show of them."""
    channel = f"recon-test-{uuid.uuid4().hex[:8]}"
    p0, p1 = first_partition, first_partition + 1
    yesterday, long_ago = (today - timedelta(days=1)).isoformat(), "2000-01-01"
    statuses = [
        ReconStatus(partition=p0, at_ms=2_000, tally=Tally(
            matched={channel: 5}, matched_minor={f"{channel}|EUR": 12_345},
            open={f"{channel}|awaiting_line|{yesterday}": 2},
            exceptions={"fee_mismatch": 1}, residual={f"{channel}|EUR|{yesterday}": 1_050})),
        ReconStatus(partition=p1, at_ms=1_500, tally=Tally(
            matched={channel: 2}, matched_minor={f"{channel}|EUR": 655},
            open={f"{channel}|awaiting_line|{long_ago}": 3})),
        ReconStatus(partition=p0, at_ms=1_000, tally=Tally(matched={channel: 100})),
    ]
    exception = ReconException(
        exception_id=f"exc-{channel}", payment_id=f"pay-{channel}", channel=channel,
        kind=ExceptionKind.fee_mismatch, reason="charged 45 EUR, ours 30", detected_at_ms=1,
        expected_minor=30, reported_minor=45, line_id=f"line-{channel}")
    for status in statuses:
        producer.send(t.RECON_STATUS, key=f"p{status.partition}".encode(),
                      value=encode(child(f"test-{channel}", status, status.at_ms, 1)))
    for _copy in range(2):
        producer.send(t.RECON_EXCEPTIONS, key=exception.payment_id.encode(),
                      value=encode(child(f"test-{channel}", exception, 0, 1)))
    producer.flush()
    return {"channel": channel, "partitions": [p0, p1], "exception_id": exception.exception_id,
            "yesterday": yesterday}


def assert_has_ours(report: dict, ours: dict) -> None:
    channel = ours["channel"]
    assert set(ours["partitions"]) <= set(report["partitions_reporting"])
    assert report["matched"][channel] == {"count": 7, "gross_minor": {"EUR": 13_000},
                                          "nothing_to_settle": 0}
    assert report["open_by_age"][channel] == {
        "awaiting_line": {"0d": 0, "1d": 2, "2d": 0, "3d+": 3}}
    assert report["exceptions_by_kind"]["fee_mismatch"]["raised"] >= 1
    assert set(report["exceptions_by_kind"]) >= {k.value for k in ExceptionKind}
    assert [r for r in report["clearing_residual"] if r["channel"] == channel] == [
        {"channel": channel, "currency": "EUR", "day": ours["yesterday"], "owed_minor": 1_050}]
    mine = [e for e in report["exceptions"] if e["exception_id"] == ours["exception_id"]]
    assert len(mine) == 1
    assert (mine[0]["kind"], mine[0]["expected_minor"], mine[0]["reported_minor"]) == (
        "fee_mismatch", 30, 45)


def test_cli_prints_and_writes_report(stack, stack_settings, producer, tmp_path):
    ours = produce_recon(producer, 900, utc_today())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    done = subprocess.run(
        [sys.executable, "-m", "paycore", "recon", "report", "--out", str(tmp_path),
         "--bootstrap", stack_settings.kafka_bootstrap,
         "--partitions", str(stack_settings.partitions)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "recon-report.json").read_text())
    if report["today"] != utc_today().isoformat():  # midnight passed: ages moved
        pytest.skip("the UTC day changed while the test ran")
    assert_has_ours(report, ours)
    assert ours["channel"] in done.stdout and "130.00" in done.stdout  # EUR decimals
    assert f"wrote {tmp_path / 'recon-report.json'}" in done.stdout
    assert f"wrote {tmp_path / 'recon-exceptions.csv'}" in done.stdout
    with open(tmp_path / "recon-exceptions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["line_id"] for r in rows if r["exception_id"] == ours["exception_id"]] == [
        f"line-{ours['channel']}"]



def test_api_serves_report_from_read_model(api, producer):
    ours = produce_recon(producer, 910, utc_today())

    deadline, report = time.monotonic() + 30, {}
    while time.monotonic() < deadline:
        response = api.get("/v1/ops/recon/report")
        assert response.status_code == 200, response.text
        report = response.json()
        if set(ours["partitions"]) <= set(report["partitions_reporting"]) and any(
                e["exception_id"] == ours["exception_id"] for e in report["exceptions"]):
            break
        time.sleep(0.2)

    if report["today"] != utc_today().isoformat():
        pytest.skip("the UTC day changed while the test ran")
    assert_has_ours(report, ours)
