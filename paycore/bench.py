"""``paycore bench``: the whole payment path measured against the ceiling of its broker.

One run per worker count (``--workers 1,2``), each on a fresh stack (embedded broker, or
``PAYCORE_KAFKA_BOOTSTRAP``) whose channel simulators answer at once and never decline:

1. load: ``--payments`` sales offered at ``--rate`` per second (``max``: all at once),
   followed until each is final and its capture is booked on every ledger account;
2. reconciliation: each channel's settlement report for the day, every line matched;
3. ceiling: a plain aiokafka consume-and-produce relay of records of the run's mean size,
   on the same broker, same partitions, same acks.

Messages per payment are counted, not assumed: the growth of every topic (changelogs
included) over the run, divided by the payments. The ratio is paycore's payments/s over
(relay messages/s / messages per payment): 1.0 would mean paycore costs no more per
message than a relay that does nothing.

A benchmark, not a test: it runs on demand (README, docs/performance.md) and writes
``bench.json``, ``bench.png`` and, with ``--profile``, where the worker's time went.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil
import yaml

from domain.ids import payment_id_for
from paycore import text
from paycore.scenario import parse_metrics, scrape
from paycore.stack import Stack, wait_until_ready
from simulators import settlement as stl
from streams import topics as t
from streams.broker import ensure_topics
from streams.settings import Settings

MERCHANT = "bench-shop"
METHODS = ("card", "wallet")
FINAL = {"succeeded", "failed", "canceled", "amount_mismatch", "timed_out"}
DRAIN_TIMEOUT_S = 300.0
RECON_STALL_S = 60.0
"""Reconciliation is given up on when no line matched for this long."""
PROGRESS_EVERY_S = 2.0
SAMPLE_EVERY_S = 0.5


@dataclass
class BenchOptions:
    payments: int = 5_000
    """Sales per run."""
    rates: tuple[str, ...] = ("max",)
    """Offered rates, per run: ``max`` (all at once), a number per second, or ``half``
    (half the sustained rate the preceding ``max`` run measured)."""
    workers: tuple[int, ...] = (1, 2)
    out_dir: Path = Path(".paycore/bench")
    profile: bool = False
    """Record the first worker with py-spy and list where its time went."""
    relay_messages: int = 100_000
    restart: bool = False
    """After the run, SIGKILL worker 0, start it again and time it until a payment passes."""
    seed: int = 1
    settlement: bool = True
    """Reconcile every payment's settlement line after the load (off: quick comparisons)."""


# ---------------------------------------------------------------- the bench's own config


def bench_config(base_dir: Path, out_dir: Path) -> Path:
    """The config folder with simulators that answer at once and never decline, and risk
    rules that let every bench payment through (velocity is per payer: each payer pays once)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for source in base_dir.glob("*.yaml"):
        out_dir.joinpath(source.name).write_bytes(source.read_bytes())
    sims = yaml.safe_load((out_dir / "channels.yaml").read_text())
    for profile in sims["simulators"]:
        profile.update(latency_ms_median=0, latency_ms_p99=0, decline_bps=0)
    (out_dir / "channels.yaml").write_text(yaml.safe_dump(sims, sort_keys=False))
    return out_dir


def bench_commands(run_id: str, payments: int) -> list[dict]:
    """Sales alternating card and wallet, amounts clear of the simulators' test magic."""
    out = []
    for i in range(payments):
        amount = 1_000 + (i * 7_919) % 90_000
        amount += 300 if amount % 1000 in (13, 207, 408, 409, 411, 422, 503) else 0
        order_no = f"{run_id}-{i}"
        out.append({"type": "pay", "merchant_id": MERCHANT, "idempotency_key": order_no,
                    "merchant_order_no": order_no, "amount_minor": amount,
                    "currency": "USD", "method": METHODS[i % 2], "capture": "auto",
                    "payer": {"customer_id": f"cust-{run_id}-{i}"}})
    return out


# ---------------------------------------------------------------- following the outcome


@dataclass
class Outcome:
    sent_ms: int
    final_ms: int = 0
    status: str = ""
    serial: str = ""
    channel: str = ""
    captured_minor: int = 0
    booked_ms: int = 0
    legs: int = 0
    legs_wanted: int = 0


