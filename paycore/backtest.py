"""Backtests: replay recorded commands through the rules in force and a candidate.

``paycore risk record`` writes the ``pay.risk`` topic to a file, one envelope a line.
``paycore risk backtest`` and ``paycore routing backtest`` replay such a file (or lines
``{"at_ms": ..., "command": {...}}``) through a baseline and a candidate, side by side, and
say what would change. Replays are deterministic: file order, each payer's velocity row
rebuilt from the replayed stream alone, baseline and candidate each on rows of their own,
weighted routing drawn from the payment id, every channel taken as healthy.

The arithmetic is plain functions over iterables (``read_input``, ``replay_risk``,
``backtest_risk``, ``replay_routing``, ``backtest_routing``, ``record_topic``); only the
``run_*`` functions touch files, the terminal and the broker.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, NamedTuple, TextIO

from domain.commands import CHANNEL_METHODS, SCREENED, Method, Pay, Transfer
from domain.intake import parse_command
from domain.money import CURRENCY_EXPONENTS, fee_minor
from domain.orders import fingerprint_of
from domain.risk import PayerActivity, RiskDecision, RiskRules, Screened, Verdict, payer_key, screen
from domain.routing import INTERNAL_CHANNEL, Payment, RoutingRules, plan_route
from paycore.text import table
from streams import topics as t
from streams.config import ConfigError
from streams.envelope import UndecodableEnvelope, decode
from streams.rules_config import load_risk, load_routing
from streams.settings import Settings

PROGRESS_EVERY_LINES = 10_000
CHANGES_SHOWN_MAX = 20
"""Changed payments printed in the table; the report has them all."""
BAD_LINES_SHOWN_MAX = 20
REASON_CHARS_MAX = 300
SIDES = ("before", "after")
ROUTED_METHODS = CHANNEL_METHODS | {Method.mandate}
"""Methods the order stage routes through a channel (the rest is internal)."""
NO_ROUTE = "(none)"
"""No channel takes the payment: the order stage would refuse it (``no_route``)."""
RECORD_POLL_MS = 200
RECORD_BATCH_MAX = 5_000
RECORD_IDLE_S = 2.0
"""Past the listed end, a partition with no known high watermark is done after this long
without a record."""

Progress = Callable[[int], None]


# ---------------------------------------------------------------- input


class Replayed(NamedTuple):
    """One command as the risk stage received it, and where it was in the input."""

    line_no: int
    at_ms: int
    cmd: Screened


class BadLine(NamedTuple):
    line_no: int
    reason: str


@dataclass
class InputTally:
    """What reading the input met besides commands."""

    lines: int = 0
    bad: list[BadLine] = field(default_factory=list)


def parse_line(raw: bytes, line_no: int) -> Replayed | BadLine:
    """An envelope as on ``pay.risk``, or ``{"at_ms": int, "command": {...}}``."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return BadLine(line_no, f"not JSON: {exc}")
    if not isinstance(doc, dict):
        return BadLine(line_no, f"not a JSON object: got {type(doc).__name__}")
    if "command" in doc:
        return _parse_bare(doc, line_no)
    try:
        env = decode(raw)
    except UndecodableEnvelope as exc:
        return BadLine(line_no, f"neither an envelope nor {{at_ms, command}}: "
                                f"{str(exc)[:REASON_CHARS_MAX]}")
    if not isinstance(env.body, SCREENED):
        return BadLine(line_no, f"kind {type(env.body).__name__}: not a command risk screens")
    return Replayed(line_no, env.at_ms, env.body)


def _parse_bare(doc: dict, line_no: int) -> Replayed | BadLine:
    at_ms, command = doc.get("at_ms"), doc["command"]
    if type(at_ms) is not int or at_ms < 0:
        return BadLine(line_no, f"at_ms: a non-negative integer required, got {at_ms!r}")
    if not isinstance(command, dict):
        return BadLine(line_no, f"command: a JSON object required, got "
                                f"{type(command).__name__}")
    cmd, reason = parse_command(json.dumps(command).encode())  # intake's own validation
    if cmd is None:
        return BadLine(line_no, f"command: {reason[:REASON_CHARS_MAX]}")
    if not isinstance(cmd, SCREENED):
        return BadLine(line_no, f"command type {cmd.type}: not a command risk screens")
    return Replayed(line_no, at_ms, cmd)


