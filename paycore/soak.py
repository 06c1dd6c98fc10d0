"""``paycore soak``: a mixed load with faults for N minutes, then the money is counted.

Payments go in two ways at once: straight onto ``pay.commands`` and through the HTTP API,
whose clients retry with the same idempotency key until they get an answer, as a real
merchant's would. Every ``fault_every_s`` one fault, in a shuffled round:

- ``kill_worker``: SIGKILL a worker, start it again a few seconds later on its own state;
- ``takeover``: SIGKILL a worker and leave it down until the others have its partitions
  (tables recovered from the changelogs), then add it back (a second rebalance);
- ``kill_api``: SIGKILL the API under load and start it again.

While it runs, every ``check_every_s``: the auditor's checks and violations, each payment's
status history against the allowed ones, and each account's reported balance against the
sum of its journal legs. At the end the load stops and, once everything is final, the
closing checks: every accepted payment has exactly one final outcome and was created once,
the ledger sums to zero, the merchant holds exactly what its successes owe it, suspense is
empty, and no posting was lost or applied twice. Memory of every process over time.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path

import httpx
import psutil
from kafka import KafkaConsumer, TopicPartition
from pydantic import SecretStr

from api.auth import new_key
from domain import accounts
from domain.ids import payment_id_for
from domain.money import fee_minor
from paycore.observe import Observer, audit_totals, command_producer, send_command
from paycore.scenario import parse_metrics, scrape
from paycore.stack import Stack, wait_until_ready
from streams import topics as t
from streams.app import group_of
from streams.rules_config import load_routing
from streams.settings import Settings

MERCHANT = "soak"
FAULTS = ("kill_worker", "takeover", "kill_api")
FINAL = ("succeeded", "failed")
LEDGER_SETTLE_S = 180.0
"""How long the closing checks wait for the ledger to sum to zero once all is final."""
ALLOWED_HISTORIES = (
    ("created", "processing", "succeeded"),
    ("created", "processing", "failed"),
    # A worker down past the callback timeout times an order out; the late answer then
    # resolves it: wallet successes are accepted, card ones refunded (failed).
    ("created", "processing", "timed_out", "succeeded"),
    ("created", "processing", "timed_out", "failed"),
)
MAGIC = (13, 207)  # declined; answered twice (the rest of the test magic stays out)
AVOID = (13, 207, 408, 409, 411, 422, 503)


@dataclass
class SoakOptions:
    minutes: float = 30.0
    rate: float = 12.0
    """Payments offered per second, both ways together."""
    api_share: float = 0.25
    """Of those, the share sent through the HTTP API."""
    workers: int = 2
    fault_every_s: float = 45.0
    check_every_s: float = 30.0
    settle_timeout_s: float = 300.0
    out_dir: Path = Path(".paycore/soak")
    seed: int | None = None


@dataclass
class Tally:
    """What the load and the faults did, filled in by their threads."""

    accepted: dict[str, str] = field(default_factory=dict)
    """merchant_order_no -> how it went in (kafka | api)."""
    api_attempts: int = 0
    api_retries: int = 0
    api_given_up: list[str] = field(default_factory=list)
    faults: list[dict] = field(default_factory=list)
    checks: int = 0
    failed_checks: list[str] = field(default_factory=list)
    memory: list[dict] = field(default_factory=list)
    progress: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept(self, order_no: str, via: str) -> None:
        with self.lock:
            self.accepted[order_no] = via


# ---------------------------------------------------------------- the load


def amount_for(rng: random.Random) -> int:
    """Mostly plain amounts; one in ten carries a declined or answered-twice magic."""
    if rng.random() < 0.1:
        return rng.randrange(1, 90) * 1000 + rng.choice(MAGIC)
    while True:
        amount = rng.randrange(100, 90_000)
        if amount % 1000 not in AVOID:
            return amount


class Load(threading.Thread):
    """Offers ``rate`` payments per second until stopped, over Kafka and over HTTP."""

    def __init__(self, stack: Stack, options: SoakOptions, tally: Tally, rng: random.Random):
        super().__init__(daemon=True, name="soak-load")
        self.stack, self.options, self.tally, self.rng = stack, options, tally, rng
        self.stopped = threading.Event()
        self.http: list[threading.Thread] = []

    def run(self) -> None:
        s = self.stack.settings
        producer = command_producer(s.kafka_bootstrap)
        started, n = time.monotonic(), 0
        try:
            while not self.stopped.is_set():
                n += 1
                order_no = f"soak-{n}"
                amount, method = amount_for(self.rng), self.rng.choice(("card", "wallet"))
                if self.rng.random() < self.options.api_share:
                    self._over_http(order_no, amount, method)
                else:
                    send_command(producer, {
                        "type": "pay", "merchant_id": MERCHANT, "idempotency_key": order_no,
                        "merchant_order_no": order_no, "amount_minor": amount,
                        "currency": "USD", "method": method})
                    producer.flush()
                    self.tally.accept(order_no, "kafka")
                pause = started + n / self.options.rate - time.monotonic()
                if pause > 0:
                    self.stopped.wait(pause)
        finally:
            producer.close()
            for client in self.http:
                client.join(120)

    def _over_http(self, order_no: str, amount: int, method: str) -> None:
        thread = threading.Thread(target=self._post, args=(order_no, amount, method),
                                  daemon=True)
        self.http = [t for t in self.http if t.is_alive()] + [thread]
        thread.start()

    def _post(self, order_no: str, amount: int, method: str) -> None:
        """POST until answered, with the same idempotency key each time; 60 s at most."""
        s = self.stack.settings
        key = s.api_keys[MERCHANT].get_secret_value()
        body = {"merchant_order_no": order_no, "amount": amount, "currency": "USD",
                "method": method}
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{s.api_port}", timeout=10, headers={
                "Authorization": f"Bearer {key}", "Idempotency-Key": order_no}) as client:
            while time.monotonic() < deadline:
                with self.tally.lock:
                    self.tally.api_attempts += 1
                try:
                    answer = client.post("/v1/payments", json=body)
                    if answer.status_code == 202:
                        self.tally.accept(order_no, "api")
                        return
                except httpx.HTTPError:
                    pass
                with self.tally.lock:
                    self.tally.api_retries += 1
                time.sleep(0.5)
        with self.tally.lock:
            self.tally.api_given_up.append(order_no)


# ---------------------------------------------------------------- the faults


def inject(stack: Stack, fault: str, rng: random.Random, workers: int, say) -> dict:
    """One fault, waited out: the part it hit is back when this returns."""
    started, extra = time.monotonic(), {}
    if fault == "kill_api":
        stack.kill("api")
        time.sleep(rng.uniform(1, 3))
        stack.restart("api")
        _wait_http(f"http://127.0.0.1:{stack.settings.api_port}/healthz", 60)
        target = "api"
    else:
        index = rng.randrange(workers)
        target, before = f"worker-{index}", partitions(stack.settings, workers)
        stack.kill(target)
        if fault == "kill_worker":
            time.sleep(rng.uniform(1, 5))
        else:  # down until the others hold its partitions, then back: two rebalances
            extra = {"partitions_before": before,
                     "takeover_s": _taken_over(stack.settings, workers, index, before),
                     "partitions_after_takeover": partitions(stack.settings, workers)}
        stack.restart(target)
        extra["ready_s"] = _ready(stack.settings, workers, target)
    row = {"fault": fault, "target": target, "seconds": round(time.monotonic() - started, 1),
           **extra}
    ready = f", processing again {row['ready_s']}s after its restart" \
        if row.get("ready_s") is not None else ""
    say(f"  fault: {fault} {target} ({row['seconds']}s until it was back{ready})")
    return row


def partitions(s: Settings, workers: int) -> dict[str, int]:
    """Partitions each live worker holds after its last rebalance (its own gauge)."""
    held = {}
    for index in range(workers):
        for name, _labels, value in parse_metrics(scrape(s.worker_web_port + index) or ""):
            if name == "paycore_assigned_partitions":
                held[f"worker-{index}"] = int(value)
    return held


def _taken_over(s: Settings, workers: int, down: int, before: dict[str, int],
                timeout_s: float = 60.0) -> float | None:
    """Seconds until the other workers hold more partitions between them than before the
    kill, none fewer (the session timeout, a rebalance, the tables recovered); None if that
    never came. Not each of them more: an assignor may move them all to one."""
    started = time.monotonic()
    others = [f"worker-{i}" for i in range(workers) if i != down]
    while time.monotonic() - started < timeout_s:
        now = partitions(s, workers)
        if all(now.get(w, 0) >= before.get(w, 0) for w in others) and \
                sum(now.get(w, 0) for w in others) > sum(before.get(w, 0) for w in others):
            return round(time.monotonic() - started, 1)
        time.sleep(0.5)
    return None


def _ready(s: Settings, workers: int, target: str, timeout_s: float = 90.0) -> float | None:
    """Seconds from its restart until ``target`` holds partitions again: it rejoined the
    group and recovered its tables (its gauge is set when a rebalance ends); None if not
    within the timeout, which is a finding, not a pause."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if partitions(s, workers).get(target, 0) > 0:
            return round(time.monotonic() - started, 1)
        time.sleep(0.3)
    return None


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not answering after {timeout_s:.0f}s")


