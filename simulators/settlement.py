"""Settlement reports a channel sends us: one per channel and period, from a seed.

Card acquirers and wallets send a CSV bill; the bank sends an ISO 20022 camt.053.001.08
statement. A report can carry discrepancies the recon stage must find (missing and extra
lines, amount and fee drift, wrong dates, duplicates), and ``Report.injected`` records
exactly what was injected, nothing else. Same inputs and seed: byte-identical files.

Pure except for the file reads and writes. Amounts are integer minor units; the decimal
forms in the files use the currency's ISO 4217 exponent (``domain.money``).

A camt.053 file is checked against the official XSD (``schemas/camt.053.001.08.xsd``) when
written and read; reading decodes it with xmlschema. A bad file raises
``SettlementFileError`` naming the file and the line or element.
"""

from __future__ import annotations

import csv
import io
import random
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Literal

import xmlschema
from lxml import etree

from domain.events import SettlementReported
from domain.ids import derive_id
from domain.money import CURRENCY_EXPONENTS, fee_minor, is_known_currency
from domain.money import decimal_text as money_text
from domain.recon import SettlementClosed
from streams.envelope import child, encode

ReportKind = Literal["card", "wallet", "bank"]
REPORT_KINDS: tuple[str, ...] = ("card", "wallet", "bank")

CAMT053_NAMESPACE = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"
CAMT053_XSD = Path(__file__).resolve().parent / "schemas" / "camt.053.001.08.xsd"
EMPTY_STATEMENT_CURRENCY = "EUR"
"""The account currency of a bank statement with no entries at all."""
NOT_PROVIDED = "NOTPROVIDED"
"""ISO 20022's EndToEndId when the payer gave none: the line names only the bank's serial."""
MAX35_CHARS = 35
"""ISO 20022 ``Max35Text``: line id (NtryRef), payment id (EndToEndId), serial (AcctSvcrRef)."""

CSV_COLUMNS: tuple[str, ...] = (
    "line_id", "channel", "payment_id", "channel_serial", "currency",
    "amount_minor", "amount", "fee_minor", "fee", "settled_on",
)


class Discrepancy(str, Enum):
    """What a channel's report can get wrong. Values never change."""

    missing_line = "missing_line"
    """A payment the channel settled is absent from the file."""
    extra_line = "extra_line"
    """The file settles a payment id we never had."""
    amount_drift = "amount_drift"
    """The line's gross amount differs from ours by a few minor units."""
    fee_drift = "fee_drift"
    """The line's fee differs from ours by a few minor units."""
    wrong_date = "wrong_date"
    """The line is dated (booked and valued) on another day, outside the period."""
    duplicate_line = "duplicate_line"
    """The same payment settled a second time, under a line id of its own."""


@dataclass(frozen=True)
class Settled:
    """One payment the channel really settled in the period (our side of the truth)."""

    payment_id: str
    channel_serial: str
    amount_minor: int
    """Gross: captured minus refunded."""
    currency: str
    fee_minor: int
    booked_on: date


@dataclass(frozen=True)
class Drift:
    """How many discrepancies of each kind to inject (capped by the lines available: each
    input line gets at most one, so every difference has exactly one cause)."""

    missing_lines: int = 0
    extra_lines: int = 0
    amount_drifts: int = 0
    fee_drifts: int = 0
    wrong_dates: int = 0
    duplicate_lines: int = 0
    amount_drift_minor_max: int = 99
    """Largest amount drift, in minor units (never zero, either sign)."""
    fee_drift_minor_max: int = 25
    """Largest fee drift, in minor units (never zero, either sign)."""
    date_shift_days_max: int = 3
    """Largest shift of a wrong date, in days (never zero, either direction)."""
    extra_amount_minor_max: int = 100_000
    """Largest amount of an extra line, in minor units."""
    extra_currency: str = "EUR"
    """Currency of an extra line when the period has no line to take one from."""
    serial_only_lines: int = 0
    """Lines (among those without a discrepancy) where the channel does not echo our payment
    id, only its own serial: not a discrepancy, reconciliation matches them by serial."""


