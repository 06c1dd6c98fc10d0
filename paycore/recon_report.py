"""The reconciliation report: what ``pay.recon.status`` and ``pay.recon.exceptions`` add up to.

Each recon partition publishes its whole tally whenever it changes (``ReconStatus``). The
report keeps each partition's latest (highest ``at_ms``), sums them (``Tally.add``) and lays
the sum out: matches per channel, open items by age, discrepancies by kind, what each
channel still owes on its clearing account per capture day, the periods closed. Exceptions
are delivered at least once: they are deduplicated by ``exception_id``.

``build``, ``render`` and ``write`` are plain functions over messages; ``read_topics`` reads
the two topics from the broker (``paycore recon report``). The API keeps the same inputs in
its read model and answers ``GET /v1/ops/recon/report`` with ``build``.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, TextIO

from domain.money import CURRENCY_EXPONENTS, decimal_text
from domain.recon import ExceptionKind, ReconException, ReconStatus, Tally
from paycore.text import table as text_table
from streams import topics as t
from streams.envelope import UndecodableEnvelope, decode

log = logging.getLogger(__name__)

AGE_BUCKETS = ("0d", "1d", "2d", "3d+")
"""Open items by days since they opened (UTC days); the last bucket takes the rest."""
EXCEPTION_COLUMNS = ("exception_id", "payment_id", "channel", "kind", "reason",
                     "expected_minor", "reported_minor", "resolution", "line_id",
                     "detected_at_ms")
REPORT_FILE = "recon-report.json"
EXCEPTIONS_FILE = "recon-exceptions.csv"
READ_TIMEOUT_S = 30.0
POLL_MS = 200
POLL_RECORDS_MAX = 5_000
FETCH_WAIT_MS = 100


class ReportError(Exception):
    """The topics cannot be read (no such topic, not read to the end in time)."""


# ---------------------------------------------------------------- the report, pure


def latest_per_partition(statuses: Iterable[ReconStatus]) -> dict[int, ReconStatus]:
    """Each partition's status with the highest ``at_ms`` (on a tie, the one read last)."""
    latest: dict[int, ReconStatus] = {}
    for status in statuses:
        kept = latest.get(status.partition)
        if kept is None or status.at_ms >= kept.at_ms:
            latest[status.partition] = status
    return latest


def unique_exceptions(exceptions: Iterable[ReconException]) -> list[ReconException]:
    """One per ``exception_id`` (the first copy read), oldest detection first."""
    first: dict[str, ReconException] = {}
    for exception in exceptions:
        first.setdefault(exception.exception_id, exception)
    return sorted(first.values(), key=lambda e: (e.detected_at_ms, e.exception_id))


def build(statuses: list[ReconStatus], exceptions: list[ReconException], today: date
          ) -> dict:
    """The report as a JSON-able dict; ``today`` (a UTC day) is what open items age against."""
    latest = latest_per_partition(statuses)
    total = Tally()
    for partition in sorted(latest):
        total = total.add(latest[partition].tally)
    return {
        "today": today.isoformat(),
        "partitions_reporting": sorted(latest),
        "as_of_ms": max((s.at_ms for s in latest.values()), default=0),
        "matched": _matched(total),
        "open_by_age": _open_by_age(total, today),
        "exceptions_by_kind": _by_kind(total),
        "clearing_residual": _residual(total),
        "closed_periods": dict(sorted(total.closed_periods.items())),
        "exceptions": [exception_row(e) for e in unique_exceptions(exceptions)],
    }


def _split(key: str, parts: int) -> list[str]:
    """A tally key's fields (``|``-joined; the first field, a channel, may hold a ``|``)."""
    fields = key.rsplit("|", parts - 1)
    assert len(fields) == parts, (key, parts)
    return fields


def _matched(total: Tally) -> dict[str, dict]:
    gross: dict[str, dict[str, int]] = {}
    for key, amount_minor in total.matched_minor.items():
        channel, currency = _split(key, 2)
        gross.setdefault(channel, {})[currency] = amount_minor
    channels = sorted(set(total.matched) | set(gross) | set(total.agreed))
    return {c: {"count": total.matched.get(c, 0), "gross_minor": dict(sorted(
        gross.get(c, {}).items())), "nothing_to_settle": total.agreed.get(c, 0)}
        for c in channels}


def age_bucket(opened_on: str, today: date) -> str:
    """``"0d"`` .. ``"3d+"``; a day after ``today`` (a clock behind the stage's) is ``"0d"``."""
    days = (today - date.fromisoformat(opened_on)).days
    return AGE_BUCKETS[min(max(days, 0), len(AGE_BUCKETS) - 1)]


