"""A worker's record of what it did with offsets, for finding where a message was lost.

Off by default (``PAYCORE_TRACE_OFFSETS=1``). One line per event, tab-separated: wall time,
what, topic, partition, offset, and a detail: ``handled`` (a stage finished with the
message; the detail is the stage), ``skipped`` (Faust acked it unprocessed, not committed),
``seek`` (the next read; the detail is why), ``commit`` (the offset committed; the detail
is the generation and whether the broker took it). Given a lost payment's record
(``paycore soak`` prints its trail), the worker that committed past it and whether any
worker handled it can be read off the files.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TextIO

_out: TextIO | None = None


def enable(path: Path) -> None:
    global _out
    path.parent.mkdir(parents=True, exist_ok=True)
    _out = open(path, "a", buffering=1)  # by line: a SIGKILL loses nothing written


def enabled() -> bool:
    return _out is not None


def record(what: str, topic: str, partition: int, offset: int | None, detail: object = ""
           ) -> None:
    """Never raises: called in the stage loop, where an exception would end the agent."""
    global _out
    if _out is None:
        return
    try:
        _out.write(f"{time.time():.3f}\t{what}\t{topic}\t{partition}\t{offset}\t{detail}\n")
    except OSError as exc:  # a full disk: stop tracing, keep processing
        logging.getLogger(__name__).warning("offset trace stopped: %r", exc)
        _out = None


_installed = False


def install() -> None:
    """Record Faust's seeks and commits (once; a no-op while tracing is off)."""
    global _installed
    if _installed:
        return
    from faust.transport.consumer import Consumer

    original_commit, original_seek = Consumer._commit_offsets, Consumer.seek
    original_perform_seek = Consumer.perform_seek

    async def _commit_offsets(self, offsets, start_new_transaction: bool = True) -> bool:
        did_commit = await original_commit(self, offsets, start_new_transaction)
        if _out is not None:
            generation = self.app.consumer_generation_id
            for tp, offset in offsets.items():
                record("commit", tp.topic, tp.partition, offset,
                       f"gen={generation} took={did_commit}")
        return did_commit

    async def seek(self, partition, offset: int) -> None:
        await original_seek(self, partition, offset)
        record("seek", partition.topic, partition.partition, offset, "seek")

    async def perform_seek(self) -> None:
        await original_perform_seek(self)
        if _out is not None:
            generation = self.app.consumer_generation_id
            for tp in self.assignment():
                record("seek", tp.topic, tp.partition, self._committed_offset.get(tp),
                       f"to committed, gen={generation}")

    Consumer._commit_offsets = _commit_offsets
    Consumer.seek = seek
    Consumer.perform_seek = perform_seek
    _installed = True
