"""``paycore recon ingest``: which channel and day a file reports, and refusals."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from paycore import cli
from paycore.ingest import IngestError, describe
from simulators import settlement as stl

DAY = date(2026, 11, 22)


def _line(channel: str = "card_acquirer") -> stl.Line:
    return stl.Line(line_id="l-1", channel=channel, payment_id="pay_1", channel_serial="sn-1",
                    amount_minor=1_000, currency="USD", settled_on=DAY.isoformat(),
                    fee_minor=20)


def test_channel_and_day_come_from_the_file_name():
    assert describe(Path("/x/card_acquirer-2026-11-22.csv"), [_line()], None, None) == (
        "card_acquirer", DAY)


def test_given_channel_and_day_win_over_the_name():
    got = describe(Path("bill.csv"), [_line("wallet")], "wallet", date(2026, 1, 2))

    assert got == ("wallet", date(2026, 1, 2))


def test_a_file_that_says_neither_is_refused():
    with pytest.raises(IngestError, match="bill.csv: name it <channel>-<YYYY-MM-DD>.csv"):
        describe(Path("bill.csv"), [_line()], None, None)


def test_lines_of_another_channel_are_refused():
    with pytest.raises(IngestError, match="lines of wallet in card_acquirer's report"):
        describe(Path("card_acquirer-2026-11-22.csv"), [_line("wallet")], None, None)


def test_a_bad_file_is_refused_with_its_line_and_nothing_is_sent(tmp_path, capsys):
    path = tmp_path / "card_acquirer-2026-11-22.csv"
    report = stl.Report("card_acquirer", "card", DAY, 1, [_line()])
    stl.write_csv(report, path)
    path.write_text(path.read_text().replace(",1000,", ",1O00,"))

    code = cli.main(["recon", "ingest", str(path), "--bootstrap", "127.0.0.1:1"])

    assert code == 2
    assert f"refused: {path}: line 2: amount_minor '1O00' is not an integer" in \
        capsys.readouterr().out
