"""The Prometheus alert rules (``dashboards/alerts.yml``): promtool validates them and runs
their unit tests (``dashboards/alerts_test.yml``), every alert has a test where it fires, and
every metric they name is one ``streams/metrics.py`` exports, so renaming a metric breaks
here rather than silently muting an alert.

promtool comes with Debian's ``prometheus`` package (``scripts/install-system-deps.sh``);
without it these tests fail, they never skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import streams.metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
ALERTS = DASHBOARDS / "alerts.yml"
ALERTS_TEST = DASHBOARDS / "alerts_test.yml"
PROMETHEUS_CONFIG = DASHBOARDS / "prometheus.yml"

METRIC_NAME = re.compile(r"\bpaycore_[a-z0-9_]*[a-z0-9]")
SEVERITIES = {"critical", "warning"}
ANNOTATIONS = {"summary", "description", "runbook"}
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}
"""The series names Prometheus scrapes for one prometheus_client metric, by its type."""


def promtool() -> str:
    """promtool's path; a missing promtool fails the test (never a skip, never an error)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not on PATH: run scripts/install-system-deps.sh (as root; it "
                    "installs Debian's prometheus package, which ships promtool)")
    return path


def run(*args: str) -> None:
    done = subprocess.run([promtool(), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, (
        f"promtool {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    assert rules, f"no alerting rules in {ALERTS}"
    return rules


def rule_tests() -> list[dict]:
    """Every alert_rule_test case of alerts_test.yml."""
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    return [case for test in doc["tests"] for case in test.get("alert_rule_test", ())]


def exported_series() -> dict[str, str]:
    """Series name -> the metric family it belongs to, for every metric in streams.metrics."""
    series = {}
    for obj in vars(streams.metrics).values():
        if isinstance(obj, MetricWrapperBase):
            for suffix in SERIES_SUFFIXES[obj._type]:
                series[obj._name + suffix] = obj._name
    assert series, "no prometheus_client metrics found in streams.metrics"
    return series


def test_promtool_check_rules():
    run("check", "rules", str(ALERTS.relative_to(ROOT)))


def test_promtool_unit_tests():
    run("test", "rules", str(ALERTS_TEST.relative_to(ROOT)))


def test_promtool_check_config():
    """The scrape config, and the rule files it names (alerts.yml) if any."""
    run("check", "config", str(PROMETHEUS_CONFIG.relative_to(ROOT)))


def test_every_alert_has_a_firing_test_case():
    names = [rule["alert"] for rule in alert_rules()]
    cases = rule_tests()
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    untested = sorted(set(names) - firing)
    assert not untested, f"alerts with no test case where they fire in {ALERTS_TEST.name}: " \
        f"{untested}"
    # promtool passes an expectation of no alerts for a rule that does not exist: a typo in
    # an alertname would make a "must not fire" case test nothing.
    unknown = sorted({case["alertname"] for case in cases} - set(names))
    assert not unknown, f"{ALERTS_TEST.name} tests alerts that {ALERTS.name} lacks: {unknown}"
    assert yaml.safe_load(ALERTS_TEST.read_text())["rule_files"] == [ALERTS.name]


def test_alert_metrics_exist_in_streams_metrics():
    """Each paycore_* name in an expression is a series streams/metrics.py exports (a
    counter's _total, a histogram's _bucket/_sum/_count, a gauge's own name)."""
    series = exported_series()
    missing = {}
    for rule in alert_rules():
        unknown = sorted(set(METRIC_NAME.findall(rule["expr"])) - set(series))
        if unknown:
            missing[rule["alert"]] = unknown
    assert not missing, f"metrics not in streams/metrics.py (renamed? a typo?): {missing}"


def test_annotations_name_existing_metrics():
    """Names an SRE is told to look at exist too (a family name, paycore_stage_seconds, or
    one of its series)."""
    known = set(exported_series()) | set(exported_series().values())
    missing = {}
    for rule in alert_rules():
        text = " ".join(rule.get("annotations", {}).values())
        unknown = sorted(set(METRIC_NAME.findall(text)) - known)
        if unknown:
            missing[rule["alert"]] = unknown
    assert not missing, f"annotations name metrics streams/metrics.py lacks: {missing}"


def test_alerts_carry_severity_and_annotations():
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), f"alert names repeat: {sorted(names)}"
    for rule in alert_rules():
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]
        assert ANNOTATIONS <= set(rule.get("annotations", {})), rule["alert"]