# ---------------------------------------------------------------- the checks


def check_histories(observer: Observer, final_only: bool = False) -> list[str]:
    """Payments whose status history is not one of the allowed ones (a prefix of one while
    still in flight): a status twice, a final changed, a step out of order."""
    bad = []
    for payment_id, events in observer.history.items():
        statuses = tuple(e.status for e in events)
        ok = statuses in ALLOWED_HISTORIES if final_only else any(
            allowed[:len(statuses)] == statuses for allowed in ALLOWED_HISTORIES)
        if not ok:
            bad.append(f"{payment_id}: {' > '.join(statuses)}")
    return bad


def running_checks(stack: Stack, observer: Observer) -> list[str]:
    """The checks that hold at any moment, load or not."""
    observer.poll()
    failed = [f"history {b}" for b in check_histories(observer)]
    if not observer.reported_equals_rebuilt():
        failed.append("a reported balance differs from the sum of its legs")
    audit = audit_totals(stack.settings.auditor_metrics_port)
    if audit["violations"]:
        failed.append(f"auditor: {audit['violations']:.0f} violations")
    return failed


def not_final(observer: Observer, ids: dict[str, str], final: set[str],
              via: dict[str, str]) -> list[str]:
    """The accepted payments without a final outcome, each with what was seen of it: its
    history of statuses, or that no event of it was seen at all."""
    seen = observer.history
    return [f"{p} ({order_no} via {via[order_no]}): "
            + (" > ".join(e.status for e in seen[p]) if seen.get(p) else "no event seen")
            for p, order_no in sorted(ids.items()) if p not in final]


