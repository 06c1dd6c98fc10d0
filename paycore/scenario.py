"""Scenarios: a timeline of load and channel faults run against the whole stack, then a report.

A scenario file (``simulators/scenarios/*.yaml``) names a seed, a duration, load phases
(payments per second, method and currency weights, an amount range) and channel faults
switched on and off at given seconds (``simulators/faults.py``). ``paycore simulate FILE``
starts the embedded stack (or attaches to a running one), publishes the fault plan on
``pay.sim.control``, sends the load, shows progress every second, waits until every
payment is final, then prints and writes a report: JSON, the commands it sent and a PNG
timeline, in ``.paycore/scenarios/<name>-<seed>/``.

Same seed, same load: order numbers, amounts, methods and payers come from
``random.Random(seed)``; the channel simulator answers from the same seed and draws the
same faults per request. What may differ between runs is timing (which second an answer
falls in), so counts near a fault's edges can move by a few.

Pure parts (loading, load generation, the report from recorded events, the plot) are
separate from the live run, so they are tested without a broker.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from domain import accounts
from domain.commands import FieldError
from domain.events import PaymentStatusChanged
from domain.ids import payment_id_for
from domain.money import fee_minor, is_known_currency
from domain.order_state import RECONCILED_EXITS, RECONCILIATION, TRANSITIONS, OrderStatus
from domain.recon import ExceptionKind, ReconException
from domain.routing import ChannelTerms, RoutingRules
from paycore.demo import FINAL
from simulators import settlement as stl
from simulators.channel import (
    MAGIC_BLACK_HOLE_MINOR,
    MAGIC_DECLINE_MINOR,
    MAGIC_LATE_MINOR,
    MAGIC_SHORT_MINOR,
    MAGIC_SILENT_MINOR,
    MAGIC_TWICE_MINOR,
    MAGIC_UNAVAILABLE_MINOR,
)
from simulators.faults import Fault, FaultKind, FaultPlan
from streams import topics as t
from streams.channels_config import load_simulators
from streams.config import load_yaml
from streams.rules_config import load_recon, load_routing
from streams.settings import Settings

SCENARIOS_DIR = Path(__file__).resolve().parent.parent / "simulators" / "scenarios"
SHORT_ENV = "PAYCORE_SCENARIO_SHORT"
"""Set to 1 (or true/yes) to run scenarios in their short form (CI)."""

AMOUNT_MINOR_MAX = 1_999_999
"""Below risk.yaml's new-payer limit (20,000.00): generated load never trips a risk rule."""
RATE_PER_S_MAX = 500.0
PAYERS_MIN = 10
MAGIC_ENDINGS = frozenset({
    MAGIC_DECLINE_MINOR, MAGIC_SILENT_MINOR, MAGIC_LATE_MINOR, MAGIC_BLACK_HOLE_MINOR,
    MAGIC_TWICE_MINOR, MAGIC_SHORT_MINOR, MAGIC_UNAVAILABLE_MINOR})
"""Last three digits the simulator treats as test magic: generated amounts avoid them."""
OPEN_STATUSES = frozenset({"created", "processing", "timed_out", "risk_review"})
"""Not final for a scenario: the core keeps working on these (timed_out included: it
keeps asking the channel until it answers)."""
SETTLEABLE = frozenset({"succeeded", "partially_refunded", "refunded"})
COPIES_PER_FAULT = {FaultKind.duplicate_callbacks: 3, FaultKind.out_of_order: 2}
"""How many times the simulator delivers a callback hit by each repeating fault."""

LEDGER_WAIT_S = 20.0
COPIES_WAIT_S = 12.0
AUDIT_WAIT_S = 10.0
PLAN_LEAD_MS = 1_000
"""Second 0 starts this long after the plan is published, so the simulator has it."""
PROGRESS_EVERY_S = 1.0


class ScenarioError(ValueError):
    """A scenario that cannot run as written (the message names what is wrong)."""


# ---------------------------------------------------------------- the scenario file


LoadMethod = Literal["card", "bank", "wallet"]


def _weights_ok(weights: dict, what: str) -> None:
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise FieldError("weights must be >= 0 with a positive sum", (what,))


class LoadPhase(BaseModel):
    """Payments sent from ``from_s`` to ``to_s``: ``rate_per_s`` per second, or a linear ramp
    to ``rate_end_per_s``. Phases may overlap (say, a card phase and a wallet phase)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    from_s: float = Field(ge=0)
    to_s: float = Field(gt=0)
    rate_per_s: float = Field(ge=0, le=RATE_PER_S_MAX)
    rate_end_per_s: float | None = Field(default=None, ge=0, le=RATE_PER_S_MAX)
    methods: dict[LoadMethod, int] = Field(default_factory=lambda: {"card": 1}, min_length=1)
    """Relative weights, e.g. ``{card: 6, wallet: 3, bank: 1}``."""
    currencies: dict[str, int] = Field(default_factory=lambda: {"USD": 1}, min_length=1)
    amount_min_minor: int = Field(default=500, ge=1, le=AMOUNT_MINOR_MAX)
    amount_max_minor: int = Field(default=50_000, ge=1, le=AMOUNT_MINOR_MAX)

    @model_validator(mode="after")
    def _sane(self) -> LoadPhase:
        if self.to_s <= self.from_s:
            raise FieldError("must be after from_s", ("to_s",))
        if self.amount_max_minor < self.amount_min_minor:
            raise FieldError("below amount_min_minor", ("amount_max_minor",))
        _weights_ok(self.methods, "methods")
        _weights_ok(self.currencies, "currencies")
        unknown = [c for c in self.currencies if not is_known_currency(c)]
        if unknown:
            raise FieldError(f"unknown currency {unknown}", ("currencies",))
        return self

    def rate_at(self, at_s: float) -> float:
        if self.rate_end_per_s is None:
            return self.rate_per_s
        progress = min(max((at_s - self.from_s) / (self.to_s - self.from_s), 0.0), 1.0)
        return self.rate_per_s + (self.rate_end_per_s - self.rate_per_s) * progress


class ChannelOverride(BaseModel):
    """What the scenario changes about one channel in the stack it starts: its terms in
    routing.yaml (timeouts, queries, failover, late-success rule) and its simulator in
    channels.yaml (latency, decline rate). Not applied to a stack it attaches to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    callback_timeout_ms: int | None = Field(default=None, ge=100)
    status_query: bool | None = None
    status_queries_max: int | None = Field(default=None, ge=1, le=10)
    status_query_timeout_ms: int | None = Field(default=None, ge=100)
    failover_on_timeout: bool | None = None
    late_success: Literal["accept", "refund"] | None = None
    latency_ms_median: int | None = Field(default=None, ge=0)
    latency_ms_p99: int | None = Field(default=None, ge=0)
    decline_bps: int | None = Field(default=None, ge=0, le=10_000)

    def routing(self) -> dict:
        return self._set(("callback_timeout_ms", "status_query", "status_queries_max",
                          "status_query_timeout_ms", "failover_on_timeout", "late_success"))

    def simulator(self) -> dict:
        return self._set(("latency_ms_median", "latency_ms_p99", "decline_bps"))

    def _set(self, names: tuple[str, ...]) -> dict:
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


class DriftSpec(BaseModel):
    """Discrepancies injected into each channel's settlement report (``stl.Drift``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    missing_lines: int = Field(default=0, ge=0, le=1000)
    extra_lines: int = Field(default=0, ge=0, le=1000)
    amount_drifts: int = Field(default=0, ge=0, le=1000)
    fee_drifts: int = Field(default=0, ge=0, le=1000)
    wrong_dates: int = Field(default=0, ge=0, le=1000)
    duplicate_lines: int = Field(default=0, ge=0, le=1000)
    serial_only_lines: int = Field(default=0, ge=0, le=1000)
    """Not a discrepancy: lines naming only the channel's serial (matched by it)."""

    def drift(self) -> stl.Drift:
        return stl.Drift(**self.model_dump())


