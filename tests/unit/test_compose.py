"""``docker-compose.yml``, ``dashboards/prometheus.yml`` and the Grafana provisioning agree
with the code. No Docker engine runs here, so these stand in for ``docker compose up``:
every command is one the CLI accepts, Prometheus scrapes each process on the port its
settings make it listen on, every mounted path exists, and paycore processes are
configured by their environment alone."""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import json
import os
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import pytest
import yaml

from paycore import cli
from paycore.stack import SECRETS
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS_FILE = ROOT / "dashboards" / "prometheus.yml"
PROVISIONING = ROOT / "dashboards" / "grafana" / "provisioning"

REQUIRED = "set-by-the-operator"
"""What a ``${NAME:?message}`` variable stands for here: the operator must set it."""

VARIABLE = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^${}]*))?\}")
"""A compose variable whose default or message holds no brace: compose ends a default at
its first closing brace, so ``${A:-{}}`` yields ``{}`` unset but ``<value>}`` when set."""

JOB_OF: dict[Callable, str] = {
    cli.cmd_worker: "paycore-workers", cli.cmd_webhooks: "paycore-webhooks",
    cli.cmd_audit: "paycore-auditor", cli.cmd_api: "paycore-api",
    cli.cmd_simulate: "paycore-simulator"}
"""The Prometheus job of each long-running command: alert rules and dashboards select on
these names."""

STATEFUL = {cli.cmd_worker, cli.cmd_webhooks}
"""Commands that keep Faust tables (RocksDB) in ``data_dir``."""

GRAFANA_BUILTIN_SOURCES = {"-- Grafana --", "-- Mixed --", "-- Dashboard --", "grafana"}


# --- reading the compose file as compose does ------------------------------------------------

def _interpolate(text: str) -> str:
    """Compose's interpolation with nothing set in the shell: defaults apply, required
    variables stand for :data:`REQUIRED`, unset ones are blank, ``$$`` is ``$``."""
    def value(match: re.Match) -> str:
        op = match["op"] or ""
        if "-" in op:
            return match["arg"]
        return REQUIRED if "?" in op else ""
    return VARIABLE.sub(value, text.replace("$$", "\0")).replace("\0", "$")


def _walk(node: Any, apply: Callable[[str], Any]) -> Any:
    if isinstance(node, dict):
        return {key: _walk(value, apply) for key, value in node.items()}
    if isinstance(node, list):
        return [_walk(value, apply) for value in node]
    return apply(node) if isinstance(node, str) else node


def _strings(node: Any) -> list[str]:
    found: list[str] = []
    _walk(node, found.append)
    return found


@functools.cache
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@functools.cache
def compose() -> dict:
    """The compose file, anchors merged and variables interpolated."""
    return _walk(raw_compose(), _interpolate)


def services() -> dict[str, dict]:
    return compose()["services"]


def is_paycore(service: dict) -> bool:
    """Built from this repository, i.e. runs the paycore image."""
    build = service.get("build")
    context = build.get("context", ".") if isinstance(build, dict) else build
    return context is not None and (COMPOSE_FILE.parent / context).resolve() == ROOT


def paycore_names() -> list[str]:
    return [name for name, service in services().items() if is_paycore(service)]


def by_image(prefix: str) -> tuple[str, dict]:
    found = [(name, s) for name, s in services().items()
             if str(s.get("image", "")).startswith(prefix)]
    assert len(found) == 1, f"expected one {prefix} service, found {[n for n, _ in found]}"
    return found[0]


