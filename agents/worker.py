"""Run one Faust worker with every stage, and its /metrics endpoint."""

from __future__ import annotations

import logging
from pathlib import Path

from faust import Worker
from prometheus_client import start_http_server

from agents import register_stages
from streams import local_state, membership, offset_trace
from streams.app import Wire, create_app, webhooks_app_id
from streams.settings import Settings


def worker_datadir(settings: Settings, worker_index: int | str = 0) -> Path:
    """Each worker on a host gets its own table directory."""
    return settings.data_dir / f"worker-{worker_index}"


def build_worker(settings: Settings, worker_index: int | str = 0, **overrides) -> Wire:
    """The App with all stages."""
    datadir = str(worker_datadir(settings, worker_index))
    return register_stages(create_app(settings, datadir=datadir, **overrides))


def webhooks_settings(settings: Settings) -> Settings:
    """The webhook deliverer: the ``webhooks`` stage alone, as an app (consumer group,
    tables, changelogs) of its own. Merchants' endpoints are outside our control; a slow
    or failing one must never slow payments, so delivery runs beside the payment path, not
    in it (a bulkhead): its own process and its own share of the CPU."""
    return settings.model_copy(update={"app_id": webhooks_app_id(settings),
                                       "stages": "webhooks"})


def run_webhooks(settings: Settings) -> None:
    run_worker(webhooks_settings(settings), worker_index="webhooks",
               metrics_port=settings.webhooks_metrics_port)


def run_worker(settings: Settings, worker_index: int | str = 0,
               metrics_port: int | None = None) -> None:
    if settings.event_loop == "uvloop":  # before anything makes a loop
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    datadir = worker_datadir(settings, worker_index)
    # A killed run's rows may be missing from the changelogs, unless written after their acks
    local_state.claim(datadir, settings.table_rows_after_ack)
    wire = build_worker(settings, worker_index)
    group = wire.app.conf.id  # the consumer group Faust joins
    if settings.end_killed_membership:  # a killed run's membership: ended, not waited out
        membership.end_previous(settings.bootstrap_servers(), datadir, group)
    membership.record(group, datadir)
    if settings.trace_offsets:  # after the app is built: wraps Faust as fixed
        offset_trace.enable(settings.data_dir / "logs" / f"offsets-{worker_index}.log")
        offset_trace.install()
    port = settings.worker_web_port + int(worker_index) if metrics_port is None \
        else metrics_port
    if port:
        start_http_server(port, addr=settings.metrics_host)
    logging.getLogger("paycore").info("worker %s metrics on %s:%s", worker_index,
                                      settings.metrics_host, port)
    # The handler passes INFO so that table recovery can say what it restores, what
    # remains and when the worker is ready (a takeover that takes minutes must show why);
    # everything else is held to the configured level once the worker has started.
    level = min(logging.getLevelName(settings.log_level.upper()), logging.INFO)
    worker = Worker(wire.app, loglevel=logging.getLevelName(level), quiet=True)

    @wire.app.task
    async def _levels() -> None:
        logging.getLogger().setLevel(settings.log_level.upper())
        for name in RECOVERY_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)

    try:
        worker.execute_from_commandline()
    except SystemExit as done:
        if done.code in (0, None) and worker.crash_reason is None:
            local_state.release(datadir)  # stopped cleanly: changelogs flushed, stores closed
            membership.forget(datadir)  # and it left the group itself
        raise


RECOVERY_LOGGERS = ("faust.tables.recovery", "faust.tables.manager")
