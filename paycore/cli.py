"""``paycore``: up, worker, api, simulate (the simulator, or a scenario file), audit, demo,
risk and routing backtests, the reconciliation report."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

from streams.settings import Settings


class _Stop(Exception):
    pass


def _raise_stop(*_args) -> None:
    raise _Stop()


def cmd_up(args: argparse.Namespace) -> int:
    from paycore.stack import Stack
    from streams.faust_fixes import EXIT_CANNOT_PROCEED

    signal.signal(signal.SIGTERM, _raise_stop)
    stack = Stack(Settings(), workers=args.workers, with_prometheus=None)
    try:
        stack.start()
        for name, where in stack.describe():
            print(f"  {name:<12} {where}")
        print("paycore is up; Ctrl-C stops it.", flush=True)
        warned = False
        while True:
            time.sleep(0.5)
            dead = stack.dead_parts()
            if dead and all(p.process.returncode == EXIT_CANNOT_PROCEED for p in dead):
                for part in dead:  # asked to be restarted: its unacked input comes again
                    print(f"{part.name} exited to be restarted ({EXIT_CANNOT_PROCEED}); "
                          "restarting it", flush=True)
                    stack.restart(part.name)
                continue
            if dead:
                break
            gone = [p for p in stack.parts if p.external and p.process.poll() is not None]
            if gone and not warned:  # payments go on without it; say so once
                warned = True
                print(f"prometheus exited ({gone[0].process.returncode}; port "
                      f"{stack.settings.prometheus_port} taken?); see {gone[0].log_path}",
                      flush=True)
        for part in stack.dead_parts():
            print(f"{part.name} exited with {part.process.returncode}; see {part.log_path}")
        return 1
    except (KeyboardInterrupt, _Stop):
        print("stopping...", flush=True)
        return 0
    finally:
        stack.stop()


def cmd_worker(args: argparse.Namespace) -> int:
    from agents.worker import run_worker

    run_worker(Settings(), worker_index=args.index)
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    from agents.worker import run_webhooks

    run_webhooks(Settings())
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_api

    settings = Settings()
    uvicorn.run(create_api(settings), host=settings.api_host, port=settings.api_port,
                log_level="warning")
    return 0


def _serve(metrics_port: int, run) -> int:
    """Expose /metrics, then run ``run(stop)`` until SIGINT or SIGTERM sets ``stop``."""
    from prometheus_client import start_http_server

    if metrics_port:
        start_http_server(metrics_port, addr=Settings().metrics_host)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(stop)

    asyncio.run(main())
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """No file: the channel simulator process (``paycore up`` starts it). A scenario file:
    run that scenario against the stack and report (paycore/scenario.py)."""
    if args.scenario is not None:
        from paycore.scenario import run_scenario_file

        attach = True if args.attach else False if args.start_stack else None
        return run_scenario_file(args.scenario, Settings(), short=args.short or None,
                                 seed=args.seed, out_dir=args.out, attach=attach)
    from simulators.runner import run_simulator

    settings = Settings()
    return _serve(settings.simulator_metrics_port, lambda stop: run_simulator(settings, stop))


def cmd_audit(args: argparse.Namespace) -> int:
    from agents.auditor import run_auditor
    from streams.lag import run_lag_exporter

    settings = Settings()
    logging.getLogger("agents.auditor").setLevel(logging.INFO)

    async def audit_and_measure_lag(stop: asyncio.Event) -> None:
        await asyncio.gather(run_auditor(settings, stop), run_lag_exporter(settings, stop))

    return _serve(settings.auditor_metrics_port, audit_and_measure_lag)


def cmd_demo(args: argparse.Namespace) -> int:
    from paycore.demo import run_demo

    return run_demo(Settings(), payments=args.payments, timeout_s=args.timeout)


def cmd_backtest(args: argparse.Namespace) -> int:
    from paycore.backtest import run_backtest

    baseline = args.baseline or Settings().config_dir / f"{args.area}.yaml"
    return run_backtest(args.area, args.rules, args.input, baseline, args.report)


def cmd_risk_record(args: argparse.Namespace) -> int:
    from paycore.backtest import run_record

    return run_record(Settings(), args.out)


def _add_rules_commands(sub) -> None:
    """``paycore risk backtest|record`` and ``paycore routing backtest``."""
    from pathlib import Path

    for area in ("risk", "routing"):
        parser = sub.add_parser(area, help=f"{area} rules: try a candidate on recorded traffic")
        verbs = parser.add_subparsers(dest="verb", required=True)
        backtest = verbs.add_parser(
            "backtest", help=f"replay commands through config/{area}.yaml and a candidate")
        backtest.add_argument("--rules", type=Path, required=True, help="the candidate file")
        backtest.add_argument("--input", type=Path, required=True,
                              help="JSON lines: pay.risk envelopes or {at_ms, command}")
        backtest.add_argument("--baseline", type=Path, default=None,
                              help=f"default: {area}.yaml in the config folder")
        backtest.add_argument("--report", type=Path, default=None, help="write JSON here")
        backtest.set_defaults(run=cmd_backtest, area=area)
        if area == "risk":
            record = verbs.add_parser("record", help="write the pay.risk topic as JSON lines")
            record.add_argument("--out", type=Path, required=True)
            record.set_defaults(run=cmd_risk_record)


def cmd_recon_report(args: argparse.Namespace) -> int:
    from paycore.recon_report import run_report

    settings = Settings()
    return run_report(args.bootstrap or settings.kafka_bootstrap,
                      args.partitions or settings.partitions,
                      args.out or settings.data_dir / "recon", timeout_s=args.timeout)


def cmd_recon_ingest(args: argparse.Namespace) -> int:
    from datetime import date

    from paycore.ingest import IngestError, ingest
    from simulators.settlement import SettlementFileError

    settings = Settings()
    try:
        period = date.fromisoformat(args.period) if args.period else None
        print(ingest(args.file, args.bootstrap or settings.kafka_bootstrap,
                     args.partitions or settings.partitions, args.channel, period,
                     close=not args.no_close))
    except (SettlementFileError, IngestError, ValueError, OSError) as exc:
        print(f"refused: {exc}")
        return 2
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _add_recon(sub) -> None:
    """``paycore recon report``: the partitions' latest tallies summed, and the exceptions."""
    from pathlib import Path

    recon = sub.add_parser("recon", help="reconciliation: the report, settlement files")
    verbs = recon.add_subparsers(dest="verb", required=True)
    report = verbs.add_parser(
        "report", help="read pay.recon.status and pay.recon.exceptions, print and write "
        "the report",
        description="Sums each recon partition's latest tally (pay.recon.status) and lists "
        "the exceptions (pay.recon.exceptions); prints tables and writes recon-report.json "
        "and recon-exceptions.csv.")
    report.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <data dir>/recon)")
    report.add_argument("--bootstrap", default="", metavar="HOST:PORT",
                        help="the broker (default: PAYCORE_KAFKA_BOOTSTRAP)")
    report.add_argument("--partitions", type=_positive, default=None,
                        help="partitions per topic (default: PAYCORE_PARTITIONS)")
    report.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to read the topics to their end")
    report.set_defaults(run=cmd_recon_report)
    feed = verbs.add_parser(
        "ingest", help="send a channel's settlement file (CSV bill or camt.053 statement) to "
        "pay.channel.settlements and close its day",
        description="Reads and checks the whole file first (a bad one is refused with its "
        "line, nothing sent), sends each line, then closes the channel's report for the "
        "day on every partition.")
    feed.add_argument("file", type=Path, help="<channel>-<YYYY-MM-DD>.csv or .xml")
    feed.add_argument("--channel", default=None, help="instead of the file name's")
    feed.add_argument("--period", default=None, metavar="YYYY-MM-DD",
                      help="the report's day, instead of the file name's")
    feed.add_argument("--no-close", action="store_true",
                      help="send the lines only (more files for the day will follow)")
    feed.add_argument("--bootstrap", default="", metavar="HOST:PORT",
                      help="the broker (default: PAYCORE_KAFKA_BOOTSTRAP)")
    feed.add_argument("--partitions", type=_positive, default=None,
                      help="partitions per topic (default: PAYCORE_PARTITIONS)")
    feed.set_defaults(run=cmd_recon_ingest)


