"""Grafana dashboards as code (grafanalib), and what we can do with them without Grafana:
evaluate every panel's query on a real Prometheus, and draw the panels to PNG.

``paycore dashboards build`` writes ``dashboards/grafana/*.json`` (committed; a test fails
when they drift from this file). ``paycore dashboards check|render --prometheus URL`` runs
every panel's query against a Prometheus that scraped paycore.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from grafanalib.core import (
    Dashboard,
    GridPos,
    Stat,
    Target,
    Templating,
    Threshold,
    Time,
    TimeSeries,
)
from grafanalib.core import RowPanel as Row

from streams.settings import ROOT

OUT_DIR = ROOT / "dashboards" / "grafana"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
"""The provisioned data source (dashboards/grafana/provisioning/datasources)."""
RATE = "$__rate_interval"
"""Grafana's rate window (at least four scrapes); ``evaluable`` replaces it outside Grafana."""


@dataclass(frozen=True)
class Q:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class P:
    """A panel: ``stat`` (one number) or ``series`` (a time series graph)."""

    title: str
    queries: tuple[Q, ...]
    unit: str = "short"
    kind: str = "series"
    width: int = 12
    description: str = ""
    red_above: float | None = None
    """Stat panels: the value from which the number turns red."""
    stack: bool = False


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[P, ...]], ...] = field(default_factory=tuple)


def rate(metric: str, by: str = "", where: str = "") -> str:
    """``sum by (by) (rate(metric{where}[window]))``."""
    selector = f"{metric}{{{where}}}" if where else metric
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({selector}[{RATE}]))"


def share(metric: str, where: str, by: str = "") -> str:
    """The part of ``metric``'s rate that matches ``where``."""
    return f"{rate(metric, by, where)} / {rate(metric, by)}"


def quantile(q: float, histogram: str, by: str = "", where: str = "") -> str:
    selector = f"{histogram}_bucket{{{where}}}" if where else f"{histogram}_bucket"
    keys = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({keys}) (rate({selector}[{RATE}])))"


def latency(histogram: str, by: str = "", where: str = "") -> tuple[Q, ...]:
    prefix = f"{{{{{by}}}}} " if by else ""
    return tuple(Q(quantile(q, histogram, by, where), f"{prefix}p{int(q * 100)}")
                 for q in (0.5, 0.95, 0.99))


SUCCEEDED = 'status=~"succeeded|captured|authorized|partially_refunded|refunded"'
"""Final statuses that mean the payer paid (refunds come later and are their own story)."""

PAYMENTS = Board(
    "paycore-payments", "paycore / Payments overview",
    "Throughput, success rate, latency and the status mix of payments; commands, dead "
    "letters and webhooks.",
    (
        ("Now", (
            P("Payments final /s", (Q(rate("paycore_payments_final_total")),), "ops",
              "stat", 6),
            P("Success rate", (Q(share("paycore_payments_final_total", SUCCEEDED)),),
              "percentunit",
              "stat", 6, "Paid finals over all finals (declines and failures included)."),
            P("p99 accepted -> final", (Q(quantile(0.99, "paycore_payment_e2e_seconds")),),
              "s", "stat", 6, red_above=0.25),
            P("Stuck payments", (Q('sum(paycore_overdue_rows{index="orders"})'),), "short",
              "stat", 6, "Orders still open 30 s past their deadline: the sweeper nudged "
              "them three times and nothing moved them.", red_above=1),
        )),
        ("Flow", (
            P("Final statuses /s", (Q(rate("paycore_payments_final_total", "status"),
                                      "{{status}}"),), "ops", stack=True),
            P("Accepted -> final latency", latency("paycore_payment_e2e_seconds"), "s"),
            P("Payments by method /s", (Q(rate("paycore_payments_final_total", "method"),
                                          "{{method}}"),), "ops"),
            P("Payments by channel /s", (Q(rate("paycore_payments_final_total", "channel"),
                                           "{{channel}}"),), "ops"),
            P("Commands by type and result /s", (Q(rate("paycore_commands_total",
                                                        "type, result"),
                                                   "{{type}} {{result}}"),), "ops"),
            P("Open orders with a deadline", (Q('sum(paycore_deadline_index_rows'
                                                '{index="orders"})', "open"),
                                              Q('sum(paycore_overdue_rows{index="orders"})',
                                                "stuck")), "short"),
        )),
        ("Errors and webhooks", (
            P("Dead letters by stage and reason /s",
              (Q(rate("paycore_deadletters_total", "stage, reason"),
                 "{{stage}} {{reason}}"),), "ops"),
            P("Webhook attempts by result /s",
              (Q(rate("paycore_webhook_deliveries_total", "result"), "{{result}}"),), "ops",
              description="delivered; retry (will be tried again); failed (given up)."),
            P("Webhook attempt latency", latency("paycore_webhook_attempt_seconds"), "s"),
            P("Webhook events not queued /s",
              (Q(rate("paycore_webhook_events_skipped_total", "why"), "{{why}}"),), "ops"),
        )),
    ))

