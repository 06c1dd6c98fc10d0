"""Scenario runner, the parts that need no broker: the file, the load, the config it
writes, the report from recorded events, settlement outcomes, the plot and the CLI."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date

import pytest

from domain.events import PaymentStatusChanged
from domain.recon import ExceptionKind, ReconException
from paycore import cli
from paycore import scenario as sc
from paycore.backtest import InputTally, read_input, replay_risk
from simulators import settlement as stl
from simulators.faults import Fault, FaultKind, FaultPlan
from streams.config import ConfigError
from streams.rules_config import load_risk, load_routing
from streams.settings import Settings

SHIPPED = {"normal-day", "card-acquirer-outage", "wallet-callback-storm", "bank-timeouts",
           "settlement-drift"}
CONFIG = Settings().config_dir
TERMS = {c.name: c for c in load_routing(CONFIG).channels}
START_MS = 1_700_000_000_000

MINIMAL = """\
name: tiny
seed: 7
duration_s: 10
load:
  - from_s: 0
    to_s: 10
    rate_per_s: 2
"""


def _write(tmp_path, text: str):
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def _scenario(**changes) -> sc.Scenario:
    doc = {"name": "tiny", "seed": 7, "duration_s": 10,
           "load": [{"from_s": 0, "to_s": 10, "rate_per_s": 2}], **changes}
    return sc.Scenario.model_validate(doc)


def _event(payment_id: str, status: str, previous: str, at_ms: int, reason: str = "",
           channel: str = "card_acquirer", captured_minor: int = 0, serial: str = "",
           amount_minor: int = 1_000, trigger: str = "sale") -> PaymentStatusChanged:
    return PaymentStatusChanged(
        payment_id=payment_id, merchant_id="m", merchant_order_no=payment_id, status=status,
        previous_status=previous, reason=reason, channel=channel, channel_serial=serial,
        amount_minor=amount_minor, currency="USD", captured_minor=captured_minor,
        refunded_minor=0, at_ms=at_ms, trigger=trigger)


def _paid(payment_id: str, channel: str = "card_acquirer", at_ms: int = START_MS + 500,
          reason: str = "captured", before: tuple = ()) -> list[PaymentStatusChanged]:
    """created -> processing -> (whatever ``before`` adds) -> succeeded."""
    history = [_event(payment_id, "created", "", START_MS + 10),
               _event(payment_id, "processing", "created", START_MS + 20), *before]
    history.append(_event(payment_id, "succeeded", history[-1].status, at_ms, reason,
                          channel, 1_000, f"sn-{payment_id}"))
    return history


def _recorded(histories: dict, scenario: sc.Scenario | None = None, **extra) -> sc.Recorded:
    scenario = scenario or _scenario()
    planned = [sc.Planned(100 * i, pid, {"method": "card", "merchant_id": "m"})
               for i, pid in enumerate(histories)]
    return sc.Recorded(scenario=scenario, merchant_id="m", start_ms=START_MS, planned=planned,
                       sent_ms={p.payment_id: START_MS + p.at_ms for p in planned},
                       histories=histories, **extra)


class TestScenarioFile:
    def test_shipped_scenarios_load_and_fit_the_shipped_routing(self):
        paths = sc.shipped_scenarios()

        loaded = [sc.load_scenario(p) for p in paths]

        assert {s.name for s in loaded} >= SHIPPED
        for scenario in loaded:
            assert scenario.name == next(p.stem for p in paths if p.stem == scenario.name)
            sc.check_against(scenario, load_routing(CONFIG))

    def test_short_form_scales_seconds_and_rates(self):
        scenario = _scenario(faults=[{"channel": "wallet", "kind": "outage", "from_s": 4,
                                      "to_s": 8}], short={"time_scale": 0.5, "rate_scale": 0.5})

        short = scenario.shortened()

        assert short.duration_s == 5
        assert (short.load[0].to_s, short.load[0].rate_per_s) == (5, 1)
        assert (short.faults[0].from_s, short.faults[0].to_s) == (2, 4)

    def test_fault_after_the_end_refused_with_its_line(self, tmp_path):
        path = _write(tmp_path, MINIMAL + "faults:\n  - {channel: wallet, kind: outage, "
                                          "from_s: 2, to_s: 30}\n")

        with pytest.raises(ConfigError) as error:
            sc.load_scenario(path)

        assert f"{path}:9: faults.0.to_s: Value error, 30 is after duration_s 10" in str(
            error.value)

    def test_unknown_method_refused_with_its_line(self, tmp_path):
        path = _write(tmp_path, MINIMAL + "    methods: {cheque: 1}\n")

        with pytest.raises(ConfigError) as error:
            sc.load_scenario(path)

        assert f"{path}:8: load.0.methods.cheque" in str(error.value)

    def test_amount_that_would_trip_risk_refused(self, tmp_path):
        path = _write(tmp_path, MINIMAL + "    amount_max_minor: 2500000\n")

        with pytest.raises(ConfigError, match="amount_max_minor"):
            sc.load_scenario(path)

    def test_typo_in_a_channel_override_refused(self, tmp_path):
        path = _write(tmp_path, MINIMAL + "channels:\n  wallet: {callback_timeout: 10}\n")

        with pytest.raises(ConfigError, match=r":9: channels.wallet.callback_timeout: Extra"):
            sc.load_scenario(path)

    def test_unknown_channel_refused_against_routing(self):
        scenario = _scenario(faults=[{"channel": "nope", "kind": "slow", "from_s": 0,
                                      "to_s": 1}], channels={"ghost": {}},
                             settlement={"channels": ["wallet", "spook"]})

        with pytest.raises(sc.ScenarioError,
                           match="faults.0.channel.*channels.ghost.*settlement.channels.*spook"):
            sc.check_against(scenario, load_routing(CONFIG))

    def test_currency_no_channel_takes_refused(self):
        scenario = _scenario(load=[{"from_s": 0, "to_s": 1, "rate_per_s": 1,
                                    "methods": {"bank": 1}, "currencies": {"GBP": 1}}])

        with pytest.raises(sc.ScenarioError, match="no channel takes bank in GBP"):
            sc.check_against(scenario, load_routing(CONFIG))


class TestLoad:
    def test_same_seed_same_commands(self):
        scenario = sc.load_scenario(sc.SCENARIOS_DIR / "normal-day.yaml")

        first, second = sc.generate_load(scenario, "m"), sc.generate_load(scenario, "m")

        assert first == second
        assert len({p.command["merchant_order_no"] for p in first}) == len(first)

    def test_other_seed_other_commands(self):
        scenario = sc.load_scenario(sc.SCENARIOS_DIR / "normal-day.yaml")
        other = scenario.model_copy(update={"seed": scenario.seed + 1})

        first, second = sc.generate_load(scenario, "m"), sc.generate_load(other, "m")

        assert [p.command for p in first] != [p.command for p in second]
        assert [p.at_ms for p in first] == [p.at_ms for p in second]  # the shape stays

    def test_amounts_in_range_and_never_magic(self):
        scenario = _scenario(load=[{"from_s": 0, "to_s": 10, "rate_per_s": 200,
                                    "amount_min_minor": 1_000, "amount_max_minor": 30_000}])

        amounts = [p.command["amount_minor"] for p in sc.generate_load(scenario, "m")]

        assert len(amounts) == 2_000
        assert all(1_000 <= a <= 30_002 for a in amounts)
        assert not [a for a in amounts if a % 1000 in sc.MAGIC_ENDINGS]

    def test_constant_rate_and_ramp_send_what_they_say(self):
        constant = sc.LoadPhase(from_s=0, to_s=10, rate_per_s=3.5)
        ramp = sc.LoadPhase(from_s=10, to_s=20, rate_per_s=0, rate_end_per_s=10)

        steady, climbing = sc.send_times_ms(constant), sc.send_times_ms(ramp)

        assert len(steady) == 35 and steady == sorted(steady)
        assert len(climbing) == 50
        per_second = Counter(ms // 1000 for ms in climbing)
        assert per_second[10] < per_second[19]
        assert all(10_000 <= ms < 20_000 for ms in climbing)

    def test_weights_pick_methods_and_currencies(self):
        scenario = _scenario(load=[{"from_s": 0, "to_s": 10, "rate_per_s": 100,
                                    "methods": {"card": 3, "wallet": 1, "bank": 0},
                                    "currencies": {"USD": 1, "EUR": 1}}])

        commands = [p.command for p in sc.generate_load(scenario, "m")]

        methods = Counter(c["method"] for c in commands)
        assert methods["bank"] == 0 and 600 < methods["card"] < 900
        assert {c["currency"] for c in commands} == {"USD", "EUR"}
        assert all(c["capture"] == "auto" and c["type"] == "pay" for c in commands)

    @pytest.mark.parametrize("name", sorted(SHIPPED))
    def test_shipped_load_passes_risk_untouched(self, name):
        scenario = sc.load_scenario(sc.SCENARIOS_DIR / f"{name}.yaml")
        lines = [json.dumps({"at_ms": p.at_ms, "command": p.command})
                 for p in sc.generate_load(scenario, f"scn-{name}-{scenario.seed}")]
        tally = InputTally()

        verdicts = [s.verdict for s in replay_risk(read_input(lines, tally),
                                                   load_risk(CONFIG))]

        assert not tally.bad and len(verdicts) == len(lines)
        assert {v.decision.value for v in verdicts} == {"approve"}
        assert not [v for v in verdicts if v.hits]

    def test_fault_plan_carries_second_zero_and_faults(self):
        scenario = _scenario(faults=[{"channel": "wallet", "kind": "duplicate_callbacks",
                                      "from_s": 1, "to_s": 5, "rate_bps": 5000}])

        plan = FaultPlan.model_validate_json(
            sc.fault_plan(scenario, START_MS).model_dump_json())

        assert (plan.scenario, plan.seed, plan.start_ms) == ("tiny", 7, START_MS)
        assert plan.active("wallet", START_MS + 2_000)
        assert not plan.active("wallet", START_MS + 6_000)


class TestConfig:
    def test_overrides_land_in_routing_and_simulators(self, tmp_path):
        scenario = _scenario(channels={"card_acquirer": {
            "callback_timeout_ms": 3000, "failover_on_timeout": True, "decline_bps": 0}})

        folder = sc.write_config(scenario, CONFIG, tmp_path / "config")

        acquirer = next(c for c in load_routing(folder).channels if c.name == "card_acquirer")
        assert (acquirer.callback_timeout_ms, acquirer.failover_on_timeout) == (3000, True)
        assert acquirer.fee_bps == TERMS["card_acquirer"].fee_bps
        from streams.channels_config import load_simulators
        assert load_simulators(folder).by_channel()["card_acquirer"].decline_bps == 0
        assert (folder / "risk.yaml").read_text() == (CONFIG / "risk.yaml").read_text()


class TestReport:
    def test_failovers_queries_and_timeouts_counted_from_histories(self):
        failover = _event("p1", "processing", "processing", START_MS + 30,
                          "failover from card_acquirer to card_backup after no answer in "
                          "time (attempt 2 of 2)")
        late = (_event("p3", "timed_out", "processing", START_MS + 40, "no answer from "
                       "online_bank in time: outcome unknown", "online_bank"),)
        histories = {"p1": _paid("p1", "card_backup", before=(failover,)),
                     "p2": _paid("p2", reason="by status query: captured"),
                     "p3": _paid("p3", "online_bank", reason="late success accepted: captured",
                                 before=late)}

        report = sc.build_report(_recorded(histories), TERMS)

        assert report["failovers"]["by_route"] == {"card_acquirer -> card_backup": 1}
        assert report["failovers"]["by_cause"] == {"no answer in time": 1}
        assert report["timeouts"]["resolved_by_status_query"] == 1
        assert report["timeouts"]["after_timeout"] == {"late success booked": 1}
        assert report["payments"]["by_channel"]["card_backup"] == {"succeeded": 1}

    def test_everything_final_and_balanced_passes(self):
        histories = {f"p{i}": _paid(f"p{i}") for i in range(3)}
        net = 1_000 - 38  # 180 bps of 1,000 rounded, plus 20 fixed
        ledger = sc.LedgerFacts({"USD": 0}, True, {"USD": 3 * net}, 9)
        audit = {"checks": 42.0, "violations": 0.0, "by_check": {}}

        report = sc.build_report(_recorded(histories, ledger=ledger, audit=audit), TERMS)

        assert report["ok"], report["invariants"]
        assert report["payments"]["final"] == 3

    def test_open_payment_and_missing_audit_fail(self):
        histories = {"p1": _paid("p1"), "p2": _paid("p2")[:2]}
        ledger = sc.LedgerFacts({"USD": 0}, True, {"USD": 962}, 6)

        report = sc.build_report(_recorded(histories, ledger=ledger), TERMS)

        checks = {c["name"]: c for c in report["invariants"]}
        assert checks["every payment final"]["ok"] is False
        assert "p2:processing" in checks["every payment final"]["detail"]
        assert checks["auditor: checks ran, no violations"]["ok"] is None
        assert not report["ok"]

    def test_status_going_backwards_is_flagged(self):
        history = _paid("p1") + [_event("p1", "processing", "succeeded", START_MS + 900)]

        assert sc.moves_forward(history) == "succeeded -> processing"
        assert sc.moves_forward(_paid("p2")) == ""

    def test_merchant_balance_counts_each_kept_capture_once(self):
        noted = _event("p1", "succeeded", "succeeded", START_MS + 900, "duplicate payment "
                       "refunding", "card_backup", 1_000)
        histories = {"p1": _paid("p1") + [noted],
                     "p2": _paid("p2", "wallet")[:2] + [
                         _event("p2", "failed", "processing", START_MS + 99, "declined: x")]}

        want = sc.expected_merchant_minor(_recorded(histories), TERMS)

        assert want == {"USD": 1_000 - 38}

    def test_faults_matched_to_payments_and_detected(self):
        scenario = _scenario(faults=[
            {"channel": "card_acquirer", "kind": "outage", "from_s": 0, "to_s": 5},
            {"channel": "wallet", "kind": "slow", "from_s": 0, "to_s": 5}])
        hop = _event("p1", "processing", "processing", START_MS + 30,
                     "failover from card_acquirer to card_backup after retriable decline "
                     "not_found (attempt 2 of 2)")
        histories = {"p1": _paid("p1", "card_backup", before=(hop,)), "p2": _paid("p2")}
        injections = [{"channel": "card_acquirer", "kind": "outage", "payment_id": "p1",
                       "request_id": "r1", "at_ms": START_MS + 100},
                      {"channel": "wallet", "kind": "slow", "payment_id": "p2",
                       "request_id": "r2", "at_ms": START_MS + 100}]

        rows = sc.build_report(_recorded(histories, scenario, injections=injections),
                               TERMS)["faults"]

        assert (rows[0]["injected"], rows[0]["detected"], rows[0]["how"]) == (
            1, 1, "1 failed over")
        assert rows[0]["ended_on"] == {"card_backup": 1, "card_acquirer": 1}
        assert (rows[1]["injected"], rows[1]["detected"]) == (1, None)

    def test_copies_follow_the_simulators_order_of_faults(self):
        scenario = _scenario(faults=[
            {"channel": "wallet", "kind": "duplicate_callbacks", "from_s": 0, "to_s": 5},
            {"channel": "wallet", "kind": "out_of_order", "from_s": 0, "to_s": 5}])

        def inj(request_id: str, kind: str) -> dict:
            return {"channel": "wallet", "kind": kind, "payment_id": request_id,
                    "request_id": request_id, "operation": "sale", "at_ms": START_MS}

        injections = [inj("r1", "duplicate_callbacks"), inj("r2", "out_of_order"),
                      inj("r3", "duplicate_callbacks"), inj("r3", "out_of_order")]
        rec = _recorded({}, scenario, injections=injections,
                        callbacks={("wallet", "replayed"): 3.0, ("wallet", "applied"): 3.0})

        copies = sc.injected_copies(rec)
        check = sc.copies_check(sc.callbacks_section(rec))

        assert copies == {"wallet": 2 + 1 + 1}
        assert check["ok"] is False and "replayed 3 >= injected 4" in check["detail"]

    def test_metrics_text_parsed(self):
        text = ('# HELP paycore_callbacks_total x\n# TYPE paycore_callbacks_total counter\n'
                'paycore_callbacks_total{channel="wallet",result="replayed"} 7.0\n'
                'paycore_callbacks_created{channel="wallet",result="replayed"} 1.7e9\n'
                'paycore_audit_checks_total{check="zero_sum"} 12.0\n'
                'paycore_audit_violations_total{check="zero_sum"} 0.0\n')

        assert sc.callbacks_from(text) == {("wallet", "replayed"): 7.0}
        assert sc.callbacks_from("nothing") is None
        assert sc.audit_from(text)["checks"] == 12.0

    def test_text_and_plot_written(self, tmp_path):
        scenario = _scenario(faults=[{"channel": "card_acquirer", "kind": "outage",
                                      "from_s": 2, "to_s": 4}])
        histories = {f"p{i}": _paid(f"p{i}", at_ms=START_MS + 1_000 * i) for i in range(6)}
        report = sc.build_report(_recorded(histories, scenario), TERMS)

        path = sc.write_plot(report, tmp_path / "timeline.png")
        text = sc.render_text(report)

        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "card_acquirer outage 2-4s" in text and "RESULT: FAILED" in text
        assert report["timeline"]["channels"]["card_acquirer"]["final"][:6] == [1] * 6
        assert sc.progress_line(3, 10, 20, Counter(succeeded=4, processing=6)).endswith(
            "processing 6  succeeded 4")


class TestSettlementDrift:
    def _run(self, drift: stl.Drift):
        histories = {f"p{i}": _paid(f"p{i}") for i in range(12)}
        rec = _recorded(histories)
        period = date(2026, 11, 22)
        inputs = sc.settled_inputs(rec, TERMS, period)
        report = stl.build_report("card_acquirer", "card", period, inputs["card_acquirer"],
                                  9, drift)
        return histories, report

    def test_settled_inputs_are_kept_captures_with_fees(self):
        histories = {"p1": _paid("p1"), "p2": _paid("p2")[:2]}

        inputs = sc.settled_inputs(_recorded(histories), TERMS, date(2026, 1, 2))

        assert inputs == {"card_acquirer": [stl.Settled("p1", "sn-p1", 1_000, "USD", 38,
                                                         date(2026, 1, 2))]}

    @staticmethod
    def _exception(kind: str, payment_id: str, line_id: str = "") -> ReconException:
        return ReconException(exception_id=f"rx-{kind}-{payment_id}-{line_id}",
                              payment_id=payment_id, channel="card_acquirer",
                              kind=ExceptionKind(kind), reason=f"{kind} here",
                              detected_at_ms=START_MS, line_id=line_id)

    def _reported(self, report) -> list[ReconException]:
        """What a perfect reconciliation raises: one exception per injection, its kind."""
        return [self._exception(sc.INJECTED_AS[i.kind].value, i.payment_id,
                                "" if i.kind is stl.Discrepancy.missing_line else i.line_id)
                for i in report.injected]

    def test_each_injection_found_by_its_kind_gives_full_precision_and_recall(self):
        drift = stl.Drift(missing_lines=1, extra_lines=1, amount_drifts=1, fee_drifts=1,
                          wrong_dates=1, duplicate_lines=1)
        histories, report = self._run(drift)

        section = sc.settlement_section([report], histories, self._reported(report),
                                        ["f.csv"])

        assert section["injected"] == section["flagged"] == 6
        assert (section["precision"], section["recall"]) == (1.0, 1.0)
        assert section["false_alarms"] == []
        assert {r["kind"]: r["want"] for r in section["discrepancies"]} == {
            "missing_line": "missing_at_channel", "extra_line": "missing_in_ours",
            "amount_drift": "amount_mismatch", "fee_drift": "fee_mismatch",
            "wrong_date": "date_out_of_window", "duplicate_line": "duplicate_settlement"}

    def test_wrong_kind_is_a_miss_and_a_false_alarm(self):
        histories, report = self._run(stl.Drift(fee_drifts=1))
        [injection] = report.injected
        wrong = self._exception("amount_mismatch", injection.payment_id, injection.line_id)

        section = sc.settlement_section([report], histories, [wrong], [])

        assert section["flagged"] == 0 and section["recall"] == 0.0
        assert section["precision"] == 0.0
        assert [a["kind"] for a in section["false_alarms"]] == ["amount_mismatch"]

    def test_exception_on_an_undrifted_line_is_a_false_alarm(self):
        histories, report = self._run(stl.NO_DRIFT)
        line = report.lines[0]

        section = sc.settlement_section(
            [report], histories, [self._exception("fee_mismatch", line.payment_id,
                                                  line.line_id)], [])

        assert section["injected"] == 0 and section["recall"] == 1.0
        assert section["precision"] == 0.0
        assert next(x for x in section["lines"] if x["line_id"] == line.line_id)[
            "result"] == "flagged"

    def test_line_without_outcome_stays_pending(self):
        histories, report = self._run(stl.Drift(fee_drifts=1))

        section = sc.settlement_section([report], histories, [], [])

        assert section["by_result"] == {"pending": 12}
        assert section["flagged"] == 0


class TestCli:
    def test_simulate_without_a_file_is_the_simulator_process(self, monkeypatch):
        served = []
        monkeypatch.setattr(cli, "_serve", lambda port, run: served.append(port) or 0)

        assert cli.main(["simulate"]) == 0

        assert served == [Settings().simulator_metrics_port]

    def test_simulate_with_a_bad_file_exits_2(self, tmp_path, capsys):
        path = _write(tmp_path, "name: Bad Name\n")

        assert cli.main(["simulate", str(path)]) == 2

        assert f"{path}:1: name" in capsys.readouterr().out

    def test_scenario_flags_without_a_file_refused(self):
        with pytest.raises(SystemExit):
            cli.main(["simulate", "--short"])


def test_short_from_env(monkeypatch):
    monkeypatch.setenv(sc.SHORT_ENV, "1")
    assert sc.short_from_env()
    monkeypatch.setenv(sc.SHORT_ENV, "0")
    assert not sc.short_from_env()


def test_fault_kind_copies_cover_the_repeating_kinds():
    assert set(sc.COPIES_PER_FAULT) == {FaultKind.duplicate_callbacks, FaultKind.out_of_order}
    assert Fault(channel="w", kind="outage", from_s=0, to_s=1).rate_bps == 10_000


class TestReconSection:
    """Reconciliation's exceptions on the run's live records against the injected faults."""

    @staticmethod
    def _exc(kind: str, payment_id: str, resolution: str = "") -> dict:
        return {"kind": kind, "payment_id": payment_id, "reason": f"{kind} here",
                "line_id": "", "resolution": resolution}

    def _section(self, injections, recon, histories=None):
        histories = histories or {"p1": _paid("p1"), "p2": _paid("p2")}
        return sc.recon_section(_recorded(histories, injections=injections, recon=recon))

    def test_exception_for_an_injected_fault_is_explained(self):
        section = self._section([{"payment_id": "p1", "kind": "amount_mismatch"}],
                                [self._exc("amount_mismatch", "p1")])

        assert (section["unexplained"], section["missed"], section["expected"]) == ([], [], 1)

    def test_exception_without_a_cause_is_unexplained_and_a_fault_unreported_is_missed(self):
        section = self._section([{"payment_id": "p1", "kind": "partial_payment"}],
                                [self._exc("status_mismatch", "p2")])

        assert [e["payment_id"] for e in section["unexplained"]] == ["p2"]
        assert section["missed"] == ["p1"]

    def test_exception_cleared_by_late_records_is_counted_apart_not_unexplained(self):
        cleared = {**self._exc("status_mismatch", "p2", "cleared: the records agree now"),
                   "cleared": True}

        section = self._section([], [cleared, self._exc("amount_mismatch", "p1")])

        assert [e["payment_id"] for e in section["unexplained"]] == ["p1"]
        assert (section["cleared"], section["exceptions"]) == (1, 1)

    def test_resolution_must_show_in_the_history(self):
        resolved = _paid("p1") + [_event("p1", "succeeded", "failed", START_MS + 900,
                                         "by reconciliation: x; captured", captured_minor=1_000,
                                         trigger="reconciliation")]
        injected = [{"payment_id": "p1", "kind": "success_after_decline"},
                    {"payment_id": "p2", "kind": "success_after_decline"}]
        recon = [self._exc("status_mismatch", "p1", "posted"),
                 self._exc("status_mismatch", "p2", "posted")]

        section = self._section(injected, recon, {"p1": resolved, "p2": _paid("p2")})

        assert section["unresolved"] == ["p2"] and section["missed"] == []