def environment(service: dict) -> dict[str, str | None]:
    """The service's variables as strings; None: passed through from the shell if set."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)

    def text(value: Any) -> str | None:
        if isinstance(value, bool):
            return "true" if value else "false"
        return None if value is None else str(value)
    return {key: text(value) for key, value in env.items()}


def command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


@dataclass(frozen=True)
class Mount:
    kind: str  # "bind" or "volume"
    source: str
    target: str


def mounts(service: dict) -> list[Mount]:
    found = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            found.append(Mount(entry["type"], entry.get("source", ""), entry["target"]))
            continue
        parts = entry.split(":")
        if len(parts) == 1:
            found.append(Mount("volume", "", parts[0]))
            continue
        kind = "bind" if parts[0].startswith((".", "/", "~")) else "volume"
        found.append(Mount(kind, parts[0], parts[1]))
    return found


def host_path(mount: Mount) -> Path:
    return (COMPOSE_FILE.parent / Path(mount.source).expanduser()).resolve()


def host_path_of(service: dict, container_path: str) -> Path | None:
    """The repository path a bind mount shows at ``container_path``, if one does."""
    for mount in sorted(mounts(service), key=lambda m: -len(m.target)):
        target = mount.target.rstrip("/")
        if mount.kind == "bind" and (container_path == target
                                     or container_path.startswith(target + "/")):
            return host_path(mount) / container_path[len(target):].lstrip("/")
    return None


# --- what each paycore service runs ------------------------------------------------------------

def parse(argv: list[str]) -> argparse.Namespace:
    """``paycore <argv>`` through the CLI's own parser and checks (``paycore.cli.main``),
    stopping short of running the command: ``run`` is the command's function."""
    parsed: list[argparse.Namespace] = []
    real = argparse.ArgumentParser.parse_args

    def parse_and_keep(self, args=None, namespace=None):
        namespace = real(self, args, namespace)
        parsed.append(argparse.Namespace(**vars(namespace)))
        namespace.run = lambda _args: 0
        return namespace

    # main() configures logging for the process; this test process keeps its own.
    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_and_keep), \
            mock.patch.object(cli, "logging"):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            pytest.fail(f"the CLI refuses `paycore {shlex.join(argv)}` (exit {exc.code})")
    assert code == 0 and len(parsed) == 1
    return parsed[0]


def settings_of(service: dict) -> Settings:
    """The settings the service's process builds: its container environment, nothing else."""
    env = {key: value for key, value in environment(service).items() if value is not None}
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings()


@dataclass(frozen=True)
class Process:
    name: str
    run: Callable
    settings: Settings
    host: str
    port: int
    """Where its /metrics listens."""


def process(name: str) -> Process:
    service = services()[name]
    argv = command(service)
    assert argv[:1] == ["paycore"], f"{name}: runs {argv}, not the paycore console script"
    args = parse(argv[1:])
    settings = settings_of(service)
    run = args.run
    if run is cli.cmd_worker:
        return Process(name, run, settings, settings.metrics_host,
                       settings.worker_web_port + args.index)
    if run is cli.cmd_webhooks:
        return Process(name, run, settings, settings.metrics_host,
                       settings.webhooks_metrics_port)
    if run is cli.cmd_audit:
        return Process(name, run, settings, settings.metrics_host,
                       settings.auditor_metrics_port)
    if run is cli.cmd_simulate and args.scenario is None:
        return Process(name, run, settings, settings.metrics_host,
                       settings.simulator_metrics_port)
    if run is cli.cmd_api:
        return Process(name, run, settings, settings.api_host, settings.api_port)
    pytest.fail(f"{name}: `{shlex.join(argv)}` is not a long-running process with /metrics")


@functools.cache
def processes() -> dict[str, Process]:
    return {name: process(name) for name in paycore_names()}


def prometheus_config() -> dict:
    return yaml.safe_load(PROMETHEUS_FILE.read_text())