CHANNELS = Board(
    "paycore-channels", "paycore / Channels",
    "Banks, card acquirers and wallets: attempts, outcomes, latency, circuit breakers, "
    "failovers and callbacks.",
    (
        ("Health", (
            P("Attempt success rate by channel",
              (Q(share("paycore_channel_attempts_total", 'outcome="succeeded"', "channel"),
                 "{{channel}}"),),
              "percentunit", description="First answers that were successes, per attempt."),
            P("Success rate in the health window (routing's view)",
              (Q("max by (channel) (paycore_channel_success_rate)", "{{channel}}"),),
              "percentunit"),
            P("Circuit breaker (0 closed, 1 half-open, 2 open)",
              (Q("max by (channel) (paycore_channel_breaker_state)", "{{channel}}"),),
              "short"),
            P("Attempts by channel and outcome /s",
              (Q(rate("paycore_channel_attempts_total", "channel, outcome"),
                 "{{channel}} {{outcome}}"),), "ops"),
        )),
        ("Latency and failover", (
            P("Attempt latency p95 by channel",
              (Q(quantile(0.95, "paycore_channel_attempt_seconds", "channel"),
                 "{{channel}}"),), "s"),
            P("Failovers /s", (Q(rate("paycore_channel_failovers_total",
                                      "from_channel, to_channel, cause"),
                                 "{{from_channel}} -> {{to_channel}} ({{cause}})"),), "ops"),
            P("Routing decisions /s", (Q(rate("paycore_routing_decisions_total",
                                              "channel, rule"),
                                         "{{channel}} by {{rule}}"),), "ops"),
            P("Callbacks by result /s", (Q(rate("paycore_callbacks_total", "channel, result"),
                                           "{{channel}} {{result}}"),), "ops",
              description="applied; replayed copies; late or contradicting; unknown."),
        )),
        ("Simulators", (
            P("Channel answers (simulator) /s",
              (Q(rate("paycore_channel_requests_total", "channel, outcome"),
                 "{{channel}} {{outcome}}"),), "ops"),
            P("Injected faults /s", (Q(rate("paycore_sim_injections_total", "channel, kind"),
                                       "{{channel}} {{kind}}"),), "ops",
              description="What the channel-failure simulation applied (testers' scenarios)."),
        )),
    ))

RISK = Board(
    "paycore-risk", "paycore / Risk",
    "Risk verdicts, the rules that fired, and the rule files in force.",
    (
        ("Verdicts", (
            P("Review share", (Q(share("paycore_risk_decisions_total", 'decision="review"')),),
              "percentunit", "stat", 8),
            P("Decline share", (Q(share("paycore_risk_decisions_total",
                                        'decision="decline"')),),
              "percentunit", "stat", 8),
            P("Rule files reloaded", (Q('sum(paycore_config_reloads_total)'),), "short",
              "stat", 8),
            P("Decisions /s", (Q(rate("paycore_risk_decisions_total", "decision"),
                                 "{{decision}}"),), "ops", stack=True),
            P("Rule hits /s", (Q(rate("paycore_risk_rule_hits_total", "rule"), "{{rule}}"),),
              "ops"),
            P("Rule file reloads by result", (Q("sum by (file, result) "
                                                "(paycore_config_reloads_total)",
                                                "{{file}} {{result}}"),), "short"),
            P("Rules version in force", (Q("max by (file, version) (paycore_config_info)",
                                           "{{file}} {{version}}"),), "short"),
        )),
    ))

