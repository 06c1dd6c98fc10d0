"""A killed worker's group membership, ended by the next run on its data directory."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams import membership
from streams.broker import ensure_topics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# A group member that records its id the way a worker does, then waits to be killed.
MEMBER = """
import asyncio, sys
from pathlib import Path
from aiokafka import AIOKafkaConsumer
from streams import membership

async def main(bootstrap, topic, group, datadir, session_ms):
    membership.record(group, Path(datadir))
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                session_timeout_ms=int(session_ms), heartbeat_interval_ms=1_000)
    await consumer.start()
    await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:]))
"""


def _killed_member(bootstrap: str, topic: str, group: str, datadir: Path,
                   session_ms: int = 30_000) -> str:
    """Start a member, wait until it has joined and recorded its id, SIGKILL it."""
    child = subprocess.Popen([sys.executable, "-c", MEMBER, bootstrap, topic, group,
                              str(datadir), str(session_ms)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while membership.read(datadir) is None:
            assert child.poll() is None, f"the member exited with {child.returncode}"
            assert time.monotonic() < deadline, "the member never joined"
            time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    recorded_group, member_id = membership.read(datadir)
    assert recorded_group == group
    return member_id


def _members(bootstrap: str, group: str) -> list[str]:
    async def describe():
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            (response,) = await admin.describe_consumer_groups([group])
        finally:
            await admin.close()
        (described,) = response.groups
        return [member[0] for member in described[5]]  # (member_id, client_id, ...)

    return asyncio.run(describe())


def test_a_killed_members_membership_is_ended_by_the_next_run(kafka_bootstrap, tmp_path):
    topic, group = f"member-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, (topic,), 2)
    datadir = tmp_path / "worker-0"

    member_id = _killed_member(kafka_bootstrap, topic, group, datadir)

    # Its 30 s session has not run out: the group still counts it as a member
    assert _members(kafka_bootstrap, group) == [member_id]
    assert membership.end_previous(kafka_bootstrap, datadir, group) == "left"
    assert _members(kafka_bootstrap, group) == []
    # Ending it again is harmless (Apache Kafka answers UNKNOWN_MEMBER_ID, Tansu 0.6 OK)
    assert membership.end_previous(kafka_bootstrap, datadir, group) in ("gone", "left")


def test_another_groups_record_or_none_leaves_nothing(kafka_bootstrap, tmp_path):
    assert membership.end_previous(kafka_bootstrap, tmp_path, "paycore-v9") == "none"
    membership.write(tmp_path, "another-group", "member-1")
    assert membership.end_previous(kafka_bootstrap, tmp_path, "paycore-v9") == "none"


def test_an_unreachable_broker_costs_the_wait_not_the_start(tmp_path):
    membership.write(tmp_path, "paycore-v9", "member-1")
    started = time.monotonic()
    assert membership.end_previous("127.0.0.1:9", tmp_path, "paycore-v9",
                                   timeout_s=2.0) == "failed"
    assert time.monotonic() - started < 10


def test_the_record_survives_only_whole(tmp_path):
    membership.write(tmp_path, "g", "m-1")
    membership.write(tmp_path, "g", "m-2")
    assert membership.read(tmp_path) == ("g", "m-2")
    assert not (tmp_path / "GROUP_MEMBER.part").exists()
    (tmp_path / membership.FILE).write_text("g\n")  # half a record: none
    assert membership.read(tmp_path) is None
    (tmp_path / membership.FILE).unlink()
    (tmp_path / membership.FILE).mkdir()  # unreadable: none, the start goes on
    assert membership.read(tmp_path) is None


def test_a_clean_stop_leaves_nothing_to_end(kafka_bootstrap, tmp_path):
    membership.write(tmp_path, "paycore-v9", "member-1")
    membership.forget(tmp_path)
    assert membership.read(tmp_path) is None
    assert membership.end_previous(kafka_bootstrap, tmp_path, "paycore-v9") == "none"