def _open_by_age(total: Tally, today: date) -> dict[str, dict[str, dict[str, int]]]:
    by: dict[str, dict[str, dict[str, int]]] = {}
    for key, count in sorted(total.open.items()):
        channel, state, opened_on = _split(key, 3)
        buckets = by.setdefault(channel, {}).setdefault(state, dict.fromkeys(AGE_BUCKETS, 0))
        buckets[age_bucket(opened_on, today)] += count
    return {c: dict(sorted(states.items())) for c, states in sorted(by.items())}


def _by_kind(total: Tally) -> dict[str, dict[str, int]]:
    """Every kind, zero included; a kind this version does not know is kept, last."""
    known = [k.value for k in ExceptionKind]
    other = sorted((set(total.exceptions) | set(total.auto_resolved)) - set(known))
    return {k: {"raised": total.exceptions.get(k, 0),
                "auto_resolved": total.auto_resolved.get(k, 0)} for k in known + other}


def _residual(total: Tally) -> list[dict]:
    rows = []
    for key, owed_minor in total.residual.items():
        channel, currency, day = _split(key, 3)
        rows.append({"channel": channel, "currency": currency, "day": day,
                     "owed_minor": owed_minor})
    return sorted(rows, key=lambda r: (r["channel"], r["currency"], r["day"]))


def exception_row(exception: ReconException) -> dict:
    """The exception's report fields (the records involved stay on the topic)."""
    row = {name: getattr(exception, name) for name in EXCEPTION_COLUMNS}
    row["kind"] = exception.kind.value
    return row


# ---------------------------------------------------------------- text and files


def amount_text(amount_minor: int, currency: str) -> str:
    """``123456`` EUR -> ``"1,234.56"`` (the currency's exponent); an unknown currency
    stays in minor units."""
    if currency not in CURRENCY_EXPONENTS:
        return f"{amount_minor:,}"
    return decimal_text(amount_minor, currency, grouped=True)


def table(headers: list[str], rows: list[list[str]], align: str) -> str:
    return text_table(headers, rows, align, indent="  ", empty="(none)")


def render(report: dict) -> str:
    as_of = (datetime.fromtimestamp(report["as_of_ms"] / 1000, tz=timezone.utc)
             .strftime("%Y-%m-%d %H:%M:%S UTC") if report["as_of_ms"] else "-")
    partitions = report["partitions_reporting"]
    awaiting = sum(1 for e in report["exceptions"] if not e["resolution"])
    sections = [
        f"Reconciliation report for {report['today']}: {len(partitions)} partitions "
        f"reporting, latest status {as_of}",
        "Matched, by channel\n" + _matched_table(report["matched"]),
        "Open items, by age\n" + _open_table(report["open_by_age"]),
        "Exceptions, by kind\n" + _kinds_table(report["exceptions_by_kind"]),
        f"{len(report['exceptions'])} exceptions on {t.RECON_EXCEPTIONS}, {awaiting} "
        "waiting for ops",
        "Clearing residual (owed by the channel), by capture day\n"
        + _residual_table(report["clearing_residual"]),
        "Closed periods\n" + table(["channel", "through"], [
            [c, day] for c, day in report["closed_periods"].items()], "ll"),
    ]
    return "\n\n".join(sections) + "\n"


def _matched_table(matched: dict[str, dict]) -> str:
    rows = []
    for channel, cell in matched.items():
        gross = list(cell["gross_minor"].items()) or [("-", None)]
        for i, (currency, amount_minor) in enumerate(gross):
            rows.append([channel if i == 0 else "", str(cell["count"]) if i == 0 else "",
                         currency, "-" if amount_minor is None
                         else amount_text(amount_minor, currency),
                         str(cell.get("nothing_to_settle", 0)) if i == 0 else ""])
    return table(["channel", "settled", "currency", "gross", "nothing to settle"], rows,
                 "lrlrr")


def _open_table(open_by_age: dict[str, dict[str, dict[str, int]]]) -> str:
    rows = [[channel, state, *(str(buckets[b]) for b in AGE_BUCKETS),
             str(sum(buckets.values()))]
            for channel, states in open_by_age.items() for state, buckets in states.items()]
    return table(["channel", "state", *AGE_BUCKETS, "total"], rows, "llrrrrr")


def _kinds_table(by_kind: dict[str, dict[str, int]]) -> str:
    rows = [[kind, str(n["raised"]), str(n["auto_resolved"])] for kind, n in by_kind.items()]
    rows.append(["total", str(sum(n["raised"] for n in by_kind.values())),
                 str(sum(n["auto_resolved"] for n in by_kind.values()))])
    return table(["kind", "raised", "auto_resolved"], rows, "lrr")


