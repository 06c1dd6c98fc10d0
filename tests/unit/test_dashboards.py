"""Dashboards as code: the committed JSON is what the code generates, every panel has a
query on a metric paycore exports, and the local Prometheus config is the shipped one
pointed at this stack's ports."""

from __future__ import annotations

import json
import re

import yaml

from paycore import dashboards as d
from paycore import prometheus
from streams import metrics
from streams.settings import Settings


def _exported() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        kind = getattr(value, "_type", "")
        if not name:
            continue
        names |= {name, f"{name}_total", f"{name}_info", f"{name}_bucket", f"{name}_sum",
                  f"{name}_count"} if kind in ("counter", "histogram", "info") else {name}
    return names


def test_committed_json_is_what_the_code_generates(tmp_path):
    written = d.build(tmp_path)
    assert {p.name for p in written} == {p.name for p in d.OUT_DIR.glob("*.json")}
    for path in written:
        assert path.read_text() == (d.OUT_DIR / path.name).read_text(), \
            f"{path.name} drifted: run `paycore dashboards build`"


def test_the_five_dashboards_the_sres_asked_for():
    titles = {json.loads(p.read_text())["title"] for p in d.OUT_DIR.glob("*.json")}
    assert titles == {"paycore / Payments overview", "paycore / Channels", "paycore / Risk",
                      "paycore / Ledger and reconciliation", "paycore / Streams internals"}


def test_every_query_names_an_exported_metric_and_uses_the_provisioned_source():
    known = _exported() | {"up", "process_resident_memory_bytes", "process_cpu_seconds_total",
                           "process_open_fds"}
    queries = d.panel_queries()
    assert len(queries) >= 50
    for q in queries:
        used = set(re.findall(r"\b(paycore_[a-z0-9_]+|process_[a-z_]+|up)\b", q.expr))
        assert used and used <= known, (q.panel, used - known)
    for path in d.OUT_DIR.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", ()):
                assert target["datasource"] == d.DATASOURCE


def test_no_label_could_carry_an_id():
    """Bounded labels: none of the grouping labels is a payment, merchant or order id."""
    for q in d.panel_queries():
        for group in re.findall(r"by \(([^)]*)\)", q.expr):
            labels = {label.strip() for label in group.split(",")}
            assert not labels & {"payment_id", "merchant_id", "order_no", "account_id"}


def test_panels_do_not_overlap_on_the_grid():
    for path in d.OUT_DIR.glob("*.json"):
        taken = set()
        for panel in json.loads(path.read_text())["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24
            cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                     for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not cells & taken, (path.name, panel["title"])
            taken |= cells


def test_grafana_windows_become_fixed_ones_outside_grafana():
    assert d.evaluable("rate(x[$__rate_interval]) + rate(y[$__interval])", 30) == \
        "rate(x[30s]) + rate(y[30s])"


def test_local_prometheus_keeps_the_shipped_jobs_and_rules_on_local_ports(tmp_path):
    settings = Settings(worker_web_port=7000, api_port=7100, simulator_metrics_port=7200,
                        auditor_metrics_port=7300, webhooks_metrics_port=7400,
                        prometheus_scrape_interval="1s", data_dir=tmp_path)
    running = {"worker-0", "api", "simulator", "auditor", "webhooks"}
    config = prometheus.local_config(settings, running, workers=1)
    shipped = yaml.safe_load(prometheus.SHIPPED.read_text())

    assert [j["job_name"] for j in config["scrape_configs"]] == \
        [j["job_name"] for j in shipped["scrape_configs"]]
    targets = {j["job_name"]: j["static_configs"][0]["targets"]
               for j in config["scrape_configs"]}
    assert targets["paycore-workers"] == ["127.0.0.1:7000"]  # worker-1 is not running here
    assert targets["paycore-api"] == ["127.0.0.1:7100"]
    assert targets["paycore-auditor"] == ["127.0.0.1:7300"]
    assert targets["paycore-webhooks"] == ["127.0.0.1:7400"]
    assert config["global"]["scrape_interval"] == "1s"
    assert all(p.startswith("/") and p.endswith("alerts.yml") for p in config["rule_files"])