def read_input(lines: Iterable[bytes | str], tally: InputTally,
               progress: Progress | None = None) -> Iterator[Replayed]:
    """The commands in file order; a bad line goes to ``tally.bad`` with its number and is
    skipped. Blank lines are ignored. ``progress`` hears every 10,000th line."""
    for line_no, raw in enumerate(lines, start=1):
        tally.lines = line_no
        if progress is not None and line_no % PROGRESS_EVERY_LINES == 0:
            progress(line_no)
        data = raw.encode() if isinstance(raw, str) else raw
        if not data.strip():
            continue
        item = parse_line(data, line_no)
        if isinstance(item, BadLine):
            tally.bad.append(item)
            continue
        yield item


def _side_by_side(commands: Iterable[Replayed], replay: Callable, baseline, candidate):
    """Each command through both rule sets, in step, reading the input once."""
    left, right = itertools.tee(commands)
    return zip(replay(left, baseline), replay(right, candidate), strict=True)


# ---------------------------------------------------------------- risk


class Screening(NamedTuple):
    line_no: int
    payment_id: str
    amount_minor: int
    currency: str
    verdict: Verdict


def replay_risk(commands: Iterable[Replayed], rules: RiskRules) -> Iterator[Screening]:
    """``screen`` over the commands in order, called exactly as the risk stage calls it: one
    row per payer key, built from nothing but the commands before it in this stream."""
    rows: dict[str, PayerActivity] = {}
    for item in commands:
        key = payer_key(item.cmd)
        rows[key], verdict = screen(rows.get(key), item.cmd, fingerprint_of(item.cmd),
                                    item.at_ms, rules)
        yield Screening(item.line_no, item.cmd.subject_id(), item.cmd.amount_minor,
                        item.cmd.currency, verdict)


def backtest_risk(commands: Iterable[Replayed], baseline: RiskRules,
                  candidate: RiskRules) -> dict:
    return compare_risk(_side_by_side(commands, replay_risk, baseline, candidate),
                        baseline, candidate)


def compare_risk(pairs: Iterable[tuple[Screening, Screening]], baseline: RiskRules,
                 candidate: RiskRules) -> dict:
    """Decisions, amounts and rule hits before and after, and the payments that change.
    A payment id seen again (a redelivery, a payer's retry) counts once, as first screened:
    the order is created from its first verdict."""
    tally = _RiskTally()
    for before, after in pairs:
        assert before.payment_id == after.payment_id, (before, after)
        assert before.line_no == after.line_no, (before, after)
        tally.add(before, after)
    rule_ids = [r.id for r in candidate.rules]
    rule_ids += [r.id for r in baseline.rules if r.id not in rule_ids]
    return tally.report(rule_ids)


class _RiskTally:
    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.duplicates = 0
        self.counts = {side: Counter() for side in SIDES}
        self.amounts = {side: defaultdict(Counter) for side in SIDES}
        """side -> decision -> currency -> amount."""
        self.hits = {side: Counter() for side in SIDES}
        self.changes: list[dict] = []

    def add(self, before: Screening, after: Screening) -> None:
        if before.payment_id in self.seen:
            self.duplicates += 1
            return
        self.seen.add(before.payment_id)
        for side, s in zip(SIDES, (before, after), strict=True):
            decision = s.verdict.decision.value
            self.counts[side][decision] += 1
            self.amounts[side][decision][s.currency] += s.amount_minor
            self.hits[side].update(h.rule_id for h in s.verdict.hits)
        if before.verdict.decision is not after.verdict.decision:
            self.changes.append({
                "payment_id": before.payment_id, "line": before.line_no,
                "amount_minor": before.amount_minor, "currency": before.currency,
                "before": before.verdict.decision.value, "after": after.verdict.decision.value,
                "score_before": before.verdict.score, "score_after": after.verdict.score,
                "rules_before": [h.rule_id for h in before.verdict.hits],
                "rules_after": [h.rule_id for h in after.verdict.hits]})

    def report(self, rule_ids: list[str]) -> dict:
        decisions = [d.value for d in RiskDecision]
        currencies = sorted({c for side in SIDES for by in self.amounts[side].values()
                             for c in by})
        hit_ids = rule_ids + sorted({r for side in SIDES for r in self.hits[side]}
                                    - set(rule_ids))
        return {
            "screened": len(self.seen), "duplicates": self.duplicates,
            "changed": len(self.changes),
            "decisions": {side: {d: {"count": self.counts[side][d],
                                     "amount_minor": dict(sorted(self.amounts[side][d].items()))}
                                 for d in decisions} for side in SIDES},
            "amounts_by_currency": {c: {side: {d: self.amounts[side][d][c] for d in decisions}
                                        for side in SIDES} for c in currencies},
            "rule_hits": {r: {side: self.hits[side][r] for side in SIDES} for r in hit_ids},
            "changes": self.changes,
        }