def _residual_table(residual: list[dict]) -> str:
    rows = [[r["channel"], r["currency"], r["day"], amount_text(r["owed_minor"], r["currency"])]
            for r in residual]
    return table(["channel", "currency", "day", "owed"], rows, "lllr")


def write(report: dict, out_dir: Path) -> list[Path]:
    """``recon-report.json`` (the whole report) and ``recon-exceptions.csv`` (one row per
    exception, ``EXCEPTION_COLUMNS``; an absent amount is an empty cell)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path, csv_path = out_dir / REPORT_FILE, out_dir / EXCEPTIONS_FILE
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    with open(csv_path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(EXCEPTION_COLUMNS)
        for row in report["exceptions"]:
            writer.writerow(["" if row[c] is None else row[c] for c in EXCEPTION_COLUMNS])
    return [report_path, csv_path]


# ---------------------------------------------------------------- the broker


def read_topics(bootstrap: str, partitions: int, timeout_s: float = READ_TIMEOUT_S
                ) -> tuple[list[ReconStatus], list[ReconException]]:
    """Every status and exception on the two topics, from the beginning to their end as it
    was when reading started. Raises ``ReportError`` if that end is not reached in time."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", group_id=None,
                             fetch_max_wait_ms=FETCH_WAIT_MS)
    try:
        tps = []
        for topic in (t.RECON_STATUS, t.RECON_EXCEPTIONS):
            known = consumer.partitions_for_topic(topic)
            if not known:
                raise ReportError(f"topic {topic} not found (is the stack up?)")
            tps += [TopicPartition(topic, p) for p in sorted(known) if p < partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return drain(consumer, tps, timeout_s)
    finally:
        consumer.close()


def drain(consumer, tps: list, timeout_s: float, clock: Callable[[], float] = time.monotonic
          ) -> tuple[list[ReconStatus], list[ReconException]]:
    """Poll ``consumer`` (kafka-python, assigned ``tps`` at their beginning) to the end.

    A partition's end is the larger of its listed end (``end_offsets``; the embedded broker
    under-reports it, streams/tansu.py) and the first Fetch high watermark seen for it, so
    every partition is done once a fetch has answered for it and the position reached it."""
    listed = consumer.end_offsets(tps)
    ends: dict = {}
    statuses: list[ReconStatus] = []
    exceptions: list[ReconException] = []
    deadline = clock() + timeout_s
    while True:
        batch = consumer.poll(timeout_ms=POLL_MS, max_records=POLL_RECORDS_MAX)
        for records in batch.values():
            for record in records:
                _collect(record.value, statuses, exceptions)
        for tp in tps:
            highwater = consumer.highwater(tp)
            if tp not in ends and highwater is not None:
                ends[tp] = max(listed[tp], highwater)
        if len(ends) == len(tps) and all(consumer.position(tp) >= ends[tp] for tp in tps):
            return statuses, exceptions
        if clock() >= deadline:
            behind = sorted(f"{tp.topic}:{tp.partition}" for tp in tps
                            if tp not in ends or consumer.position(tp) < ends[tp])
            raise ReportError(f"not read to the end in {timeout_s:g} s: {', '.join(behind)}")


def _collect(raw: bytes | None, statuses: list, exceptions: list) -> None:
    if raw is None:
        return
    try:
        body = decode(raw).body
    except UndecodableEnvelope as exc:
        log.warning("recon report skipped an undecodable message: %s", exc)
        return
    if isinstance(body, ReconStatus):
        statuses.append(body)
    elif isinstance(body, ReconException):
        exceptions.append(body)


def run_report(bootstrap: str, partitions: int, out_dir: Path,
               timeout_s: float = READ_TIMEOUT_S, out: TextIO | None = None,
               err: TextIO | None = None) -> int:
    """The CLI: 0 printed and written, 1 no broker or the topics could not be read."""
    from kafka.errors import KafkaError

    out, err = out or sys.stdout, err or sys.stderr
    if not bootstrap:
        print("no broker: pass --bootstrap or set PAYCORE_KAFKA_BOOTSTRAP "
              "(paycore up prints it)", file=err)
        return 1
    try:
        statuses, exceptions = read_topics(bootstrap, partitions, timeout_s)
    except (KafkaError, ReportError) as exc:
        print(f"reading {t.RECON_STATUS} and {t.RECON_EXCEPTIONS} from {bootstrap} failed: "
              f"{exc}", file=err)
        return 1
    report = build(statuses, exceptions, datetime.now(timezone.utc).date())
    print(render(report), file=out)
    for path in write(report, out_dir):
        print(f"wrote {path}", file=out)
    return 0