def _add_simulate(sub) -> None:
    """``paycore simulate``: the simulator process; ``paycore simulate FILE.yaml``: a
    scenario (the flags apply to scenarios only)."""
    from pathlib import Path

    simulate = sub.add_parser(
        "simulate", help="the channel simulators; with a scenario file: run the scenario",
        description="Without FILE: the channel simulator process. With FILE: start the "
        "stack (embedded unless PAYCORE_KAFKA_BOOTSTRAP names a running one), run the "
        "scenario's load and faults, wait until every payment is final, print and write "
        "a report (JSON, PNG timeline) to .paycore/scenarios/<name>-<seed>/.")
    simulate.add_argument("scenario", nargs="?", type=Path, default=None, metavar="FILE",
                          help="a scenario file, e.g. simulators/scenarios/normal-day.yaml")
    simulate.add_argument("--short", action="store_true",
                          help="the short form (CI); also PAYCORE_SCENARIO_SHORT=1")
    simulate.add_argument("--seed", type=int, default=None, help="instead of the file's seed")
    simulate.add_argument("--out", type=Path, default=None, help="output folder")
    where = simulate.add_mutually_exclusive_group()
    where.add_argument("--attach", action="store_true",
                       help="use the stack running at PAYCORE_KAFKA_BOOTSTRAP")
    where.add_argument("--start-stack", action="store_true",
                       help="start worker, simulator and auditor even when "
                       "PAYCORE_KAFKA_BOOTSTRAP is set (on that broker)")
    simulate.set_defaults(run=cmd_simulate)