class Follower:
    """Reads pay.events and pay.ledger.entries from where they stood before the load,
    parsing only what it needs (a JSON parse per message, no model validation)."""

    def __init__(self, bootstrap: str, partitions: int, start: dict) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                      enable_auto_commit=False, fetch_max_wait_ms=50)
        tps = [TopicPartition(name, p) for name in (t.EVENTS, t.LEDGER_ENTRIES)
               for p in range(partitions)]
        self.consumer.assign(tps)
        for tp in tps:
            self.consumer.seek(tp, start.get((tp.topic, tp.partition), 0))
        self.outcomes: dict[str, Outcome] = {}
        self.seen: set[str] = set()

    def poll(self, timeout_ms: int) -> None:
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=20_000)
        for records in batches.values():
            for record in records:
                self._read(record.value)

    def _read(self, raw: bytes) -> None:
        if b'"PaymentStatusChanged"' not in raw and b'"LegApplied"' not in raw:
            return
        doc = json.loads(raw)
        if doc["id"] in self.seen:  # a redelivered copy
            return
        self.seen.add(doc["id"])
        body = doc["body"]
        outcome = self.outcomes.get(body.get("payment_id", ""))
        if outcome is None:
            return
        if doc["kind"] == "PaymentStatusChanged" and body["status"] in FINAL \
                and not outcome.final_ms:
            outcome.final_ms, outcome.status = body["at_ms"], body["status"]
            outcome.serial, outcome.channel = body.get("channel_serial", ""), body["channel"]
            outcome.captured_minor = body.get("captured_minor", 0)
        elif doc["kind"] == "LegApplied" and body.get("reason") == "capture":
            outcome.legs += 1
            outcome.legs_wanted = body["entry_legs"]
            if outcome.legs == outcome.legs_wanted:
                outcome.booked_ms = int(time.time() * 1000)

    def done(self, outcome: Outcome) -> bool:
        return bool(outcome.final_ms) and (outcome.status != "succeeded" or
                                           bool(outcome.booked_ms))

    def close(self) -> None:
        self.consumer.close()


# ---------------------------------------------------------------- processes and offsets


class Sampler(threading.Thread):
    """RSS and CPU of the stack's processes every ``SAMPLE_EVERY_S``."""

    def __init__(self, procs: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.procs = {name: psutil.Process(pid) for name, pid in procs.items()}
        self.samples: list[dict] = []
        self.stopped = threading.Event()

    def cpu_s(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            try:
                times = proc.cpu_times()  # the process alone: the bench's children are
                out[name] = times.user + times.system  # the stack, counted by name
            except psutil.Error:
                out[name] = 0.0
        return out

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_EVERY_S):
            row = {"at": time.time()}
            for name, proc in self.procs.items():
                try:
                    row[name] = proc.memory_info().rss
                except psutil.Error:
                    row[name] = 0
            self.samples.append(row)

    def peak_mb(self, name: str) -> float:
        return max((s.get(name, 0) for s in self.samples), default=0) / 2**20


def end_offsets(bootstrap: str) -> dict[tuple[str, int], int]:
    """Every topic-partition's end offset as a fetch reports it (Tansu's ListOffsets is
    wrong: ``streams/tansu.py``)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.tansu import true_end_offsets

    async def read() -> dict:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await consumer.start()
        try:
            topics = await consumer.topics()
            tps = [TopicPartition(name, p) for name in sorted(topics)
                   for p in (consumer.partitions_for_topic(name) or ())]
            ends = await true_end_offsets(consumer, bootstrap, tps)
            return {(tp.topic, tp.partition): end for tp, end in ends.items()}
        finally:
            await consumer.stop()

    return asyncio.run(read())


def grown(before: dict, after: dict, prefix: str = "") -> dict[str, int]:
    """Messages added per topic between two offset snapshots (bench topics left out)."""
    out: Counter = Counter()
    for (topic, partition), end in after.items():
        if topic.startswith("bench.") or not topic.startswith(prefix):
            continue
        out[topic] += end - before.get((topic, partition), 0)
    return {k: v for k, v in sorted(out.items()) if v}


def recon_exceptions(bootstrap: str, before: dict, after: dict) -> dict[str, int]:
    """Reconciliation's exceptions raised during the run, by kind: a clean run has none."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, fetch_max_wait_ms=50)
    kinds: Counter = Counter()
    try:
        tps = {TopicPartition(name, p): end for (name, p), end in after.items()
               if name == t.RECON_EXCEPTIONS and end > before.get((name, p), 0)}
        consumer.assign(list(tps))
        for tp in tps:
            consumer.seek(tp, before.get((tp.topic, tp.partition), 0))
        left, deadline = sum(tps[tp] - before.get((tp.topic, tp.partition), 0)
                             for tp in tps), time.monotonic() + 30
        while left > 0 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300, max_records=20_000).values():
                for record in records:
                    left -= 1
                    body = json.loads(record.value)["body"]
                    kinds[f"{body['kind']} cleared" if body.get("cleared")
                          else body["kind"]] += 1
    finally:
        consumer.close()
    return dict(kinds)