# ---------------------------------------------------------------- routing


class Routed(NamedTuple):
    line_no: int
    payment_id: str
    amount_minor: int
    currency: str
    channel: str
    """The first candidate, ``internal``, or ``(none)``."""
    rule_id: str
    fee_minor: int


def first_route(rules: RoutingRules, cmd: Screened) -> tuple[str, str, int]:
    """(channel, rule id, fee) of the first attempt, as the order stage plans it with every
    channel healthy. Balance pay and transfers stay inside the ledger: ``internal``, no fee."""
    if isinstance(cmd, Transfer) or cmd.method not in ROUTED_METHODS:
        return INTERNAL_CHANNEL, "internal", 0
    country = (cmd.payer.country or "") if isinstance(cmd, Pay) else ""
    payment = Payment(cmd.subject_id(), cmd.merchant_id, cmd.method, cmd.currency,
                      cmd.amount_minor, country)
    plan = plan_route(rules, payment)
    if plan is None:
        return NO_ROUTE, "", 0
    route = plan.candidates[0]
    # The fee as the ledger books it (domain.money.fee_minor: capped at the amount).
    return route.channel, plan.rule_id, fee_minor(cmd.amount_minor, route.fee_bps,
                                                  route.fee_fixed_minor)


def replay_routing(commands: Iterable[Replayed], rules: RoutingRules) -> Iterator[Routed]:
    for item in commands:
        channel, rule_id, fee = first_route(rules, item.cmd)
        yield Routed(item.line_no, item.cmd.subject_id(), item.cmd.amount_minor,
                     item.cmd.currency, channel, rule_id, fee)


def backtest_routing(commands: Iterable[Replayed], baseline: RoutingRules,
                     candidate: RoutingRules) -> dict:
    return compare_routing(_side_by_side(commands, replay_routing, baseline, candidate))


def compare_routing(pairs: Iterable[tuple[Routed, Routed]]) -> dict:
    """Channel mix and fees per currency before and after, and the payments whose first
    channel changes. A payment id seen again counts once, as first routed."""
    tally = _RoutingTally()
    for before, after in pairs:
        assert before.payment_id == after.payment_id, (before, after)
        assert before.line_no == after.line_no, (before, after)
        tally.add(before, after)
    return tally.report()