NO_DRIFT = Drift()


Line = SettlementReported
"""One settlement line as the channel reports it: the very event the core reads (line id
unique per channel, our payment id as the channel echoes it, settled_on YYYY-MM-DD)."""


@dataclass(frozen=True)
class Injection:
    """One injected discrepancy. Amounts in minor units, dates as YYYY-MM-DD; ``None`` where
    a side has nothing (a missing line was expected but not reported, and so on)."""

    kind: Discrepancy
    line_id: str
    payment_id: str
    expected: int | str | None
    reported: int | str | None


@dataclass(frozen=True)
class Report:
    channel: str
    kind: ReportKind
    period: date
    seed: int
    lines: list[Line] = field(default_factory=list)
    """In file order. A bank report lists each currency's lines together (one Stmt each)."""
    injected: list[Injection] = field(default_factory=list)


class SettlementFileError(ValueError):
    """A settlement file we cannot read, with where: ``path:line`` or an element path."""

    def __init__(self, path: Path | str, where: str, reason: str) -> None:
        super().__init__(f"{path}: {where}: {reason}")
        self.path = str(path)
        self.where = where
        self.reason = reason


# ---------------------------------------------------------------- building a report


def line_id_for(channel: str, period: date, channel_serial: str, occurrence: str = "") -> str:
    """The channel's id of a line: stable for (channel, period, serial); a duplicate
    settlement of the same serial gets its own ``occurrence`` and so its own id."""
    return derive_id("stl", channel, period.isoformat(), channel_serial, occurrence)


def build_report(channel: str, kind: ReportKind, period: date, settled: list[Settled],
                 seed: int, drift: Drift = NO_DRIFT) -> Report:
    """The channel's report of ``settled`` for ``period``, with ``drift`` injected."""
    assert channel, "a report needs its channel"
    assert kind in REPORT_KINDS, kind
    _check_settled(settled)
    rng = random.Random(f"settlement\x1f{seed}\x1f{channel}\x1f{period.isoformat()}")
    base = [_line_of(channel, period, s) for s in settled]
    # A line with nothing to settle (refunded in full) carries no discrepancy: a missing or
    # drifted one would be no money at all.
    chosen = _choose(rng, [i for i, line in enumerate(base) if line.amount_minor], drift)
    lines: list[Line] = []
    injected: list[Injection] = []
    for index, line in enumerate(base):
        what = chosen.get(index)
        if what is Discrepancy.missing_line:
            injected.append(Injection(what, line.line_id, line.payment_id,
                                      line.amount_minor, None))
            continue
        if what in _DRIFTS:
            line, injection = _DRIFTS[what](rng, line, period, drift)
            injected.append(injection)
        lines.append(line)
    tainted = {base[i].line_id for i in chosen} | {inj.line_id for inj in injected}
    plain = [i for i, line in enumerate(lines) if line.line_id not in tainted]
    for index in sorted(rng.sample(plain, min(drift.serial_only_lines, len(plain)))):
        lines[index] = _with(lines[index], payment_id="")
    for index in sorted(i for i, what in chosen.items() if what is Discrepancy.duplicate_line):
        copy = _with(base[index], line_id=line_id_for(channel, period,
                                                        base[index].channel_serial, "dup"))
        # The repeat comes after the line it repeats: that one settled the payment first.
        after = next(i for i, line in enumerate(lines) if line.line_id == base[index].line_id)
        lines.insert(rng.randrange(after + 1, len(lines) + 1), copy)
        injected.append(Injection(Discrepancy.duplicate_line, copy.line_id, copy.payment_id,
                                  None, copy.amount_minor))
    for number in range(drift.extra_lines):
        extra = _extra_line(rng, channel, period, seed, number, base, drift)
        lines.insert(rng.randrange(len(lines) + 1), extra)
        injected.append(Injection(Discrepancy.extra_line, extra.line_id, extra.payment_id,
                                  None, extra.amount_minor))
    if kind == "bank":
        lines = _grouped_by_currency(lines)
    assert len({line.line_id for line in lines}) == len(lines), "line ids must be unique"
    return Report(channel, kind, period, seed, lines, injected)


