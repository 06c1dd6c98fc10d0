"""A killed worker's place in the consumer group is given up by its replacement, not waited out.

A worker that stops cleanly leaves the group (LeaveGroup) and the group rebalances at once.
A worker that is SIGKILLed or crashes leaves nothing: the group keeps it as a member until
its session times out (10 s), and on the embedded broker (Tansu 0.6) a member joining
meanwhile is answered with the dead one as the group's leader, whose assignment never
comes, and retries every 3 s until the dead member's expiry is noticed. With one worker
that made a restart spend about 18 s of its 29 s in the join (`paycore bench --restart`).

So each worker writes its member id to its data directory whenever it joins
(``record``), and a worker starting on that directory first ends that membership
(``end_previous``): LeaveGroup for the recorded id, as the killed process would have sent
had it stopped cleanly (a clean stop removes the record: ``forget``). The data directory is
the worker's identity (its RocksDB); only one process uses it at a time, and the supervisor
starts the next only after the last has exited, so the member removed is a dead one. Were
it alive after all, the group would treat it as a member whose session expired: its commits
are refused for the old generation and it joins again, which Faust handles as any
rebalance. Nothing depends on the leave for correctness; when it fails (no broker yet, a
timeout) the join waits as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from aiokafka.client import AIOKafkaClient, ConnectionGroup, CoordinationType
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import for_code
from aiokafka.protocol.group import LeaveGroupRequest

log = logging.getLogger(__name__)

FILE = "GROUP_MEMBER"
UNKNOWN_MEMBER_ID = 25

_recording: dict[str, Path] = {}  # group id -> the data directory its member id goes to
_original_on_join_complete = GroupCoordinator._on_join_complete


def record(group_id: str, datadir: Path) -> None:
    """From now on, each time this process joins ``group_id``, write its member id to
    ``datadir``."""
    _recording[group_id] = datadir
    if GroupCoordinator._on_join_complete is _original_on_join_complete:
        GroupCoordinator._on_join_complete = _on_join_complete


async def _on_join_complete(self, generation, member_id, protocol, member_assignment_bytes):
    datadir = _recording.get(self.group_id)
    if datadir is not None:
        try:
            write(datadir, self.group_id, member_id)
        except OSError as exc:  # the next restart waits out the session: slower, not wrong
            log.warning("could not record group member id in %s: %s", datadir, exc)
    return await _original_on_join_complete(self, generation, member_id, protocol,
                                            member_assignment_bytes)


def write(datadir: Path, group_id: str, member_id: str) -> None:
    path = datadir / FILE
    if read(datadir) == (group_id, member_id):
        return
    datadir.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    part.write_text(f"{group_id}\n{member_id}\n")
    os.replace(part, path)  # a kill mid-write leaves the old id or the new one, never half


def forget(datadir: Path) -> None:
    """After a clean stop, which left the group itself: nothing for the next run to end."""
    (datadir / FILE).unlink(missing_ok=True)


def read(datadir: Path) -> tuple[str, str] | None:
    """The (group id, member id) this directory's last run joined with, if any."""
    try:
        lines = (datadir / FILE).read_text().splitlines()
    except (OSError, UnicodeDecodeError):  # none, or unreadable: the join waits as before
        return None
    if len(lines) < 2 or not lines[0] or not lines[1]:
        return None
    return lines[0], lines[1]


async def leave(bootstrap: str, group_id: str, member_id: str) -> str:
    """LeaveGroup for ``member_id``: "left" if the group still had it, "gone" if not."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, client_id="paycore-rejoin")
    try:
        await client.bootstrap()
        node = await client.coordinator_lookup(CoordinationType.GROUP, group_id)
        response = await client.send(node, LeaveGroupRequest(group_id, member_id),
                                     group=ConnectionGroup.COORDINATION)
    finally:
        await client.close()
    if response.error_code == 0:
        return "left"
    if response.error_code == UNKNOWN_MEMBER_ID:
        return "gone"
    raise for_code(response.error_code)(f"LeaveGroup for {member_id}")


def end_previous(bootstrap: str, datadir: Path, group_id: str, timeout_s: float = 5.0) -> str:
    """Before this worker joins: remove from ``group_id`` the member its data directory's
    last run was, if that run did not leave. Returns what happened: "none" (nothing
    recorded, or another group's), "left", "gone" (it had left or expired) or "failed"."""
    previous = read(datadir)
    if previous is None or previous[0] != group_id:
        return "none"
    member_id = previous[1]
    loop = asyncio.new_event_loop()  # not the current loop: Faust makes its own after this
    try:
        outcome = loop.run_until_complete(
            asyncio.wait_for(leave(bootstrap, group_id, member_id), timeout_s))
    except Exception as exc:  # noqa: BLE001 - any failure only costs the wait it would save
        log.warning("could not end the last run's membership %s of group %s (%s: %s); "
                    "the group waits out its session", member_id, group_id,
                    type(exc).__name__, exc)
        return "failed"
    finally:
        loop.close()
    if outcome == "left":  # Tansu 0.6 also answers so for a member it no longer has
        log.warning("the last run on %s did not leave group %s: ended its membership "
                    "(member %s), so the group need not wait out its session",
                    datadir, group_id, member_id)
    else:
        log.info("the last run's member %s of group %s had already left", member_id, group_id)
    return outcome
