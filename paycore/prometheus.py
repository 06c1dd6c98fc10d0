"""A local Prometheus for the embedded stack: the shipped scrape config and alert rules
(``dashboards/prometheus.yml``, ``dashboards/alerts.yml``), pointed at this stack's ports.

The shipped config names compose services (``worker-0:6066``); here each target becomes
``127.0.0.1:<the port that part listens on>``, job names and rules unchanged, so what runs
locally is what production runs. Targets of parts this stack does not run are dropped.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from streams.settings import ROOT, Settings

SHIPPED = ROOT / "dashboards" / "prometheus.yml"


def available() -> bool:
    return shutil.which("prometheus") is not None


def local_ports(settings: Settings, workers: int) -> dict[str, int]:
    """Compose service name -> the port its /metrics listens on in this stack."""
    ports = {f"worker-{i}": settings.worker_web_port + i for i in range(workers)}
    ports.update({"api": settings.api_port, "simulator": settings.simulator_metrics_port,
                  "auditor": settings.auditor_metrics_port,
                  "webhooks": settings.webhooks_metrics_port})
    return ports


def local_config(settings: Settings, running: set[str], workers: int,
                 shipped: Path = SHIPPED) -> dict:
    """The shipped config with targets on 127.0.0.1 and rule files by absolute path."""
    config = yaml.safe_load(shipped.read_text())
    ports = local_ports(settings, workers)
    config.setdefault("global", {})["scrape_interval"] = settings.prometheus_scrape_interval
    config["global"]["evaluation_interval"] = settings.prometheus_scrape_interval
    config["rule_files"] = [str((shipped.parent / f).resolve())
                            for f in config.get("rule_files", ())]
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", ()):
            static["targets"] = [f"127.0.0.1:{ports[host]}" for host, _port in
                                 (t.rsplit(":", 1) for t in static["targets"])
                                 if host in ports and host in running]
    return config


def command(settings: Settings, config_path: Path) -> list[str]:
    folder = config_path.parent
    return ["prometheus", f"--config.file={config_path}",
            f"--storage.tsdb.path={folder / 'data'}", "--storage.tsdb.retention.time=1d",
            f"--web.listen-address=127.0.0.1:{settings.prometheus_port}",
            "--log.level=warn"]


def write_config(settings: Settings, running: set[str], workers: int) -> Path:
    folder = settings.data_dir / "prometheus"
    shutil.rmtree(folder / "data", ignore_errors=True)  # a fresh stack: fresh series
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(local_config(settings, running, workers), sort_keys=False))
    return path
