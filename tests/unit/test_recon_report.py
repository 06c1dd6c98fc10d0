"""The reconciliation report: partitions' latest tallies summed, exceptions deduplicated."""

from __future__ import annotations

import csv
import itertools
import json
from datetime import date
from typing import NamedTuple

import pytest
from kafka import TopicPartition

from api.read_model import ReconView
from domain.recon import ExceptionKind, ReconException, ReconStatus, Tally
from paycore import recon_report as rr
from paycore.cli import main
from streams import topics as t
from streams.envelope import child, encode

TODAY = date(2024, 5, 10)


def status(partition: int, at_ms: int, **tally) -> ReconStatus:
    return ReconStatus(partition=partition, at_ms=at_ms, tally=Tally(**tally))


def exception(n: int, kind: ExceptionKind = ExceptionKind.amount_mismatch, **fields
              ) -> ReconException:
    values = {"exception_id": f"exc-{n}", "payment_id": f"pay-{n}", "channel": "card",
              "kind": kind, "reason": f"reason {n}", "detected_at_ms": 1_000 + n}
    return ReconException(**{**values, **fields})


class TestBuild:
    def test_latest_status_per_partition_wins_when_older_one_read_last(self):
        statuses = [status(0, 2_000, matched={"card": 5}), status(1, 1_500, matched={"card": 2}),
                    status(0, 1_000, matched={"card": 1})]

        report = rr.build(statuses, [], TODAY)

        assert report["matched"]["card"]["count"] == 7
        assert report["partitions_reporting"] == [0, 1]
        assert report["as_of_ms"] == 2_000

    def test_tallies_summed_across_partitions(self):
        statuses = [
            status(0, 1, matched={"card": 2, "wallet": 1},
                   matched_minor={"card|EUR": 3_000, "wallet|USD": 500}),
            status(1, 1, matched={"card": 1}, matched_minor={"card|EUR": 1_000, "card|JPY": 90},
                   agreed={"card": 4, "bank": 2}),
        ]

        report = rr.build(statuses, [], TODAY)

        assert report["matched"] == {
            "bank": {"count": 0, "gross_minor": {}, "nothing_to_settle": 2},
            "card": {"count": 3, "gross_minor": {"EUR": 4_000, "JPY": 90},
                     "nothing_to_settle": 4},
            "wallet": {"count": 1, "gross_minor": {"USD": 500}, "nothing_to_settle": 0},
        }

    def test_open_items_bucketed_by_age_against_today(self):
        opened = {"card|awaiting_line|2024-05-10": 1, "card|awaiting_line|2024-05-09": 2,
                  "card|awaiting_line|2024-05-08": 3, "card|awaiting_line|2024-05-07": 4,
                  "card|awaiting_line|2024-04-01": 5, "card|exception|2024-05-11": 6}

        report = rr.build([status(0, 1, open=opened)], [], TODAY)

        assert report["open_by_age"] == {"card": {
            "awaiting_line": {"0d": 1, "1d": 2, "2d": 3, "3d+": 9},
            "exception": {"0d": 6, "1d": 0, "2d": 0, "3d+": 0},  # a day ahead of our clock
        }}

    def test_every_kind_listed_when_few_raised(self):
        tally = {"exceptions": {"fee_mismatch": 3, "status_mismatch": 2},
                 "auto_resolved": {"status_mismatch": 1}}

        report = rr.build([status(0, 1, **tally)], [], TODAY)

        by_kind = report["exceptions_by_kind"]
        assert list(by_kind) == [k.value for k in ExceptionKind]
        assert by_kind["fee_mismatch"] == {"raised": 3, "auto_resolved": 0}
        assert by_kind["status_mismatch"] == {"raised": 2, "auto_resolved": 1}
        assert by_kind["missing_at_channel"] == {"raised": 0, "auto_resolved": 0}

    def test_kind_unknown_to_this_version_kept_last(self):
        report = rr.build([status(0, 1, exceptions={"newer_kind": 1})], [], TODAY)

        assert list(report["exceptions_by_kind"])[-1] == "newer_kind"

    def test_residual_rows_sorted_and_summed(self):
        statuses = [status(0, 1, residual={"wallet|USD|2024-05-09": 10, "card|EUR|2024-05-09": 7}),
                    status(1, 1, residual={"card|EUR|2024-05-09": 3, "card|EUR|2024-05-08": -2})]

        report = rr.build(statuses, [], TODAY)

        assert report["clearing_residual"] == [
            {"channel": "card", "currency": "EUR", "day": "2024-05-08", "owed_minor": -2},
            {"channel": "card", "currency": "EUR", "day": "2024-05-09", "owed_minor": 10},
            {"channel": "wallet", "currency": "USD", "day": "2024-05-09", "owed_minor": 10},
        ]

    def test_closed_periods_latest_per_channel(self):
        statuses = [status(0, 1, closed_periods={"card": "2024-05-08"}),
                    status(1, 1, closed_periods={"card": "2024-05-09", "wallet": "2024-05-07"})]

        report = rr.build(statuses, [], TODAY)

        assert report["closed_periods"] == {"card": "2024-05-09", "wallet": "2024-05-07"}

    def test_exceptions_deduplicated_by_id_when_redelivered(self):
        copies = [exception(2), exception(1), exception(2), exception(1)]

        report = rr.build([], copies, TODAY)

        assert [e["exception_id"] for e in report["exceptions"]] == ["exc-1", "exc-2"]

    def test_exception_row_has_report_fields_only(self):
        found = exception(1, ExceptionKind.fee_mismatch, expected_minor=30, reported_minor=45,
                          line_id="line-1", resolution="")

        row = rr.build([], [found], TODAY)["exceptions"][0]

        assert tuple(row) == rr.EXCEPTION_COLUMNS
        assert row["kind"] == "fee_mismatch"
        assert (row["expected_minor"], row["reported_minor"]) == (30, 45)

    def test_empty_inputs_give_empty_report(self):
        report = rr.build([], [], TODAY)

        assert report["partitions_reporting"] == []
        assert report["matched"] == {} and report["clearing_residual"] == []
        assert all(n == {"raised": 0, "auto_resolved": 0}
                   for n in report["exceptions_by_kind"].values())
        json.dumps(report)  # JSON-able