def mean_record_bytes(bootstrap: str, topics: dict[str, int], after: dict) -> float:
    """The mean value size, weighted by each topic's message count: up to 200 records read
    from each partition's tail."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, fetch_max_wait_ms=50)
    sizes: dict[str, list[int]] = defaultdict(list)
    try:
        tps = [TopicPartition(name, p) for (name, p), end in after.items()
               if name in topics and end]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, max(0, after[(tp.topic, tp.partition)] - 200))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
                consumer.position(tp) < after[(tp.topic, tp.partition)] for tp in tps):
            for tp, records in consumer.poll(timeout_ms=300, max_records=20_000).items():
                sizes[tp.topic] += [len(r.value or b"") + len(r.key or b"") for r in records]
    finally:
        consumer.close()
    total = sum(topics.values())
    return sum(statistics.fmean(sizes[name]) * count for name, count in topics.items()
               if sizes.get(name)) / max(total, 1)


# ---------------------------------------------------------------- the ceiling


def relay_ceiling(bootstrap: str, partitions: int, messages: int, record_bytes: int,
                  say) -> dict:
    """Messages per second through a plain aiokafka consume-and-produce loop: one Python
    process, the same broker, partitions, acks and record size as paycore."""
    run = uuid.uuid4().hex[:8]
    source, sink = f"bench.relay.{run}.in", f"bench.relay.{run}.out"
    ensure_topics(bootstrap, (source, sink), partitions)
    return asyncio.run(_relay(bootstrap, source, sink, messages, max(record_bytes, 1), say))


async def _relay(bootstrap: str, source: str, sink: str, messages: int, size: int,
                 say) -> dict:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=-1, linger_ms=2)
    await producer.start()
    try:
        payload = (b"x" * size)
        for start in range(0, messages, 5_000):
            await asyncio.gather(*[await producer.send(source, key=str(i).encode(),
                                                       value=payload)
                                   for i in range(start, min(messages, start + 5_000))])
        say(f"  relay: {messages:,} records of {size} bytes loaded; relaying")
        consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap,
                                    group_id=f"{source}-relay", auto_offset_reset="earliest",
                                    enable_auto_commit=True, fetch_max_wait_ms=100)
        await consumer.start()
        try:
            relayed, started = 0, 0.0
            while relayed < messages:
                batch = await consumer.getmany(timeout_ms=1000, max_records=2_000)
                started = started or time.perf_counter()
                acks = [await producer.send(sink, key=r.key, value=r.value)
                        for records in batch.values() for r in records]
                await asyncio.gather(*acks)
                relayed += len(acks)
            seconds = time.perf_counter() - started
        finally:
            await consumer.stop()
    finally:
        await producer.stop()
    return {"messages": messages, "record_bytes": size, "seconds": round(seconds, 3),
            "messages_per_s": round(messages / seconds, 1)}


# ---------------------------------------------------------------- one run


@dataclass
class RunResult:
    workers: int
    rate: str
    payments: int
    statuses: dict[str, int]
    load_seconds: float
    payments_per_s: float
    latency_ms: dict[str, float]
    booked_latency_ms: dict[str, float]
    recon: dict
    messages: dict[str, int]
    messages_per_payment: float
    mean_record_bytes: float
    stages: dict[str, dict]
    cpu_share: dict[str, float]
    peak_rss_mb: dict[str, float]
    timeline: dict = field(default_factory=dict)
    rss_timeline: list = field(default_factory=list)
    restart_s: float | None = None
    profile: list = field(default_factory=list)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(pct: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(pct / 100 * len(ordered)))], 1)

    return {"p50": at(50), "p95": at(95), "p99": at(99), "max": round(ordered[-1], 1)}


def offered_per_s(rate: str, measured_max: float | None) -> float:
    if rate == "max":
        return 0.0
    if rate == "half":
        assert measured_max, "'half' needs a 'max' run before it"
        return measured_max / 2
    return float(rate)


def run_once(settings: Settings, options: BenchOptions, workers: int, rate: str,
             measured_max: float | None, out: Path, say) -> RunResult:
    run_id = f"w{workers}-{rate}-{uuid.uuid4().hex[:6]}"
    data = out / run_id
    config = bench_config(settings.config_dir, data / "config")
    run_settings = settings.model_copy(update={
        "data_dir": data, "config_dir": config, "api_port": 0, "worker_web_port": 0,
        "simulator_metrics_port": 0, "auditor_metrics_port": 0, "webhooks_metrics_port": 0,
        "prometheus_port": 0})
    per_s = offered_per_s(rate, measured_max)
    say(f"run {run_id}: {workers} worker(s), {options.payments:,} payments, offered "
        f"{'as fast as possible' if not per_s else f'{per_s:,.0f}/s'}")
    with Stack(run_settings, workers=workers, with_api=False, with_auditor=False,
               with_webhooks=False, with_prometheus=False) as stack:
        wait_until_ready(stack.settings)
        return _measure(stack, options, workers, rate, per_s, run_id, data, say)


def _measure(stack: Stack, options: BenchOptions, workers: int, rate: str, per_s: float,
             run_id: str, data: Path, say) -> RunResult:
    s = stack.settings
    names = [f"worker-{i}" for i in range(workers)]
    procs = {p.name: p.process.pid for p in stack.parts}
    if stack.broker is not None:
        procs["broker"] = stack.broker.process.pid
    procs["bench"] = os.getpid()
    sampler = Sampler(procs)
    sampler.start()
    before = end_offsets(s.kafka_bootstrap)
    metrics_before = _stage_metrics(s, workers)
    cpu_before = sampler.cpu_s()
    spy = _start_profile(procs["worker-0"], data) if options.profile else None
    commands = bench_commands(run_id, options.payments)
    follower = Follower(s.kafka_bootstrap, s.partitions, before)
    started = time.time()
    try:
        _drive(s, follower, commands, per_s, say)
        load_s = max(o.booked_ms or o.final_ms for o in follower.outcomes.values()) / 1000 \
            - started
        cpu_load = {k: v - cpu_before.get(k, 0) for k, v in sampler.cpu_s().items()}
        metrics_load = _stage_metrics(s, workers)
        profile = _stop_profile(spy, data) if spy else []
        recon = _reconcile(s, follower, workers, say) if options.settlement else \
            {"lines": 0, "matched": 0, "seconds": 0.0, "lines_per_s": 0.0}
    finally:
        follower.close()
    after = end_offsets(s.kafka_bootstrap)
    restart_s = _restart(stack, say) if options.restart else None
    sampler.stopped.set()
    messages = grown(before, after)
    exceptions = recon_exceptions(s.kafka_bootstrap, before, after)
    outcomes = list(follower.outcomes.values())
    return RunResult(
        workers=workers, rate=rate if not per_s else f"{per_s:.0f}/s",
        payments=len(outcomes),
        statuses=dict(Counter(o.status or "not final" for o in outcomes)),
        load_seconds=round(load_s, 2), payments_per_s=round(len(outcomes) / load_s, 1),
        latency_ms=percentiles([o.final_ms - o.sent_ms for o in outcomes if o.final_ms]),
        booked_latency_ms=percentiles([o.booked_ms - o.sent_ms for o in outcomes
                                       if o.booked_ms]),
        recon={**recon, "exceptions": exceptions}, messages=messages,
        messages_per_payment=round(sum(messages.values()) / len(outcomes), 2),
        mean_record_bytes=round(mean_record_bytes(s.kafka_bootstrap, messages, after), 1),
        stages=_stage_rates(metrics_before, metrics_load, load_s),
        cpu_share={k: round(v / load_s, 3) for k, v in cpu_load.items()},
        peak_rss_mb={n: round(sampler.peak_mb(n), 1) for n in procs},
        timeline=_timeline(outcomes, started),
        rss_timeline=[{"s": round(r["at"] - started, 1),
                       **{n: round(r.get(n, 0) / 2**20, 1) for n in names}}
                      for r in sampler.samples],
        restart_s=restart_s, profile=profile)


def _drive(s: Settings, follower: Follower, commands: list[dict], per_s: float, say) -> None:
    """Offer the commands at ``per_s`` (0: all at once) and follow until each is done."""
    from paycore.observe import command_producer, send_command

    producer = command_producer(s.kafka_bootstrap)
    started, shown, index = time.monotonic(), time.monotonic(), 0
    try:
        while index < len(commands):
            due = len(commands) if not per_s else \
                min(len(commands), int((time.monotonic() - started) * per_s) + 1)
            for cmd in commands[index:due]:
                follower.outcomes[payment_id_for(MERCHANT, cmd["merchant_order_no"])] = \
                    Outcome(sent_ms=int(time.time() * 1000))
                send_command(producer, cmd)
            index = due
            follower.poll(5 if per_s else 0)
            if time.monotonic() - shown >= PROGRESS_EVERY_S:
                shown = time.monotonic()
                say(_progress(follower, index, len(commands), started))
        producer.flush()
    finally:
        producer.close()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline and \
            not all(follower.done(o) for o in follower.outcomes.values()):
        follower.poll(100)
        if time.monotonic() - shown >= PROGRESS_EVERY_S:
            shown = time.monotonic()
            say(_progress(follower, index, len(commands), started))
    say(_progress(follower, index, len(commands), started))
    open_ = [o for o in follower.outcomes.values() if not follower.done(o)]
    if open_:
        raise RuntimeError(f"{len(open_)} payments not final and booked after "
                           f"{DRAIN_TIMEOUT_S:.0f}s")


def _progress(follower: Follower, sent: int, total: int, started: float) -> str:
    outcomes = follower.outcomes.values()
    final = sum(1 for o in outcomes if o.final_ms)
    booked = sum(1 for o in outcomes if follower.done(o))
    elapsed = time.monotonic() - started
    return (f"  {elapsed:6.1f}s  sent {sent:>8,}/{total:,}  final {final:>8,}  "
            f"booked {booked:>8,}  ({booked / max(elapsed, 1e-9):,.0f}/s)")


def _timeline(outcomes: list[Outcome], started: float) -> dict:
    """Per second of the run: payments that became final, and their latency p50/p99."""
    by_second: dict[int, list[int]] = defaultdict(list)
    for o in outcomes:
        if o.final_ms:
            by_second[int(o.final_ms / 1000 - started)].append(o.final_ms - o.sent_ms)
    seconds = sorted(by_second)
    return {"second": seconds, "final": [len(by_second[s]) for s in seconds],
            "p50_ms": [percentiles(by_second[s])["p50"] for s in seconds],
            "p99_ms": [percentiles(by_second[s])["p99"] for s in seconds]}


_STAGE_SERIES = {"paycore_stage_events_total": "events", "paycore_stage_seconds_sum": "busy_s"}


def _stage_metrics(s: Settings, workers: int) -> dict[str, dict[str, float]]:
    """Per stage, summed over the workers: events and seconds in the handler; and
    reconciliation's matches (as the stage ``recon matched``)."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for index in range(workers):
        body = scrape(s.worker_web_port + index)
        for name, labels, value in parse_metrics(body or ""):
            if name in _STAGE_SERIES:
                totals[labels["stage"]][_STAGE_SERIES[name]] += value
            elif name == "paycore_recon_matched_total":
                totals["recon matched"]["events"] += value
    return totals


