"""Envelopes around domain messages: a deterministic message id, a trace id, the kind.

Internal topics carry ``{"id", "trace", "kind", "at_ms", "body"}`` as JSON. ``pay.commands``
carries the bare command JSON so any client can produce it; intake wraps it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import NamedTuple

from domain import audit, commands, dead_letters, events, recon, webhooks
from domain.commands import Message
from domain.ids import derive_id

KINDS: dict[str, type[Message]] = {
    cls.__name__: cls
    for cls in (
        commands.Pay, commands.Capture, commands.Void, commands.Refund, commands.Revoke,
        commands.Transfer, commands.TopUp, commands.Withdraw, commands.SignMandate,
        commands.TerminateMandate, commands.Review, events.RiskScreened,
        events.ChannelRequested, events.ChannelResponded, events.JournalEntryDecided,
        events.HoldRequested, events.HoldReleaseRequested, events.HoldResolved,
        events.PaymentStatusChanged, events.LegApplied, events.CommandRejected,
        events.DeadlineReached, events.MandateCheckRequested, events.MandateChecked,
        events.MandateStatusChanged, events.HoldChanged, events.SettlementReported,
        recon.SettlementClosed, recon.ReconWake, recon.ChannelSuccessConfirmed,
        recon.ChannelRefundConfirmed, recon.ReconException, recon.ReconStatus,
        recon.SerialSeen, webhooks.Endpoint, webhooks.WebhookAttempted,
        webhooks.WebhookWake, webhooks.WebhookDelivery, audit.AuditStatus,
    )
}

KINDS.update({cls.__name__: cls for cls in (  # the ops console's (issue 12)
    commands.ResolveException, events.ExceptionResolved, recon.ReconExceptionResolved,
    dead_letters.ReplayDeadLetter, dead_letters.DiscardDeadLetter,
    dead_letters.DeadLetterResolved)})


class Envelope(NamedTuple):
    message_id: str
    trace_id: str
    at_ms: int
    body: Message


def encode(env: Envelope) -> bytes:
    body = env.body.model_dump(mode="json")
    doc = {"id": env.message_id, "trace": env.trace_id, "kind": type(env.body).__name__,
           "at_ms": env.at_ms, "body": body}
    return json.dumps(doc, separators=(",", ":")).encode()


class UndecodableEnvelope(ValueError):
    """An internal message we cannot read: it goes to the dead-letter topic with this reason."""


def decode(raw: bytes) -> Envelope:
    try:
        doc = json.loads(raw)
        cls = KINDS[doc["kind"]]
        return Envelope(doc["id"], doc["trace"], int(doc["at_ms"]),
                        cls.model_validate(doc["body"]))
    except Exception as exc:  # any shape problem is one reason: undecodable
        raise UndecodableEnvelope(f"{type(exc).__name__}: {exc}") from exc


# Bodies that carry an identity of their own get a message id from it, so the same output
# re-emitted by a later cause (a redelivered command, a replayed callback) keeps its id.
# A channel's answer is identified by what it says, not only by the request it answers: a
# second answer that contradicts the first must not pass for a copy of it.
_NATURAL_ID = {
    "ChannelRequested": ("request_id",),
    "ChannelResponded": ("request_id", "outcome", "amount_minor", "currency"),
    "JournalEntryDecided": ("entry_id",),
    "HoldRequested": ("hold_id",),
    "HoldReleaseRequested": ("hold_id",),
    "HoldResolved": ("hold_id", "placed"),
    "LegApplied": ("posting_id",),
    "DeadlineReached": ("payment_id", "deadline_ms"),
    "RiskScreened": ("payment_id", "fingerprint"),
    "HoldChanged": ("hold_id", "account_id", "change"),
    "SettlementReported": ("channel", "line_id"),
    "SettlementClosed": ("channel", "period"),
    "ReconWake": ("payment_id", "wake_ms"),
    "SerialSeen": ("serial", "payment_id"),
    "ReconException": ("exception_id",),
    "ChannelSuccessConfirmed": ("payment_id", "channel", "amount_minor"),
    "ChannelRefundConfirmed": ("payment_id", "request_id"),
    "MandateCheckRequested": ("payment_id", "mandate_key"),
    "MandateChecked": ("payment_id", "mandate_key", "allowed", "code"),
    "Endpoint": ("merchant_id", "version", "url", "secret"),
    "WebhookAttempted": ("queue", "event_id", "attempt"),
    "WebhookWake": ("queue", "wake_ms"),
    "WebhookDelivery": ("event_id", "attempts", "state"),
    "ExceptionResolved": ("exception_id",),
    "ReplayDeadLetter": ("action_id",),
    "DiscardDeadLetter": ("action_id",),
    "DeadLetterResolved": ("dead_letter_id", "action_id"),
}


def child(cause: Envelope | str, body: Message, index: int, at_ms: int, trace_id: str = ""):
    """An output's envelope; its id derives from the body's own id, else from the cause's."""
    cause_id = cause if isinstance(cause, str) else cause.message_id
    trace = trace_id or (cause if isinstance(cause, str) else cause.trace_id)
    kind = type(body).__name__
    natural = _NATURAL_ID.get(kind)
    if natural:
        parts = (kind, *(str(getattr(body, field)) for field in natural))
    else:
        parts = (cause_id, kind, str(index))
    return Envelope(derive_id("msg", *parts), trace, at_ms, body)


KEPT_BYTES_MAX = 16_384
"""The most of an original's key, and of its value, a dead-letter record keeps: intake's
limit on a command (``domain.intake.COMMAND_BYTES_MAX``), so every command intake could
have taken is kept whole and replayable, and the console's 5,000 dead letters in memory
stay under about 170 MB even when every one is a cut megabyte. A record
must fit the broker's message size (Faust's producer sends at most 1,000,000 bytes) even
when the original nearly fills it and JSON escaping inflates what is kept (six times, for
control characters): a dead letter that cannot be sent stops the stage."""
REASON_CHARS_MAX = 2_000


def kept(raw: bytes | None) -> dict:
    """The original bytes as a record keeps them: ``text`` if UTF-8, else ``base64``, of at
    most ``KEPT_BYTES_MAX`` bytes (cut on a character boundary), with the whole original's
    ``size_bytes`` and ``sha256`` and whether it was ``truncated``."""
    if raw is None:
        return {"text": None}
    prefix = raw[:KEPT_BYTES_MAX]
    try:
        raw.decode()
        part = {"text": prefix.decode(errors="ignore")}  # only a cut character is dropped
    except UnicodeDecodeError:
        part = {"base64": base64.b64encode(prefix).decode()}
    return {**part, "size_bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
            "truncated": len(raw) > KEPT_BYTES_MAX}


def dead_letter(stage: str, reason: str, topic: str, partition: int, offset: int,
                key: bytes | None, value: bytes | None, at_ms: int) -> bytes:
    """The dead-letter record keeps the original bytes, or their first ``KEPT_BYTES_MAX``
    (see ``kept``), and the reason (its first ``REASON_CHARS_MAX`` characters)."""
    doc = {"stage": stage, "reason": reason[:REASON_CHARS_MAX], "topic": topic,
           "partition": partition, "offset": offset, "key": kept(key), "value": kept(value),
           "at_ms": at_ms}
    return json.dumps(doc, separators=(",", ":")).encode()


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The dead letter's own key: the original's, or its first ``KEPT_BYTES_MAX`` bytes."""
    return None if key is None else key[:KEPT_BYTES_MAX]