LEDGER = Board(
    "paycore-ledger", "paycore / Ledger and reconciliation",
    "Ledger postings and the auditor's checks; reconciliation matches, open items by age, "
    "exceptions and clearing residuals.",
    (
        ("Ledger", (
            P("Audit violations", (Q("sum(paycore_audit_violations_total)"),), "short",
              "stat", 6, "Any value above zero is an incident: money moved against an "
              "invariant (DESIGN.md section 3).", red_above=1),
            P("Entries in flight", (Q("sum(paycore_audit_open_entries)"),), "short", "stat",
              6),
            P("Open reconciliation items", (Q("sum(paycore_recon_open_items)"),), "short",
              "stat", 6),
            P("Recon exceptions (1h)",
              (Q("sum(increase(paycore_recon_exceptions_total[1h]))"),), "short", "stat", 6),
            P("Postings by operation and result /s",
              (Q(rate("paycore_ledger_postings_total", "operation, result"),
                 "{{operation}} {{result}}"),), "ops"),
            P("Audit checks /s", (Q(rate("paycore_audit_checks_total", "check"),
                                    "{{check}}"),), "ops"),
            P("Money in flight by currency (minor units)",
              (Q("sum by (currency) (paycore_audit_in_flight_minor)", "{{currency}}"),),
              "short"),
            P("Violations by check", (Q("sum by (check) (paycore_audit_violations_total)",
                                        "{{check}}"),), "short"),
        )),
        ("Reconciliation", (
            P("Matched /s by channel", (Q(rate("paycore_recon_matched_total", "channel"),
                                          "{{channel}}"),), "ops"),
            P("Open items by age", (Q("sum by (age) (paycore_recon_open_items)", "{{age}}"),),
              "short", stack=True),
            P("Open items by channel and state",
              (Q("sum by (channel, state) (paycore_recon_open_items)",
                 "{{channel}} {{state}}"),), "short"),
            P("Exceptions by kind /s", (Q(rate("paycore_recon_exceptions_total", "kind"),
                                          "{{kind}}"),), "ops"),
            P("Auto-resolved by kind /s", (Q(rate("paycore_recon_auto_resolved_total", "kind"),
                                             "{{kind}}"),), "ops"),
            P("Clearing residual (what channels owe, minor units)",
              (Q("sum by (channel, currency) (paycore_recon_clearing_residual_minor)",
                 "{{channel}} {{currency}}"),), "short"),
        )),
    ))

STREAMS = Board(
    "paycore-streams", "paycore / Streams internals",
    "Events per stage, stage latency, consumer lag per topic and partition, rebalances, "
    "deadline indexes, and the processes themselves.",
    (
        ("Stages", (
            P("Targets up", (Q("sum(up)"),), "short", "stat", 8),
            P("Consumer lag, all groups", (Q("sum(paycore_consumer_lag_messages)"),), "short",
              "stat", 8, red_above=1000),
            P("Rebalances (1h)", (Q("sum(increase(paycore_rebalances_total[1h]))"),),
              "short", "stat", 8, "A process's first join happens before its first scrape: "
              "this counts the rebalances after it (members joining, leaving, dying)."),
            P("Events /s per stage", (Q(rate("paycore_stage_events_total", "stage"),
                                        "{{stage}}"),), "ops"),
            P("Stage latency p99", (Q(quantile(0.99, "paycore_stage_seconds", "stage"),
                                      "{{stage}}"),), "s"),
        )),
        ("Kafka", (
            P("Consumer lag by group and topic",
              (Q("sum by (group, topic) (paycore_consumer_lag_messages)",
                 "{{group}} {{topic}}"),), "short"),
            P("Consumer lag by topic and partition",
              (Q("max by (topic, partition) (paycore_consumer_lag_messages)",
                 "{{topic}}[{{partition}}]"),), "short"),
            P("Rebalances since each process started",
              (Q("max by (app, instance) (paycore_rebalances_total)",
                 "{{app}} {{instance}}"),), "short"),
            P("Partitions assigned", (Q("sum by (app, instance) (paycore_assigned_partitions)",
                                        "{{app}} {{instance}}"),), "short"),
            P("Lag measurements /s", (Q(rate("paycore_consumer_lag_checks_total", "result"),
                                        "{{result}}"),), "ops"),
        )),
        ("Processes", (
            P("Deadline index rows", (Q("sum by (index) (paycore_deadline_index_rows)",
                                        "{{index}}"),), "short"),
            P("Resident memory", (Q("max by (job, instance) (process_resident_memory_bytes)",
                                    "{{instance}}"),), "bytes"),
            P("CPU", (Q("sum by (job, instance) (rate(process_cpu_seconds_total"
                        f"[{RATE}]))", "{{instance}}"),), "percentunit"),
            P("Open file descriptors", (Q("max by (job, instance) (process_open_fds)",
                                          "{{instance}}"),), "short"),
        )),
    ))