def _stage_rates(before: dict, after: dict, seconds: float) -> dict[str, dict]:
    out = {}
    for stage, now in sorted(after.items()):
        was = before.get(stage, {})
        events = now["events"] - was.get("events", 0)
        if events > 0 and stage != "recon matched":
            out[stage] = {"events": int(events), "events_per_s": round(events / seconds, 1),
                          "handler_s": round(now["busy_s"] - was.get("busy_s", 0), 2)}
    return out


# ---------------------------------------------------------------- reconciliation


def _reconcile(s: Settings, follower: Follower, workers: int, say) -> dict:
    """Each channel reports the day's captures; wait until reconciliation matched them."""
    from kafka import KafkaProducer

    from streams.rules_config import load_routing
    from domain.money import fee_minor

    terms = {c.name: c for c in load_routing(s.config_dir).channels}
    today = datetime.now(timezone.utc).date()
    settled: dict[str, list[stl.Settled]] = defaultdict(list)
    for payment_id, o in follower.outcomes.items():
        if o.status == "succeeded" and o.serial:
            term = terms[o.channel]
            settled[o.channel].append(stl.Settled(
                payment_id=payment_id, channel_serial=o.serial, amount_minor=o.captured_minor,
                currency="USD", fee_minor=fee_minor(o.captured_minor, term.fee_bps,
                                                    term.fee_fixed_minor), booked_on=today))
    lines = sum(len(v) for v in settled.values())
    _quiet(s, workers, "recon", say)
    base = _stage_metrics(s, workers)["recon matched"]["events"]
    producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all", linger_ms=5)
    started = time.monotonic()
    for channel, rows in settled.items():
        report = stl.build_report(channel, terms[channel].kind, today, rows, seed=1)
        at = int(time.time() * 1000)
        for key, value in stl.to_records(report.lines, "bench", at, today):
            producer.send(t.SETTLEMENTS, key=key, value=value)
    producer.flush()
    producer.close()
    matched, moved = 0.0, time.monotonic()
    while matched < lines and time.monotonic() - moved < RECON_STALL_S:
        time.sleep(0.5)
        now = _stage_metrics(s, workers)["recon matched"]["events"] - base
        moved, matched = (time.monotonic(), now) if now > matched else (moved, matched)
    seconds = time.monotonic() - started
    say(f"  reconciliation: {int(matched):,}/{lines:,} lines matched in {seconds:.1f}s")
    return {"lines": lines, "matched": int(matched), "seconds": round(seconds, 2),
            "lines_per_s": round(matched / seconds, 1)}