def cmd_api_key(args: argparse.Namespace) -> int:
    from api.auth import digest_of, new_key

    key = new_key()
    print(f"key (give it to its holder; it is not stored): {key}")
    if args.ops:
        print(f"config/api_keys.yaml:\nops_key_sha256: [\"{digest_of(key)}\"]")
    else:
        print(f"config/api_keys.yaml, under merchants:\n  - merchant: {args.merchant}\n"
              f"    key_sha256: [\"{digest_of(key)}\"]")
    return 0


def cmd_dashboards(args: argparse.Namespace) -> int:
    from paycore import dashboards as d

    if args.verb == "build":
        for path in d.build():
            print(f"wrote {path}")
        return 0
    end = time.time()
    if args.verb == "check":
        answers = d.evaluate(args.prometheus, d.panel_queries(), args.window)
        print(d.check_table(answers))
        return 0 if all(a.series for a in answers) else 1
    for path in d.render(args.prometheus, d.OUT_DIR, args.out, end - args.minutes * 60, end,
                         args.window):
        print(f"wrote {path}")
    return 0


def _add_dashboards(sub) -> None:
    """``paycore dashboards build|check|render``."""
    from pathlib import Path

    parser = sub.add_parser("dashboards", help="Grafana dashboards: regenerate, or run their "
                            "queries on a Prometheus")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("build", help="write dashboards/grafana/*.json from paycore/dashboards.py")
    for verb, text in (("check", "run every panel's query; exit 1 if any returns nothing"),
                       ("render", "draw every dashboard to PNG from the scraped series")):
        cmd = verbs.add_parser(verb, help=text)
        cmd.add_argument("--prometheus", default="http://127.0.0.1:9090")
        cmd.add_argument("--window", type=int, default=60, help="rate window, seconds")
        if verb == "render":
            cmd.add_argument("--minutes", type=float, default=15.0)
            cmd.add_argument("--out", type=Path, default=Path("dashboards-png"))
    parser.set_defaults(run=cmd_dashboards)


def cmd_bench(args: argparse.Namespace) -> int:
    from paycore.bench import BenchOptions, run_bench

    options = BenchOptions(payments=args.payments, rates=tuple(args.rate.split(",")),
                           workers=tuple(int(w) for w in args.workers.split(",")),
                           out_dir=args.out, profile=args.profile,
                           relay_messages=args.relay_messages, restart=args.restart,
                           settlement=not args.no_settlement)
    return run_bench(Settings(), options)


