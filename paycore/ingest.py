"""``paycore recon ingest FILE``: a channel's settlement file onto ``pay.channel.settlements``.

The file is read and checked whole first (a CSV bill, or a camt.053 statement checked
against its XSD): a bad file is refused with its path and line or element, and nothing is
sent. Then each line goes out keyed by our payment id (by the channel's serial when the
line does not name our payment), stamped with the report's day, and the channel's report
for that day is closed on every partition: payments due by then and in no report are
missing at the channel. Sending the same file twice is harmless (a line's id is its own).
"""

from __future__ import annotations

import re
import time
from datetime import date
from pathlib import Path

from simulators import settlement as stl
from streams import topics as t

_STEM = re.compile(r"^(?P<channel>.+)-(?P<period>\d{4}-\d{2}-\d{2})$")


class IngestError(ValueError):
    """A file that cannot be ingested as it is (its channel or day cannot be told)."""


def describe(path: Path, lines: list[stl.Line], channel: str | None, period: date | None
             ) -> tuple[str, date]:
    """The report's channel and day: given, else from the file name
    (``<channel>-<YYYY-MM-DD>.csv|.xml``, as channels drop them), checked against the
    lines."""
    named = _STEM.match(path.stem)
    channel = channel or (named.group("channel") if named else None)
    if period is None and named:
        period = date.fromisoformat(named.group("period"))
    if not channel or period is None:
        raise IngestError(f"{path}: name it <channel>-<YYYY-MM-DD>{path.suffix} or give "
                          "--channel and --period")
    others = sorted({line.channel for line in lines} - {channel})
    if others:
        raise IngestError(f"{path}: lines of {', '.join(others)} in {channel}'s report")
    return channel, period


def ingest(path: Path, bootstrap: str, partitions: int, channel: str | None = None,
           period: date | None = None, close: bool = True) -> str:
    """Send the file's lines (then close its day); returns what was done, for people."""
    from paycore.observe import command_producer

    lines = stl.read_lines(path)
    channel, period = describe(path, lines, channel, period)
    at = int(time.time() * 1000)
    source = f"file:{channel}:{period.isoformat()}"
    producer = command_producer(bootstrap)
    try:
        for key, value in stl.to_records(lines, source, at, period):
            producer.send(t.SETTLEMENTS, key=key, value=value)
        producer.flush()
        if close:
            for partition, key, value in stl.close_records(channel, period, len(lines),
                                                           source + ":closed", at,
                                                           partitions):
                producer.send(t.SETTLEMENTS, key=key, value=value, partition=partition)
            producer.flush()
    finally:
        producer.close()
    bare = sum(1 for line in lines if not line.payment_id)
    return (f"{path}: {len(lines)} lines of {channel} for {period.isoformat()} sent to "
            f"{t.SETTLEMENTS}" + (f" ({bare} by the channel's serial)" if bare else "") +
            (f"; {channel}'s report for {period.isoformat()} closed" if close else ""))