class SettlementSpec(BaseModel):
    """After the load: each channel reports what it settled (with drift), the scenario sends
    the lines to ``pay.channel.settlements`` and reports what the core did with each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    drift: DriftSpec = DriftSpec()
    channels: tuple[str, ...] = ()
    """Channels that send a report; empty: every channel that was paid."""
    wait_s: float = Field(default=30.0, gt=0, le=600)
    """How long to wait for the core to act on every line."""


class ShortSpec(BaseModel):
    """The CI form: durations (and fault windows) times ``time_scale``, rates times
    ``rate_scale``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time_scale: float = Field(default=0.25, gt=0, le=1)
    rate_scale: float = Field(default=1.0, gt=0, le=1)


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    description: str = ""
    seed: int = Field(ge=0, le=2**63 - 1)
    duration_s: float = Field(gt=0, le=3_600)
    payers: int = Field(default=1_000, ge=PAYERS_MIN, le=10**7)
    """Distinct payers (customer ids) the load draws from: enough keeps velocity rules quiet."""
    load: tuple[LoadPhase, ...] = Field(min_length=1)
    faults: tuple[Fault, ...] = ()
    channels: dict[str, ChannelOverride] = {}
    settlement: SettlementSpec | None = None
    short: ShortSpec = ShortSpec()
    drain_timeout_s: float = Field(default=120.0, gt=0, le=3_600)
    """How long to wait, after the load, for every payment to be final."""

    @model_validator(mode="after")
    def _within_duration(self) -> Scenario:
        for what, items in (("load", self.load), ("faults", self.faults)):
            for index, item in enumerate(items):
                if item.to_s > self.duration_s + 1e-9:
                    raise FieldError(f"{item.to_s:g} is after duration_s {self.duration_s:g}",
                                     (what, index, "to_s"))
        return self

    def shortened(self) -> Scenario:
        """The short form: every second scaled by ``short.time_scale``, every rate by
        ``short.rate_scale``; the same faults, in the same places relative to the load."""
        k, r = self.short.time_scale, self.short.rate_scale
        load = tuple(p.model_copy(update={
            "from_s": p.from_s * k, "to_s": p.to_s * k, "rate_per_s": p.rate_per_s * r,
            "rate_end_per_s": None if p.rate_end_per_s is None else p.rate_end_per_s * r})
            for p in self.load)
        faults = tuple(f.model_copy(update={"from_s": f.from_s * k, "to_s": f.to_s * k})
                       for f in self.faults)
        return self.model_copy(update={"duration_s": self.duration_s * k, "load": load,
                                       "faults": faults})


def load_scenario(path: Path | str) -> Scenario:
    """The scenario file, validated (``ConfigError`` names file, line and field)."""
    return load_yaml(Path(path), Scenario)


def shipped_scenarios() -> list[Path]:
    return sorted(SCENARIOS_DIR.glob("*.yaml"))


