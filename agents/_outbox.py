"""The outbox: a stage stores the exact messages it sends next to the state it writes.

A worker killed between its table write and its sends comes back, re-reads the input after
its last committed offset, and finds the state already changed. Recomputing would give a
different answer ("duplicate"); the outbox instead gives back the very bytes it meant to
send, keyed by the input message's id, and they are sent again. Downstream stages drop the
copies by their natural ids, so the net effect is once.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

OUTBOX_CAUSES_KEPT = 32
"""Per key. A key sees few messages (an order: a command, a callback, a few follow-ups);
only those after the last committed offset can be redelivered."""


class Outgoing(BaseModel):
    model_config = ConfigDict(frozen=True)

    topic: str
    key: str
    value: str


class OutboxEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    cause_id: str
    sent: tuple[Outgoing, ...]


def remember(outbox: tuple[OutboxEntry, ...], cause_id: str, sent: list[Outgoing]
             ) -> tuple[OutboxEntry, ...]:
    kept = tuple(e for e in outbox if e.cause_id != cause_id)
    return (kept + (OutboxEntry(cause_id=cause_id, sent=tuple(sent)),))[-OUTBOX_CAUSES_KEPT:]


def recall(outbox: tuple[OutboxEntry, ...], cause_id: str) -> tuple[Outgoing, ...] | None:
    return next((e.sent for e in outbox if e.cause_id == cause_id), None)
