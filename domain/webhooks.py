"""Merchant webhooks, pure: signing, the per-payment delivery queue, the retry schedule.

Every event of a payment is delivered to the merchant's registered URL, in order: the
queue's head is attempted until the merchant answers 2xx or the retry period is over (then
it is given up and marked ``failed``), and only then does the next event go. Retries back
off exponentially with a little jitter drawn from the event id (the same event retries on
the same schedule after a replay). The retry period runs from the event's creation: an event
queued behind a failing one spends its period waiting too (a receiver wants no event days
late); every event the deliverer reads within its period gets at least one attempt, one
read later (a replay of old history, a deliverer that lagged the whole period) is counted
as skipped and not sent. Delivery is at least once: a receiver
deduplicates by the event id, which is the event's deterministic message id.

Signature: ``Paycore-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``
over the exact bytes sent; a receiver recomputes it and refuses stale timestamps.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import Enum
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict

from domain.commands import Message

SIGNATURE_HEADER = "Paycore-Signature"
EVENT_ID_HEADER = "Paycore-Event-Id"
TOLERANCE_S = 300
STAMP_DIGITS_MAX = 16
"""A longer ``t=`` is malformed: refused before ``int()`` spends time on it."""
"""How old a signed timestamp a receiver accepts (``verify``)."""
RECENT_KEPT = 64
"""Event ids a queue remembers after delivering them, so an event redelivered while the
queue still exists is not sent twice (the envelope's id is deterministic). An emptied queue
is removed; an event replayed later than the retry period is not queued at all."""
JITTER = 0.1
REVIEWED = "decided in risk review"
"""What a merchant reads instead of ops' review note (reviewer, comment)."""


class Endpoint(Message):
    """A merchant's webhook URL and signing secret, on ``pay.webhooks.endpoints`` keyed by
    merchant id (latest wins; an empty url removes it)."""

    merchant_id: str
    url: str
    secret: str
    version: int
    at_ms: int


class DeliveryState(str, Enum):
    pending = "pending"
    retrying = "retrying"
    delivered = "delivered"
    failed = "failed"


class WebhookAttempted(Message):
    """The outcome of one delivery attempt (on ``pay.webhooks``, keyed by the queue)."""

    queue: str
    event_id: str
    attempt: int
    ok: bool
    http_status: int = 0
    error: str = ""
    at_ms: int


class WebhookWake(Message):
    """The sweeper's nudge: a queue's head may be due (on ``pay.webhooks``)."""

    queue: str
    wake_ms: int


class WebhookDelivery(Message):
    """Where one event's delivery stands (on ``pay.webhooks.deliveries``): the API shows it."""

    queue: str
    merchant_id: str
    event_id: str
    event_type: str
    state: DeliveryState
    attempts: int
    http_status: int = 0
    error: str = ""
    next_attempt_ms: int = 0
    at_ms: int


class Pending(BaseModel):
    model_config = ConfigDict(frozen=True)

    event_id: str
    event_type: str
    body: str
    """The exact JSON sent (signed as bytes)."""
    first_ms: int
    attempts: int = 0
    """Attempts started."""
    next_ms: int = 0
    """When the next attempt may start."""
    in_flight_ms: int = 0
    """When the running attempt started (0: none running)."""


class Queue(BaseModel):
    """One payment's undelivered events, oldest first, for one merchant."""

    model_config = ConfigDict(frozen=True)

    merchant_id: str
    pending: tuple[Pending, ...] = ()
    recent: tuple[str, ...] = ()
    """Event ids delivered or given up lately (redelivery guard)."""


class Policy(NamedTuple):
    backoff_ms: int
    backoff_max_ms: int
    retry_period_ms: int
    timeout_ms: int


class Start(NamedTuple):
    """Attempt ``pending`` now, as attempt number ``attempt``."""

    pending: Pending
    attempt: int


def sign(secret: str, timestamp_s: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp_s}.".encode() + body, hashlib.sha256)
    return f"t={timestamp_s},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, now_s: int,
           tolerance_s: int = TOLERANCE_S) -> bool:
    """What a receiver does: parse the header, check the timestamp's age, compare in
    constant time."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    stamp, given = parts.get("t", ""), parts.get("v1", "")
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= STAMP_DIGITS_MAX
            and given.isascii()):
        return False
    timestamp = int(stamp)
    if abs(now_s - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected.encode(), given.encode())


def backoff_ms(attempts: int, event_id: str, policy: Policy) -> int:
    """Delay after the ``attempts``-th failed attempt: base x 2^(n-1), capped, plus up to
    10% jitter taken from the event id (deterministic)."""
    delay = min(policy.backoff_max_ms, policy.backoff_ms * 2 ** min(attempts - 1, 30))
    spread = int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=2).digest(), "big")
    return delay + int(delay * JITTER * spread / 0xFFFF)


def enqueue(queue: Queue | None, merchant_id: str, event_id: str, event_type: str, body: str,
            at: int) -> Queue:
    """The queue with the event at its tail (unchanged if it is queued or was delivered).
    ``at`` is the event's creation: the retry period runs from it."""
    queue = queue or Queue(merchant_id=merchant_id)
    if event_id in queue.recent or any(p.event_id == event_id for p in queue.pending):
        return queue
    return queue.model_copy(update={"pending": queue.pending + (Pending(
        event_id=event_id, event_type=event_type, body=body, first_ms=at, next_ms=at),)})