def short_from_env() -> bool:
    return os.environ.get(SHORT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_against(scenario: Scenario, rules: RoutingRules) -> None:
    """Every method and currency of the load has a channel; every fault and override names
    a channel that exists. Raises ``ScenarioError`` listing each problem."""
    names = {c.name for c in rules.channels}
    problems = [f"faults.{i}.channel: unknown channel {f.channel!r}"
                for i, f in enumerate(scenario.faults) if f.channel not in names]
    problems += [f"channels.{n}: unknown channel" for n in scenario.channels if n not in names]
    if scenario.settlement is not None:
        problems += [f"settlement.channels: unknown channel {n!r}"
                     for n in scenario.settlement.channels if n not in names]
    for index, phase in enumerate(scenario.load):
        for method in (m for m, w in phase.methods.items() if w):
            for currency in (c for c, w in phase.currencies.items() if w):
                if not any(method in [m.value for m in c.methods] and currency in c.currencies
                           for c in rules.channels):
                    problems.append(f"load.{index}: no channel takes {method} in {currency}")
    if problems:
        raise ScenarioError("; ".join(problems))


# ---------------------------------------------------------------- the load


@dataclass(frozen=True)
class Planned:
    """One payment of the load: when to send it (ms after second 0) and the command."""

    at_ms: int
    payment_id: str
    command: dict


def send_times_ms(phase: LoadPhase) -> list[int]:
    """When the phase sends, ms after second 0: each second's share of the rate, evenly
    spread; fractions carry over to the next second."""
    times: list[int] = []
    carry, second = 0.0, phase.from_s
    while second < phase.to_s - 1e-9:
        width = min(1.0, phase.to_s - second)
        carry += phase.rate_at(second + width / 2) * width
        count = int(carry + 1e-9)
        carry -= count
        times += [int((second + width * (k + 0.5) / count) * 1000) for k in range(count)]
        second += 1.0
    assert all(phase.from_s * 1000 <= ms < phase.to_s * 1000 + 1 for ms in times), phase
    return times


def not_magic(amount_minor: int) -> int:
    """The amount, or the next one up whose last three digits are no simulator magic (at
    most 2 above: no three magic endings are consecutive)."""
    while amount_minor % 1000 in MAGIC_ENDINGS:
        amount_minor += 1
    return amount_minor


def generate_load(scenario: Scenario, merchant_id: str) -> list[Planned]:
    """Every payment of the scenario, in sending order: same scenario and merchant, same list."""
    rng = random.Random(scenario.seed)
    planned: list[Planned] = []
    for phase in scenario.load:
        for at_ms in send_times_ms(phase):
            planned.append(_payment(rng, scenario, phase, merchant_id, len(planned), at_ms))
    planned.sort(key=lambda p: p.at_ms)
    assert len({p.payment_id for p in planned}) == len(planned), "order numbers must differ"
    return planned


def _payment(rng: random.Random, scenario: Scenario, phase: LoadPhase, merchant_id: str,
             index: int, at_ms: int) -> Planned:
    method = rng.choices(list(phase.methods), weights=list(phase.methods.values()))[0]
    currency = rng.choices(list(phase.currencies), weights=list(phase.currencies.values()))[0]
    amount = not_magic(rng.randint(phase.amount_min_minor, phase.amount_max_minor))
    order_no = f"{index:06d}-{rng.getrandbits(32):08x}"
    payer = f"{scenario.name}-c{rng.randrange(scenario.payers)}"
    command = {"type": "pay", "merchant_id": merchant_id, "idempotency_key": f"pay-{order_no}",
               "merchant_order_no": order_no, "amount_minor": amount, "currency": currency,
               "method": method, "capture": "auto", "payer": {"customer_id": payer}}
    return Planned(at_ms, payment_id_for(merchant_id, order_no), command)


def fault_plan(scenario: Scenario, start_ms: int) -> FaultPlan:
    """The control message for ``pay.sim.control``: second 0 is ``start_ms`` (epoch ms)."""
    return FaultPlan(scenario=scenario.name, seed=scenario.seed, start_ms=start_ms,
                     faults=scenario.faults)


def write_config(scenario: Scenario, base_dir: Path, out_dir: Path) -> Path:
    """A copy of the config folder with the scenario's channel overrides, validated."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for source in base_dir.glob("*.yaml"):
        shutil.copyfile(source, out_dir / source.name)
    if scenario.channels:
        routing = yaml.safe_load((out_dir / "routing.yaml").read_text())
        simulators = yaml.safe_load((out_dir / "channels.yaml").read_text())
        for channel in routing["channels"]:
            channel.update(_override(scenario, channel["name"]).routing())
        for profile in simulators["simulators"]:
            profile.update(_override(scenario, profile["channel"]).simulator())
        (out_dir / "routing.yaml").write_text(yaml.safe_dump(routing, sort_keys=False))
        (out_dir / "channels.yaml").write_text(yaml.safe_dump(simulators, sort_keys=False))
    check_against(scenario, load_routing(out_dir))
    load_simulators(out_dir)
    return out_dir


def _override(scenario: Scenario, channel: str) -> ChannelOverride:
    return scenario.channels.get(channel, ChannelOverride())


# ---------------------------------------------------------------- what was recorded


@dataclass
class LedgerFacts:
    currency_sums: dict[str, int]
    """Sum of every leg per currency: zero when the ledger balances."""
    rebuilt_ok: bool
    """Each account's reported balance equals the sum of its legs, sequences gap-free."""
    merchant_minor: dict[str, int]
    """The scenario merchant's pending plus settled balance per currency, from the journal."""
    legs: int


@dataclass
class Recorded:
    """Everything a report is built from; the live run fills it, tests build it by hand."""

    scenario: Scenario
    merchant_id: str
    start_ms: int
    planned: list[Planned]
    sent_ms: dict[str, int]
    """Payment id -> epoch ms it was sent."""
    histories: dict[str, list[PaymentStatusChanged]]
    injections: list[dict] = field(default_factory=list)
    callbacks: dict[tuple[str, str], float] | None = None
    """(channel, result) -> count from the worker's ``paycore_callbacks_total``; None: not
    measured."""
    failovers_metric: float | None = None
    audit: dict | None = None
    ledger: LedgerFacts | None = None
    deadletters: int = 0
    settlement: dict | None = None
    recon: list[dict] = field(default_factory=list)
    """Reconciliation's exceptions about the run's payments (``ReconException`` dumps)."""
    stack: str = ""
    elapsed_s: float = 0.0
    short: bool = False


def final_event(history: list[PaymentStatusChanged]) -> PaymentStatusChanged | None:
    """The event that made the payment final (later notes, like settlement, keep status)."""
    return next((e for e in history if e.status in FINAL), None)


def is_final(history: list[PaymentStatusChanged] | None) -> bool:
    return bool(history) and history[-1].status in FINAL


_FAILOVER = re.compile(r"^failover from (\S+) to (\S+) after (.+?)(?: \(attempt .*)?$")


def failover_hops(history: list[PaymentStatusChanged]) -> list[tuple[str, str, str]]:
    """(from channel, to channel, cause) for each failover in a payment's history."""
    hops = []
    for event in history:
        match = _FAILOVER.match(event.reason)
        if match:
            hops.append((match.group(1), match.group(2), match.group(3)))
    return hops


def by_query(event: PaymentStatusChanged) -> bool:
    return event.reason.startswith("by status query") or event.reason.endswith(
        "(by status query)")


def paid_channel(history: list[PaymentStatusChanged]) -> str | None:
    """The channel of the attempt the order kept: where it became succeeded."""
    return next((e.channel for e in history
                 if e.status == "succeeded" and e.previous_status != "succeeded"), None)


# ---------------------------------------------------------------- the report (pure)


def build_report(rec: Recorded, terms: dict[str, ChannelTerms]) -> dict:
    """The whole report as plain JSON-able data, from what the run recorded."""
    report = {
        "scenario": _header(rec),
        "payments": payments_section(rec),
        "failovers": failovers_section(rec),
        "timeouts": timeouts_section(rec),
        "callbacks": callbacks_section(rec),
        "faults": faults_section(rec, terms),
        "latency_ms": latency_section(rec),
        "timeline": timeline_section(rec),
        "settlement": rec.settlement,
        "reconciliation": recon_section(rec),
    }
    assert report["payments"]["final"] <= report["payments"]["planned"]
    assert set(rec.sent_ms) <= {p.payment_id for p in rec.planned}, "sent what was planned"
    report["invariants"] = invariants(rec, terms, report)
    report["ok"] = all(check["ok"] is True for check in report["invariants"])
    return report


def _header(rec: Recorded) -> dict:
    s = rec.scenario
    started = datetime.fromtimestamp(rec.start_ms / 1000, tz=timezone.utc)
    return {"name": s.name, "description": s.description.strip(), "seed": s.seed,
            "short": rec.short, "duration_s": s.duration_s, "merchant_id": rec.merchant_id,
            "stack": rec.stack, "started_at": started.isoformat(timespec="seconds"),
            "start_ms": rec.start_ms, "elapsed_s": round(rec.elapsed_s, 1),
            "faults": [f.model_dump(mode="json") for f in s.faults]}


def _ours(rec: Recorded) -> list[tuple[Planned, list[PaymentStatusChanged]]]:
    return [(p, rec.histories.get(p.payment_id, [])) for p in rec.planned]


def payments_section(rec: Recorded) -> dict:
    """Payments by latest status, by channel and by method (unseen: no event at all)."""
    statuses: Counter = Counter()
    by_channel: dict[str, Counter] = defaultdict(Counter)
    by_method: dict[str, Counter] = defaultdict(Counter)
    for planned, history in _ours(rec):
        status = history[-1].status if history else "unseen"
        channel = history[-1].channel if history else "-"
        statuses[status] += 1
        by_channel[channel][status] += 1
        by_method[planned.command["method"]][status] += 1
    final = sum(n for status, n in statuses.items() if status in FINAL)
    return {"planned": len(rec.planned), "sent": len(rec.sent_ms), "final": final,
            "by_status": dict(sorted(statuses.items())),
            "by_channel": {c: dict(sorted(n.items())) for c, n in sorted(by_channel.items())},
            "by_method": {m: dict(sorted(n.items())) for m, n in sorted(by_method.items())}}


def failovers_section(rec: Recorded) -> dict:
    routes: Counter = Counter()
    causes: Counter = Counter()
    payments = 0
    for _, history in _ours(rec):
        hops = failover_hops(history)
        payments += bool(hops)
        for source, target, cause in hops:
            routes[f"{source} -> {target}"] += 1
            causes[cause] += 1
    return {"total": sum(routes.values()), "payments": payments,
            "by_route": dict(sorted(routes.items())), "by_cause": dict(sorted(causes.items())),
            "worker_metric": rec.failovers_metric}


def resolution(event: PaymentStatusChanged) -> str:
    """How a payment that timed out ended (its latest event)."""
    if event.status not in FINAL:
        return f"still {event.status}"
    for prefix, label in (("late success accepted", "late success booked"),
                          ("late success refunded", "late success refunded"),
                          ("late decline", "late decline")):
        if event.reason.startswith(prefix):
            return label
    if "not_found" in event.reason:
        return "channel never got it (not_found)"
    if by_query(event):
        return "answered a status query"
    return f"{event.status}: {event.reason[:40]}"


def timeouts_section(rec: Recorded) -> dict:
    """Silent channels: answers found by a status query before the timeout, and payments
    that timed out with how each was resolved afterwards."""
    after: Counter = Counter()
    queried: Counter = Counter()
    timed_out = 0
    for _, history in _ours(rec):
        final = final_event(history)
        if any(e.status == "timed_out" for e in history):
            timed_out += 1
            after[resolution(history[-1])] += 1
        elif final is not None and by_query(final):
            queried[final.channel] += 1
    late = sum(n for how, n in after.items() if how.startswith("late success"))
    return {"resolved_by_status_query": sum(queried.values()),
            "resolved_by_status_query_by_channel": dict(sorted(queried.items())),
            "timed_out": timed_out, "late_successes": late,
            "after_timeout": dict(sorted(after.items()))}


def injected_copies(rec: Recorded) -> Counter:
    """Extra callback deliveries the simulator's faults caused, per channel: as
    ``simulators.channel.with_faults`` applies a request's faults, in plan order."""
    kinds: dict[str, set[str]] = defaultdict(set)
    channel_of: dict[str, str] = {}
    first_leg: dict[str, bool] = {}
    for inj in rec.injections:
        kinds[inj["request_id"]].add(inj["kind"])
        channel_of[inj["request_id"]] = inj["channel"]
        first_leg[inj["request_id"]] = inj.get("operation", "sale") in (
            "sale", "authorize", "payout")
    order = list(dict.fromkeys(f.kind for f in rec.scenario.faults))
    copies: Counter = Counter()
    for request_id, hit in kinds.items():
        deliveries = 1
        for kind in (k for k in order if k.value in hit):
            if kind in COPIES_PER_FAULT and deliveries:
                deliveries = COPIES_PER_FAULT[kind]
            elif kind is FaultKind.outage or (kind is FaultKind.no_callback
                                               and first_leg[request_id]):
                deliveries = 0
            elif kind is FaultKind.late_callback and first_leg[request_id] and deliveries:
                deliveries = 1
        copies[channel_of[request_id]] += max(deliveries - 1, 0)
    return copies


def callbacks_section(rec: Recorded) -> dict:
    """Channel answers at the order stage (worker metric) against the copies injected."""
    copies = injected_copies(rec)
    by_channel: dict[str, dict[str, float]] = defaultdict(dict)
    for (channel, result), count in sorted((rec.callbacks or {}).items()):
        by_channel[channel][result] = count
    replayed: Counter = Counter()
    for (channel, result), count in (rec.callbacks or {}).items():
        if result == "replayed":
            replayed[channel] += int(count)
    measured = rec.callbacks is not None
    return {"measured": measured, "by_channel": dict(by_channel),
            "copies_injected": sum(copies.values()),
            "copies_injected_by_channel": dict(sorted(copies.items())),
            "replayed": sum(replayed.values()) if measured else None,
            "replayed_by_channel": dict(sorted(replayed.items())) if measured else None}


def _second(rec: Recorded, at_ms: int) -> float:
    return (at_ms - rec.start_ms) / 1000


def _fault_of(rec: Recorded, inj: dict) -> int | None:
    """Which of the plan's faults an injection report belongs to: same channel and kind,
    and the window it fell in (the nearest one, for a report at a window's edge)."""
    same = [i for i, f in enumerate(rec.scenario.faults)
            if f.channel == inj["channel"] and f.kind.value == inj["kind"]]
    if len(same) <= 1:
        return same[0] if same else None
    at_s = _second(rec, inj["at_ms"])
    faults = rec.scenario.faults

    def distance(i: int) -> float:
        return max(faults[i].from_s - at_s, at_s - faults[i].to_s, 0.0)

    return min(same, key=distance)


def faults_section(rec: Recorded, terms: dict[str, ChannelTerms]) -> list[dict]:
    """Per fault of the plan: payments the simulator hit, what the core made of them, and
    on which channel the payments sent during its window ended."""
    hits: dict[int, set[str]] = defaultdict(set)
    ours = {p.payment_id for p in rec.planned}
    for inj in rec.injections:
        index = _fault_of(rec, inj)
        if index is not None and inj["payment_id"] in ours:
            hits[index].add(inj["payment_id"])
    rows = []
    for index, fault in enumerate(rec.scenario.faults):
        detected, how = detection(fault, sorted(hits[index]), rec.histories,
                                  terms[fault.channel].callback_timeout_ms)
        rows.append({"channel": fault.channel, "kind": fault.kind.value,
                     "from_s": fault.from_s, "to_s": fault.to_s, "rate_bps": fault.rate_bps,
                     "injected": len(hits[index]), "detected": detected, "how": how,
                     "ended_on": _ended_on(rec, fault)})
    return rows


def _ended_on(rec: Recorded, fault: Fault) -> dict[str, int]:
    """Payments sent during the fault's window, by the channel they ended on."""
    ended: Counter = Counter()
    for planned, history in _ours(rec):
        if history and fault.from_s <= planned.at_ms / 1000 < fault.to_s:
            ended[history[-1].channel] += 1
    return dict(sorted(ended.items()))


def detection(fault: Fault, payment_ids: list[str],
              histories: dict[str, list[PaymentStatusChanged]],
              callback_timeout_ms: int) -> tuple[int | None, str]:
    """How many of the hit payments show the fault in their history, and how. None where a
    payment's history cannot show it (slowness; repeated callbacks: see callbacks)."""
    kind, channel = fault.kind, fault.channel
    if kind is FaultKind.slow:
        return None, "slowness: see latency_ms (no per-payment signal)"
    if kind in COPIES_PER_FAULT:
        return None, "repeated callbacks: see callbacks (replayed vs copies injected)"
    signs: Counter = Counter()
    for payment_id in payment_ids:
        sign = _sign(kind, channel, histories.get(payment_id, []), callback_timeout_ms)
        if sign:
            signs[sign] += 1
    how = ", ".join(f"{n} {sign}" for sign, n in sorted(signs.items())) or "nothing seen"
    return sum(signs.values()), how


def _sign(kind: FaultKind, channel: str, history: list[PaymentStatusChanged],
          callback_timeout_ms: int) -> str:
    """The first thing in a payment's history that shows the fault, or ''. A silent channel
    shows as a failover, a timeout, a status query's answer, or at least an outcome that
    came after the callback timeout (the order was asking meanwhile: notes, not events)."""
    if any(source == channel for source, _, _ in failover_hops(history)):
        return "failed over"
    timed_out = any(e.status == "timed_out" for e in history)
    final = final_event(history)
    if kind in (FaultKind.outage, FaultKind.no_callback, FaultKind.late_callback):
        if final is not None and "not_found" in final.reason:
            return "not found by a status query"
        if timed_out:
            return "timed out"
        if final is not None and by_query(final):
            return "answered a status query"
        if final is not None and final.at_ms - _attempt_ms(history) >= callback_timeout_ms:
            return "answered after the callback timeout"
    if kind is FaultKind.decline_spike and final is not None and final.status == "failed":
        return "failed (declined)"
    if kind in (FaultKind.amount_mismatch, FaultKind.partial_payment) and any(
            e.status == "amount_mismatch" for e in history):
        return "amount mismatch"
    if kind is FaultKind.success_after_decline and any(
            e.trigger == RECONCILIATION and e.status == "succeeded" for e in history):
        return "made to succeed by reconciliation"
    if kind is FaultKind.channel_refund and any(
            "refunded by the channel itself" in e.reason for e in history):
        return "channel's refund posted by reconciliation"
    return ""


def _attempt_ms(history: list[PaymentStatusChanged]) -> int:
    """When the payment's attempt started: its move to processing."""
    return next((e.at_ms for e in history if e.status == "processing"), history[0].at_ms)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    assert values, "a percentile needs values"
    ordered = sorted(values)
    rank = max(math.ceil(pct / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def _stats(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    return {"count": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99), "max": max(values)}


def latency_section(rec: Recorded) -> dict:
    """Sent to final (ms), as the merchant waits for it, overall and per final channel."""
    every: list[float] = []
    by_channel: dict[str, list[float]] = defaultdict(list)
    for planned, history in _ours(rec):
        final = final_event(history)
        sent = rec.sent_ms.get(planned.payment_id)
        if final is None or sent is None:
            continue
        latency = max(final.at_ms - sent, 0)
        every.append(latency)
        by_channel[final.channel].append(latency)
    return {"all": _stats(every),
            "by_channel": {c: _stats(v) for c, v in sorted(by_channel.items())}}


def timeline_section(rec: Recorded) -> dict:
    """Per second after second 0: payments sent, and per channel payments final and
    succeeded (by when they became final)."""
    finals = [(final_event(h), p) for p, h in _ours(rec) if final_event(h) is not None]
    last_s = max([rec.scenario.duration_s] + [_second(rec, f.at_ms) for f, _ in finals])
    seconds = max(int(math.ceil(last_s)), 1)
    sent = [0] * seconds
    for at_ms in rec.sent_ms.values():
        sent[min(max(int(_second(rec, at_ms)), 0), seconds - 1)] += 1
    channels: dict[str, dict[str, list[int]]] = {}
    for final, _ in finals:
        row = channels.setdefault(final.channel, {"final": [0] * seconds,
                                                  "succeeded": [0] * seconds})
        second = min(max(int(_second(rec, final.at_ms)), 0), seconds - 1)
        row["final"][second] += 1
        row["succeeded"][second] += final.status == "succeeded"
    return {"seconds": seconds, "sent": sent, "channels": dict(sorted(channels.items())),
            "faults": [{"channel": f.channel, "kind": f.kind.value, "from_s": f.from_s,
                        "to_s": f.to_s} for f in rec.scenario.faults]}


def moves_forward(history: list[PaymentStatusChanged]) -> str:
    """'' when each event follows the one before and every status change is an allowed
    move (``TRANSITIONS``); else what is wrong."""
    statuses = {s.value for s in OrderStatus}
    for before, event in zip(history, history[1:], strict=False):
        if event.previous_status != before.status:
            return f"{before.status} then an event from {event.previous_status}"
    for event in history:
        if event.status == event.previous_status or event.previous_status not in statuses:
            continue
        before_status, after_status = OrderStatus(event.previous_status), OrderStatus(event.status)
        if after_status in TRANSITIONS[before_status] or (
                event.trigger == RECONCILIATION
                and after_status in RECONCILED_EXITS.get(before_status, ())):
            continue
        return f"{event.previous_status} -> {event.status}"
    return ""


def expected_merchant_minor(rec: Recorded, terms: dict[str, ChannelTerms]) -> dict[str, int]:
    """What the merchant should hold (pending plus settled) per currency, from the outcomes:
    each kept capture less the channel's fee for it, less what was refunded."""
    expected: dict[str, int] = defaultdict(int)
    for _, history in _ours(rec):
        channel = paid_channel(history)
        if not history or channel is None:
            continue
        last = history[-1]
        assert last.captured_minor >= last.refunded_minor >= 0, last
        terms_of = terms[channel]
        fee = fee_minor(last.captured_minor, terms_of.fee_bps, terms_of.fee_fixed_minor)
        expected[last.currency] += last.captured_minor - fee - last.refunded_minor
    return dict(expected)


CAUSES: dict[str, str] = {"amount_mismatch": "amount_mismatch",
                          "partial_payment": "amount_mismatch",
                          "success_after_decline": "status_mismatch",
                          "channel_refund": "amount_mismatch"}
"""Channel faults whose payments reconciliation must report, and as what."""


RESOLVED_BY_RULE = {"success_after_decline": "made to succeed by reconciliation",
                    "channel_refund": "channel's refund posted by reconciliation"}
"""Live faults recon.yaml's rules resolve on the shipped channels, and how it shows."""


def live_resolutions(injections: list[dict]) -> set[tuple[str, str]]:
    """(payment id, fault kind) of the injected faults reconciliation should resolve."""
    return {(d["payment_id"], d["kind"]) for d in injections if d["kind"] in RESOLVED_BY_RULE}


def resolved(kind: str, history: list[PaymentStatusChanged]) -> bool:
    return _sign(FaultKind(kind), "", history, 0) == RESOLVED_BY_RULE[kind]


def recon_section(rec: Recorded) -> dict:
    """Reconciliation's exceptions about the run's payments (before any settlement report):
    each either explained by a fault injected on that payment, or a false alarm."""
    injected = {(d["payment_id"], CAUSES[d["kind"]]) for d in rec.injections
                if d["kind"] in CAUSES}
    exceptions = [e for e in rec.recon if not e.get("line_id") and e["kind"] !=
                  "missing_at_channel" and not e.get("cleared")]
    unexplained = [e for e in exceptions if (e["payment_id"], e["kind"]) not in injected]
    missed = sorted(p for p, kind in injected
                    if not any(e["payment_id"] == p and e["kind"] == kind for e in exceptions))
    unresolved = sorted(payment_id for payment_id, kind in live_resolutions(rec.injections)
                        if not resolved(kind, rec.histories.get(payment_id, [])))
    return {"exceptions": len(exceptions), "unresolved": unresolved,
            "cleared": sum(1 for e in rec.recon if e.get("cleared")),
            "by_kind": dict(sorted(Counter(e["kind"] for e in exceptions).items())),
            "auto_resolved": sum(1 for e in exceptions if e.get("resolution")),
            "expected": len(injected), "missed": missed,
            "unexplained": [{"kind": e["kind"], "payment_id": e["payment_id"],
                             "reason": e["reason"]} for e in unexplained]}


def _check(name: str, ok: bool | None, detail: str) -> dict:
    return {"name": name, "ok": ok, "detail": detail}


def invariants(rec: Recorded, terms: dict[str, ChannelTerms], report: dict) -> list[dict]:
    """The checks a scenario must pass; ``ok`` None means not measured (a failure too)."""
    payments = report["payments"]
    still = [f"{p.payment_id}:{h[-1].status if h else 'unseen'}" for p, h in _ours(rec)
             if not is_final(h)]
    backwards = [f"{p.payment_id}: {why}" for p, h in _ours(rec) if (why := moves_forward(h))]
    checks = [
        _check("every payment final", not still,
               f"{payments['final']}/{payments['planned']} final" +
               (f"; open: {', '.join(still[:5])}" if still else "")),
        _check("status only moves forward", not backwards, "; ".join(backwards[:5]) or
               f"{sum(len(h) for h in rec.histories.values())} events"),
        *_ledger_checks(rec, terms),
        _audit_check(rec.audit),
        _check("no dead letters", rec.deadletters == 0, f"{rec.deadletters} on pay.deadletter"),
    ]
    if report["callbacks"]["copies_injected"]:
        checks.append(copies_check(report["callbacks"]))
    recon = report["reconciliation"]
    checks.append(_check(
        "reconciliation: live records agree (or the fault is reported)",
        not recon["unexplained"] and not recon["missed"] and not recon["unresolved"],
        f"{recon['exceptions']} exceptions {recon['by_kind']}, {recon['expected']} expected" +
        (f" ({recon['cleared']} more cleared by late records)" if recon.get("cleared")
         else "") +
        (f"; unexplained: {recon['unexplained'][0]['kind']} {recon['unexplained'][0]['reason']}"
         if recon["unexplained"] else "") +
        (f"; missed: {', '.join(recon['missed'][:3])}" if recon["missed"] else "") +
        (f"; not resolved: {', '.join(recon['unresolved'][:3])}" if recon["unresolved"]
         else "")))
    if rec.settlement is not None:
        rows, alarms = rec.settlement["discrepancies"], rec.settlement["false_alarms"]
        missed = [f"{r['kind']} {r['line_id']}" for r in rows if not r["flagged"]]
        checks.append(_check("reconciliation: every discrepancy reported, right kind",
                             not missed, f"recall {len(rows) - len(missed)}/{len(rows)}" +
                             (f"; missed: {', '.join(missed[:5])}" if missed else "")))
        checks.append(_check("reconciliation: nothing else reported", not alarms,
                             f"{len(alarms)} false alarms" + (
                                 f" ({rec.settlement['cleared']} cleared by late records)"
                                 if rec.settlement.get("cleared") else "") + (
                                 f": {alarms[0]['kind']} {alarms[0]['reason']}"
                                 if alarms else "")))
    return checks


def copies_check(callbacks: dict) -> dict:
    """Each callback copy the faults added came back as a replay, never applied again (the
    channels' own repeats, such as a card's notification, are replays too: hence >=)."""
    name = "every injected callback copy absorbed (replayed)"
    replayed = callbacks["replayed_by_channel"]
    if replayed is None:
        return _check(name, None, "worker metric paycore_callbacks_total not read")
    short = {c: (replayed.get(c, 0), n) for c, n in callbacks["copies_injected_by_channel"]
             .items() if replayed.get(c, 0) < n}
    return _check(name, not short, "; ".join(
        f"{c}: replayed {replayed.get(c, 0)} >= injected {n}"
        for c, n in callbacks["copies_injected_by_channel"].items()))


def _ledger_checks(rec: Recorded, terms: dict[str, ChannelTerms]) -> list[dict]:
    ledger = rec.ledger
    if ledger is None:
        return [_check("ledger", None, "not measured")]
    want = expected_merchant_minor(rec, terms)
    have = {c: v for c, v in ledger.merchant_minor.items() if v or c in want}
    return [
        _check("ledger zero-sum per currency", all(v == 0 for v in ledger.currency_sums.values()),
               json.dumps(ledger.currency_sums, sort_keys=True)),
        _check("reported balances equal rebuild from journal", ledger.rebuilt_ok,
               f"{ledger.legs} legs"),
        _check("merchant balance equals outcomes", have == want,
               f"journal {json.dumps(have, sort_keys=True)} vs outcomes "
               f"{json.dumps(want, sort_keys=True)}"),
    ]


def _audit_check(audit: dict | None) -> dict:
    if audit is None:
        return _check("auditor: checks ran, no violations", None, "auditor metrics not read")
    return _check("auditor: checks ran, no violations",
                  audit["checks"] > 0 and audit["violations"] == 0,
                  f"{audit['checks']:.0f} checks, {audit['violations']:.0f} violations")


# ---------------------------------------------------------------- settlement drift (pure)


RECON_PUBLISH_WAIT_S = 2.5
"""Recon partitions publish their tallies every second: by then the latest are out."""


def settled_inputs(rec: Recorded, terms: dict[str, ChannelTerms], period: date
                   ) -> dict[str, list[stl.Settled]]:
    """Per channel, the payments it settles: every kept capture, gross = captured less
    refunded, the serial of the event that made it final, the fee by routing.yaml's terms."""
    settled: dict[str, list[stl.Settled]] = defaultdict(list)
    for _, history in _ours(rec):
        channel = paid_channel(history)
        if channel is None or history[-1].status not in SETTLEABLE:
            continue
        final, last = final_event(history), history[-1]
        if not final.channel_serial:
            continue
        assert last.captured_minor >= last.refunded_minor, last
        fee = fee_minor(last.captured_minor, terms[channel].fee_bps,
                        terms[channel].fee_fixed_minor)
        settled[channel].append(stl.Settled(
            payment_id=last.payment_id, channel_serial=final.channel_serial,
            amount_minor=last.captured_minor - last.refunded_minor, currency=last.currency,
            fee_minor=fee, booked_on=period))
    return dict(sorted(settled.items()))


INJECTED_AS: dict[stl.Discrepancy, ExceptionKind] = {
    stl.Discrepancy.missing_line: ExceptionKind.missing_at_channel,
    stl.Discrepancy.extra_line: ExceptionKind.missing_in_ours,
    stl.Discrepancy.amount_drift: ExceptionKind.amount_mismatch,
    stl.Discrepancy.fee_drift: ExceptionKind.fee_mismatch,
    stl.Discrepancy.wrong_date: ExceptionKind.date_out_of_window,
    stl.Discrepancy.duplicate_line: ExceptionKind.duplicate_settlement,
}
"""The exception reconciliation must raise for each discrepancy a report can carry."""


def _finds(inj: stl.Injection, exc: ReconException) -> bool:
    """Does this exception report this injected discrepancy (its kind, its line)?"""
    if exc.kind is not INJECTED_AS[inj.kind] or exc.payment_id != inj.payment_id:
        return False
    return inj.kind is stl.Discrepancy.missing_line or exc.line_id == inj.line_id


def line_outcome(line: stl.Line, history: list[PaymentStatusChanged],
                 flagged: list[ReconException]) -> tuple[str, str]:
    """(result, what the core did) for one line sent: flagged by reconciliation (held, or
    booked with a flag, like a fee off), settled, or pending (nothing seen yet)."""
    booked = [e for e in history if e.trigger == "settlement"
              and e.reason.startswith(("settled by", "settled on"))]
    if flagged:
        kinds = ", ".join(sorted({e.kind.value for e in flagged}))
        return "flagged", f"{kinds}: {flagged[0].reason}" + (
            "; booked all the same" if booked and flagged[0].kind is
            ExceptionKind.fee_mismatch else "")
    if booked:
        return "settled", booked[-1].reason
    return "pending", "no outcome seen"


def settlement_section(reports: list[stl.Report], histories: dict[str, list],
                       exceptions: list[ReconException], files: list[str]) -> dict:
    """Each line sent and what reconciliation made of it; each injected discrepancy and the
    exception that reported it; and the exceptions no injection explains (false alarms).
    Precision and recall are over the payments of these reports and of the run. Exceptions
    later cleared (their records came late, ``ReconException.cleared``) are counted apart:
    they stand for no discrepancy."""
    cleared = sum(1 for exc in exceptions if exc.cleared)
    exceptions = [exc for exc in exceptions if not exc.cleared]
    by_line: dict[str, list[ReconException]] = defaultdict(list)
    for exc in exceptions:
        if exc.line_id:
            by_line[exc.line_id].append(exc)
    by_serial = {e.channel_serial: p for p, h in histories.items() for e in h
                 if e.channel_serial}
    lines, outcome_of = [], {}
    for report in reports:
        for line in report.lines:
            payment_id = line.payment_id or by_serial.get(line.channel_serial, "")
            result, core = line_outcome(line, histories.get(payment_id, []),
                                        by_line.get(line.line_id, []))
            outcome_of[line.line_id] = (result, core)
            lines.append({"channel": line.channel, "line_id": line.line_id,
                          "payment_id": line.payment_id, "amount_minor": line.amount_minor,
                          "fee_minor": line.fee_minor, "settled_on": line.settled_on,
                          "result": result, "core": core})
    injected = [(report.channel, inj) for report in reports for inj in report.injected]
    rows, explained = [], set()
    for channel, inj in injected:
        found = [e for e in exceptions if _finds(inj, e)]
        explained.update(e.exception_id for e in found)
        rows.append({"channel": channel, "kind": inj.kind.value, "line_id": inj.line_id,
                     "payment_id": inj.payment_id, "expected": inj.expected,
                     "reported": inj.reported, "want": INJECTED_AS[inj.kind].value,
                     "flagged": bool(found),
                     "core": found[0].reason if found else "not reported"})
    false_alarms = [{"kind": e.kind.value, "payment_id": e.payment_id, "line_id": e.line_id,
                     "reason": e.reason} for e in exceptions if e.exception_id not in explained]
    settled = {p for p, h in histories.items() if any(
        e.trigger == "settlement" and e.reason.startswith(("settled by", "settled on"))
        for e in h)}
    true_found = sum(r["flagged"] for r in rows)
    reported = true_found + len(false_alarms)
    return {"files": files, "lines_sent": len(lines),
            "by_result": dict(sorted(Counter(x["result"] for x in lines).items())),
            "orders_settled": len(settled), "injected": len(rows), "flagged": true_found,
            "exceptions": len(exceptions), "cleared": cleared,
            "exceptions_by_kind": dict(sorted(Counter(e.kind.value for e in exceptions)
                                              .items())),
            "recall": true_found / len(rows) if rows else 1.0,
            "precision": true_found / reported if reported else 1.0,
            "false_alarms": false_alarms, "discrepancies": rows, "lines": lines}


# ---------------------------------------------------------------- printing and plotting


def progress_line(elapsed_s: float, sent: int, total: int, statuses: Counter) -> str:
    """One line of progress: sent, final, in flight, and payments by latest status."""
    final = sum(n for status, n in statuses.items() if status in FINAL)
    by = "  ".join(f"{status} {n}" for status, n in sorted(statuses.items()))
    return (f"  {elapsed_s:5.0f}s  sent {sent:>5}/{total}  final {final:>5}  "
            f"in flight {sent - final:>4}  | {by}")


def _table(report: dict) -> list[str]:
    out = ["", f"  {'channel':<16} {'status':<20} {'count':>6}"]
    for channel, statuses in report["payments"]["by_channel"].items():
        for status, n in statuses.items():
            out.append(f"  {channel:<16} {status:<20} {n:>6}")
    return out


def _faults_lines(report: dict) -> list[str]:
    if not report["faults"]:
        return ["  faults: none"]
    out = [f"  {'fault':<44} {'injected':>8} {'detected':>8}  how"]
    for row in report["faults"]:
        what = f"{row['channel']} {row['kind']} {row['from_s']:g}-{row['to_s']:g}s"
        detected = "-" if row["detected"] is None else row["detected"]
        out.append(f"  {what:<44} {row['injected']:>8} {detected:>8}  {row['how']}")
    return out


def _latency_lines(report: dict) -> list[str]:
    out = []
    for name, s in [("all", report["latency_ms"]["all"]),
                    *report["latency_ms"]["by_channel"].items()]:
        if s["count"]:
            out.append(f"  latency ms {name:<14} n {s['count']:>5}  p50 {s['p50']:>6.0f}  "
                       f"p95 {s['p95']:>6.0f}  p99 {s['p99']:>6.0f}  max {s['max']:>6.0f}")
    return out


def _settlement_lines(report: dict) -> list[str]:
    s = report["settlement"]
    if s is None:
        return []
    out = [f"  settlement: {s['lines_sent']} lines sent {s['by_result']}; "
           f"{s['orders_settled']} orders settled",
           f"  reconciliation: {s['injected']} discrepancies injected, {s['flagged']} "
           f"reported with the right kind; {s['exceptions']} exceptions "
           f"{s['exceptions_by_kind']}; precision {s['precision']:.0%}, recall "
           f"{s['recall']:.0%}",
           f"    {'injected':<16} {'reported as':<22} {'channel':<14} {'line':<28} found"]
    for row in s["discrepancies"]:
        out.append(f"    {row['kind']:<16} {row['want']:<22} {row['channel']:<14} "
                   f"{row['line_id']:<28} {'yes' if row['flagged'] else 'NO'}")
    for alarm in s["false_alarms"]:
        out.append(f"    false alarm: {alarm['kind']} {alarm['payment_id']} {alarm['reason']}")
    return out


def render_text(report: dict) -> str:
    """The printed report."""
    head, pay = report["scenario"], report["payments"]
    fo, to, cb = report["failovers"], report["timeouts"], report["callbacks"]
    lines = [f"scenario {head['name']} seed {head['seed']}{' (short)' if head['short'] else ''}"
             f": merchant {head['merchant_id']}, {head['stack']} stack, "
             f"{head['elapsed_s']}s",
             f"  payments: {pay['planned']} planned, {pay['sent']} sent, {pay['final']} final"]
    lines += _table(report)
    lines += ["", f"  failovers: {fo['total']} {fo['by_route']} causes {fo['by_cause']}; "
                  f"worker metric {fo['worker_metric']}",
              f"  status queries answered in time: {to['resolved_by_status_query']}; "
              f"timed out: {to['timed_out']} then {to['after_timeout']}",
              f"  callbacks: {cb['by_channel'] if cb['measured'] else 'not measured'}; "
              f"copies injected {cb['copies_injected']}, replayed {cb['replayed']}", ""]
    lines += _faults_lines(report) + [""] + _latency_lines(report)
    recon = report["reconciliation"]
    lines += ["", f"  reconciliation (live records): {recon['exceptions']} exceptions "
                  f"{recon['by_kind']}, {recon['auto_resolved']} resolved by rule; "
                  f"{recon['expected']} expected from injected faults"]
    lines += _settlement_lines(report) + ["", "  invariants:"]
    for check in report["invariants"]:
        mark = {True: "OK", False: "FAIL", None: "N/A"}[check["ok"]]
        lines.append(f"    {mark:<5} {check['name']:<52} {check['detail']}")
    for name, path in report.get("files", {}).items():
        lines.append(f"  {name}: {path}")
    lines.append(f"\nRESULT: {'OK' if report['ok'] else 'FAILED'}")
    return "\n".join(lines)


def rolling_success_pct(row: dict[str, list[int]], window_s: int = 3) -> list[float]:
    """Succeeded per final over the last ``window_s`` seconds, in percent (NaN: none)."""
    out = []
    for second in range(len(row["final"])):
        lo = max(0, second - window_s + 1)
        finals = sum(row["final"][lo:second + 1])
        out.append(100 * sum(row["succeeded"][lo:second + 1]) / finals if finals
                   else float("nan"))
    return out


def write_plot(report: dict, path: Path) -> Path:
    """Throughput (final per second, per channel; sent overall) and success rate per
    channel over time, fault windows shaded. Agg backend: no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    timeline = report["timeline"]
    seconds = list(range(timeline["seconds"]))
    figure = Figure(figsize=(11, 6.5), dpi=100)
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(seconds, timeline["sent"], color="0.55", linestyle="--", label="sent (all)")
    for channel, row in timeline["channels"].items():
        line, = top.plot(seconds, row["final"], label=channel)
        bottom.plot(seconds, rolling_success_pct(row), label=channel, color=line.get_color())
    for index, fault in enumerate(timeline["faults"]):
        for axis in (top, bottom):
            axis.axvspan(fault["from_s"], fault["to_s"], color=f"C{index % 10}", alpha=0.12)
        top.annotate(f"{fault['channel']} {fault['kind']}", (fault["from_s"], 1.0),
                     xycoords=("data", "axes fraction"), fontsize=8, va="top",
                     xytext=(2, -2 - 10 * (index % 4)), textcoords="offset points")
    head = report["scenario"]
    top.set_title(f"{head['name']}  seed {head['seed']}{'  (short)' if head['short'] else ''}")
    top.set_ylabel("payments final / s")
    bottom.set_ylabel("success % (3 s window)")
    bottom.set_ylim(-2, 102)
    bottom.set_xlabel("seconds after second 0")
    top.legend(loc="upper right", fontsize=8)
    bottom.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


# ---------------------------------------------------------------- metrics


_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition: (name, labels, value) per sample line."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = dict(_LABEL.findall(match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def scrape(port: int, timeout_s: float = 5.0) -> str | None:
    """A process's /metrics text, or None when nothing answers there."""
    if not port:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                    timeout=timeout_s) as answer:
            return answer.read().decode()
    except OSError:
        return None


def metric_sum(samples, name: str) -> float:
    return sum(value for n, _, value in samples if n == name)


def callbacks_from(text: str | None) -> dict[tuple[str, str], float] | None:
    """``paycore_callbacks_total`` by (channel, result); None where the worker has no such
    metric (or did not answer)."""
    if text is None or "paycore_callbacks_total" not in text:
        return None
    return {(labels.get("channel", ""), labels.get("result", "")): value
            for name, labels, value in parse_metrics(text)
            if name == "paycore_callbacks_total"}


def audit_from(text: str | None) -> dict | None:
    """The auditor's checks and violations (total and per check)."""
    if text is None:
        return None
    samples = parse_metrics(text)
    by_check: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for name, labels, value in samples:
        if name == "paycore_audit_checks_total":
            by_check[labels.get("check", "")][0] += value
        elif name == "paycore_audit_violations_total":
            by_check[labels.get("check", "")][1] += value
    return {"checks": metric_sum(samples, "paycore_audit_checks_total"),
            "violations": metric_sum(samples, "paycore_audit_violations_total"),
            "by_check": {c: {"checks": v[0], "violations": v[1]}
                         for c, v in sorted(by_check.items())}}


# ---------------------------------------------------------------- the live run


def now_ms() -> int:
    return int(time.time() * 1000)


class Sidelines:
    """What a scenario reads besides the Observer, each from the beginning: the simulator's
    reports of faults it applied (``pay.sim.injections``) and the core's reconciliation
    exceptions (``pay.recon.exceptions``)."""

    def __init__(self, bootstrap: str, partitions: int):
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      auto_offset_reset="earliest", group_id=None)
        tps = [TopicPartition(name, p) for name in (t.SIM_INJECTIONS, t.RECON_EXCEPTIONS)
               for p in range(partitions)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.injections: dict[tuple[str, str], dict] = {}
        """(request id, kind) -> the report (a request reported twice counts once)."""
        self.exceptions: dict[str, object] = {}
        """Message id -> body of each recon exception."""

    def poll(self, timeout_ms: int = 0) -> None:
        from streams.envelope import UndecodableEnvelope, decode

        for tp, records in self.consumer.poll(timeout_ms=timeout_ms, max_records=5000).items():
            for record in records:
                try:
                    if tp.topic == t.SIM_INJECTIONS:
                        doc = json.loads(record.value)
                        self.injections[(doc["request_id"], doc["kind"])] = doc
                    else:
                        env = decode(record.value)
                        self.exceptions[env.message_id] = env.body
                except (ValueError, KeyError, TypeError, UndecodableEnvelope):
                    continue

    def recon_exceptions(self, payment_ids: set[str]) -> list[ReconException]:
        """Reconciliation's exceptions about these payments, each once (by its id)."""
        found = {body.exception_id: body for body in self.exceptions.values()
                 if isinstance(body, ReconException) and body.payment_id in payment_ids}
        return list(found.values())

    def close(self) -> None:
        self.consumer.close()


class Live:
    """One run against a running stack: plan, load, drain, settlement, then the facts."""

    def __init__(self, settings: Settings, scenario: Scenario, merchant_id: str,
                 planned: list[Planned], say: Callable[[str], None]):
        from paycore.observe import Observer, command_producer

        self.settings, self.scenario, self.merchant_id = settings, scenario, merchant_id
        self.planned, self.say = planned, say
        self.observer = Observer(settings.kafka_bootstrap, settings.partitions,
                                 merchant=merchant_id)
        self.side = Sidelines(settings.kafka_bootstrap, settings.partitions)
        self.producer = command_producer(settings.kafka_bootstrap)
        self.sent_ms: dict[str, int] = {}
        self.start_ms = 0
        self.shown = 0.0

    def close(self) -> None:
        self.producer.close()
        self.observer.close()
        self.side.close()

    def publish_plan(self, clear: bool = False) -> None:
        """The fault plan (or, to end the run, an empty one) on ``pay.sim.control``."""
        start = now_ms() + (0 if clear else PLAN_LEAD_MS)
        plan = fault_plan(self.scenario, start)
        if clear:
            plan = plan.model_copy(update={"faults": ()})
        self.producer.send(t.SIM_CONTROL, key=self.scenario.name.encode(),
                           value=plan.model_dump_json().encode())
        self.producer.flush()
        if not clear:
            self.start_ms = start

    def poll(self, timeout_ms: int) -> None:
        self.observer.poll(timeout_ms=timeout_ms)
        self.side.poll()
        if time.monotonic() - self.shown >= PROGRESS_EVERY_S and now_ms() >= self.start_ms:
            self.show()

    def show(self) -> None:
        self.shown = time.monotonic()
        statuses = Counter(h[-1].status for p in self.planned
                           if (h := self.observer.history.get(p.payment_id)))
        elapsed_s = (now_ms() - self.start_ms) / 1000
        self.say(progress_line(elapsed_s, len(self.sent_ms), len(self.planned), statuses))

    def send_load(self) -> None:
        """Each payment at its second (after ``start_ms``), polling outcomes in between."""
        from paycore.observe import send_command

        assert self.start_ms, "publish the plan first: it fixes second 0"
        index = 0
        while index < len(self.planned):
            now = now_ms()
            while index < len(self.planned) and \
                    self.start_ms + self.planned[index].at_ms <= now:
                send_command(self.producer, self.planned[index].command)
                self.sent_ms[self.planned[index].payment_id] = now
                index += 1
            wait_ms = self.start_ms + self.planned[index].at_ms - now_ms() \
                if index < len(self.planned) else 0
            self.poll(max(0, min(wait_ms, 100)))
        self.producer.flush()

    def open_count(self) -> int:
        return sum(1 for p in self.planned
                   if not is_final(self.observer.history.get(p.payment_id)))

    def drain(self) -> bool:
        """Wait (bounded by ``drain_timeout_s``) until every payment is final."""
        deadline = time.monotonic() + self.scenario.drain_timeout_s
        while self.open_count() and time.monotonic() < deadline:
            self.poll(200)
        self.show()
        return self.open_count() == 0

    def recorded(self, stack: str) -> Recorded:
        ours = {p.payment_id for p in self.planned}
        return Recorded(
            scenario=self.scenario, merchant_id=self.merchant_id, start_ms=self.start_ms,
            planned=self.planned, sent_ms=dict(self.sent_ms),
            histories={p: list(self.observer.history[p]) for p in ours
                       if p in self.observer.history},
            injections=[d for d in self.side.injections.values() if d["payment_id"] in ours],
            ledger=self.ledger_facts(), deadletters=len(self.observer.deadletters),
            recon=[e.model_dump(mode="json") for e in self.side.recon_exceptions(ours)],
            stack=stack)

    def ledger_facts(self) -> LedgerFacts:
        sums: dict[str, int] = defaultdict(int)
        for leg in self.observer.legs.values():
            sums[leg.currency] += leg.amount_minor
        merchant: dict[str, int] = defaultdict(int)
        for account, total in self.observer.balances().items():
            parts = accounts.logical_account(account).split(":")
            if parts[0] == "merchant" and parts[1] == self.merchant_id and \
                    parts[2] in ("pending", "settled"):
                merchant[parts[3]] += total
        return LedgerFacts(dict(sums), self.observer.reported_equals_rebuilt(),
                           dict(merchant), len(self.observer.legs))

    def converge(self, terms: dict[str, ChannelTerms]) -> None:
        """Wait (bounded) until the journal matches the outcomes and the auditor is quiet."""
        want = expected_merchant_minor(self.recorded(""), terms)

        def balanced() -> bool:
            facts = self.ledger_facts()
            have = {c: v for c, v in facts.merchant_minor.items() if v or c in want}
            return have == want and all(v == 0 for v in facts.currency_sums.values())

        self.observer.wait_until(balanced, LEDGER_WAIT_S)
        deadline, previous = time.monotonic() + AUDIT_WAIT_S, None
        while time.monotonic() < deadline:
            text = scrape(self.settings.auditor_metrics_port)
            if text is None:
                return
            samples = parse_metrics(text)
            state = (metric_sum(samples, "paycore_audit_events_total"),
                     metric_sum(samples, "paycore_audit_open_entries"))
            if state == previous and state[1] == 0:
                return
            previous = state
            time.sleep(0.5)

    def settle(self, terms: dict[str, ChannelTerms], folder: Path) -> dict:
        """Each channel's settlement report of what it was paid, with the scenario's drift:
        written as the channel's file and sent line by line to ``pay.channel.settlements``;
        then what the core did with each line (bounded by ``settlement.wait_s``)."""
        spec = self.scenario.settlement
        assert spec is not None
        period = datetime.fromtimestamp(self.start_ms / 1000, tz=timezone.utc).date()
        self.await_resolutions(spec.wait_s)
        inputs = settled_inputs(self.recorded(""), terms, period)
        reports = [stl.build_report(channel, terms[channel].kind, period,
                                    inputs.get(channel, []), self.scenario.seed,
                                    spec.drift.drift())
                   for channel in spec.channels or tuple(inputs)]
        folder.mkdir(parents=True, exist_ok=True)
        files = [str(stl.write_report(report, folder)) for report in reports]
        recon = load_recon(self.settings.config_dir)
        for report in reports:
            source = f"scenario:{self.scenario.name}:{report.channel}"
            for key, value in stl.to_records(report.lines, source, now_ms(), report.period):
                self.producer.send(t.SETTLEMENTS, key=key, value=value)
        self.producer.flush()
        for report in reports:  # then the day's report and the next T+N ones are complete
            source = f"scenario:{self.scenario.name}:{report.channel}:closed"
            for day in range(recon.for_channel(report.channel).settle_days + 1):
                period, lines = report.period + timedelta(days=day), len(report.lines)
                for partition, key, value in stl.close_records(
                        report.channel, period, lines if day == 0 else 0, source, now_ms(),
                        self.settings.partitions):
                    self.producer.send(t.SETTLEMENTS, key=key, value=value,
                                       partition=partition)
        self.producer.flush()
        self.say(f"  settlement: {sum(len(r.lines) for r in reports)} lines from "
                 f"{len(reports)} channels, {sum(len(r.injected) for r in reports)} "
                 "discrepancies injected; reports closed through T+N")
        scope = {p.payment_id for p in self.planned} | {
            line.payment_id for r in reports for line in r.lines}

        def section() -> dict:
            found = [e for e in self.side.recon_exceptions(scope)
                     if e.line_id or e.kind is ExceptionKind.missing_at_channel]
            return settlement_section(reports, self.observer.history, found, files)

        deadline = time.monotonic() + spec.wait_s
        while time.monotonic() < deadline:
            now = section()
            if "pending" not in now["by_result"] and now["flagged"] == now["injected"]:
                break
            self.poll(200)
        return section()

    def await_resolutions(self, wait_s: float) -> None:
        """The channels report the day once it is over: by then reconciliation has resolved
        the day's live faults it may resolve (bounded by ``wait_s``)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            self.poll(200)
            ours = {p.payment_id for p in self.planned}
            todo = [(p, k) for p, k in live_resolutions(list(self.side.injections.values()))
                    if p in ours and not resolved(k, self.observer.history.get(p, []))]
            if not todo:
                return

    def recon_report(self, folder: Path) -> dict:
        """``paycore recon report`` as the day ends: printed, and written to ``folder``
        (the whole broker's: on an attached stack, other runs' payments count too)."""
        from paycore import recon_report as rr

        time.sleep(RECON_PUBLISH_WAIT_S)
        statuses, exceptions = rr.read_topics(self.settings.kafka_bootstrap,
                                              self.settings.partitions)
        today = datetime.fromtimestamp(self.start_ms / 1000, tz=timezone.utc).date()
        report = rr.build(statuses, exceptions, today)
        files = [str(p) for p in rr.write(report, folder)]
        self.say(rr.render(report))
        return {"files": files, "matched": report["matched"],
                "clearing_residual": report["clearing_residual"],
                "open_by_age": report["open_by_age"]}

    def await_copies(self, rec: Recorded) -> None:
        """Callback copies the faults added may still be on their way (a reordered one comes
        up to 5 s late): wait (bounded) until the worker has seen as many replays."""
        copies = injected_copies(rec)
        deadline = time.monotonic() + COPIES_WAIT_S
        while copies and time.monotonic() < deadline:
            seen = callbacks_from(scrape(self.settings.worker_web_port))
            if seen is None or all(seen.get((c, "replayed"), 0) >= n
                                   for c, n in copies.items()):
                return
            self.poll(500)

    def metrics(self, rec: Recorded) -> Recorded:
        worker = scrape(self.settings.worker_web_port)
        rec.callbacks = callbacks_from(worker)
        if worker is not None and "paycore_channel_failovers_total" in worker:
            rec.failovers_metric = metric_sum(parse_metrics(worker),
                                              "paycore_channel_failovers_total")
        rec.audit = audit_from(scrape(self.settings.auditor_metrics_port))
        return rec


def drive(scenario: Scenario, settings: Settings, merchant_id: str, out_dir: Path,
          say: Callable[[str], None], stack: str) -> Recorded:
    """Plan, load, drain, settlement, convergence: the live part of a run."""
    terms = {c.name: c for c in load_routing(settings.config_dir).channels}
    planned = generate_load(scenario, merchant_id)
    with open(out_dir / "commands.jsonl", "w") as out:
        for p in planned:
            out.write(json.dumps({"at_ms": p.at_ms, "command": p.command}) + "\n")
    live = Live(settings, scenario, merchant_id, planned, say)
    try:
        live.publish_plan()
        say(f"  {len(planned)} payments over {scenario.duration_s:g}s, "
            f"{len(scenario.faults)} faults; second 0 at {live.start_ms}")
        live.send_load()
        if not live.drain():
            say(f"  {live.open_count()} payments still open after "
                f"{scenario.drain_timeout_s:g}s")
        live.publish_plan(clear=True)
        settlement = live.settle(terms, out_dir / "settlement") if scenario.settlement \
            else None
        live.converge(terms)
        if settlement is not None:
            settlement["recon_report"] = live.recon_report(out_dir / "recon")
        recorded = live.recorded(stack)
        live.await_copies(recorded)
        recorded = live.metrics(recorded)
        recorded.settlement = settlement
        return recorded
    finally:
        live.close()


@dataclass
class RunOptions:
    short: bool = False
    out_dir: Path | None = None
    attach: bool | None = None
    """True: use the stack already running at ``settings.kafka_bootstrap`` (ports from the
    settings); False: start worker, simulator and auditor (on their own embedded broker
    unless the settings name one); None: attach when PAYCORE_KAFKA_BOOTSTRAP is set."""
    say: Callable[[str], None] = print


OUTPUT_PARTS = ("config", "settlement", "stack", "report.json", "timeline.png",
                "commands.jsonl", "report.txt")


def output_dir(scenario: Scenario, settings: Settings, short: bool) -> Path:
    """``.paycore/scenarios/<name>-<seed>`` (``-short`` for the short form)."""
    return settings.data_dir / "scenarios" / (
        f"{scenario.name}-{scenario.seed}{'-short' if short else ''}")


def _clear(out_dir: Path) -> None:
    for name in OUTPUT_PARTS:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def run_scenario(scenario: Scenario, settings: Settings, options: RunOptions) -> dict:
    """Run the scenario end to end; returns the report (also written and printed)."""
    started, say = time.monotonic(), options.say
    if options.short:
        scenario = scenario.shortened()
    attach = options.attach if options.attach is not None else bool(
        os.environ.get("PAYCORE_KAFKA_BOOTSTRAP"))
    out_dir = options.out_dir or output_dir(scenario, settings, options.short)
    _clear(out_dir)
    say(f"paycore scenario {scenario.name}, seed {scenario.seed}"
        f"{' (short)' if options.short else ''}: output in {out_dir}")
    if attach:
        recorded = _attached(scenario, settings, out_dir, say)
        config_dir = settings.config_dir
    else:
        config_dir = write_config(scenario, settings.config_dir, out_dir / "config")
        recorded = _embedded(scenario, settings, config_dir, out_dir, say)
    recorded.elapsed_s, recorded.short = time.monotonic() - started, options.short
    terms = {c.name: c for c in load_routing(config_dir).channels}
    report = build_report(recorded, terms)
    report["files"] = {"report": str(out_dir / "report.json"),
                       "timeline": str(out_dir / "timeline.png"),
                       "commands": str(out_dir / "commands.jsonl")}
    if not attach:
        report["files"]["logs"] = str(out_dir / "stack" / "logs")
    write_plot(report, out_dir / "timeline.png")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False))
    text = render_text(report)
    (out_dir / "report.txt").write_text(text + "\n")
    say(text)
    return report


def _run_tag() -> str:
    return f"r{now_ms() % 36**6:x}"


def _attached(scenario: Scenario, settings: Settings, out_dir: Path,
              say: Callable[[str], None]) -> Recorded:
    """Against a stack that is already up: its config stays as it is; a merchant id of this
    run's own keeps earlier runs' payments out of the report."""
    if not settings.kafka_bootstrap:
        raise ScenarioError("attaching needs a running stack: set PAYCORE_KAFKA_BOOTSTRAP")
    if scenario.channels:
        say("  note: channel overrides are not applied to a running stack")
    check_against(scenario, load_routing(settings.config_dir))
    merchant = f"scn-{scenario.name}-{scenario.seed}-{_run_tag()}"
    say(f"  attached to {settings.kafka_bootstrap}; merchant {merchant}")
    return drive(scenario, settings, merchant, out_dir, say, "attached")


def _embedded(scenario: Scenario, settings: Settings, config_dir: Path, out_dir: Path,
              say: Callable[[str], None]) -> Recorded:
    """Start worker, simulator (seeded by the scenario) and auditor with the scenario's
    config; on their own embedded broker unless the settings name one."""
    from paycore.stack import Stack, wait_until_ready

    update = {"config_dir": config_dir, "data_dir": out_dir / "stack",
              "simulator_seed": scenario.seed, "api_port": 0, "worker_web_port": 0,
              "simulator_metrics_port": 0, "auditor_metrics_port": 0,
              "webhooks_metrics_port": 0}
    merchant = f"scn-{scenario.name}-{scenario.seed}"
    if settings.kafka_bootstrap:  # a shared broker: state and payments of this run's own
        tag = _run_tag()
        update["app_id"] = f"{settings.app_id}-{scenario.name}-{tag}"
        merchant = f"{merchant}-{tag}"
    stack = Stack(settings.model_copy(update=update), workers=1, with_api=False)
    try:
        stack.start()
        for name, where in stack.describe():
            say(f"  {name:<10} {where}")
        try:
            warmup_s = wait_until_ready(stack.settings)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; see the logs in {out_dir / 'stack' / 'logs'}") from exc
        say(f"  stack ready (warm-up payment took {warmup_s:.1f}s)")
        return drive(scenario, stack.settings, merchant, out_dir, say, "embedded")
    finally:
        stack.stop()
        for tables in (out_dir / "stack").glob("worker-*"):
            shutil.rmtree(tables, ignore_errors=True)


def run_scenario_file(path: Path, settings: Settings, short: bool | None = None,
                      seed: int | None = None, out_dir: Path | None = None,
                      attach: bool | None = None, say: Callable[[str], None] = print) -> int:
    """``paycore simulate FILE``: 0 when every invariant holds, 1 when one does not (or the
    stack never got ready), 2 when the file is refused."""
    from streams.config import ConfigError

    try:
        scenario = load_scenario(path)
    except (ConfigError, OSError) as exc:
        say(str(exc))
        return 2
    if seed is not None:
        scenario = Scenario.model_validate({**scenario.model_dump(), "seed": seed})
    options = RunOptions(short_from_env() if short is None else short, out_dir, attach, say)
    try:
        report = run_scenario(scenario, settings, options)
    except (ScenarioError, ConfigError) as exc:
        say(f"{path}: {exc}")
        return 2
    except TimeoutError as exc:
        say(f"{path}: {exc}")
        return 1
    return 0 if report["ok"] else 1