class _RoutingTally:
    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.duplicates = 0
        self.mix = {side: defaultdict(lambda: defaultdict(Counter)) for side in SIDES}
        """side -> channel -> currency -> count, amount_minor, fee_minor."""
        self.rules = {side: Counter() for side in SIDES}
        self.changes: list[dict] = []

    def add(self, before: Routed, after: Routed) -> None:
        if before.payment_id in self.seen:
            self.duplicates += 1
            return
        self.seen.add(before.payment_id)
        for side, r in zip(SIDES, (before, after), strict=True):
            cell = self.mix[side][r.channel][r.currency]
            cell.update(count=1, amount_minor=r.amount_minor, fee_minor=r.fee_minor)
            self.rules[side][r.rule_id or "(no rule)"] += 1
        if before.channel != after.channel:
            self.changes.append({
                "payment_id": before.payment_id, "line": before.line_no,
                "amount_minor": before.amount_minor, "currency": before.currency,
                "before": before.channel, "after": after.channel,
                "fee_before": before.fee_minor, "fee_after": after.fee_minor,
                "rule_before": before.rule_id, "rule_after": after.rule_id})

    def report(self) -> dict:
        fields = ("count", "amount_minor", "fee_minor")
        channels = {side: {ch: {c: {f: cell[f] for f in fields}
                                for c, cell in sorted(by.items())}
                           for ch, by in sorted(self.mix[side].items())} for side in SIDES}
        fees: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SIDES, 0))
        for side in SIDES:
            for by in self.mix[side].values():
                for currency, cell in by.items():
                    fees[currency][side] += cell["fee_minor"]
        rule_ids = sorted(set(self.rules["before"]) | set(self.rules["after"]))
        return {
            "routed": len(self.seen), "duplicates": self.duplicates,
            "changed": len(self.changes), "channels": channels,
            "fees_by_currency": dict(sorted(fees.items())),
            "rule_matches": {r: {side: self.rules[side][r] for side in SIDES}
                             for r in rule_ids},
            "changes": self.changes,
        }


# ---------------------------------------------------------------- printing


def _money(amount_minor: int, currency: str, signed: bool = False) -> str:
    exponent = CURRENCY_EXPONENTS.get(currency, 2)
    sign = "-" if amount_minor < 0 else ("+" if signed and amount_minor > 0 else "")
    whole, part = divmod(abs(amount_minor), 10**exponent)
    return f"{sign}{whole:,}" + (f".{part:0{exponent}d}" if exponent else "")


def _delta(before: int, after: int) -> str:
    return f"{after - before:+,}" if after != before else "0"


def _header(report: dict) -> list[str]:
    source = report["input"]
    bad = source["bad_lines"]
    lines = [f"{report['kind']} backtest of {source['path']}: {source['lines']:,} lines, "
             f"{bad:,} bad",
             f"  baseline  {report['baseline']['version']}  {report['baseline']['path']}",
             f"  candidate {report['candidate']['version']}  {report['candidate']['path']}"]
    return lines


def render_risk(report: dict) -> str:
    out = _header(report)
    out.append(f"  {report['screened']:,} payments screened "
               f"({report['duplicates']:,} repeated ids counted once)\n")
    dec = report["decisions"]
    rows = [[d, f"{dec['before'][d]['count']:,}", f"{dec['after'][d]['count']:,}",
             _delta(dec["before"][d]["count"], dec["after"][d]["count"])]
            for d in dec["before"]]
    out += [table(["decision", "before", "after", "change"], rows, "lrrr"), ""]
    rows = [[c, d, _money(by["before"][d], c), _money(by["after"][d], c),
             _money(by["after"][d] - by["before"][d], c, signed=True)]
            for c, by in report["amounts_by_currency"].items() for d in by["before"]]
    out += [table(["currency", "decision", "amount before", "amount after", "change"], rows,
                  "llrrr"), ""]
    rows = [[r, f"{n['before']:,}", f"{n['after']:,}", _delta(n["before"], n["after"])]
            for r, n in report["rule_hits"].items()]
    out += [table(["rule", "fired before", "fired after", "change"], rows, "lrrr"), ""]
    out.append(f"{report['changed']:,} payments change decision")
    rows = [[c["payment_id"], str(c["line"]), _money(c["amount_minor"], c["currency"]),
             c["currency"], c["before"], c["after"], ",".join(c["rules_after"]) or "-"]
            for c in report["changes"][:CHANGES_SHOWN_MAX]]
    if rows:
        out.append(table(["payment", "line", "amount", "ccy", "before", "after",
                          "rules after"], rows, "lrrllll"))
    return "\n".join(out + _more(report))


