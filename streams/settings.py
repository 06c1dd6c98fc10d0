"""Settings, from ``PAYCORE_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAYCORE_", extra="ignore")

    kafka_bootstrap: str = ""
    """host:port[,host:port]. Empty means: start the embedded broker (Tansu)."""

    embedded_broker: bool = False
    """Set by whoever started the embedded broker: turns on the workarounds in
    ``streams/tansu.py`` (Tansu 0.6 under-reports log end offsets)."""

    partitions: int = Field(default=8, ge=1, le=256)
    """Partitions per topic (all topics share it, so keyed topics stay co-partitioned)."""

    data_dir: Path = ROOT / ".paycore"
    """Where workers keep RocksDB tables and processes write logs."""

    app_id: str = "paycore"
    """Faust application id: the consumer group and the prefix of changelog topics."""

    app_version: int = 9
    """Bump when a table's key or row layout changes: the new version starts fresh state."""

    table_store: str = "rocksdb://"
    """Faust table store; tests may use memory://."""

    table_rows_after_ack: bool = True
    """Hold each table row in memory until the broker acks its changelog record, then
    write it to RocksDB with that record's offset (``streams/table_store.py``): RocksDB is
    then always a prefix of the changelog, and a worker killed by SIGKILL keeps its state
    (it reads only the changelog after it). False: Faust's own store, which writes rows at
    once, and a killed worker drops its state and rebuilds every table from the changelogs
    (``streams/local_state.py``)."""

    table_memtable_mb: int = Field(default=1, ge=1, le=256)
    """RocksDB write buffer of each table partition, two of them at most (a worker holding
    every partition opens 14 tables x ``partitions`` databases). With Faust's default, 64 MB
    and three of them per database, nothing reached disk in a 12-minute soak and the
    workers' memory grew with every write (117 MB of write-ahead log, no table file)."""

    table_block_cache_mb: int = Field(default=1, ge=1, le=4096)
    """RocksDB block cache of each table partition (Faust's default: 2 GB each). Rows not
    in a write buffer are read through it and the operating system's page cache."""

    broker_port: int = 0
    """Port of the embedded broker; 0 picks a free one."""

    api_host: str = "127.0.0.1"
    api_port: int = 8080
    worker_web_port: int = 6066
    """Faust worker web server (serves /metrics)."""

    metrics_host: str = "127.0.0.1"
    """Where every process's /metrics listens (0.0.0.0 in containers, for Prometheus)."""

    prometheus_port: int = 9090
    """The embedded stack's own Prometheus (started when the ``prometheus`` binary exists)."""

    prometheus_scrape_interval: str = "2s"
    """Its scrape and rule evaluation interval (the shipped production config says 5s)."""

    simulator_metrics_port: int = 9310
    auditor_metrics_port: int = 9311
    webhooks_metrics_port: int = 9312

    config_dir: Path = ROOT / "config"
    """Folder with routing.yaml, risk.yaml and channels.yaml."""

    idempotency_retention_ms: int = 24 * 3600 * 1000
    """How long an idempotency key answers with its first result (default 24 h)."""

    simulator_seed: int = 7
    """Seed for the channel simulators: same seed, same outcomes."""

    log_level: str = "WARNING"
    """Log level of every process (DEBUG, INFO, WARNING, ERROR)."""

    trace_offsets: bool = False
    """Diagnosis: each worker writes every input offset its stages handled, every seek and
    every commit to ``<data_dir>/logs/offsets-<worker>.log`` (``streams.offset_trace``)."""

    stages: str = "intake,dedup,risk,orders,mandates,ledger,recon,deadletters"
    """Comma-separated stages this worker runs (the payment path by default; tests may
    isolate one). ``webhooks`` runs in its own process: ``paycore webhooks``."""

    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    """The workers' event loop: uvloop (libuv) costs less per message than asyncio's own
    (measured by ``paycore bench``, docs/performance.md)."""

    rebalance_timeout_s: int = 5
    """Faust broker_rebalance_timeout: how long a group join waits for members."""

    session_timeout_s: int = 10

    end_killed_membership: bool = True
    """A worker starting on the data directory of one that was killed first removes that
    one's member from the group (LeaveGroup), instead of waiting out its session
    (``streams/membership.py``)."""

    deadline_sweep_ms: int = Field(default=500, ge=50, le=60_000)
    """How often the order stage looks for orders past their deadline (timeouts, expiry)."""

    api_keys: dict[str, SecretStr] = {}
    """API keys from the environment: a JSON object merchant id -> key
    (``PAYCORE_API_KEYS='{"shop-1": "pk_..."}'``). ``config/api_keys.yaml`` holds digests."""

    ops_key: SecretStr = SecretStr("")
    """The operations key (``PAYCORE_OPS_KEY``): ops endpoints, and every merchant's records."""

    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)
    """How long one webhook delivery waits for the merchant's answer."""

    webhook_backoff_ms: int = Field(default=1_000, ge=10)
    """The first retry's delay; each further retry waits twice as long ..."""

    webhook_backoff_max_ms: int = Field(default=600_000, ge=10)
    """... up to this."""

    webhook_allow_private: bool = False
    """Allow http and private addresses as webhook URLs: development stacks only
    (``streams/egress.py``)."""

    webhook_retry_period_s: int = Field(default=24 * 3600, ge=1)
    """How long an event is retried before it is given up (and marked failed)."""

    def bootstrap_servers(self) -> str:
        assert self.kafka_bootstrap, "no broker configured and none started"
        return self.kafka_bootstrap