def _quiet(s: Settings, workers: int, stage: str, say, still_s: float = 3.0) -> None:
    """Wait until ``stage`` handled nothing for ``still_s``: its backlog is worked off."""
    started, last, still_since = time.monotonic(), -1.0, time.monotonic()
    while time.monotonic() - still_since < still_s and time.monotonic() - started < 600:
        time.sleep(0.5)
        now = _stage_metrics(s, workers)[stage]["events"]
        if now != last:
            last, still_since = now, time.monotonic()
    say(f"  {stage} quiet after {time.monotonic() - started:.0f}s")


# ---------------------------------------------------------------- restart and profile


def _restart(stack: Stack, say) -> float:
    """SIGKILL worker 0, start it again on its state, time it until a payment passes."""
    stack.kill("worker-0")
    started = time.monotonic()
    stack.restart("worker-0")
    wait_until_ready(stack.settings, timeout_s=120)
    seconds = time.monotonic() - started
    say(f"  restart: worker 0 killed, restarted and processing again in {seconds:.1f}s")
    return round(seconds, 1)


def _start_profile(pid: int, data: Path) -> subprocess.Popen | None:
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--rate", "200",
                             "--format", "raw", "--output", str(data / "profile.txt"),
                             "--nonblocking"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _stop_profile(spy: subprocess.Popen, data: Path) -> list[dict]:
    spy.send_signal(signal.SIGINT)
    spy.wait(30)
    return hot_spots((data / "profile.txt").read_text())