def render_routing(report: dict) -> str:
    out = _header(report)
    out.append(f"  {report['routed']:,} payments routed "
               f"({report['duplicates']:,} repeated ids counted once)\n")
    mix, zero = report["channels"], {"count": 0, "amount_minor": 0, "fee_minor": 0}
    keys = sorted({(ch, c) for side in SIDES for ch, by in mix[side].items() for c in by})
    rows = []
    for ch, c in keys:
        b, a = (mix[side].get(ch, {}).get(c, zero) for side in SIDES)
        rows.append([ch, c, f"{b['count']:,}", f"{a['count']:,}",
                     _money(b["amount_minor"], c), _money(a["amount_minor"], c),
                     _money(b["fee_minor"], c), _money(a["fee_minor"], c)])
    out += [table(["channel", "ccy", "count before", "count after", "amount before",
                   "amount after", "fee before", "fee after"], rows, "llrrrrrr"), ""]
    rows = [[c, _money(f["before"], c), _money(f["after"], c),
             _money(f["after"] - f["before"], c, signed=True)]
            for c, f in report["fees_by_currency"].items()]
    out += [table(["ccy", "fees before", "fees after", "change"], rows, "lrrr"), ""]
    out.append(f"{report['changed']:,} payments change first channel")
    rows = [[c["payment_id"], str(c["line"]), _money(c["amount_minor"], c["currency"]),
             c["currency"], c["before"], c["after"]]
            for c in report["changes"][:CHANGES_SHOWN_MAX]]
    if rows:
        out.append(table(["payment", "line", "amount", "ccy", "before", "after"], rows,
                         "lrrlll"))
    return "\n".join(out + _more(report))


def _more(report: dict) -> list[str]:
    hidden = report["changed"] - CHANGES_SHOWN_MAX
    if hidden <= 0:
        return []
    where = "all in the report" if report["report_path"] else "--report lists them all"
    return [f"... and {hidden:,} more ({where})"]


# ---------------------------------------------------------------- running


@dataclass(frozen=True)
class _Kind:
    name: str
    load: Callable[[Path], RiskRules | RoutingRules]
    backtest: Callable[[Iterable[Replayed], object, object], dict]
    render: Callable[[dict], str]


KINDS = {
    "risk": _Kind("risk", lambda p: load_risk(p.parent, p), backtest_risk, render_risk),
    "routing": _Kind("routing", lambda p: load_routing(p.parent, p), backtest_routing,
                     render_routing),
}


def run_backtest(kind: str, rules_path: Path, input_path: Path, baseline_path: Path,
                 report_path: Path | None = None, out: TextIO | None = None,
                 err: TextIO | None = None) -> int:
    """The CLI: 0 done, 1 input or report unreadable, 2 a rules file that does not load."""
    out, err = out or sys.stdout, err or sys.stderr
    spec = KINDS[kind]
    try:
        baseline, candidate = spec.load(baseline_path), spec.load(rules_path)
    except ConfigError as exc:
        print(exc, file=err)
        return 2
    except OSError as exc:
        print(f"{exc.filename}: cannot read the rules: {exc.strerror}", file=err)
        return 2
    tally = InputTally()
    try:
        with open(input_path, "rb") as lines:
            result = spec.backtest(read_input(lines, tally, _progress(err)), baseline,
                                   candidate)
    except OSError as exc:
        print(f"{exc.filename}: cannot read the input: {exc.strerror}", file=err)
        return 1
    _report_bad(tally, report_path, err)
    report = {"kind": kind, "report_path": str(report_path) if report_path else None,
              "input": {"path": str(input_path), "lines": tally.lines,
                        "bad_lines": len(tally.bad),
                        "bad": [{"line": b.line_no, "reason": b.reason} for b in tally.bad]},
              "baseline": {"path": str(baseline_path), "version": baseline.version},
              "candidate": {"path": str(rules_path), "version": candidate.version},
              **result}
    print(spec.render(report), file=out)
    if report_path is None:
        return 0
    try:
        report_path.write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        print(f"{report_path}: cannot write the report: {exc.strerror}", file=err)
        return 1
    return 0


def _progress(err: TextIO) -> Progress:
    return lambda n: print(f"{n:,} lines", file=err, flush=True)