TRACED = (t.COMMANDS, t.DEDUP, t.RISK, t.ORDERS, t.CHANNEL_REQUESTS, t.EVENTS, t.DEADLETTER,
          t.LEDGER_POSTINGS, t.LEDGER_ENTRIES)


def trace(s: Settings, payments: dict[str, str], limit: int = 5) -> dict[str, list[str]]:
    """Where a payment's records are on the topics of its path, for the first ``limit`` of
    ``payments`` (payment id -> order number): each record found with its message type and
    whether the workers' group has committed past it. Where the trail stops is where the
    payment was lost."""
    wanted = dict(list(payments.items())[:limit])
    needles = {p: (p.encode(), f'"{o}"'.encode()) for p, o in wanted.items()}
    found: dict[str, list[str]] = {p: [] for p in wanted}
    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=group_of(s),
                             enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        tps = [TopicPartition(name, p) for name in TRACED for p in range(s.partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            batch = consumer.poll(timeout_ms=1000, max_records=20_000)
            if not batch:
                break
            for tp, records in batch.items():
                for r in records:
                    for payment_id, marks in needles.items():
                        if any(m in r.value for m in marks):
                            committed = consumer.committed(tp) or 0
                            kind = json.loads(r.value).get("body", {}).get("type", "?")
                            found[payment_id].append(
                                f"{tp.topic}[{tp.partition}]@{r.offset} {kind} "
                                + ("consumed" if committed > r.offset else "NOT consumed"))
                    if r.offset + 1 >= ends[tp]:
                        left.discard(tp)
    finally:
        consumer.close()
    return found


def closing_checks(stack: Stack, observer: Observer, tally: Tally) -> dict:
    """Once all is final: outcomes, money, journal. Each failure named."""
    s = stack.settings
    ids = {payment_id_for(MERCHANT, o): o for o in tally.accepted}
    final = {p for p, st in observer.status.items() if p in ids and st.status in FINAL}
    created = Counter(p for p, events in observer.history.items() if p in ids
                      for e in events if e.status == "created")
    terms = {c.name: c for c in load_routing(s.config_dir).channels}
    owed = sum(st.amount_minor - fee_minor(st.amount_minor, terms[st.channel].fee_bps,
                                           terms[st.channel].fee_fixed_minor)
               for p, st in observer.status.items() if p in ids and st.status == "succeeded")
    merchant = accounts.merchant_pending(MERCHANT, "USD")
    observer.wait_until(lambda: observer.balances().get(merchant, 0) == owed, 60)
    # The merchant's legs are in; others (a customer's, a clearing account's) may be on a
    # partition whose worker is still recovering: the zero sum is waited for, then judged.
    observer.wait_until(lambda: sum(observer.balances().values()) == 0, LEDGER_SETTLE_S)
    balances = observer.balances()
    unbalanced = observer.unbalanced_entries() if sum(balances.values()) else []
    audit = audit_totals(s.auditor_metrics_port)
    workers = len([p for p in stack.parts if p.name.startswith("worker-")])
    spread = {}
    for _ in range(60):  # a worker restarted last may still be joining
        spread = partitions(s, workers)
        if len(spread) == workers and all(spread.values()):
            break
        time.sleep(0.5)
    found = {
        "payments_accepted": len(ids),
        "payments_final": len(final),
        "payments_lost": len(ids) - len(final),
        "payments_doubled": sum(1 for n in created.values() if n > 1),
        "merchant_owed_minor": owed,
        "merchant_balance_minor": balances.get(merchant, 0),
        "cents_lost_or_doubled": balances.get(merchant, 0) - owed,
        "ledger_sum_minor": sum(balances.values()),
        "suspense_minor": balances.get(accounts.suspense("USD"), 0),
        "entries_unbalanced": unbalanced[:20],
        "unbalanced_traced": trace(s, {e["payment_id"]: ids[e["payment_id"]]
                                       for e in unbalanced if e["payment_id"] in ids})
        if unbalanced else {},
        "journal_matches_balances": observer.reported_equals_rebuilt(),
        "histories_not_allowed": check_histories(observer, final_only=True)[:20],
        "auditor": audit,
        "copies_dropped_by_observer": observer.copies_dropped,
        "statuses": dict(Counter(observer.status[p].status for p in final)),
        "not_final": not_final(observer, ids, final, tally.accepted)[:50],
        "not_final_traced": trace(s, {p: o for p, o in sorted(ids.items())
                                      if p not in final}) if len(final) < len(ids) else {},
        "partitions_at_end": spread,
    }
    found["failed"] = [name for name, bad in (
        ("payments_lost", found["payments_lost"]),
        ("payments_doubled", found["payments_doubled"]),
        ("cents_lost_or_doubled", found["cents_lost_or_doubled"]),
        ("ledger_sum_minor", found["ledger_sum_minor"]),
        ("suspense_minor", found["suspense_minor"]),
        ("journal_matches_balances", not found["journal_matches_balances"]),
        ("histories_not_allowed", found["histories_not_allowed"]),
        ("auditor_violations", audit["violations"]),
        ("auditor_ran", not audit["checks"]),
        ("api_given_up", tally.api_given_up),
        ("partitions_not_spread", len(spread) < workers or not all(spread.values())),
        ("takeover_never_came", any(f["fault"] == "takeover" and f["takeover_s"] is None
                                    for f in tally.faults)),
        ("restart_never_ready", any(f.get("ready_s", 0) is None for f in tally.faults))
    ) if bad]
    return found


# ---------------------------------------------------------------- the run


def sample_memory(stack: Stack, started: float) -> dict:
    """RSS in MB of every running part (restarted ones under the same name)."""
    row = {"s": round(time.monotonic() - started, 1)}
    procs = [(p.name, p.process.pid) for p in stack.parts]
    if stack.broker is not None:
        procs.append(("broker", stack.broker.process.pid))
    for name, pid in procs:
        try:
            row[name] = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
        except psutil.Error:
            row[name] = 0.0
    return row


def run_soak(settings: Settings, options: SoakOptions, say=print) -> dict:
    """The whole soak; returns the report (also written as soak.json and soak.png)."""
    seed = options.seed if options.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    out = options.out_dir / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    settings = settings.model_copy(update={
        "data_dir": out / "data", "api_keys": {MERCHANT: SecretStr(new_key())},
        **{n: 0 for n in ("api_port", "worker_web_port", "simulator_metrics_port",
                          "auditor_metrics_port", "webhooks_metrics_port")}})
    say(f"soak: {options.minutes:g} min, {options.rate:g} payments/s "
        f"({options.api_share:.0%} over HTTP), {options.workers} workers, a fault every "
        f"{options.fault_every_s:g}s, seed {seed}; output in {out}")
    tally = Tally()
    with Stack(settings, workers=options.workers, with_webhooks=False) as stack:
        wait_until_ready(stack.settings, timeout_s=120)
        observer = Observer(stack.settings.kafka_bootstrap, stack.settings.partitions,
                            merchant=MERCHANT)
        try:
            started = time.monotonic()
            load = Load(stack, options, tally, rng)
            load.start()
            _under_load(stack, observer, options, tally, rng, started, say)
            load.stopped.set()
            load.join(150)
            load_s = time.monotonic() - started
            say(f"load stopped after {load_s:.0f}s: {len(tally.accepted):,} accepted; "
                "waiting for every payment to be final")
            _settle(observer, tally, options.settle_timeout_s, say)
            closing = closing_checks(stack, observer, tally)
            tally.memory.append(sample_memory(stack, started))
        finally:
            observer.close()
    doc = _report(options, seed, tally, closing, load_s)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(doc, indent=2))
    write_plot(doc, out / "soak.png")
    say(render(doc))
    for payment_id, records in {**closing.get("not_final_traced", {}),
                                **closing.get("unbalanced_traced", {})}.items():
        say(f"trail of {payment_id}: " + ("; ".join(records) or "no record on its path"))
    say(f"written: {out / 'soak.json'}, {out / 'soak.png'}")
    return doc


def _under_load(stack: Stack, observer: Observer, options: SoakOptions, tally: Tally,
                rng: random.Random, started: float, say) -> None:
    """Faults and checks on their clocks until the minutes are up."""
    end = started + options.minutes * 60
    next_fault = started + min(options.fault_every_s, 10)
    next_check = started + options.check_every_s
    next_line = started
    round_: list[str] = []
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_fault:
            round_ = round_ or rng.sample(FAULTS, len(FAULTS))
            p = _progress(observer, tally, started)
            row = {"s": p["s"], "in_flight": p["accepted"] - p["final"]}
            row.update(inject(stack, round_.pop(0), rng, options.workers, say))
            tally.faults.append(row)
            next_fault = time.monotonic() + options.fault_every_s
        if now >= next_check:
            failed = running_checks(stack, observer)
            tally.checks += 1
            tally.failed_checks += [f"{now - started:.0f}s {f}" for f in failed[:10]]
            for failure in failed[:3]:
                say(f"  CHECK FAILED: {failure}")
            next_check = now + options.check_every_s
        if now >= next_line:
            tally.memory.append(sample_memory(stack, started))
            tally.progress.append(_progress(observer, tally, started))
            p = tally.progress[-1]
            say(f"  {p['s']:6.0f}s  accepted {p['accepted']:>7,}  final {p['final']:>7,}  "
                f"faults {len(tally.faults)}  checks {tally.checks} "
                f"(failed {len(tally.failed_checks)})  workers' RSS "
                f"{_workers_mb(tally.memory[-1]):.0f} MB")
            next_line = now + 15
        observer.poll(timeout_ms=500)
        for part in stack.dead_parts():  # a crash nobody injected is a finding
            say(f"  {part.name} exited on its own ({part.process.returncode}): restarted")
            tally.faults.append({"s": round(time.monotonic() - started, 1), "fault": "crashed",
                                 "target": part.name, "seconds": 0})
            stack.restart(part.name)


def _progress(observer: Observer, tally: Tally, started: float) -> dict:
    final = sum(1 for st in observer.status.values() if st.status in FINAL)
    return {"s": round(time.monotonic() - started, 1), "accepted": len(tally.accepted),
            "final": final}


def _workers_mb(row: dict) -> float:
    return sum(v for k, v in row.items() if k.startswith("worker-"))


def _settle(observer: Observer, tally: Tally, timeout_s: float, say) -> None:
    ids = {payment_id_for(MERCHANT, o) for o in tally.accepted}

    def all_final() -> bool:
        return all(p in observer.status and observer.status[p].status in FINAL for p in ids)

    started = time.monotonic()
    done = observer.wait_until(all_final, timeout_s)
    time.sleep(2)  # late copies and the last legs
    observer.poll()
    say(f"  {'all' if done else 'NOT all'} final after {time.monotonic() - started:.0f}s")


def _report(options: SoakOptions, seed: int, tally: Tally, closing: dict,
            load_s: float) -> dict:
    faults = Counter(f["fault"] for f in tally.faults)
    progress = tally.progress
    windows = [(b["final"] - a["final"]) / max(b["s"] - a["s"], 1e-9)
               for a, b in pairwise(progress)]
    by_via = Counter(tally.accepted.values())
    return {
        "options": {k: str(v) if isinstance(v, Path) else v
                    for k, v in asdict(options).items()},
        "seed": seed, "load_seconds": round(load_s, 1),
        "commands_sent": {"kafka": by_via.get("kafka", 0), "api": by_via.get("api", 0),
                          "api_attempts": tally.api_attempts,
                          "api_retries": tally.api_retries},
        "payments_per_s": {"mean": round(len(tally.accepted) / load_s, 1),
                           "slowest_15s_window": round(min(windows), 1) if windows else None},
        "faults": dict(faults), "restarts_survived": sum(
            n for f, n in faults.items() if f != "crashed"),
        "checks_run": tally.checks + 1, "checks_failed": tally.failed_checks,
        "closing": closing,
        "fault_log": tally.faults, "progress": progress,
        "memory_mb": tally.memory,
        "ok": not closing["failed"] and not tally.failed_checks and not faults["crashed"],
    }


def render(doc: dict) -> str:
    c = doc["closing"]
    peak = {}
    for row in doc["memory_mb"]:
        for name, mb in row.items():
            if name != "s":
                peak[name] = max(peak.get(name, 0), mb)
    last = doc["memory_mb"][-1] if doc["memory_mb"] else {}
    rows = [
        ("commands sent", f"{doc['commands_sent']['kafka']:,} on pay.commands, "
         f"{doc['commands_sent']['api']:,} over HTTP ({doc['commands_sent']['api_retries']:,} "
         "retries)"),
        ("payments/s", f"{doc['payments_per_s']['mean']} offered and accepted, slowest 15 s "
         f"window {doc['payments_per_s']['slowest_15s_window']} final/s"),
        ("final outcomes", f"{c['payments_final']:,} of {c['payments_accepted']:,} "
         f"{c['statuses']}"),
        ("lost / doubled", f"{c['payments_lost']} payments lost, {c['payments_doubled']} "
         f"doubled, {c['cents_lost_or_doubled']} cents off"),
        *((("not final", "; ".join(c["not_final"][:5])),) if c["not_final"] else ()),
        ("ledger", f"sum {c['ledger_sum_minor']}, suspense {c['suspense_minor']}, journal "
         f"{'matches' if c['journal_matches_balances'] else 'DIFFERS FROM'} balances"),
        *((("unbalanced", "; ".join(f"{e['payment_id']} {e['sum_minor']:+} {e['legs']}"
                                    for e in c["entries_unbalanced"][:5])),)
          if c.get("entries_unbalanced") else ()),
        ("auditor", f"{c['auditor']['checks']:.0f} checks, "
         f"{c['auditor']['violations']:.0f} violations"),
        ("checks", f"{doc['checks_run']} run, {len(doc['checks_failed'])} failed"),
        ("takeovers", _takeovers(doc["fault_log"], c["partitions_at_end"])),
        ("worker restarts", _restarts(doc["fault_log"])),
        ("faults survived", ", ".join(f"{n} {f}" for f, n in doc["faults"].items()) or "none"),
        ("memory, MB", ", ".join(f"{n} {last.get(n, 0):.0f} (peak {p:.0f})"
                                 for n, p in sorted(peak.items()))),
        ("verdict", "OK: nothing lost, nothing doubled" if doc["ok"] else
         f"FAILED: {c['failed'] + (['running checks'] if doc['checks_failed'] else [])}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _restarts(log: list[dict]) -> str:
    ready = [f["ready_s"] for f in log if "ready_s" in f]
    if not ready:
        return "none"
    done = sorted(r for r in ready if r is not None)
    never = len(ready) - len(done)
    return (f"{len(ready)}: processing again after median {statistics.median(done):g}s, "
            f"max {done[-1]:g}s" if done else f"{len(ready)}:") + \
        (f"; {never} NEVER ready" if never else "")


def _takeovers(log: list[dict], at_end: dict) -> str:
    took = [f["takeover_s"] for f in log if f["fault"] == "takeover"]
    if not took:
        return "none"
    seconds = ", ".join("never" if t is None else f"{t:g}s" for t in took)
    return (f"{len(took)}: the others held the partitions after {seconds} "
            f"(session timeout included); at the end {at_end}")


def write_plot(doc: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    progress, memory = doc["progress"], doc["memory_mb"]
    for key in ("accepted", "final"):
        top.plot([r["s"] for r in progress], [r[key] for r in progress], label=key)
    for name in sorted({k for row in memory for k in row if k != "s"}):
        bottom.plot([r["s"] for r in memory], [r.get(name, 0) for r in memory], label=name)
    for fault in doc["fault_log"]:
        for ax in (top, bottom):
            ax.axvline(fault["s"], color="red", alpha=0.25, linewidth=0.8)
    top.set_ylabel("payments (cumulative)")
    bottom.set_ylabel("RSS, MB")
    bottom.set_xlabel("seconds since the load started (red: a fault)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle(f"paycore soak, {doc['options']['minutes']:g} min: "
                    f"{'OK' if doc['ok'] else 'FAILED'}")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
    return path