def sample_report() -> dict:
    statuses = [status(0, 1_715_300_000_000, matched={"card": 2},
                       matched_minor={"card|EUR": 123_456, "card|JPY": 5_000},
                       open={"card|awaiting_line|2024-05-08": 1},
                       exceptions={"amount_mismatch": 1},
                       residual={"card|EUR|2024-05-09": 1_050, "card|KWD|2024-05-09": 1_234,
                                 "card|?|2024-05-09": 77},
                       closed_periods={"card": "2024-05-09"})]
    found = exception(1, expected_minor=1_000, reported_minor=None, reason='says "a, b"')
    return rr.build(statuses, [found], TODAY)


class TestRender:
    def test_amounts_shown_with_the_currencys_decimals(self):
        text = rr.render(sample_report())

        assert "1,234.56" in text  # EUR, matched
        assert "5,000" in text and "5,000.00" not in text  # JPY: no decimals
        assert "10.50" in text  # EUR residual
        assert "1.234" in text  # KWD: three decimals
        assert " 77" in text  # unknown currency: minor units

    def test_every_section_present(self):
        text = rr.render(sample_report())

        for title in ("Matched, by channel", "Open items, by age", "Exceptions, by kind",
                      "Clearing residual", "Closed periods"):
            assert title in text
        assert "missing_at_channel" in text  # a kind with no exceptions
        assert "1 exceptions on pay.recon.exceptions, 1 waiting for ops" in text

    def test_columns_aligned(self):
        text = rr.render(sample_report())

        kinds = text.split("Exceptions, by kind\n")[1].split("\n\n")[0].splitlines()
        assert len({len(line) for line in kinds}) == 1  # right-aligned counts end together

    def test_empty_sections_say_none(self):
        text = rr.render(rr.build([], [], TODAY))

        assert "(none)" in text


