"""The outbox: a stage stores the exact messages it sends next to the state it writes.

A worker killed between its table write and its sends comes back, re-reads the input after
its last committed offset, and finds the state already changed. Recomputing would give a
different answer ("duplicate"); the outbox instead gives back the very bytes it meant to
send, keyed by the input message's id, and they are sent again. Downstream stages drop the
copies by their natural ids, so the net effect is once.
"""

from __future__ import annotations

import base64

from pydantic import BaseModel, ConfigDict, Field

OUTBOX_CAUSES_KEPT = 32
"""Per key. A key sees few messages (an order: a command, a callback, a few follow-ups);
only those after the last committed offset can be redelivered."""


class Outgoing(BaseModel):
    model_config = ConfigDict(frozen=True)

    topic: str
    key: str
    value: str
    key_base64: str | None = Field(default=None, exclude_if=lambda v: v is None)
    """A key that is not UTF-8 (a dead letter's, replayed as it came), base64; ``key`` is
    then ''. Left out of the stored outbox when None, as it nearly always is."""

    def key_bytes(self) -> bytes:
        return base64.b64decode(self.key_base64) if self.key_base64 is not None \
            else self.key.encode()


class OutboxEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    cause_id: str
    sent: tuple[Outgoing, ...]
    source: str = ""
    """Where the cause was read (topic, partition, offset); '' if not recorded."""


def remember(outbox: tuple[OutboxEntry, ...], cause_id: str, sent: list[Outgoing],
             source: str = "") -> tuple[OutboxEntry, ...]:
    kept = tuple(e for e in outbox if e.cause_id != cause_id)
    entry = OutboxEntry(cause_id=cause_id, sent=tuple(sent), source=source)
    return (kept + (entry,))[-OUTBOX_CAUSES_KEPT:]


def recall(outbox: tuple[OutboxEntry, ...], cause_id: str, source: str = ""
           ) -> tuple[Outgoing, ...] | None:
    """What to send again for this cause, or None if it is new. The same message read at
    the same place is a redelivery (a crash came between the write and the sends): send
    it all again. Read at another place it is a copy the sender made (a channel notifying
    twice): what it caused was sent when the first copy was handled, so nothing."""
    entry = next((e for e in outbox if e.cause_id == cause_id), None)
    if entry is None:
        return None
    if source and entry.source and entry.source != source:
        return ()
    return entry.sent