def scrape_targets() -> dict[tuple[str, int], str]:
    """(host, port) -> job, for every static target."""
    targets: dict[tuple[str, int], str] = {}
    for job in prometheus_config()["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        assert job.get("scheme", "http") == "http", job["job_name"]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert (host, int(port)) not in targets, f"{target} is scraped twice"
                targets[(host, int(port))] = job["job_name"]
    return targets


# --- the tests ---------------------------------------------------------------------------------

def test_the_stack_is_complete():
    """Kafka in KRaft mode, several workers, the webhook deliverer, the auditor, the API,
    the simulators, Prometheus and Grafana; third-party images pinned."""
    runs = [p.run for p in processes().values()]
    assert runs.count(cli.cmd_worker) >= 2, "several workers share the partitions"
    for run in (cli.cmd_webhooks, cli.cmd_audit, cli.cmd_api, cli.cmd_simulate):
        assert run in runs, f"no service runs {run.__name__}"
    by_image("apache/kafka:")
    by_image("prom/prometheus:")
    by_image("grafana/grafana:")
    for name, service in services().items():
        if not is_paycore(service):
            image, _, tag = str(service.get("image", "")).rpartition(":")
            assert image and "/" not in tag and tag != "latest", f"{name}: pin the image"


@pytest.mark.parametrize("name", paycore_names())
def test_each_command_is_one_the_cli_accepts(name):
    """The image's ``paycore`` is ``paycore.cli:main``; the command parses with its parser
    and names a long-running process."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["paycore"] == "paycore.cli:main"
    assert process(name).run in JOB_OF


def test_every_variable_reads_as_written():
    """Each ``$`` in the compose file starts a ``${NAME}``, ``${NAME:-default}`` or
    ``${NAME:?message}`` without braces inside, which every compose version reads alike."""
    for text in _strings(raw_compose()):
        text = text.replace("$$", "")
        assert text.count("$") == len(VARIABLE.findall(text)), f"ambiguous: {text!r}"


def test_prometheus_scrapes_every_process_where_it_listens():
    """Every target is a paycore service on the port it listens on, in its command's job;
    no paycore process goes unscraped."""
    targets = scrape_targets()
    listening = {(p.name, p.port): p for p in processes().values()}
    for (host, port), job in targets.items():
        assert host in services(), f"{job}: {host}:{port} is no compose service"
        assert (host, port) in listening, (
            f"{job}: {host} listens on "
            f"{[p for n, p in listening if n == host] or 'no /metrics port'}, not {port}")
        assert job == JOB_OF[listening[(host, port)].run], f"{host}:{port} is in job {job}"
    unscraped = sorted(f"{name}:{port}" for name, port in set(listening) - set(targets))
    assert not unscraped, f"Prometheus scrapes no {unscraped}"


def test_processes_listen_where_prometheus_can_reach_them():
    """/metrics (and the API) on every interface of the container, not its loopback."""
    for p in processes().values():
        assert p.settings.metrics_host == "0.0.0.0", f"{p.name}: metrics_host"
        assert p.host == "0.0.0.0", f"{p.name}: listens on {p.host}"


def test_healthchecks_probe_the_port_the_process_listens_on():
    for p in processes().values():
        check = services()[p.name].get("healthcheck")
        assert check and not check.get("disable"), f"{p.name}: no healthcheck"
        probe = check["test"] if isinstance(check["test"], str) else " ".join(check["test"])
        urls = re.findall(r"http://(?:127\.0\.0\.1|localhost):(\d+)/", probe)
        assert [int(port) for port in urls] == [p.port], f"{p.name}: probes {urls}"


def test_every_process_waits_for_a_healthy_broker_and_restarts():
    kafka_name, kafka = by_image("apache/kafka:")
    assert kafka.get("healthcheck"), "kafka: no healthcheck to wait for"
    for name in paycore_names():
        service = services()[name]
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict) and depends.get(kafka_name, {}).get(
            "condition") == "service_healthy", f"{name}: start once Kafka answers"
        assert service.get("restart") in ("unless-stopped", "always"), name


def test_kafka_runs_kraft_where_paycore_looks_for_it():
    kafka_name, kafka = by_image("apache/kafka:")
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any(key.startswith("KAFKA_ZOOKEEPER") for key in env)
    voters = [voter.split("@", 1)[1] for voter in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")]
    assert all(voter.split(":")[0] == kafka_name for voter in voters)
    advertised = {listener.split("://", 1)[1]
                  for listener in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    cluster_id = env["CLUSTER_ID"]
    try:
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    except binascii.Error:
        pytest.fail(f"CLUSTER_ID {cluster_id!r} is no base64 UUID")
    for p in processes().values():
        assert set(p.settings.kafka_bootstrap.split(",")) <= advertised, p.name
        # Topics created on first use take the broker's count; keyed topics must agree.
        assert int(env["KAFKA_NUM_PARTITIONS"]) == p.settings.partitions, p.name


def test_bind_mounts_exist_and_volumes_are_declared():
    declared = set(compose().get("volumes") or {})
    for name, service in services().items():
        for mount in mounts(service):
            if mount.kind == "bind":
                path = host_path(mount)
                assert path.is_relative_to(ROOT), f"{name}: {mount.source} is outside the repo"
                # A missing path would come up as an empty directory made by Docker.
                assert path.exists(), f"{name}: {mount.source} does not exist"
            elif mount.source:
                assert mount.source in declared, f"{name}: volume {mount.source} undeclared"


def test_prometheus_loads_its_config_and_rules_from_the_repository():
    """Rule files resolve beside prometheus.yml, in the repository and in the container."""
    _, prometheus = by_image("prom/prometheus:")
    flags = dict(arg.split("=", 1) for arg in command(prometheus) if "=" in arg)
    in_container = flags.get("--config.file", "/etc/prometheus/prometheus.yml")
    assert host_path_of(prometheus, in_container) == PROMETHEUS_FILE
    config = prometheus_config()
    assert config.get("rule_files"), "no alert rules"
    assert config["global"]["evaluation_interval"]
    for entry in config["rule_files"]:
        assert (PROMETHEUS_FILE.parent / entry).is_file(), f"{entry} is not beside prometheus.yml"
        beside = str(Path(in_container).parent / entry)
        assert host_path_of(prometheus, beside) == PROMETHEUS_FILE.parent / entry, (
            f"{entry} is not mounted at {beside}")


def provisioned(kind: str) -> list[dict]:
    files = sorted((PROVISIONING / kind).glob("*.y*ml"))
    assert files, f"nothing in {PROVISIONING / kind}"
    return [yaml.safe_load(path.read_text()) for path in files]


def test_grafana_provisioning_is_mounted_and_points_at_what_is_mounted():
    """The provisioning folders are Grafana's; the data source is the compose Prometheus;
    the dashboard provider reads a mounted folder holding the dashboards."""
    _, grafana = by_image("grafana/grafana:")
    for kind in ("datasources", "dashboards"):
        assert host_path_of(grafana, f"/etc/grafana/provisioning/{kind}") == PROVISIONING / kind
    prometheus_name, prometheus = by_image("prom/prometheus:")
    flags = dict(arg.split("=", 1) for arg in command(prometheus) if "=" in arg)
    prometheus_port = flags.get("--web.listen-address", ":9090").rsplit(":", 1)[1]
    sources = [s for f in provisioned("datasources") for s in f["datasources"]]
    assert [s["uid"] for s in sources if s.get("isDefault")] == ["prometheus"]
    for source in sources:
        if source["type"] == "prometheus":
            assert source["url"] == f"http://{prometheus_name}:{prometheus_port}"
            # $__rate_interval counts in scrapes: Grafana must know the interval.
            assert source["jsonData"]["timeInterval"] == \
                prometheus_config()["global"]["scrape_interval"]
    providers = [p for f in provisioned("dashboards") for p in f["providers"]]
    assert providers
    for provider in providers:
        assert provider["type"] == "file"
        folder = host_path_of(grafana, provider["options"]["path"])
        assert folder is not None, f"{provider['options']['path']} is not mounted"
        assert folder.is_dir() and list(folder.glob("*.json")), f"no dashboards in {folder}"


def test_dashboards_use_the_provisioned_data_source():
    sources = [s for f in provisioned("datasources") for s in f["datasources"]]
    known = {s["uid"] for s in sources} | {s["name"] for s in sources}
    has_default = any(s.get("isDefault") for s in sources)
    boards = sorted((ROOT / "dashboards" / "grafana").glob("*.json"))
    assert boards, "no dashboards yet"
    for board in boards:
        for node in _nodes(json.loads(board.read_text())):
            if "datasource" not in node:
                continue
            ref = node["datasource"]
            uid = ref.get("uid") if isinstance(ref, dict) else ref
            if uid is None:
                assert has_default, f"{board.name}: a panel relies on a default data source"
            else:
                assert uid in known | GRAFANA_BUILTIN_SOURCES, f"{board.name}: {uid!r}"


def _nodes(node: Any):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _nodes(value)


def image_root() -> Path:
    """Where the image holds the repository, per the Dockerfile: ``WORKDIR`` then
    ``COPY . <folder>``."""
    lines = [line.split() for line in DOCKERFILE.read_text().splitlines() if line.strip()]
    workdir = next(Path(line[1]) for line in lines if line[0].upper() == "WORKDIR")
    copy = next(line for line in lines if line[0].upper() == "COPY" and line[1] == ".")
    return workdir / copy[2]


def test_paycore_is_configured_by_its_environment_only():
    """No file is mounted into a paycore process: settings come from PAYCORE_* variables
    and the rules files from the image (rebuild to change them). The only mounts are named
    volumes for state, one per stateful process at its data_dir. Keys reach the API only."""
    in_image = image_root()
    volumes_seen: dict[str, str] = {}
    for p in processes().values():
        service = services()[p.name]
        assert not service.get("configs") and not service.get("secrets"), p.name
        assert [m for m in mounts(service) if m.kind == "bind"] == [], f"{p.name}: bind mount"
        assert p.settings.config_dir.is_relative_to(in_image), (
            f"{p.name}: config_dir {p.settings.config_dir} is not in the image")
        config = ROOT / p.settings.config_dir.relative_to(in_image)
        assert config.is_dir() and list(config.glob("*.yaml")), f"{p.name}: no {config}"
        state = [m for m in mounts(service) if m.target == str(p.settings.data_dir)]
        if p.run in STATEFUL:
            assert state and state[0].source, f"{p.name}: data_dir on no named volume"
            volume = state[0].source
            # RocksDB locks its folder: two processes cannot share one.
            assert volume not in volumes_seen, f"{p.name} and {volumes_seen[volume]}: {volume}"
            volumes_seen[volume] = p.name
        has_keys = {key for key in environment(service) if key in SECRETS}
        expected = set(SECRETS) if p.run is cli.cmd_api else set()
        assert has_keys == expected, f"{p.name}: holds {sorted(has_keys)}"