BOARDS = (PAYMENTS, CHANNELS, RISK, LEDGER, STREAMS)


def _panel(p: P, pos: GridPos):
    targets = [Target(expr=q.expr, legendFormat=q.legend, refId=chr(ord("A") + i),
                      datasource=DATASOURCE) for i, q in enumerate(p.queries)]
    common = dict(title=p.title, dataSource=DATASOURCE, targets=targets, gridPos=pos,
                  description=p.description or None)
    if p.kind == "stat":
        steps = [Threshold("green", 0, 0.0)]
        if p.red_above is not None:
            steps.append(Threshold("red", 1, float(p.red_above)))
        return Stat(format=p.unit, reduceCalc="lastNotNull", thresholds=steps, **common)
    return TimeSeries(unit=p.unit, stacking={"mode": "normal" if p.stack else "none", "group": "A"},
                      fillOpacity=20 if p.stack else 0, tooltipMode="multi",
                      legendDisplayMode="list", **common)


def dashboard(board: Board) -> Dashboard:
    """Rows of panels laid left to right on Grafana's 24-column grid."""
    panels, y = [], 0
    for title, row in board.rows:
        panels.append(Row(title=title, gridPos=GridPos(h=1, w=24, x=0, y=y)))
        y, x, tallest = y + 1, 0, 0
        for p in row:
            h = 4 if p.kind == "stat" else 8
            if x + p.width > 24:
                y, x, tallest = y + tallest, 0, 0
            panels.append(_panel(p, GridPos(h=h, w=p.width, x=x, y=y)))
            x, tallest = x + p.width, max(tallest, h)
        y += tallest
    return Dashboard(title=board.title, uid=board.uid, description=board.description,
                     tags=["paycore"], panels=panels, refresh="10s", timezone="utc",
                     time=Time("now-30m", "now"), templating=Templating(),
                     graphTooltip=1).auto_panel_ids()


def as_json(board: Board) -> str:
    return json.dumps(dashboard(board).to_json_data(), sort_keys=True, indent=2,
                      default=lambda o: o.to_json_data()) + "\n"


def build(out_dir: Path = OUT_DIR) -> list[Path]:
    """Write every dashboard's JSON; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for board in BOARDS:
        path = out_dir / f"{board.uid}.json"
        path.write_text(as_json(board))
        written.append(path)
    return written


# ---- outside Grafana: every panel's query on a real Prometheus -------------------------


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    expr: str
    legend: str


def panel_queries(folder: Path = OUT_DIR) -> list[PanelQuery]:
    """Every query of every panel in the dashboards' JSON (what Grafana would run)."""
    out = []
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        for panel in doc["panels"]:
            for target in panel.get("targets", ()):
                out.append(PanelQuery(doc["title"], panel["title"], target["expr"],
                                      target.get("legendFormat", "")))
    return out


def evaluable(expr: str, window_s: int) -> str:
    """Grafana's ``$__rate_interval`` and friends replaced by a fixed window."""
    return re.sub(r"\$__(rate_)?interval|\$__range", f"{window_s}s", expr)


@dataclass
class Answer:
    query: PanelQuery
    series: int
    values: list[float]
    error: str = ""


def evaluate(prometheus: str, queries: list[PanelQuery], window_s: int = 60,
             at: float | None = None) -> list[Answer]:
    """Each query as an instant query; an answer holds how many series came back."""
    answers = []
    with httpx.Client(base_url=prometheus, timeout=10) as client:
        for query in queries:
            params = {"query": evaluable(query.expr, window_s)}
            if at is not None:
                params["time"] = f"{at:.3f}"
            body = client.get("/api/v1/query", params=params).json()
            if body.get("status") != "success":
                answers.append(Answer(query, 0, [], body.get("error", "failed")))
                continue
            result = body["data"]["result"]
            values = [float(r["value"][1]) for r in result]
            answers.append(Answer(query, len(result), values))
    return answers


