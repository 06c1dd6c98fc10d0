"""Dead letters: what ops do with a message a stage could not process, pure.

A dead letter is known by the stage that parked it and where the original was read (topic,
partition, offset): the same message parked twice is one dead letter. Ops replay a
corrected copy, which goes back to its original topic and takes the normal path from there,
or discard it with a reason. The dead-letter stage (one writer per dead letter) decides:
the first action wins, the same action again is a duplicate, and either way the outcome is
an event on ``pay.deadletter.actions``: the audit trail.
"""

from __future__ import annotations

import base64
import json
from enum import IntEnum
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from domain.commands import Comment, Identifier, Message
from domain.ids import derive_id

VALUE_BYTES_MAX = 16_384
"""A corrected message may be as large as a command may be (``domain.intake``)."""


class DeadLetterStatus(IntEnum):
    """One member per reason, numbers fixed forever."""

    accepted = 0
    duplicate = 1
    """The same action (same action id) again: applied once already."""
    dead_letter_already_replayed = 2
    dead_letter_already_discarded = 3
    topic_not_replayable = 4
    """Its original topic is not one a corrected copy may go back to (the ledger's own
    events, the dead-letter topics)."""

    def transient(self) -> bool:
        return False


def dead_letter_id_for(stage: str, topic: str, partition: int, offset: int) -> str:
    return derive_id("dl", stage, topic, str(partition), str(offset))


def action_id_for(dead_letter_id: str, idempotency_key: str) -> str:
    """Ops' action id: the same Idempotency-Key on the same dead letter is the same action."""
    return derive_id("dla", dead_letter_id, idempotency_key)


class ReplayDeadLetter(Message):
    """Send a corrected copy of a dead letter back to its original topic."""

    dead_letter_id: Identifier
    action_id: Identifier
    operator: Identifier
    comment: Annotated[str, StringConstraints(strict=True, max_length=500)] = ""
    topic: str
    key: str | None
    key_base64: str | None = None
    """The original key when it was not UTF-8 (``key`` is then None): sent back as it came."""
    value: Annotated[str, StringConstraints(strict=True, min_length=1,
                                            max_length=VALUE_BYTES_MAX)]
    """The corrected message as the original topic carries it (JSON text)."""
    requested_at_ms: int


class DiscardDeadLetter(Message):
    """Drop a dead letter for good, with the reason."""

    dead_letter_id: Identifier
    action_id: Identifier
    operator: Identifier
    reason: Comment
    requested_at_ms: int


class DeadLetterState(Message):
    """What became of a dead letter (the stage's row)."""

    state: Literal["replayed", "discarded"]
    action_id: str
    operator: str
    note: str
    at_ms: int


class Redelivery(Message):
    """A corrected copy to send, as text, to the original topic with the original key."""

    topic: str
    key: str | None
    key_base64: str | None = None
    """The original key's bytes when they are not UTF-8."""
    value: str


class DeadLetterResolved(Message):
    """The dead-letter stage's answer to an action (``pay.deadletter.actions``): done, or
    refused with the code's name."""

    dead_letter_id: str
    action_id: str
    action: Literal["replay", "discard"]
    status: str
    operator: str
    note: str
    topic: str = ""
    at_ms: int


class DeadLetterDecision(NamedTuple):
    state: DeadLetterState | None
    outputs: tuple[Message, ...]
    status: DeadLetterStatus


def decide_dead_letter(state: DeadLetterState | None,
                       cmd: ReplayDeadLetter | DiscardDeadLetter,
                       replayable: frozenset[str], now_ms: int) -> DeadLetterDecision:
    """Idempotency, the dead letter's state, then the topic: in that order."""
    replay = isinstance(cmd, ReplayDeadLetter)
    note = (cmd.comment if replay else cmd.reason)
    assert isinstance(cmd, (ReplayDeadLetter, DiscardDeadLetter)), type(cmd)

    def answered(status: DeadLetterStatus) -> DeadLetterResolved:
        return DeadLetterResolved(
            dead_letter_id=cmd.dead_letter_id, action_id=cmd.action_id,
            action="replay" if replay else "discard", status=status.name,
            operator=cmd.operator, note=note, topic=cmd.topic if replay else "", at_ms=now_ms)

    if state is not None:
        if state.action_id == cmd.action_id:
            return DeadLetterDecision(state, (), DeadLetterStatus.duplicate)
        status = DeadLetterStatus.dead_letter_already_replayed if state.state == "replayed" \
            else DeadLetterStatus.dead_letter_already_discarded
        return DeadLetterDecision(state, (answered(status),), status)
    if replay and cmd.topic not in replayable:
        status = DeadLetterStatus.topic_not_replayable
        return DeadLetterDecision(None, (answered(status),), status)
    done = DeadLetterState(state="replayed" if replay else "discarded", action_id=cmd.action_id,
                           operator=cmd.operator, note=note, at_ms=now_ms)
    outputs: tuple[Message, ...] = (answered(DeadLetterStatus.accepted),)
    if replay:
        outputs = (Redelivery(topic=cmd.topic, key=cmd.key, key_base64=cmd.key_base64,
                              value=cmd.value), *outputs)
    return DeadLetterDecision(done, outputs, DeadLetterStatus.accepted)


# ---------------------------------------------------------------- reading a dead letter


class Kept(BaseModel):
    """Original bytes as the dead-letter record keeps them: text, or base64 when not UTF-8;
    of a large original only its first bytes (``truncated``). Records written before sizes
    were kept have no ``size_bytes`` nor ``sha256``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str | None = None
    base64: str | None = None
    size_bytes: int | None = Field(default=None, ge=0)
    """The whole original's size (what is kept may be less)."""
    sha256: str | None = None
    """Of the whole original, hex: tells which message it was when only a part is kept."""
    truncated: bool = False
    """Only the original's first bytes are kept: it cannot be read, nor replayed, whole."""

    def raw(self) -> bytes | None:
        """The bytes kept: the whole original unless ``truncated``."""
        if self.base64 is not None:
            return base64.b64decode(self.base64)
        return None if self.text is None else self.text.encode()


class DeadLetterRecord(BaseModel):
    """One record of ``pay.deadletter`` (``streams.envelope.dead_letter`` writes them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str
    reason: str
    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    key: Kept
    value: Kept
    at_ms: int

    @property
    def dead_letter_id(self) -> str:
        return dead_letter_id_for(self.stage, self.topic, self.partition, self.offset)

    @property
    def truncated(self) -> bool:
        """Key or value kept only in part: ops may look at it, and discard it."""
        return self.key.truncated or self.value.truncated


def read_dead_letter(raw: bytes | None) -> DeadLetterRecord | None:
    """The record, or None when the bytes are not one."""
    if not raw:
        return None
    try:
        return DeadLetterRecord.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        return None
