"""Settlement files: CSV bills and camt.053 statements a channel sends, with seeded
discrepancies.

The discrepancy checks diff the file against the input on their own (``file_diff``): a line
id the drift-free report of the same input has is one of our lines; any other line is an
extra (a payment we never had) or a duplicate (a payment we had). ``Report.injected`` must
list exactly those differences.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree

from domain.ids import derive_id
from simulators.settlement import (
    CAMT053_NAMESPACE,
    NO_DRIFT,
    Discrepancy,
    Drift,
    Line,
    Settled,
    SettlementFileError,
    build_report,
    camt053_schema,
    read_camt053,
    read_csv,
    read_lines,
    render_camt053,
    render_csv,
    to_events,
    to_records,
    write_camt053,
    write_csv,
    write_report,
)
from streams.envelope import decode

# ---------------------------------------------------------------- terms of the tests

PERIOD = date(2026, 11, 20)
SEED = 20_261_120
D = Discrepancy
EVERY_KIND = Drift(missing_lines=2, extra_lines=2, amount_drifts=3, fee_drifts=3,
                   wrong_dates=2, duplicate_lines=2)
NS = {"c": CAMT053_NAMESPACE}


def settled(count: int = 40, currency: str = "EUR", prefix: str = "") -> list[Settled]:
    """Our side of the period: the payments the channel really settled."""
    return [Settled(payment_id=derive_id("pay", "m-1", f"{prefix}order-{i}"),
                    channel_serial=derive_id("bnk", prefix, str(i), digest_bytes=10),
                    amount_minor=1_000 + 137 * i, currency=currency, fee_minor=15 + i,
                    booked_on=PERIOD - timedelta(days=i % 2))
            for i in range(count)]


def mixed() -> list[Settled]:
    return settled(6, "EUR", "e") + settled(4, "JPY", "j") + settled(3, "KWD", "k")


def as_line(channel: str, line_id: str, s: Settled) -> Line:
    return Line(line_id=line_id, channel=channel, payment_id=s.payment_id,
                channel_serial=s.channel_serial, amount_minor=s.amount_minor,
                currency=s.currency, fee_minor=s.fee_minor, settled_on=s.booked_on.isoformat())


def file_diff(channel: str, ours: list[Settled], lines: list[Line]) -> set[tuple]:
    """(kind, line id, payment id, expected, reported) for every way the file differs."""
    by_id = {line.payment_id: line.line_id
             for line in build_report(channel, "card", PERIOD, ours, 0).lines}
    expected = {by_id[s.payment_id]: as_line(channel, by_id[s.payment_id], s) for s in ours}
    ours_ids = {s.payment_id for s in ours}
    found: set[tuple] = set()
    for line in lines:
        want = expected.get(line.line_id)
        if want is None:
            kind = D.duplicate_line if line.payment_id in ours_ids else D.extra_line
            found.add((kind, line.line_id, line.payment_id, None, line.amount_minor))
            continue
        found |= _field_diff(want, line)
    present = {line.line_id for line in lines}
    found |= {(D.missing_line, line_id, want.payment_id, want.amount_minor, None)
              for line_id, want in expected.items() if line_id not in present}
    return found


def _field_diff(want: Line, got: Line) -> set[tuple]:
    assert (got.channel, got.payment_id, got.channel_serial, got.currency) == (
        want.channel, want.payment_id, want.channel_serial, want.currency)
    pairs = {D.amount_drift: (want.amount_minor, got.amount_minor),
             D.fee_drift: (want.fee_minor, got.fee_minor),
             D.wrong_date: (want.settled_on, got.settled_on)}
    return {(kind, got.line_id, got.payment_id, a, b)
            for kind, (a, b) in pairs.items() if a != b}


def injected_set(report) -> set[tuple]:
    return {(i.kind, i.line_id, i.payment_id, i.expected, i.reported) for i in report.injected}


# ---------------------------------------------------------------- building reports


class TestBuildReport:
    def test_lines_equal_input_when_no_drift(self):
        ours = settled(12)

        report = build_report("card_acquirer", "card", PERIOD, ours, SEED, NO_DRIFT)

        assert [(x.payment_id, x.channel_serial, x.amount_minor, x.currency, x.fee_minor,
                 x.settled_on) for x in report.lines] == [
            (s.payment_id, s.channel_serial, s.amount_minor, s.currency, s.fee_minor,
             s.booked_on.isoformat()) for s in ours]
        assert {x.channel for x in report.lines} == {"card_acquirer"}
        assert report.injected == []

    def test_line_ids_unique_and_stable_when_same_seed(self):
        first = build_report("wallet", "wallet", PERIOD, settled(), SEED, EVERY_KIND)

        again = build_report("wallet", "wallet", PERIOD, settled(), SEED, EVERY_KIND)

        ids = [line.line_id for line in first.lines]
        assert len(set(ids)) == len(ids)
        assert ids == [line.line_id for line in again.lines]

    @pytest.mark.parametrize("kind,render", [("card", render_csv), ("bank", render_camt053)])
    def test_same_seed_gives_identical_bytes(self, kind, render):
        first = build_report("chan", kind, PERIOD, mixed(), SEED, EVERY_KIND)

        again = build_report("chan", kind, PERIOD, mixed(), SEED, EVERY_KIND)

        assert render(first) == render(again)
        assert first.injected == again.injected

    def test_different_seed_gives_different_injections(self):
        first = build_report("chan", "card", PERIOD, settled(), SEED, EVERY_KIND)

        other = build_report("chan", "card", PERIOD, settled(), SEED + 1, EVERY_KIND)

        assert injected_set(first) != injected_set(other)
        assert render_csv(first) != render_csv(other)

    def test_every_kind_injected_as_many_times_as_asked(self):
        report = build_report("chan", "card", PERIOD, settled(), SEED, EVERY_KIND)

        counts = {kind: sum(i.kind is kind for i in report.injected) for kind in D}

        assert counts == {D.missing_line: 2, D.extra_line: 2, D.amount_drift: 3,
                          D.fee_drift: 3, D.wrong_date: 2, D.duplicate_line: 2}

    @pytest.mark.parametrize("seed", [1, 2, 3, SEED])
    def test_injected_lists_exactly_the_differences_in_the_file(self, tmp_path, seed):
        ours = settled()
        report = build_report("chan", "card", PERIOD, ours, seed, EVERY_KIND)

        lines = read_csv(write_csv(report, tmp_path / "bill.csv"))

        assert file_diff("chan", ours, lines) == injected_set(report)
        assert len(report.injected) == len(injected_set(report))

    def test_injected_lists_exactly_the_differences_in_a_bank_statement(self, tmp_path):
        ours = mixed()
        report = build_report("bank", "bank", PERIOD, ours, SEED, Drift(1, 1, 2, 2, 2, 1))

        lines = read_camt053(write_camt053(report, tmp_path / "stmt.xml"))

        assert file_diff("bank", ours, lines) == injected_set(report)

    @pytest.mark.parametrize("kind,write,read", [("card", write_csv, read_csv),
                                                 ("bank", write_camt053, read_camt053)])
    def test_serial_only_lines_round_trip_without_our_payment_id(self, tmp_path, kind, write,
                                                                 read):
        ours = settled() if kind == "card" else mixed()
        report = build_report("chan", kind, PERIOD, ours, SEED,
                              Drift(missing_lines=1, amount_drifts=1, serial_only_lines=3))

        lines = read(write(report, tmp_path / "report"))

        bare = [line for line in lines if not line.payment_id]
        assert lines == report.lines and len(bare) == 3
        drifted = {i.line_id for i in report.injected}
        assert not drifted & {line.line_id for line in bare}
        assert {line.channel_serial for line in bare} <= {s.channel_serial for s in ours}
        keys = dict(to_records(lines, "test", 0))
        assert all(line.channel_serial.encode() in keys for line in bare)

    @pytest.mark.parametrize("seed", range(8))
    def test_a_duplicate_comes_after_the_line_it_repeats(self, seed):
        report = build_report("chan", "card", PERIOD, settled(), seed,
                              Drift(duplicate_lines=3))

        order = [line.line_id for line in report.lines]
        for inj in report.injected:
            copy = next(x for x in report.lines if x.line_id == inj.line_id)
            first = next(x for x in report.lines if x.payment_id == copy.payment_id
                         and x.line_id != copy.line_id)
            assert order.index(first.line_id) < order.index(copy.line_id)

    def test_drift_stays_small_and_dates_leave_the_period(self):
        report = build_report("chan", "card", PERIOD, settled(), SEED,
                              Drift(amount_drifts=10, fee_drifts=10, wrong_dates=10))

        by_kind = {kind: [i for i in report.injected if i.kind is kind] for kind in D}

        assert all(0 < abs(i.reported - i.expected) <= 99 for i in by_kind[D.amount_drift])
        assert all(0 < abs(i.reported - i.expected) <= 25 and i.reported >= 0
                   for i in by_kind[D.fee_drift])
        assert all(i.reported != PERIOD.isoformat() for i in by_kind[D.wrong_date])

    def test_each_line_gets_one_discrepancy_when_drift_asks_for_more_than_there_are(self):
        ours = settled(5)
        drift = Drift(missing_lines=4, amount_drifts=4, fee_drifts=4, extra_lines=1)

        report = build_report("chan", "card", PERIOD, ours, SEED, drift)

        touched = [i.payment_id for i in report.injected if i.kind is not D.extra_line]
        assert sorted(touched) == sorted(s.payment_id for s in ours)
        assert file_diff("chan", ours, report.lines) == injected_set(report)

    def test_extra_line_takes_drift_currency_when_period_is_empty(self):
        report = build_report("chan", "bank", PERIOD, [], SEED,
                              Drift(extra_lines=1, extra_currency="GBP"))

        assert [(x.currency, x.settled_on) for x in report.lines] == [("GBP", "2026-11-20")]

    def test_bank_report_groups_lines_by_currency(self):
        ours = settled(3, "EUR", "a") + settled(2, "JPY", "b") + settled(2, "EUR", "c")

        report = build_report("bank", "bank", PERIOD, ours, SEED, NO_DRIFT)

        assert [x.currency for x in report.lines] == ["EUR"] * 5 + ["JPY"] * 2


# ---------------------------------------------------------------- CSV bills


def bill(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "bill.csv"
    header = ("line_id,channel,payment_id,channel_serial,currency,amount_minor,amount,"
              "fee_minor,fee,settled_on")
    path.write_text("\r\n".join([header, *rows]) + "\r\n", encoding="utf-8")
    return path


GOOD_ROW = "l-1,card,pay_1,ser_1,EUR,1234,12.34,15,0.15,2026-11-20"


class TestCsv:
    def test_round_trip_exact_with_every_discrepancy(self, tmp_path):
        report = build_report("card", "card", PERIOD, mixed(), SEED, EVERY_KIND)

        lines = read_csv(write_report(report, tmp_path))

        assert lines == report.lines

    def test_amounts_written_as_minor_units_and_decimals(self, tmp_path):
        ours = settled(1, "EUR", "e") + settled(1, "JPY", "j") + settled(1, "KWD", "k")
        report = build_report("card", "card", PERIOD, ours, SEED)

        rows = render_csv(report).decode().splitlines()[1:]

        assert [row.split(",")[4:9] for row in rows] == [
            ["EUR", "1000", "10.00", "15", "0.15"],
            ["JPY", "1000", "1000", "15", "15"],
            ["KWD", "1000", "1.000", "15", "0.015"],
        ]

    def test_reads_a_well_formed_bill(self, tmp_path):
        lines = read_csv(bill(tmp_path, [GOOD_ROW]))

        assert lines == [Line(line_id="l-1", channel="card", payment_id="pay_1",
                                channel_serial="ser_1", amount_minor=1234, currency="EUR",
                                fee_minor=15, settled_on="2026-11-20")]

    @pytest.mark.parametrize("row,reason", [
        ("l-2,card,pay_2,ser_2,EUR,12.34,12.34,15,0.15,2026-11-20", "not an integer"),
        ("l-2,card,pay_2,ser_2,EUR,1234,12.35,15,0.15,2026-11-20", "does not match"),
        ("l-2,card,pay_2,ser_2,EUR,1234,12.34,-1,0.15,2026-11-20", "not an integer"),
        ("l-2,card,pay_2,ser_2,XXX,1234,12.34,15,0.15,2026-11-20", "unknown currency"),
        ("l-2,card,pay_2,ser_2,EUR,1234,12.34,15,0.15,2026-02-30", "not a YYYY-MM-DD"),
        ("l-2,card,pay_2,ser_2,EUR,1234,12.34,15,0.15,20261120", "not a YYYY-MM-DD"),
        ("l-2,card,pay_2,ser_2,EUR,1234,12.34,15,0.15", "9 fields"),
        (",card,pay_2,ser_2,EUR,1234,12.34,15,0.15,2026-11-20", "line_id is empty"),
        ("l-1,card,pay_2,ser_2,EUR,1234,12.34,15,0.15,2026-11-20", "repeats"),
        ('l-2,card,"pay_2,ser_2,EUR,1234,12.34,15,0.15,2026-11-20', "unexpected end"),
    ])
    def test_malformed_row_raises_with_its_line(self, tmp_path, row, reason):
        path = bill(tmp_path, [GOOD_ROW, row])

        with pytest.raises(SettlementFileError) as caught:
            read_csv(path)

        assert caught.value.where == "line 3"
        assert reason in caught.value.reason
        assert str(path) in str(caught.value)

    def test_wrong_header_raises_at_line_one(self, tmp_path):
        path = tmp_path / "bill.csv"
        path.write_text("id,amount\r\nx,1\r\n", encoding="utf-8")

        with pytest.raises(SettlementFileError) as caught:
            read_csv(path)

        assert caught.value.where == "line 1"


# ---------------------------------------------------------------- camt.053 statements


def statement(tmp_path: Path, ours: list[Settled] | None = None,
              drift: Drift = NO_DRIFT) -> tuple[Path, list[Line]]:
    report = build_report("online_bank", "bank", PERIOD, settled(3) if ours is None else ours,
                          SEED, drift)
    return write_report(report, tmp_path), report.lines


def edited(path: Path, old: str, new: str, count: int = 1) -> Path:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, count), encoding="utf-8")
    return path


class TestCamt053:
    def test_round_trip_exact_with_every_discrepancy(self, tmp_path):
        path, lines = statement(tmp_path, mixed(), EVERY_KIND)

        read = read_lines(path)

        assert path.suffix == ".xml"
        assert read == lines

    def test_valid_against_the_official_schema(self, tmp_path):
        path, _ = statement(tmp_path, mixed(), EVERY_KIND)

        errors = list(camt053_schema().iter_errors(str(path)))

        assert errors == []
        assert etree.parse(str(path)).getroot().tag == f"{{{CAMT053_NAMESPACE}}}Document"

    def test_entry_carries_references_dates_and_fee(self, tmp_path):
        ours = settled(1)
        path, lines = statement(tmp_path, ours)

        entry = etree.parse(str(path)).find(".//c:Ntry", NS)

        def text(xpath):
            return entry.findtext(xpath, namespaces=NS)

        assert text("c:NtryRef") == lines[0].line_id
        assert (text("c:Amt"), entry.find("c:Amt", NS).get("Ccy")) == ("10.00", "EUR")
        assert text("c:CdtDbtInd") == "CRDT"
        assert text("c:BookgDt/c:Dt") == text("c:ValDt/c:Dt") == "2026-11-20"
        assert text("c:NtryDtls/c:TxDtls/c:Refs/c:EndToEndId") == ours[0].payment_id
        assert text("c:NtryDtls/c:TxDtls/c:Refs/c:AcctSvcrRef") == ours[0].channel_serial
        assert text("c:Chrgs/c:Rcrd/c:Amt") == "0.15"

    def test_balances_and_summary_add_up_per_currency(self, tmp_path):
        path, _ = statement(tmp_path, mixed(), EVERY_KIND)

        stmts = etree.parse(str(path)).getroot().xpath("//c:Stmt", namespaces=NS)

        for stmt in stmts:
            def one(xpath, stmt=stmt):
                found = stmt.xpath(xpath, namespaces=NS)
                assert len(found) == 1, xpath
                return Decimal(found[0])

            entries = [Decimal(x) for x in stmt.xpath("c:Ntry/c:Amt/text()", namespaces=NS)]
            currency = stmt.findtext("c:Acct/c:Ccy", namespaces=NS)
            assert set(stmt.xpath("c:Ntry/c:Amt/@Ccy", namespaces=NS)) == {currency}
            closing = one("c:Bal[c:Tp/c:CdOrPrtry/c:Cd='CLBD']/c:Amt/text()")
            assert closing == one("c:Bal[c:Tp/c:CdOrPrtry/c:Cd='OPBD']/c:Amt/text()") + sum(
                entries)
            assert closing == one("c:TxsSummry/c:TtlCdtNtries/c:Sum/text()")
            assert one("c:TxsSummry/c:TtlCdtNtries/c:NbOfNtries/text()") == len(entries)
        assert sorted(s.findtext("c:Acct/c:Ccy", namespaces=NS) for s in stmts) == [
            "EUR", "JPY", "KWD"]

    def test_empty_period_writes_a_valid_empty_statement(self, tmp_path):
        path, _ = statement(tmp_path, [])

        assert read_camt053(path) == []

    def test_reference_longer_than_iso_allows_refused_when_writing(self, tmp_path):
        long_serial = [Settled("pay_1", "s" * 36, 100, "EUR", 1, PERIOD)]
        report = build_report("online_bank", "bank", PERIOD, long_serial, SEED)

        with pytest.raises(ValueError, match="Max35Text"):
            write_camt053(report, tmp_path / "stmt.xml")

    @pytest.mark.parametrize("edits,where,reason", [
        ([('<Amt Ccy="EUR">11.37</Amt>', '<Amt Ccy="EUR">11.3x</Amt>')],
         "/Stmt/Ntry[2]/Amt", "xs:decimal"),
        ([("<CdtDbtInd>CRDT</CdtDbtInd>\n        <Sts>", "<Sts>")], "/Stmt/Ntry[1]", ""),
        ([('<Amt Ccy="EUR">11.37</Amt>', '<Amt Ccy="EUR">11.375</Amt>')], "Ntry[2]",
         "decimals"),
        ([('<Amt Ccy="EUR">11.37</Amt>', '<Amt Ccy="XTS">11.37</Amt>')], "Ntry[2]",
         "unknown currency"),
        ([("<EndToEndId>", "<InstrId>"), ("</EndToEndId>", "</InstrId>")], "Ntry[1]",
         "EndToEndId missing"),
        ([("<NbOfNtries>3</NbOfNtries>", "<NbOfNtries>4</NbOfNtries>")], "NbOfNtries",
         "says 4 entries"),
        ([("<Sum>34.11</Sum>", "<Sum>34.12</Sum>")], "TtlCdtNtries/Sum", "add up to 34.11"),
    ])
    def test_malformed_statement_raises_with_its_element(self, tmp_path, edits, where, reason):
        path, _ = statement(tmp_path)
        for old, new in edits:
            edited(path, old, new)

        with pytest.raises(SettlementFileError) as caught:
            read_camt053(path)

        assert where in caught.value.where
        assert reason in caught.value.reason
        assert str(path) in str(caught.value)

    def test_schema_error_names_the_line(self, tmp_path):
        path, _ = statement(tmp_path)
        edited(path, '<Amt Ccy="EUR">11.37</Amt>', '<Amt Ccy="EUR">11.3x</Amt>')
        line_number = next(number for number, text in enumerate(
            path.read_text().splitlines(), start=1) if "11.3x" in text)

        with pytest.raises(SettlementFileError) as caught:
            read_camt053(path)

        assert caught.value.where.startswith(f"line {line_number}, ")

    def test_not_xml_raises_with_its_line(self, tmp_path):
        path, _ = statement(tmp_path)
        edited(path, "</GrpHdr>", "</GrpHdrX>")

        with pytest.raises(SettlementFileError, match=r"line \d+: not XML"):
            read_camt053(path)

    def test_other_message_raises_at_the_root(self, tmp_path):
        path, _ = statement(tmp_path)
        edited(path, "camt.053.001.08", "camt.052.001.08")

        with pytest.raises(SettlementFileError, match="not a camt.053.001.08 Document"):
            read_camt053(path)


# ---------------------------------------------------------------- onto pay.channel.settlements


class TestEvents:
    def test_event_per_line_with_every_field(self):
        report = build_report("wallet", "wallet", PERIOD, settled(3), SEED)

        events = to_events(report.lines)

        assert [(e.line_id, e.channel, e.payment_id, e.channel_serial, e.amount_minor,
                 e.currency, e.settled_on, e.fee_minor) for e in events] == [
            (x.line_id, x.channel, x.payment_id, x.channel_serial, x.amount_minor,
             x.currency, x.settled_on, x.fee_minor) for x in report.lines]

    def test_records_keyed_by_payment_with_the_same_id_when_sent_twice(self):
        lines = build_report("wallet", "wallet", PERIOD, settled(3), SEED).lines

        first = to_records(lines, "wallet-2026-11-20.csv", at_ms=1_000)
        again = to_records(lines, "wallet-2026-11-20.csv#resent", at_ms=2_000)

        assert [key.decode() for key, _ in first] == [x.payment_id for x in lines]
        assert [decode(v).message_id for _, v in first] == [
            decode(v).message_id for _, v in again]
        assert [decode(v).body.line_id for _, v in first] == [x.line_id for x in lines]