def _check_settled(settled: list[Settled]) -> None:
    for s in settled:
        assert isinstance(s.amount_minor, int) and s.amount_minor >= 0, s
        assert isinstance(s.fee_minor, int) and s.fee_minor >= 0, s
        assert is_known_currency(s.currency), s
        assert s.payment_id and s.channel_serial, s
    assert len({s.channel_serial for s in settled}) == len(settled), "one line per serial"


def _line_of(channel: str, period: date, s: Settled) -> Line:
    return Line(line_id=line_id_for(channel, period, s.channel_serial), channel=channel,
                payment_id=s.payment_id, channel_serial=s.channel_serial,
                amount_minor=s.amount_minor, currency=s.currency, fee_minor=s.fee_minor,
                settled_on=s.booked_on.isoformat())


def _choose(rng: random.Random, eligible: list[int], drift: Drift) -> dict[int, Discrepancy]:
    """Which input line gets which discrepancy: disjoint, seeded, at most one per line,
    only among ``eligible`` lines."""
    order = list(eligible)
    rng.shuffle(order)
    wanted = ((Discrepancy.missing_line, drift.missing_lines),
              (Discrepancy.amount_drift, drift.amount_drifts),
              (Discrepancy.fee_drift, drift.fee_drifts),
              (Discrepancy.wrong_date, drift.wrong_dates),
              (Discrepancy.duplicate_line, drift.duplicate_lines))
    chosen: dict[int, Discrepancy] = {}
    for what, how_many in wanted:
        assert how_many >= 0, (what, how_many)
        taken, order = order[:how_many], order[how_many:]
        chosen.update((index, what) for index in taken)
    return chosen


def _signed_delta(rng: random.Random, delta_max: int) -> int:
    assert delta_max >= 1, delta_max
    return rng.randint(1, delta_max) * rng.choice((-1, 1))


def _amount_drifted(rng, line: Line, period: date, drift: Drift) -> tuple[Line, Injection]:
    delta = _signed_delta(rng, drift.amount_drift_minor_max)
    amount = line.amount_minor + delta if line.amount_minor + delta >= 0 else (
        line.amount_minor - delta)
    return (_with(line, amount_minor=amount),
            Injection(Discrepancy.amount_drift, line.line_id, line.payment_id,
                      line.amount_minor, amount))


def _fee_drifted(rng, line: Line, period: date, drift: Drift) -> tuple[Line, Injection]:
    delta = _signed_delta(rng, drift.fee_drift_minor_max)
    fee = line.fee_minor + delta if line.fee_minor + delta >= 0 else line.fee_minor - delta
    return (_with(line, fee_minor=fee),
            Injection(Discrepancy.fee_drift, line.line_id, line.payment_id,
                      line.fee_minor, fee))


def _date_wrong(rng, line: Line, period: date, drift: Drift) -> tuple[Line, Injection]:
    booked = date.fromisoformat(line.settled_on)
    shifts = [days for days in range(-drift.date_shift_days_max, drift.date_shift_days_max + 1)
              if days and booked + timedelta(days=days) != period]
    assert shifts, "a wrong date needs somewhere to go"
    reported = (booked + timedelta(days=rng.choice(shifts))).isoformat()
    assert reported != line.settled_on
    return (_with(line, settled_on=reported),
            Injection(Discrepancy.wrong_date, line.line_id, line.payment_id,
                      line.settled_on, reported))


