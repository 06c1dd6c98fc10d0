"""The demo path end to end, as ``make demo`` runs it: its own embedded broker and processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.e2e


def _env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYCORE_")}
    env["PAYCORE_DATA_DIR"] = str(tmp_path)
    return env


def test_demo_reaches_final_statuses_with_balanced_ledger(tmp_path):
    result = subprocess.run([sys.executable, "-m", "paycore", "demo", "--payments", "60",
                             "--timeout", "90"], env=_env(tmp_path), capture_output=True,
                            text=True, timeout=240)

    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "RESULT: OK" in out
    assert "zero-sum per currency: {'USD': 0} -> OK" in out
    assert "manual capture: succeeded" in out
    assert "partially_refunded" in out
    assert "order per payment kept -> OK" in out  # webhooks: every status change delivered
    for channel in ("card_acquirer", "wallet"):
        assert channel in out
    assert "panel queries return data on Prometheus" in out  # make test installs it
    assert len(list((tmp_path / "demo" / "dashboards").glob("*.png"))) == 5


def test_up_stops_everything_on_sigterm_within_10s(tmp_path):
    env = {**_env(tmp_path), "PAYCORE_API_PORT": "0"}
    up = subprocess.Popen([sys.executable, "-m", "paycore", "up"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in up.stdout:
        lines.append(line)
        if "paycore is up" in line:
            break
    children = psutil.Process(up.pid).children(recursive=True)
    assert len(children) >= 4, lines  # broker, worker, api, simulator

    started = time.monotonic()
    up.send_signal(signal.SIGTERM)
    up.wait(timeout=15)
    elapsed = time.monotonic() - started

    assert elapsed < 10, f"stop took {elapsed:.1f}s"
    assert not [c for c in children if c.is_running() and c.status() != "zombie"], lines
    printed = "".join(lines)
    for part in ("broker", "worker-0", "api", "simulator"):
        assert part in printed