def hot_spots(collapsed: str, top: int = 25) -> list[dict]:
    """From py-spy's collapsed stacks: each function's share of samples, where it is
    running itself (self) and anywhere on the stack (total)."""
    own: Counter = Counter()
    anywhere: Counter = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  + ")" if " (" in f else f for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            anywhere[frame] += n
    return [{"function": f, "self_pct": round(100 * own[f] / samples, 1),
             "total_pct": round(100 * anywhere[f] / samples, 1)}
            for f, _ in anywhere.most_common(top) if samples] + \
        [{"function": f"(self) {f}", "self_pct": round(100 * n / samples, 1),
          "total_pct": round(100 * anywhere[f] / samples, 1)}
         for f, n in own.most_common(top) if samples]


# ---------------------------------------------------------------- the whole bench


def run_bench(settings: Settings, options: BenchOptions, say=print) -> int:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = options.out_dir / stamp
    out.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    for workers in options.workers:
        measured_max = None
        for rate in options.rates:
            result = run_once(settings, options, workers, rate, measured_max, out, say)
            if rate == "max":
                measured_max = result.payments_per_s
            results.append(result)
    ceiling = _ceiling(settings, options, results, say)
    doc = report(results, ceiling, options)
    (out / "bench.json").write_text(json.dumps(doc, indent=2))
    write_plot(results, out / "bench.png")
    say(render(doc))
    say(f"written: {out / 'bench.json'}, {out / 'bench.png'}")
    return 0