_DRIFTS = {Discrepancy.amount_drift: _amount_drifted, Discrepancy.fee_drift: _fee_drifted,
           Discrepancy.wrong_date: _date_wrong}


def _extra_line(rng: random.Random, channel: str, period: date, seed: int, number: int,
                base: list[Line], drift: Drift) -> Line:
    """A line for a payment we never had: our id format, but no order of ours has it."""
    payment_id = derive_id("pay", "extra", channel, period.isoformat(), str(seed), str(number))
    assert payment_id not in {line.payment_id for line in base}
    serial = derive_id(channel, "extra", period.isoformat(), str(seed), str(number),
                       digest_bytes=8)
    currency = rng.choice(sorted({line.currency for line in base})) if base else (
        drift.extra_currency)
    amount = rng.randint(1, drift.extra_amount_minor_max)
    return Line(line_id=line_id_for(channel, period, serial), channel=channel,
                payment_id=payment_id, channel_serial=serial, amount_minor=amount,
                currency=currency, fee_minor=fee_minor(amount, rng.randint(50, 300), 0),
                settled_on=period.isoformat())


def _grouped_by_currency(lines: list[Line]) -> list[Line]:
    """Stable: each currency's lines together, currencies in order of first appearance."""
    first = {}
    for index, line in enumerate(lines):
        first.setdefault(line.currency, index)
    return sorted(lines, key=lambda line: first[line.currency])


# ---------------------------------------------------------------- money as text


def decimal_text(amount_minor: int, currency: str) -> str:
    """``1234`` EUR -> ``"12.34"``; JPY -> ``"1234"``; KWD -> ``"1.234"`` (never negative
    in a settlement file)."""
    assert amount_minor >= 0, amount_minor
    return money_text(amount_minor, currency)


def minor_from_decimal(amount: Decimal, currency: str) -> int:
    """Exact: raises ValueError when the amount has more decimals than the currency has."""
    scaled = amount.scaleb(CURRENCY_EXPONENTS[currency])
    if not scaled.is_finite() or scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more decimals than {currency} allows")
    return int(scaled)


# ---------------------------------------------------------------- CSV bills