def next_start(queue: Queue, at: int, policy: Policy) -> tuple[Queue, Start | None]:
    """Start the head's next attempt if it is due and none is running. (The stage settles
    a lost attempt as failed first, ``settle_lost``; restarting one found lost here is a
    fallback for callers that do not.)"""
    if not queue.pending:
        return queue, None
    head = queue.pending[0]
    lost = head.in_flight_ms and at - head.in_flight_ms > 2 * policy.timeout_ms
    if (head.in_flight_ms and not lost) or head.next_ms > at:
        return queue, None
    started = head.model_copy(update={"attempts": head.attempts + 1, "in_flight_ms": at})
    return (queue.model_copy(update={"pending": (started,) + queue.pending[1:]}),
            Start(started, started.attempts))


def settle_lost(queue: Queue, queue_key: str, at: int, policy: Policy
                ) -> tuple[Queue, WebhookDelivery | None]:
    """A head whose attempt's outcome never came (2 x timeout) counts as a failed attempt,
    so lost attempts back off and give up at the end of the period like failed ones."""
    if not queue.pending:
        return queue, None
    head = queue.pending[0]
    if not head.in_flight_ms or at - head.in_flight_ms <= 2 * policy.timeout_ms:
        return queue, None
    return attempted(queue, WebhookAttempted(
        queue=queue_key, event_id=head.event_id, attempt=head.attempts, ok=False,
        error="no outcome within twice the timeout (lost)", at_ms=at), policy)


def wake_at(queue: Queue, policy: Policy) -> int:
    """When the sweeper should look at this queue again (0: nothing to do)."""
    if not queue.pending:
        return 0
    head = queue.pending[0]
    if head.in_flight_ms:
        return head.in_flight_ms + 2 * policy.timeout_ms + 1
    return head.next_ms


def attempted(queue: Queue, result: WebhookAttempted, policy: Policy
              ) -> tuple[Queue, WebhookDelivery | None]:
    """Apply an attempt's outcome to the head; a stale or repeated outcome changes nothing."""
    if not queue.pending:
        return queue, None
    head = queue.pending[0]
    if head.event_id != result.event_id or head.attempts != result.attempt \
            or not head.in_flight_ms:
        return queue, None
    at = result.at_ms
    give_up = not result.ok and at - head.first_ms + backoff_ms(
        head.attempts, head.event_id, policy) > policy.retry_period_ms
    state: DeliveryState
    if result.ok or give_up:
        state = DeliveryState.delivered if result.ok else DeliveryState.failed
        queue = queue.model_copy(update={
            "pending": queue.pending[1:],
            "recent": (queue.recent + (head.event_id,))[-RECENT_KEPT:]})
        next_ms = 0
    else:
        state = DeliveryState.retrying
        next_ms = at + backoff_ms(head.attempts, head.event_id, policy)
        queue = queue.model_copy(update={"pending": (head.model_copy(update={
            "next_ms": next_ms, "in_flight_ms": 0}),) + queue.pending[1:]})
    return queue, WebhookDelivery(
        queue=result.queue, merchant_id=queue.merchant_id, event_id=head.event_id,
        event_type=head.event_type, state=state, attempts=head.attempts,
        http_status=result.http_status, error=result.error, next_attempt_ms=next_ms, at_ms=at)