def _report_bad(tally: InputTally, report_path: Path | None, err: TextIO) -> None:
    for bad in tally.bad[:BAD_LINES_SHOWN_MAX]:
        print(f"line {bad.line_no}: {bad.reason}", file=err)
    hidden = len(tally.bad) - BAD_LINES_SHOWN_MAX
    if hidden > 0:
        where = "all in the report" if report_path else "--report lists them all"
        print(f"... and {hidden:,} more bad lines ({where})", file=err)
    print(f"{tally.lines:,} lines read, {len(tally.bad):,} bad (skipped)", file=err,
          flush=True)


# ---------------------------------------------------------------- recording


class RecordError(RuntimeError):
    pass


def record_topic(consumer, topic: str, out: BinaryIO, idle_s: float = RECORD_IDLE_S,
                 progress: Progress | None = None, clock: Callable[[], float] = time.monotonic
                 ) -> int:
    """Write the value of every record in ``topic`` (all partitions, from the beginning) as
    one line; return how many. ``consumer`` is a kafka-python ``KafkaConsumer``.

    The end of a partition is the larger of its listed end (ListOffsets, which the embedded
    broker under-reports: streams/tansu.py) and the Fetch high watermark first seen for it.
    Records past that came after we started and are left out, so a live topic ends too. A
    partition with no high watermark yet is done once nothing came for ``idle_s``."""
    tps = _all_partitions(consumer, topic)
    listed = consumer.end_offsets(tps)
    ends: dict = {}
    written, quiet_since = 0, clock()
    while True:
        batch = consumer.poll(timeout_ms=RECORD_POLL_MS, max_records=RECORD_BATCH_MAX)
        for tp in tps:
            _learn_end(consumer, tp, listed, ends)
        for tp, records in sorted(batch.items()):
            end = ends.get(tp)
            for record in records:
                if record.value is None or (end is not None and record.offset >= end):
                    continue
                out.write(_one_line(record.value))
                written += 1
                if progress is not None and written % PROGRESS_EVERY_LINES == 0:
                    progress(written)
        if any(batch.values()):
            quiet_since = clock()
        reached = all(consumer.position(tp) >= ends.get(tp, listed[tp]) for tp in tps)
        if reached and (len(ends) == len(tps) or clock() - quiet_since >= idle_s):
            return written


def _all_partitions(consumer, topic: str) -> list:
    from kafka import TopicPartition

    partitions = sorted(consumer.partitions_for_topic(topic) or ())
    if not partitions:
        raise RecordError(f"topic {topic} not found")
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return tps


def _learn_end(consumer, tp, listed: dict, ends: dict) -> None:
    if tp in ends:
        return
    highwater = consumer.highwater(tp)
    if highwater is not None:
        ends[tp] = max(listed[tp], highwater)


def _one_line(value: bytes) -> bytes:
    # A raw line break can only be whitespace between JSON tokens: a space keeps the value.
    return value.replace(b"\r", b" ").replace(b"\n", b" ") + b"\n"


def run_record(settings: Settings, out_path: Path, topic: str = t.RISK,
               err: TextIO | None = None) -> int:
    """The CLI: 0 done, 1 no broker, no topic or the file cannot be written."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    err = err or sys.stderr
    if not settings.kafka_bootstrap:
        print("no broker: set PAYCORE_KAFKA_BOOTSTRAP (paycore up prints it)", file=err)
        return 1
    partial = out_path.with_name(out_path.name + ".part")
    try:
        consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers(),
                                 enable_auto_commit=False, auto_offset_reset="earliest",
                                 group_id=None)
    except KafkaError as exc:
        print(f"{settings.kafka_bootstrap}: {exc}", file=err)
        return 1
    try:
        with open(partial, "wb") as out:
            written = record_topic(consumer, topic, out, progress=_progress(err))
        os.replace(partial, out_path)
    except (KafkaError, RecordError, OSError) as exc:
        partial.unlink(missing_ok=True)
        print(f"recording {topic} failed: {exc}", file=err)
        return 1
    finally:
        consumer.close()
    print(f"{written:,} records of {topic} written to {out_path}", file=err)
    return 0