def render_csv(report: Report) -> bytes:
    """The card or wallet bill: a header row, then one row per line (RFC 4180, CRLF)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for line in report.lines:
        writer.writerow([
            line.line_id, line.channel, line.payment_id, line.channel_serial, line.currency,
            line.amount_minor, decimal_text(line.amount_minor, line.currency),
            line.fee_minor, decimal_text(line.fee_minor, line.currency), line.settled_on,
        ])
    return out.getvalue().encode("utf-8")


def write_csv(report: Report, path: Path | str) -> Path:
    path = Path(path)
    path.write_bytes(render_csv(report))
    return path


def read_csv(path: Path | str) -> list[Line]:
    """Lines of a CSV bill, in file order. Raises ``SettlementFileError`` at ``path:line``."""
    path = Path(path)
    located: list[tuple[str, Line]] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, strict=True)
        try:
            header = next(reader, None)
            if header is None or tuple(header) != CSV_COLUMNS:
                raise SettlementFileError(path, "line 1",
                                          f"header must be {','.join(CSV_COLUMNS)}")
            for row in reader:
                line = _line_of_row(path, reader.line_num, row)
                located.append((f"line {reader.line_num}", line))
        except csv.Error as error:
            raise SettlementFileError(path, f"line {reader.line_num}", str(error)) from error
        except UnicodeDecodeError as error:
            raise SettlementFileError(path, "bytes", f"not UTF-8: {error}") from error
    _check_unique_ids(path, located)
    return [line for _, line in located]


_MINOR = re.compile(r"^[0-9]{1,16}$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def _line_of_row(path: Path, line_number: int, row: list[str]) -> Line:
    where = f"line {line_number}"
    if len(row) != len(CSV_COLUMNS):
        raise SettlementFileError(path, where,
                                  f"{len(row)} fields, expected {len(CSV_COLUMNS)}")
    cells = dict(zip(CSV_COLUMNS, row, strict=True))
    for name in ("line_id", "channel", "channel_serial"):  # payment id: may be absent
        if not cells[name]:
            raise SettlementFileError(path, where, f"{name} is empty")
    currency = cells["currency"]
    if not is_known_currency(currency):
        raise SettlementFileError(path, where, f"unknown currency {currency!r}")
    amounts = {}
    for name in ("amount", "fee"):
        minor = cells[f"{name}_minor"]
        if not _MINOR.match(minor):
            raise SettlementFileError(path, where, f"{name}_minor {minor!r} is not an integer")
        amounts[name] = int(minor)
        if cells[name] != decimal_text(amounts[name], currency):
            raise SettlementFileError(path, where, f"{name} {cells[name]!r} does not match "
                                                   f"{name}_minor {minor} {currency}")
    _check_date(path, where, "settled_on", cells["settled_on"])
    return Line(line_id=cells["line_id"], channel=cells["channel"],
                payment_id=cells["payment_id"], channel_serial=cells["channel_serial"],
                amount_minor=amounts["amount"], currency=currency,
                fee_minor=amounts["fee"], settled_on=cells["settled_on"])


def _check_date(path: Path, where: str, name: str, text: str) -> None:
    try:
        valid = bool(_DATE.match(text)) and date.fromisoformat(text).isoformat() == text
    except ValueError:
        valid = False
    if not valid:
        raise SettlementFileError(path, where, f"{name} {text!r} is not a YYYY-MM-DD date")


def _check_unique_ids(path: Path, located: list[tuple[str, Line]]) -> None:
    seen: dict[str, str] = {}
    for where, line in located:
        if line.line_id in seen:
            raise SettlementFileError(path, where, f"line_id {line.line_id} repeats "
                                                   f"({seen[line.line_id]})")
        seen[line.line_id] = where


# ---------------------------------------------------------------- camt.053 statements


@lru_cache(maxsize=1)
def camt053_schema() -> xmlschema.XMLSchema:
    """The official ISO 20022 camt.053.001.08 schema, parsed once per process."""
    if not CAMT053_XSD.is_file():
        raise FileNotFoundError(f"camt.053 schema missing: {CAMT053_XSD}")
    return xmlschema.XMLSchema(str(CAMT053_XSD))


def _sub(parent: etree._Element, tag: str, text: str | None = None,
         **attributes: str) -> etree._Element:
    element = etree.SubElement(parent, f"{{{CAMT053_NAMESPACE}}}{tag}", attributes)
    if text is not None:
        element.text = text
    return element


def _path(parent: etree._Element, *tags: str) -> etree._Element:
    """Nested elements: ``_path(ntry, "Sts", "Cd")``; returns the innermost."""
    for tag in tags:
        parent = _sub(parent, tag)
    return parent


def render_camt053(report: Report) -> bytes:
    """The bank's statement: one Stmt per currency, one Ntry per line, schema-valid."""
    _check_camt_lengths(report)
    created = f"{(report.period + timedelta(days=1)).isoformat()}T06:00:00Z"
    root = etree.Element(f"{{{CAMT053_NAMESPACE}}}Document", nsmap={None: CAMT053_NAMESPACE})
    statement = _sub(root, "BkToCstmrStmt")
    header = _sub(statement, "GrpHdr")
    _sub(header, "MsgId", derive_id("camt", report.channel, report.period.isoformat(),
                                    str(report.seed)))
    _sub(header, "CreDtTm", created)
    by_currency: dict[str, list[Line]] = {}
    for line in report.lines:
        by_currency.setdefault(line.currency, []).append(line)
    if not by_currency:  # a period with nothing settled still gets its statement
        by_currency[EMPTY_STATEMENT_CURRENCY] = []
    for currency, lines in by_currency.items():
        _add_stmt(statement, report, currency, lines, created)
    tree = etree.ElementTree(root)
    camt053_schema().validate(tree)
    return etree.tostring(tree, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _check_camt_lengths(report: Report) -> None:
    for line in report.lines:
        for name in ("line_id", "payment_id", "channel_serial"):
            value = getattr(line, name)
            if len(value) > MAX35_CHARS:
                raise ValueError(f"{name} {value!r} of line {line.line_id} has {len(value)} "
                                 f"characters; camt.053 allows {MAX35_CHARS} (Max35Text)")


def _add_stmt(parent: etree._Element, report: Report, currency: str, lines: list[Line],
              created: str) -> None:
    stmt = _sub(parent, "Stmt")
    _sub(stmt, "Id", derive_id("stmt", report.channel, report.period.isoformat(), currency,
                               str(report.seed)))
    _sub(stmt, "CreDtTm", created)
    period = _sub(stmt, "FrToDt")
    _sub(period, "FrDtTm", f"{report.period.isoformat()}T00:00:00Z")
    _sub(period, "ToDtTm", f"{report.period.isoformat()}T23:59:59Z")
    account = _sub(stmt, "Acct")
    _sub(_path(account, "Id", "Othr"), "Id", f"paycore-clearing-{currency}")
    _sub(account, "Ccy", currency)
    _sub(_path(account, "Svcr", "FinInstnId"), "Nm", report.channel)
    total_minor = sum(line.amount_minor for line in lines)
    _add_balance(stmt, "OPBD", 0, currency, report.period)
    _add_balance(stmt, "CLBD", total_minor, currency, report.period)
    credits = _path(stmt, "TxsSummry", "TtlCdtNtries")
    _sub(credits, "NbOfNtries", str(len(lines)))
    _sub(credits, "Sum", decimal_text(total_minor, currency))
    for line in lines:
        _add_entry(stmt, line)


def _add_balance(stmt: etree._Element, code: str, amount_minor: int, currency: str,
                 on: date) -> None:
    balance = _sub(stmt, "Bal")
    _sub(_path(balance, "Tp", "CdOrPrtry"), "Cd", code)
    _sub(balance, "Amt", decimal_text(amount_minor, currency), Ccy=currency)
    _sub(balance, "CdtDbtInd", "CRDT")
    _sub(_path(balance, "Dt"), "Dt", on.isoformat())


def _add_entry(stmt: etree._Element, line: Line) -> None:
    """Gross credit; the fee as a charge record not included in the amount."""
    entry = _sub(stmt, "Ntry")
    _sub(entry, "NtryRef", line.line_id)
    _sub(entry, "Amt", decimal_text(line.amount_minor, line.currency), Ccy=line.currency)
    _sub(entry, "CdtDbtInd", "CRDT")
    _sub(_path(entry, "Sts"), "Cd", "BOOK")
    _sub(_path(entry, "BookgDt"), "Dt", line.settled_on)
    _sub(_path(entry, "ValDt"), "Dt", line.settled_on)
    _sub(entry, "AcctSvcrRef", line.channel_serial)
    domain = _path(entry, "BkTxCd", "Domn")
    _sub(domain, "Cd", "PMNT")
    family = _sub(domain, "Fmly")
    _sub(family, "Cd", "RCDT")
    _sub(family, "SubFmlyCd", "ESCT")
    charge = _path(entry, "Chrgs", "Rcrd")
    _sub(charge, "Amt", decimal_text(line.fee_minor, line.currency), Ccy=line.currency)
    _sub(charge, "CdtDbtInd", "DBIT")
    _sub(charge, "ChrgInclInd", "false")
    refs = _path(entry, "NtryDtls", "TxDtls", "Refs")
    _sub(refs, "AcctSvcrRef", line.channel_serial)
    _sub(refs, "EndToEndId", line.payment_id or NOT_PROVIDED)


def write_camt053(report: Report, path: Path | str) -> Path:
    path = Path(path)
    path.write_bytes(render_camt053(report))
    return path


def read_camt053(path: Path | str) -> list[Line]:
    """Lines of a camt.053.001.08 statement, in document order. The file must be valid
    against the official XSD; raises ``SettlementFileError`` naming the element and line."""
    path = Path(path)
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        tree = etree.parse(str(path), parser)
    except etree.XMLSyntaxError as error:
        raise SettlementFileError(path, f"line {error.lineno}", f"not XML: {error.msg}") from error
    root = tree.getroot()
    if root.tag != f"{{{CAMT053_NAMESPACE}}}Document":
        raise SettlementFileError(path, f"line {root.sourceline}, {root.tag}",
                                  f"not a camt.053.001.08 Document ({CAMT053_NAMESPACE})")
    try:
        document = camt053_schema().to_dict(tree, namespaces={"": CAMT053_NAMESPACE})
    except xmlschema.XMLSchemaValidationError as error:
        raise SettlementFileError(path, f"line {error.sourceline}, {error.path}",
                                  error.reason or error.message) from error
    located: list[tuple[str, Line]] = []
    for i, stmt in enumerate(document["BkToCstmrStmt"]["Stmt"], start=1):
        located.extend(_lines_of_stmt(path, tree, i, stmt))
    _check_unique_ids(path, located)
    return [line for _, line in located]


_STMT_PATH = "/Document/BkToCstmrStmt/Stmt"


def _lines_of_stmt(path: Path, tree, stmt_index: int, stmt: dict) -> list[tuple[str, Line]]:
    where = f"{_STMT_PATH}[{stmt_index}]"
    channel = stmt["Acct"].get("Svcr", {}).get("FinInstnId", {}).get("Nm")
    if not channel:
        raise SettlementFileError(path, where, "Acct/Svcr/FinInstnId/Nm (channel) missing")
    located = []
    for j, entry in enumerate(stmt.get("Ntry", []), start=1):
        ntry = tree.find(f"c:BkToCstmrStmt/c:Stmt[{stmt_index}]/c:Ntry[{j}]",
                         {"c": CAMT053_NAMESPACE})
        entry_where = f"line {ntry.sourceline}, {where}/Ntry[{j}]"
        located.append((entry_where, _line_of_entry(path, entry_where, channel, entry)))
    _check_summary(path, where, stmt, [line for _, line in located])
    return located


def _line_of_entry(path: Path, where: str, channel: str, entry: dict) -> Line:
    def fail(reason: str) -> SettlementFileError:
        return SettlementFileError(path, where, reason)

    if entry["CdtDbtInd"] != "CRDT" or entry.get("RvslInd"):
        raise fail("a settlement entry must be a credit (CdtDbtInd CRDT), not reversed")
    currency = entry["Amt"]["@Ccy"]
    if not is_known_currency(currency):
        raise fail(f"Amt: unknown currency {currency!r}")
    details = entry.get("NtryDtls", [])
    transactions = details[0].get("TxDtls", []) if len(details) == 1 else []
    if len(transactions) != 1:
        raise fail("NtryDtls/TxDtls: expected exactly one transaction per entry")
    refs = transactions[0].get("Refs", {})
    fields = {"NtryRef": entry.get("NtryRef"), "ValDt/Dt": entry.get("ValDt", {}).get("Dt"),
              "TxDtls/Refs/EndToEndId": refs.get("EndToEndId"),
              "TxDtls/Refs/AcctSvcrRef": refs.get("AcctSvcrRef")}
    for name, value in fields.items():
        if not value:
            raise fail(f"{name} missing")
    fee = Decimal(0)
    for record in entry.get("Chrgs", {}).get("Rcrd", []):
        if record["Amt"]["@Ccy"] != currency or record.get("CdtDbtInd", "DBIT") != "DBIT":
            raise fail("Chrgs/Rcrd: a fee must be a debit in the entry's currency")
        fee += record["Amt"]["$"]
    try:
        amount_minor = minor_from_decimal(entry["Amt"]["$"], currency)
        fee_total_minor = minor_from_decimal(fee, currency)
    except (ValueError, InvalidOperation) as error:
        raise fail(f"Amt: {error}") from error
    return Line(line_id=fields["NtryRef"], channel=channel,
                payment_id="" if fields["TxDtls/Refs/EndToEndId"] == NOT_PROVIDED
                else fields["TxDtls/Refs/EndToEndId"],
                channel_serial=fields["TxDtls/Refs/AcctSvcrRef"], amount_minor=amount_minor,
                currency=currency, fee_minor=fee_total_minor, settled_on=fields["ValDt/Dt"])


def _check_summary(path: Path, where: str, stmt: dict, lines: list[Line]) -> None:
    """TxsSummry/TtlCdtNtries, when present, must count and sum the entries (a cut file)."""
    credits = stmt.get("TxsSummry", {}).get("TtlCdtNtries")
    if credits is None:
        return
    currencies = {line.currency for line in lines}
    if "NbOfNtries" in credits and int(credits["NbOfNtries"]) != len(lines):
        raise SettlementFileError(path, f"{where}/TxsSummry/TtlCdtNtries/NbOfNtries",
                                  f"says {credits['NbOfNtries']} entries, found {len(lines)}")
    if "Sum" in credits and len(currencies) == 1:
        currency = currencies.pop()
        total = sum(line.amount_minor for line in lines)
        if credits["Sum"] != Decimal(decimal_text(total, currency)):
            raise SettlementFileError(path, f"{where}/TxsSummry/TtlCdtNtries/Sum",
                                      f"says {credits['Sum']}, entries add up to "
                                      f"{decimal_text(total, currency)}")


# ---------------------------------------------------------------- any report


def write_report(report: Report, directory: Path | str) -> Path:
    """The file the channel drops: ``<channel>-<period>.csv`` or ``.xml`` for the bank."""
    stem = Path(directory) / f"{report.channel}-{report.period.isoformat()}"
    if report.kind == "bank":
        return write_camt053(report, stem.with_suffix(".xml"))
    return write_csv(report, stem.with_suffix(".csv"))


def read_lines(path: Path | str) -> list[Line]:
    """By suffix: ``.xml`` is a camt.053 statement, anything else a CSV bill."""
    return read_camt053(path) if Path(path).suffix == ".xml" else read_csv(path)


# ---------------------------------------------------------------- onto pay.channel.settlements


def _with(line: Line, **changes) -> Line:
    return line.model_copy(update=changes)


def to_events(lines: list[Line]) -> list[SettlementReported]:
    """One event per line (a line is the event)."""
    return list(lines)


def to_records(lines: list[Line], source: str, at_ms: int, period: date | None = None
               ) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs for ``pay.channel.settlements``: keyed by payment id (by the
    channel's serial when the line does not name our payment), each
    envelope's id derived from (channel, line id), so a file sent twice is deduplicated.
    ``period``: the report's day, stamped on each line (reconciliation checks the line's
    date against it)."""
    if period is not None:
        lines = [_with(line, period=period.isoformat()) for line in lines]
    return [((event.payment_id or event.channel_serial).encode(),
             encode(child(source, event, index, at_ms)))
            for index, event in enumerate(to_events(lines))]


def close_records(channel: str, period: date, lines: int, source: str, at_ms: int,
                  partitions: int) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) for every partition of ``pay.channel.settlements``: the
    channel's report for ``period`` is complete. Reconciliation runs per partition, so each
    one hears it; a payment due by then and in no report is missing at the channel."""
    closed = SettlementClosed(channel=channel, period=period.isoformat(), lines=lines)
    value = encode(child(source, closed, 0, at_ms))
    return [(p, channel.encode(), value) for p in range(partitions)]