def series_over(prometheus: str, expr: str, start: float, end: float, step_s: float,
                window_s: int) -> list[tuple[dict, list[float], list[float]]]:
    """(labels, times, values) of every series of ``expr`` over [start, end]."""
    body = httpx.get(f"{prometheus}/api/v1/query_range", timeout=20, params={
        "query": evaluable(expr, window_s), "start": f"{start:.3f}", "end": f"{end:.3f}",
        "step": f"{step_s:g}"}).json()
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body.get('error')}")
    out = []
    for r in body["data"]["result"]:
        times = [float(t) - start for t, _v in r["values"]]
        values = [float(v) for _t, v in r["values"]]
        out.append((r["metric"], times, values))
    return out


def _legend(template: str, labels: dict) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), "?"),
                  template) or ", ".join(f"{k}={v}" for k, v in labels.items()) or "value"


def render(prometheus: str, folder: Path, out_dir: Path, start: float, end: float,
           window_s: int = 60) -> list[Path]:
    """One PNG per dashboard: every panel drawn from the series Prometheus scraped, laid
    out as in Grafana (what people would see, since Grafana cannot run here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    step = max(1.0, (end - start) / 200)
    written = []
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        panels = [p for p in doc["panels"] if p.get("targets")]
        rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
        fig = plt.figure(figsize=(18, rows * 0.5), dpi=80)
        grid = fig.add_gridspec(rows, 24, hspace=2.2, wspace=1.2, top=0.97, bottom=0.02)
        for header in (p for p in doc["panels"] if p["type"] == "row"):
            ax = fig.add_subplot(grid[header["gridPos"]["y"], :])
            ax.axis("off")
            ax.text(0, 0, header["title"], fontsize=11, fontweight="bold",
                    transform=ax.transAxes)
        for panel in panels:
            pos = panel["gridPos"]
            ax = fig.add_subplot(grid[pos["y"]:pos["y"] + pos["h"], pos["x"]:pos["x"] + pos["w"]])
            ax.set_title(panel["title"], fontsize=9, loc="left")
            ax.tick_params(labelsize=7)
            drawn = 0
            for target in panel["targets"]:
                for labels, times, values in series_over(prometheus, target["expr"], start,
                                                         end, step, window_s)[:12]:
                    if panel["type"] == "stat":
                        continue
                    ax.plot(times, values, linewidth=1,
                            label=_legend(target.get("legendFormat", ""), labels)[:40])
                    drawn += 1
            if panel["type"] == "stat":
                last = evaluate(prometheus, [PanelQuery("", "", panel["targets"][0]["expr"],
                                                        "")], window_s, at=end)[0]
                text = f"{last.values[0]:.4g}" if last.values else "no data"
                ax.text(0.5, 0.4, text, ha="center", va="center", fontsize=20,
                        transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
            elif drawn:
                ax.legend(fontsize=6, loc="upper left", ncol=2, frameon=False)
                ax.set_xlabel("s since start", fontsize=7)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        fig.suptitle(doc["title"], fontsize=13, x=0.01, y=0.995, ha="left")
        png = out_dir / f"{path.stem}.png"
        fig.savefig(png, bbox_inches="tight")
        plt.close(fig)
        written.append(png)
    return written


def check_table(answers: list[Answer]) -> str:
    """Dashboard, panel, series count and a value, one line per query."""
    lines = [f"{'dashboard':<36} {'panel':<52} {'series':>6}  value"]
    for a in answers:
        value = f"{a.values[0]:.4g}" if a.values else (a.error or "no data")
        lines.append(f"{a.query.dashboard[:36]:<36} {a.query.panel[:52]:<52} "
                     f"{a.series:>6}  {value}")
    missing = sum(1 for a in answers if not a.series)
    lines.append(f"{len(answers) - missing}/{len(answers)} panel queries return data")
    return "\n".join(lines)


def wait_for_scrapes(prometheus: str, jobs: set[str], timeout_s: float = 60) -> None:
    """Until every job has a target that is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            body = httpx.get(f"{prometheus}/api/v1/query", params={"query": "up == 1"},
                             timeout=5).json()
            seen = {r["metric"].get("job") for r in body["data"]["result"]}
            if jobs <= seen:
                return
        except httpx.HTTPError:
            seen = set()
        if time.monotonic() > deadline:
            raise TimeoutError(f"Prometheus never scraped {sorted(jobs - seen)}")
        time.sleep(0.5)
