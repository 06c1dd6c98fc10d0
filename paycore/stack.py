"""The local stack: broker (embedded unless configured), worker(s), API, simulator.

Each part runs as its own process group so that stopping the stack leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from api.auth import from_file, new_key
from paycore import prometheus
from streams import topics as t
from streams.broker import EmbeddedBroker, ensure_topics, free_port, wait_for_metadata
from streams.settings import Settings

STOP_TIMEOUT_S = 8.0


@dataclass
class Part:
    name: str
    process: subprocess.Popen
    listens: str
    log_path: Path
    args: list[str]
    external: bool = False
    """``args`` is a whole command line (Prometheus), not ``paycore`` arguments."""


@dataclass
class Stack:
    settings: Settings
    workers: int = 1
    with_api: bool = True
    with_simulator: bool = True
    with_auditor: bool = True
    with_webhooks: bool = True
    with_prometheus: bool | None = False
    """None: start Prometheus when its binary is installed (``up`` and the demo)."""
    broker: EmbeddedBroker | None = None
    parts: list[Part] = field(default_factory=list)

    def start(self) -> "Stack":
        logs = self.settings.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if not self.settings.kafka_bootstrap:
            self.broker = EmbeddedBroker(self.settings.broker_port, logs / "broker.log").start()
            # A fresh in-memory broker means fresh table state: old RocksDB rows would lie.
            for stale in self.settings.data_dir.glob("worker-*"):
                shutil.rmtree(stale, ignore_errors=True)
            # The embedded default is a development stack: webhook receivers on 127.0.0.1
            # (the demo's) are allowed unless the setting says otherwise.
            private = self.settings.webhook_allow_private \
                if "webhook_allow_private" in self.settings.model_fields_set else True
            self.settings = self.settings.model_copy(update={
                "kafka_bootstrap": self.broker.bootstrap, "embedded_broker": True,
                "webhook_allow_private": private})
        else:
            wait_for_metadata(self.settings.kafka_bootstrap)
        ensure_topics(self.settings.kafka_bootstrap, t.ALL, self.settings.partitions)
        self.settings = pick_ports(with_keys(self.settings))
        write_keys(self.settings, logs.parent / "api-keys.json")
        for index in range(self.workers):
            self._spawn(f"worker-{index}", ["worker", "--index", str(index)],
                        f"metrics http://127.0.0.1:{self.settings.worker_web_port + index}")
        if self.with_api:
            self._spawn("api", ["api"],
                        f"http://{self.settings.api_host}:{self.settings.api_port}")
        if self.with_simulator:
            self._spawn("simulator", ["simulate"],
                        f"metrics http://127.0.0.1:{self.settings.simulator_metrics_port}")
        if self.with_auditor:
            self._spawn("auditor", ["audit"],
                        f"metrics http://127.0.0.1:{self.settings.auditor_metrics_port}")
        if self.with_webhooks:
            self._spawn("webhooks", ["webhooks"],
                        f"metrics http://127.0.0.1:{self.settings.webhooks_metrics_port}")
        if self.with_prometheus or (self.with_prometheus is None and prometheus.available()):
            config = prometheus.write_config(self.settings, {p.name for p in self.parts},
                                             self.workers)
            self._spawn("prometheus", prometheus.command(self.settings, config),
                        f"{self.prometheus_url()} (alert rules: dashboards/alerts.yml)",
                        external=True)
        return self

    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.prometheus_port}"

    def _spawn(self, name: str, args: list[str], listens: str, external: bool = False
               ) -> Part:
        env = {**os.environ, **_settings_env(self.settings)}
        if name != "api":
            for secret in SECRETS:
                env.pop(secret, None)
        log_path = self.settings.data_dir / "logs" / f"{name}.log"
        line = args if external else [sys.executable, "-m", "paycore", *args]
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(line, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        part = Part(name, proc, listens, log_path, args, external)
        self.parts.append(part)
        return part

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill one part's whole process group (fault injection) and reap it."""
        part = self.part(name)
        _signal_group(part.process, sig)
        part.process.wait(STOP_TIMEOUT_S)

    def restart(self, name: str) -> Part:
        """Start a part again with the same arguments (its table state stays on disk)."""
        old = self.part(name)
        assert old.process.poll() is not None, f"{name} is still running"
        self.parts.remove(old)
        return self._spawn(name, old.args, old.listens, old.external)

    def describe(self) -> list[tuple[str, str]]:
        rows = [("broker", self.settings.kafka_bootstrap +
                 (" (embedded Tansu)" if self.broker else " (external)"))]
        rows += [(p.name, p.listens) for p in self.parts]
        if self.with_api:
            rows.append(("api keys", str(self.settings.data_dir / "api-keys.json")))
            rows.append(("ops console", f"http://{self.settings.api_host}:"
                         f"{self.settings.api_port}/console (the ops key)"))
        return rows

    def dead_parts(self) -> list[Part]:
        """paycore's own parts that exited (Prometheus is a bystander: its death is
        reported by whoever looks at it, and payments go on)."""
        return [p for p in self.parts if p.process.poll() is not None and not p.external]

    def stop(self) -> None:
        """SIGTERM every process group, wait, then SIGKILL what is left."""
        for part in reversed(self.parts):
            _signal_group(part.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for part in self.parts:
            try:
                part.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(part.process, signal.SIGKILL)
                part.process.wait()
        self.parts.clear()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


DEV_MERCHANT = "demo-shop"


def with_keys(settings: Settings) -> Settings:
    """A stack started without keys gets fresh ones for this run: an ops key and, when no
    merchant key is configured anywhere, one for ``demo-shop``."""
    update: dict = {}
    if not settings.ops_key.get_secret_value():
        update["ops_key"] = SecretStr(new_key())
    if not settings.api_keys and not from_file_exists(settings):
        update["api_keys"] = {DEV_MERCHANT: SecretStr(new_key())}
    return settings.model_copy(update=update) if update else settings


def from_file_exists(settings: Settings) -> bool:
    path = settings.config_dir / "api_keys.yaml"
    return path.exists() and bool(from_file(path))


def write_keys(settings: Settings, path: Path) -> None:
    """The run's keys, readable by this user only: where ``paycore up`` says they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(json.dumps({"ops_key": settings.ops_key.get_secret_value(),
                                "merchant_keys": {m: k.get_secret_value() for m, k in
                                                  settings.api_keys.items()}}, indent=2))


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _settings_env(settings: Settings) -> dict[str, str]:
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if name == "ops_key":
            value = settings.ops_key.get_secret_value()
        elif name == "api_keys":
            value = {m: k.get_secret_value() for m, k in settings.api_keys.items()}
        env[f"PAYCORE_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


SECRETS = ("PAYCORE_OPS_KEY", "PAYCORE_API_KEYS")
"""Only the API process gets the keys in its environment."""


def pick_ports(settings: Settings) -> Settings:
    """A free port for every listener configured as 0, so stacks and tests never collide."""
    names = ("api_port", "worker_web_port", "simulator_metrics_port", "auditor_metrics_port",
             "webhooks_metrics_port", "prometheus_port")
    return settings.model_copy(update={n: getattr(settings, n) or free_port() for n in names})


WARMUP_MERCHANT = "paycore-warmup"


def wait_until_ready(settings: Settings, timeout_s: float = 90.0,
                     with_simulator: bool = True) -> float:
    """Send one warm-up payment through the whole path and wait for its final event.

    A worker is useful only once its consumer group has joined and its tables recovered;
    the only honest readiness probe for a pipeline is a message through all of it.
    Without a simulator the warm-up is a balance payment from an empty wallet: through
    orders and ledger, refused. Returns the seconds it took; raises TimeoutError if the
    payment never completes.
    """
    from paycore.observe import Observer, command_producer, send_command

    started = time.monotonic()
    order_no = f"warmup-{int(time.time() * 1000)}"
    producer = command_producer(settings.kafka_bootstrap)
    send_command(producer, {
        "type": "pay", "merchant_id": WARMUP_MERCHANT, "idempotency_key": order_no,
        "merchant_order_no": order_no, "amount_minor": 100, "currency": "USD",
        **({"method": "card"} if with_simulator else
           {"method": "balance", "payer": {"account_id": "paycore-warmup-empty"}})})
    producer.flush()
    producer.close()
    observer = Observer(settings.kafka_bootstrap, settings.partitions)
    try:
        done = observer.wait_until(lambda: any(
            s.merchant_order_no == order_no and s.status in ("succeeded", "failed")
            for s in observer.status.values()), timeout_s)
    finally:
        observer.close()
    if not done:
        raise TimeoutError(f"no warm-up payment through the stack in {timeout_s:.0f}s")
    return time.monotonic() - started