def cmd_soak(args: argparse.Namespace) -> int:
    from paycore.soak import SoakOptions, run_soak

    doc = run_soak(Settings(), SoakOptions(
        minutes=args.minutes, rate=args.rate, api_share=args.api_share,
        workers=args.workers, fault_every_s=args.fault_every, out_dir=args.out,
        seed=args.seed))
    return 0 if doc["ok"] else 1


def _add_soak(sub) -> None:
    soak = sub.add_parser("soak", help="a mixed load with worker kills, takeovers and API "
                          "restarts for N minutes, then every payment and cent counted "
                          "(paycore/soak.py)")
    soak.add_argument("--minutes", type=float, default=30.0)
    soak.add_argument("--rate", type=float, default=12.0, help="payments offered per second")
    soak.add_argument("--api-share", type=float, default=0.25,
                      help="the share of payments sent over HTTP (the rest on pay.commands)")
    soak.add_argument("--workers", type=int, default=2)
    soak.add_argument("--fault-every", type=float, default=45.0, help="seconds between faults")
    soak.add_argument("--seed", type=int, default=None)
    soak.add_argument("--out", type=Path, default=Path(".paycore/soak"))
    soak.set_defaults(run=cmd_soak)


def _add_bench(sub) -> None:
    bench = sub.add_parser("bench", help="throughput and latency of the whole payment path, "
                           "against the ceiling of the same broker (paycore/bench.py)")
    bench.add_argument("--payments", type=int, default=5_000, help="sales per run")
    bench.add_argument("--rate", default="max,half", help="offered rates per run, in order: "
                       "max (all at once), N per second, half (of the max run before it)")
    bench.add_argument("--workers", default="1,2", help="worker counts: a run (or a run per "
                       "rate) each")
    bench.add_argument("--out", type=Path, default=Path(".paycore/bench"))
    bench.add_argument("--profile", action="store_true",
                       help="record worker 0 with py-spy and list where its time goes")
    bench.add_argument("--relay-messages", type=int, default=100_000,
                       help="records through the plain relay that measures the ceiling")
    bench.add_argument("--restart", action="store_true", help="after each run, SIGKILL "
                       "worker 0, restart it on its state and time it until a payment passes")
    bench.add_argument("--no-settlement", action="store_true", help="skip reconciling the "
                       "settlement lines after the load (quicker comparisons)")
    bench.set_defaults(run=cmd_bench)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(prog="paycore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="broker, worker(s), API and simulator until Ctrl-C")
    up.add_argument("--workers", type=int, default=1)
    up.set_defaults(run=cmd_up)
    worker = sub.add_parser("worker", help="one Faust worker against the configured broker")
    worker.add_argument("--index", type=int, default=0, help="worker number on this host")
    worker.set_defaults(run=cmd_worker)
    sub.add_parser("api", help="the HTTP API").set_defaults(run=cmd_api)
    sub.add_parser("webhooks", help="the webhook deliverer (its own consumer group)"
                   ).set_defaults(run=cmd_webhooks)
    _add_simulate(sub)
    sub.add_parser("audit", help="the ledger auditor (all partitions)").set_defaults(
        run=cmd_audit)
    demo = sub.add_parser("demo", help="bring the stack up, run a scripted demo, summarize")
    demo.add_argument("--payments", type=int, default=200)
    demo.add_argument("--timeout", type=float, default=120.0)
    demo.set_defaults(run=cmd_demo)
    _add_rules_commands(sub)
    _add_recon(sub)
    _add_dashboards(sub)
    _add_bench(sub)
    _add_soak(sub)
    key = sub.add_parser("api-key", help="a new API key and the line for config/api_keys.yaml")
    key.add_argument("merchant", nargs="?", help="the merchant the key acts for")
    key.add_argument("--ops", action="store_true", help="an ops key instead")
    key.set_defaults(run=cmd_api_key)
    args = parser.parse_args(argv)
    if args.command == "api-key" and bool(args.merchant) == args.ops:
        parser.error("api-key: give a MERCHANT or --ops")
    if args.command == "simulate" and args.scenario is None and (
            args.short or args.seed is not None or args.out or args.attach or args.start_stack):
        parser.error("simulate: --short, --seed, --out, --attach and --start-stack need FILE")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