def _ceiling(settings: Settings, options: BenchOptions, results: list[RunResult],
             say) -> dict:
    """The relay on a broker like the runs' (a fresh embedded one, or the same cluster)."""
    size = int(round(statistics.fmean(r.mean_record_bytes for r in results)))
    if settings.kafka_bootstrap:
        return relay_ceiling(settings.kafka_bootstrap, settings.partitions,
                             options.relay_messages, size, say)
    from streams.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        return relay_ceiling(broker.bootstrap, settings.partitions, options.relay_messages,
                             size, say)


def report(results: list[RunResult], ceiling: dict, options: BenchOptions) -> dict:
    runs = []
    for r in results:
        ceiling_payments = ceiling["messages_per_s"] / r.messages_per_payment
        runs.append({**asdict(r), "ceiling_payments_per_s": round(ceiling_payments, 1),
                     "ratio_to_ceiling": round(r.payments_per_s / ceiling_payments, 3)})
    return {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "options": {k: str(v) for k, v in asdict(options).items()},
            "relay": ceiling, "runs": runs}


def _worker_peak_mb(run: dict) -> float:
    return max(v for k, v in run["peak_rss_mb"].items() if k.startswith("worker"))


def render(doc: dict) -> str:
    rows = []
    for r in doc["runs"]:
        lat = r["latency_ms"]
        rows.append([str(r["workers"]), r["rate"], f"{r['payments']:,}",
                     f"{r['payments_per_s']:,.0f}", f"{lat.get('p50', 0):,.0f}",
                     f"{lat.get('p95', 0):,.0f}", f"{lat.get('p99', 0):,.0f}",
                     f"{lat.get('max', 0):,.0f}", f"{r['messages_per_payment']:.1f}",
                     f"{r['ceiling_payments_per_s']:,.0f}", f"{r['ratio_to_ceiling']:.2f}",
                     f"{_worker_peak_mb(r):,.0f}"])
    lines = ["", "paycore bench: accepted -> final (ms); payments/s sustained until every "
             "capture is booked", text.table(
                 ["workers", "offered", "payments", "pay/s", "p50", "p95", "p99", "max",
                  "msgs/pay", "ceiling pay/s", "ratio", "worker MB"], rows, "rlrrrrrrrrrr")]
    relay = doc["relay"]
    lines.append(f"\nceiling: a plain aiokafka relay, {relay['messages']:,} records of "
                 f"{relay['record_bytes']} bytes: {relay['messages_per_s']:,.0f} messages/s")
    for r in doc["runs"]:
        lines.append(f"\nrun: {r['workers']} worker(s), offered {r['rate']}: statuses "
                     f"{r['statuses']}; reconciliation {r['recon']['matched']:,}/"
                     f"{r['recon']['lines']:,} lines in {r['recon']['seconds']}s, "
                     f"exceptions {r['recon']['exceptions'] or 'none'}"
                     + (f"; restart {r['restart_s']}s" if r["restart_s"] is not None else ""))
        lines.append(text.table(["stage", "events", "events/s", "handler s"], [
            [k, f"{v['events']:,}", f"{v['events_per_s']:,.0f}", f"{v['handler_s']:.1f}"]
            for k, v in r["stages"].items()], "lrrr"))
        lines.append("CPU (cores busy): " + ", ".join(
            f"{k} {v:.2f}" for k, v in r["cpu_share"].items()))
        lines.append("messages per topic: " + ", ".join(
            f"{k} {v:,}" for k, v in r["messages"].items()))
        if r["profile"]:
            lines.append(text.table(["worker 0: function", "self %", "total %"], [
                [p["function"][:90], f"{p['self_pct']:.1f}", f"{p['total_pct']:.1f}"]
                for p in r["profile"]], "lrr"))
    return "\n".join(lines)


def write_plot(results: list[RunResult], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for r in results:
        label = f"{r.workers}w {r.rate}"
        tl = r.timeline
        top.plot(tl["second"], tl["final"], label=label)
        middle.plot(tl["second"], tl["p99_ms"], label=f"{label} p99")
        middle.plot(tl["second"], tl["p50_ms"], linestyle="--", label=f"{label} p50")
        bottom.plot([x["s"] for x in r.rss_timeline], [x.get("worker-0", 0)
                                                       for x in r.rss_timeline], label=label)
    top.set_ylabel("payments final / s")
    middle.set_ylabel("accepted -> final, ms")
    middle.set_yscale("log")
    bottom.set_ylabel("worker-0 RSS, MB")
    bottom.set_xlabel("seconds since the first command")
    for ax in (top, middle, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle("paycore bench")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
    return path
