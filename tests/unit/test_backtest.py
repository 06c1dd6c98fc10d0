"""Backtests: recorded commands replayed through the rules in force and a candidate."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from kafka import TopicPartition

from domain.commands import Capture, Method, Pay, Payer, Transfer
from domain.ids import payment_id_for
from domain.risk import AmountLimit, RiskDecision, Thresholds
from paycore import backtest as bt
from paycore.cli import main
from streams.envelope import Envelope, encode
from streams.rules_config import load_risk, load_routing

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config"
RISK = load_risk(SHIPPED)
ROUTING = load_routing(SHIPPED)
T0_MS = 1_700_000_000_000
MERCHANT = "m-1"

# ---------------------------------------------------------------- helpers


def pay(n: int, amount_minor: int = 1_000, currency: str = "USD", method: str = "card",
        customer: str = "cust-1", **payer) -> Pay:
    return Pay(merchant_id=MERCHANT, idempotency_key=f"key-{n}", merchant_order_no=f"order-{n}",
               amount_minor=amount_minor, currency=currency, method=Method(method),
               payer=Payer(customer_id=customer, **payer))


def pid(n: int) -> str:
    return payment_id_for(MERCHANT, f"order-{n}")


def bare(cmd, at_ms: int) -> str:
    return json.dumps({"at_ms": at_ms, "command": cmd.model_dump(mode="json")})


def envelope(cmd, at_ms: int) -> str:
    return encode(Envelope(f"msg-{cmd.merchant_order_no}", "trace-1", at_ms, cmd)).decode()


def replayed(lines: list[str]) -> list[bt.Replayed]:
    return list(bt.read_input(lines, bt.InputTally()))


def mismatch(n: int) -> Pay:
    """Scores 25 under the shipped rules (card-country): approved, but not by much."""
    return pay(n, country="US", card_country="DE")


def mixed_lines() -> list[str]:
    """Ten plain payments, five with a country mismatch, two over card-usd-large."""
    cmds = [pay(n) for n in range(10)] + [mismatch(n) for n in range(10, 15)]
    cmds += [pay(n, amount_minor=6_000_000, customer=f"big-{n}") for n in range(15, 17)]
    return [bare(cmd, T0_MS + 60_000 * i) for i, cmd in enumerate(cmds)]


def with_weights(acquirer: int, backup: int):
    rules = list(ROUTING.rules)
    index = next(i for i, r in enumerate(rules) if r.id == "card-eur-split")
    weights = {"card_acquirer": acquirer, "card_backup": backup}
    rules[index] = rules[index].model_copy(update={"weights": weights})
    return ROUTING.model_copy(update={"rules": tuple(rules), "version": "candidate"})


# ---------------------------------------------------------------- input


class TestReadInput:
    def test_envelope_and_bare_lines_read_alike_when_same_command(self):
        cmd = pay(1)

        from_envelope, from_bare = replayed([envelope(cmd, T0_MS), bare(cmd, T0_MS)])

        assert (from_envelope.at_ms, from_envelope.cmd) == (from_bare.at_ms, from_bare.cmd)
        assert (from_envelope.line_no, from_bare.line_no) == (1, 2)

    def test_bad_lines_counted_with_line_numbers_when_skipped(self):
        capture = Capture(merchant_id=MERCHANT, idempotency_key="k", merchant_order_no="o-1")
        lines = [
            bare(pay(1), T0_MS),                                   # 1 good
            "not json",                                            # 2
            "[1, 2]",                                              # 3 not an object
            json.dumps({"at_ms": "soon", "command": {}}),          # 4 at_ms
            bare(capture, T0_MS),                                  # 5 not screened
            envelope(capture, T0_MS),                              # 6 not screened
            json.dumps({"kind": "Nope", "body": {}}),              # 7 undecodable
            json.dumps({"at_ms": 1, "command": {"type": "pay"}}),  # 8 invalid command
            "",                                                    # 9 blank: ignored
            envelope(pay(2), T0_MS),                               # 10 good
        ]
        tally = bt.InputTally()

        good = list(bt.read_input(lines, tally))

        assert [item.line_no for item in good] == [1, 10]
        assert [bad.line_no for bad in tally.bad] == [2, 3, 4, 5, 6, 7, 8]
        assert tally.lines == 10
        assert "not a command risk screens" in tally.bad[3].reason
        assert "amount_minor" in tally.bad[6].reason

    def test_progress_reported_every_10000_lines_when_reading(self):
        heard: list[int] = []

        list(bt.read_input(["\n"] * 20_001, bt.InputTally(), heard.append))

        assert heard == [10_000, 20_000]


# ---------------------------------------------------------------- risk


class TestReplayRisk:
    def test_velocity_count_fires_from_51st_when_60_payments_in_a_minute(self):
        lines = [bare(pay(n), T0_MS + 500 * n) for n in range(60)]

        screenings = list(bt.replay_risk(replayed(lines), RISK))

        fired = [any(h.rule_id == "velocity-count-minute" for h in s.verdict.hits)
                 for s in screenings]
        assert fired == [False] * 50 + [True] * 10

    def test_velocity_counted_per_payer_when_payers_interleave(self):
        lines = [bare(pay(n, customer=f"cust-{n % 2}"), T0_MS + 500 * n) for n in range(60)]

        screenings = list(bt.replay_risk(replayed(lines), RISK))

        assert all(not s.verdict.hits for s in screenings)

    def test_same_verdicts_when_replayed_twice(self):
        commands = replayed([bare(pay(n), T0_MS + 500 * n) for n in range(60)] + mixed_lines())

        first = list(bt.replay_risk(commands, RISK))
        second = list(bt.replay_risk(commands, RISK))

        assert first == second


class TestBacktestRisk:
    def test_no_changes_when_candidate_equals_baseline(self):
        report = bt.backtest_risk(replayed(mixed_lines()), RISK, RISK)

        assert report["changed"] == 0
        assert report["changes"] == []
        assert report["decisions"]["before"] == report["decisions"]["after"]
        assert all(n["before"] == n["after"] for n in report["rule_hits"].values())

    def test_lower_review_threshold_changes_only_country_mismatch_payments(self):
        candidate = RISK.model_copy(update={"thresholds": Thresholds(review=25, decline=100)})

        report = bt.backtest_risk(replayed(mixed_lines()), RISK, candidate)

        assert [c["payment_id"] for c in report["changes"]] == [pid(n) for n in range(10, 15)]
        assert {(c["before"], c["after"]) for c in report["changes"]} == {("approve", "review")}
        assert {tuple(c["rules_after"]) for c in report["changes"]} == {("card-country",)}
        assert report["decisions"]["before"]["review"]["count"] == 2
        assert report["decisions"]["after"]["review"]["count"] == 7

    def test_amounts_per_currency_by_decision_before_and_after(self):
        candidate = RISK.model_copy(update={"thresholds": Thresholds(review=25, decline=100)})

        report = bt.backtest_risk(replayed(mixed_lines()), RISK, candidate)

        usd = report["amounts_by_currency"]["USD"]
        assert usd["before"] == {"approve": 15_000, "review": 12_000_000, "decline": 0}
        assert usd["after"] == {"approve": 10_000, "review": 12_005_000, "decline": 0}
        assert report["decisions"]["after"]["approve"]["amount_minor"] == {"USD": 10_000}

    def test_candidate_rule_counted_when_only_in_candidate(self):
        strict = AmountLimit(id="usd-over-50", kind="amount_limit", max_minor=5_000, score=100)
        candidate = RISK.model_copy(update={"rules": (*RISK.rules, strict)})

        report = bt.backtest_risk(replayed(mixed_lines()), RISK, candidate)

        assert report["rule_hits"]["usd-over-50"] == {"before": 0, "after": 2}
        assert report["decisions"]["after"]["decline"]["count"] == 2
        assert report["changed"] == 2

    def test_repeated_payment_counted_once_when_redelivered(self):
        line = bare(pay(1), T0_MS)

        report = bt.backtest_risk(replayed([line, line, line]), RISK, RISK)

        assert (report["screened"], report["duplicates"]) == (1, 2)
        assert report["decisions"]["before"][RiskDecision.approve.value]["count"] == 1


# ---------------------------------------------------------------- routing


class TestBacktestRouting:
    def test_weights_change_moves_eur_card_mix(self):
        lines = [bare(pay(n, currency="EUR"), T0_MS + n) for n in range(200)]

        report = bt.backtest_routing(replayed(lines), ROUTING, with_weights(30, 70))

        before, after = (report["channels"][side] for side in ("before", "after"))
        moved = (before["card_acquirer"]["EUR"]["count"]
                 - after["card_acquirer"]["EUR"]["count"])
        assert 40 <= moved <= 120  # about 40% of 200 move from 70/30 to 30/70
        assert report["changed"] == moved
        assert {(c["before"], c["after"]) for c in report["changes"]} == {
            ("card_acquirer", "card_backup")}
        assert before["card_backup"]["EUR"]["count"] + moved == \
            after["card_backup"]["EUR"]["count"]

    def test_no_changes_when_candidate_equals_baseline(self):
        lines = [bare(pay(n, currency="EUR"), T0_MS + n) for n in range(50)]

        report = bt.backtest_routing(replayed(lines), ROUTING, ROUTING)

        assert report["changed"] == 0
        assert report["channels"]["before"] == report["channels"]["after"]

    def test_fees_totalled_per_channel_and_currency(self):
        lines = [bare(pay(n, amount_minor=10_000), T0_MS + n) for n in range(3)]

        report = bt.backtest_routing(replayed(lines), ROUTING, ROUTING)

        acquirer = report["channels"]["before"]["card_acquirer"]["USD"]
        assert acquirer == {"count": 3, "amount_minor": 30_000, "fee_minor": 3 * (180 + 20)}
        assert report["fees_by_currency"]["USD"] == {"before": 600, "after": 600}

    def test_balance_pay_and_transfer_routed_internal_without_fee(self):
        transfer = Transfer(merchant_id=MERCHANT, idempotency_key="t", merchant_order_no="t-1",
                            from_account_id="a-1", to_account_id="a-2", amount_minor=700,
                            currency="EUR")
        balance = Pay(merchant_id=MERCHANT, idempotency_key="b", merchant_order_no="b-1",
                      amount_minor=300, currency="EUR", method=Method.balance,
                      payer=Payer(account_id="a-1"))

        report = bt.backtest_routing(replayed([bare(transfer, T0_MS), bare(balance, T0_MS)]),
                                     ROUTING, ROUTING)

        assert report["channels"]["before"] == {
            "internal": {"EUR": {"count": 2, "amount_minor": 1_000, "fee_minor": 0}}}

    def test_counted_unroutable_when_no_channel_takes_payment(self):
        report = bt.backtest_routing(replayed([bare(pay(1, currency="JPY"), T0_MS)]),
                                     ROUTING, ROUTING)

        assert report["channels"]["before"][bt.NO_ROUTE]["JPY"]["count"] == 1


# ---------------------------------------------------------------- recording


class Record(NamedTuple):
    offset: int
    value: bytes


class FakeConsumer:
    """The kafka-python consumer calls ``record_topic`` makes: one log per partition, fetches
    of two records, a listed end that may be short (as the embedded broker's), and a
    producer that may keep writing to partition 0 (one record after every fetch)."""

    def __init__(self, logs: dict[int, list[bytes]], listed: dict[int, int],
                 live: bool = False, highwaters: bool = True) -> None:
        self.logs, self.listed, self.live, self.report_highwaters = logs, listed, live, highwaters
        self.positions: dict[TopicPartition, int] = {}
        self.highwaters: dict[TopicPartition, int] = {}
        self.polls = 0

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(self.logs)

    def assign(self, tps) -> None:
        self.assigned = list(tps)

    def seek_to_beginning(self, *tps) -> None:
        self.positions.update({tp: 0 for tp in tps})

    def end_offsets(self, tps) -> dict:
        return {tp: self.listed[tp.partition] for tp in tps}

    def poll(self, timeout_ms: int, max_records: int) -> dict:
        self.polls += 1
        batch = {}
        for tp in self.assigned:
            log, start = self.logs[tp.partition], self.positions[tp]
            if self.report_highwaters:
                self.highwaters[tp] = len(log)
            chunk = log[start:start + 2]
            if chunk:
                batch[tp] = [Record(start + i, v) for i, v in enumerate(chunk)]
                self.positions[tp] += len(chunk)
        if self.live:
            self.logs[0].append(b'{"late":%d}' % self.polls)
        return batch

    def highwater(self, tp) -> int | None:
        return self.highwaters.get(tp)

    def position(self, tp) -> int:
        return self.positions[tp]


def values(n: int, partition: int) -> list[bytes]:
    return [b'{"p":%d,"n":%d}' % (partition, i) for i in range(n)]


class TestRecordTopic:
    def test_reads_past_listed_end_when_high_watermark_is_higher(self):
        consumer = FakeConsumer({0: values(10, 0), 1: values(3, 1), 2: []},
                                listed={0: 6, 1: 3, 2: 0})
        out = io.BytesIO()

        written = bt.record_topic(consumer, "pay.risk", out)

        lines = out.getvalue().splitlines()
        assert written == 13
        assert [v for v in lines if v.startswith(b'{"p":0')] == values(10, 0)  # in order
        assert [v for v in lines if v.startswith(b'{"p":1')] == values(3, 1)

    def test_leaves_out_records_produced_after_start_when_topic_is_live(self):
        consumer = FakeConsumer({0: values(5, 0), 1: values(1, 1)}, listed={0: 5, 1: 1},
                                live=True)
        out = io.BytesIO()

        written = bt.record_topic(consumer, "pay.risk", out)

        assert written == 6
        assert b"late" not in out.getvalue()

    def test_waits_for_quiet_when_no_high_watermark(self):
        consumer = FakeConsumer({0: values(10, 0)}, listed={0: 6}, highwaters=False)
        ticks = itertools.count(0.0, 0.5)
        out = io.BytesIO()

        written = bt.record_topic(consumer, "pay.risk", out, idle_s=2.0,
                                  clock=lambda: next(ticks))

        assert written == 10
        assert consumer.polls > 5  # it went on polling after the listed end

    def test_refused_when_topic_missing(self):
        with pytest.raises(bt.RecordError):
            bt.record_topic(FakeConsumer({}, listed={}), "pay.risk", io.BytesIO())


# ---------------------------------------------------------------- the command line


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    risk = yaml.safe_load((SHIPPED / "risk.yaml").read_text())
    risk["thresholds"]["review"] = 25
    routing = yaml.safe_load((SHIPPED / "routing.yaml").read_text())
    split = next(r for r in routing["rules"] if r["id"] == "card-eur-split")
    split["weights"] = {"card_acquirer": 30, "card_backup": 70}
    paths = {name: tmp_path / name for name in ("risk.yaml", "routing.yaml", "in.jsonl")}
    paths["risk.yaml"].write_text(yaml.safe_dump(risk))
    paths["routing.yaml"].write_text(yaml.safe_dump(routing))
    eur = [bare(pay(n, currency="EUR", customer=f"eur-{n}"), T0_MS) for n in range(100, 160)]
    paths["in.jsonl"].write_text("\n".join(mixed_lines() + ["oops"] + eur) + "\n")
    return paths


class TestCli:
    def test_risk_backtest_writes_report_when_threshold_lowered(self, files, tmp_path, capsys):
        report_path = tmp_path / "out.json"

        code = main(["risk", "backtest", "--rules", str(files["risk.yaml"]), "--input",
                     str(files["in.jsonl"]), "--baseline", str(SHIPPED / "risk.yaml"),
                     "--report", str(report_path)])

        report = json.loads(report_path.read_text())
        out, err = capsys.readouterr()
        assert code == 0
        assert report["changed"] == 5
        assert (report["input"]["lines"], report["input"]["bad_lines"]) == (78, 1)
        assert report["input"]["bad"][0]["line"] == 18
        assert report["baseline"]["version"] == RISK.version
        assert "5 payments change decision" in out
        assert "line 18: not JSON" in err
        assert "78 lines read, 1 bad" in err

    def test_exit_2_with_file_and_line_when_rules_file_bad(self, files, capsys):
        bad = files["risk.yaml"]
        bad.write_text("thresholds:\n  review: 50\n  decline: 10\n")

        code = main(["risk", "backtest", "--rules", str(bad), "--input", str(files["in.jsonl"])])

        assert code == 2
        assert f"{bad}:2:" in capsys.readouterr().err

    def test_exit_1_when_input_missing(self, files, tmp_path, capsys):
        code = main(["risk", "backtest", "--rules", str(files["risk.yaml"]), "--input",
                     str(tmp_path / "missing.jsonl")])

        assert code == 1
        assert "cannot read the input" in capsys.readouterr().err

    def test_routing_backtest_writes_report_when_run_as_module(self, files, tmp_path):
        report_path = tmp_path / "routing.json"

        done = subprocess.run(
            [sys.executable, "-m", "paycore", "routing", "backtest", "--rules",
             str(files["routing.yaml"]), "--input", str(files["in.jsonl"]), "--report",
             str(report_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)

        report = json.loads(report_path.read_text())
        assert done.returncode == 0, done.stderr
        assert report["kind"] == "routing"
        assert report["changed"] > 0
        assert {c["currency"] for c in report["changes"]} == {"EUR"}
        assert "payments change first channel" in done.stdout

    def test_record_exit_1_when_no_broker_configured(self, tmp_path, monkeypatch, capsys):
        monkeypatch.setenv("PAYCORE_KAFKA_BOOTSTRAP", "")

        code = main(["risk", "record", "--out", str(tmp_path / "rec.jsonl")])

        assert code == 1
        assert "PAYCORE_KAFKA_BOOTSTRAP" in capsys.readouterr().err
