"""A worker's RocksDB state survives a clean stop and is dropped after a kill.

A row planted in the stopped worker's RocksDB stands for a table write whose changelog
record never reached the broker (the worker killed in between): after a SIGKILL it must be
gone once the worker is back, the tables rebuilt from the changelogs alone; after a clean
stop (SIGTERM) the local state is the changelogs' and is kept as it is.
"""

from __future__ import annotations

import signal
import subprocess

import pytest
from rocksdict import Options, Rdict

from paycore.stack import Stack, _signal_group, wait_until_ready
from streams import local_state

pytestmark = pytest.mark.e2e

PLANTED = b"planted-not-in-any-changelog"
STOP_S = 60.0


@pytest.fixture
def own_stack(own_settings):
    with Stack(own_settings, with_api=False, with_simulator=False, with_webhooks=False,
               with_auditor=False) as stack:
        wait_until_ready(stack.settings, with_simulator=False)
        yield stack


def _order_dbs(stack: Stack):
    found = sorted((stack.settings.data_dir / "worker-0").glob("**/orders-*.db"))
    assert found, "no RocksDB of the orders table under the worker's data directory"
    return found


def _keys(path) -> set[bytes]:
    db = Rdict(str(path), Options(raw_mode=True))
    try:
        return set(db.keys())
    finally:
        db.close()


def _plant(stack: Stack) -> None:
    for path in _order_dbs(stack):
        db = Rdict(str(path), Options(raw_mode=True))
        db[PLANTED] = b"{}"
        db.close()


def _planted_anywhere(stack: Stack) -> bool:
    return any(PLANTED in _keys(path) for path in _order_dbs(stack))


def _stop_cleanly(stack: Stack) -> int:
    part = stack.part("worker-0")
    _signal_group(part.process, signal.SIGTERM)
    try:
        return part.process.wait(STOP_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker-0 did not stop within {STOP_S:.0f}s of SIGTERM")


def _log(stack: Stack) -> str:
    return stack.part("worker-0").log_path.read_text(errors="replace")


def test_a_killed_workers_local_rows_are_dropped_and_a_clean_stop_keeps_them(own_stack):
    datadir = own_stack.settings.data_dir / "worker-0"
    assert (datadir / local_state.MARKER).exists(), "a running worker marks its data dir"

    own_stack.kill("worker-0")  # SIGKILL: what RocksDB holds may be ahead of the changelogs
    _plant(own_stack)
    own_stack.restart("worker-0")
    wait_until_ready(own_stack.settings, with_simulator=False)
    assert _stop_cleanly(own_stack) == 0
    assert not (datadir / local_state.MARKER).exists(), "a clean stop takes the marker away"
    assert not _planted_anywhere(own_stack), "the killed run's local row came back"
    rebuilt = set().union(*(_keys(p) for p in _order_dbs(own_stack)))
    assert len(rebuilt - {PLANTED}) >= 2, "the orders rebuilt from the changelog are missing"
    assert _log(own_stack).count("did not stop cleanly") == 1

    _plant(own_stack)  # after a clean stop the local state is trusted as it is
    own_stack.restart("worker-0")
    wait_until_ready(own_stack.settings, with_simulator=False)
    assert _stop_cleanly(own_stack) == 0
    assert _planted_anywhere(own_stack), "a cleanly stopped worker's state was dropped"
    assert _log(own_stack).count("did not stop cleanly") == 1