class TestWrite:
    def test_writes_json_and_csv(self, tmp_path):
        report = sample_report()

        paths = rr.write(report, tmp_path / "out")

        assert [p.name for p in paths] == ["recon-report.json", "recon-exceptions.csv"]
        assert json.loads(paths[0].read_text()) == report

    def test_csv_has_the_columns_and_one_row_per_exception(self, tmp_path):
        report = rr.build([], [exception(1, expected_minor=1_000, reason='says "a, b"'),
                               exception(1), exception(2)], TODAY)

        csv_path = rr.write(report, tmp_path)[1]

        with open(csv_path, newline="") as f:
            rows = list(csv.reader(f))
        assert tuple(rows[0]) == rr.EXCEPTION_COLUMNS
        assert [r[0] for r in rows[1:]] == ["exc-1", "exc-2"]
        first = dict(zip(rows[0], rows[1], strict=True))
        assert first["reason"] == 'says "a, b"'
        assert (first["expected_minor"], first["reported_minor"]) == ("1000", "")


class Record(NamedTuple):
    offset: int
    value: bytes | None


class FakeConsumer:
    """kafka-python's calls ``drain`` makes: a listed end that may be short (as the embedded
    broker's), fetches of two records, a high watermark per fetched partition."""

    def __init__(self, logs: dict[TopicPartition, list[bytes]], listed: dict) -> None:
        self.logs, self.listed = logs, listed
        self.positions = dict.fromkeys(logs, 0)
        self.highwaters: dict[TopicPartition, int] = {}

    def end_offsets(self, tps) -> dict:
        return {tp: self.listed[tp] for tp in tps}

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        batch = {}
        for tp, log in self.logs.items():
            self.highwaters[tp] = len(log)
            start = self.positions[tp]
            if log[start:start + 2]:
                batch[tp] = [Record(start + i, v) for i, v in enumerate(log[start:start + 2])]
                self.positions[tp] += len(batch[tp])
        return batch

    def highwater(self, tp) -> int | None:
        return self.highwaters.get(tp)

    def position(self, tp) -> int:
        return self.positions[tp]


def envelope(body) -> bytes:
    return encode(child("cause", body, 0, 1))


class TestDrain:
    def test_reads_past_listed_end_when_high_watermark_is_higher(self):
        st, ex = TopicPartition(t.RECON_STATUS, 0), TopicPartition(t.RECON_EXCEPTIONS, 0)
        logs = {st: [envelope(status(0, n)) for n in range(5)],
                ex: [envelope(exception(1)), b"not json", envelope(exception(2))]}
        consumer = FakeConsumer(logs, listed={st: 3, ex: 1})

        statuses, exceptions = rr.drain(consumer, [st, ex], timeout_s=10)

        assert [s.at_ms for s in statuses] == [0, 1, 2, 3, 4]
        assert [e.exception_id for e in exceptions] == ["exc-1", "exc-2"]

    def test_refused_when_end_not_reached_in_time(self):
        st = TopicPartition(t.RECON_STATUS, 0)
        consumer = FakeConsumer({st: [envelope(status(0, 1))]}, listed={st: 1})
        consumer.highwater = lambda tp: None  # no fetch ever answers
        ticks = itertools.count(0.0, 1.0)

        with pytest.raises(rr.ReportError, match="pay.recon.status:0"):
            rr.drain(consumer, [st], timeout_s=5, clock=lambda: next(ticks))


class TestReconView:
    def test_keeps_latest_status_per_partition(self):
        view = ReconView()

        for body in (status(0, 2, matched={"card": 2}), status(0, 1, matched={"card": 1})):
            view.apply(body)

        assert view.report(TODAY)["matched"]["card"]["count"] == 2

    def test_keeps_most_recent_exceptions_once_each(self):
        view = ReconView(exceptions_max=2)

        for n in (1, 2, 2, 3, 3):
            view.apply(exception(n))

        assert list(view.exceptions) == ["exc-2", "exc-3"]


class TestCommandLine:
    def test_no_broker_exits_1(self, monkeypatch, capsys, tmp_path):
        monkeypatch.setenv("PAYCORE_KAFKA_BOOTSTRAP", "")

        code = main(["recon", "report", "--out", str(tmp_path)])

        assert code == 1
        assert "no broker" in capsys.readouterr().err

    def test_partitions_must_be_positive(self, capsys):
        with pytest.raises(SystemExit):
            main(["recon", "report", "--partitions", "0"])

        assert "not a positive number" in capsys.readouterr().err


class TestAmountText:
    def test_negative_amount_keeps_decimals(self):
        assert rr.amount_text(-1_050, "EUR") == "-10.50"

    def test_unknown_currency_stays_in_minor_units(self):
        assert rr.amount_text(12_345, "?") == "12,345"
