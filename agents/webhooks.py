"""Merchant webhooks: every event of a payment, signed, in order, retried, never lost.

The stage reads ``pay.events`` and its own ``pay.webhooks`` (attempt outcomes, wake-ups),
both keyed by payment id (mandate events by mandate key). One RocksDB row per payment is
its queue (``domain.webhooks.Queue``): events wait there until the merchant answers 2xx or
the retry period is over. The HTTP call itself runs in a task beside the stream, so a slow
receiver never holds a partition: its outcome comes back as a ``WebhookAttempted`` message
and is applied to the queue like any other input. A crash between the call and its outcome
loses only the outcome: the head is still in flight in the table, and the sweeper's wake
retries it after twice the timeout (delivery is at least once; the event id deduplicates).

Merchants' endpoints (URL and secret, ``pay.webhooks.endpoints``) are read whole by every
worker (``EndpointBook``); the stage waits for the book before its first event, so an
event is never skipped for an endpoint not yet read. Every attempt's outcome goes to
``pay.webhooks.deliveries`` (the API shows it per payment) and to
``paycore_webhook_deliveries_total``.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
import logging
import time

import httpx

from agents._stage import Nudger, consume, table
from domain.commands import OPS_COMMAND_TYPES
from domain.events import CommandRejected, MandateStatusChanged, PaymentStatusChanged
from domain.webhooks import (
    EVENT_ID_HEADER,
    REVIEWED,
    SIGNATURE_HEADER,
    Endpoint,
    Policy,
    Queue,
    Start,
    WebhookAttempted,
    WebhookWake,
    attempted,
    enqueue,
    next_start,
    settle_lost,
    sign,
    wake_at,
)
from streams import topics as t
from streams.app import Wire, now_ms
from streams.egress import refusal
from streams.envelope import UndecodableEnvelope, child, decode
from streams.follow import follow
from streams.metrics import WEBHOOK_DELIVERIES, WEBHOOK_SECONDS, WEBHOOK_SKIPPED
from streams.settings import Settings

log = logging.getLogger(__name__)
CONCURRENT_MAX = 64
PER_MERCHANT_MAX = 8
"""Attempts in flight per merchant: one slow endpoint cannot take every slot."""
EVENT_TYPES = {PaymentStatusChanged: "payment.status_changed",
               CommandRejected: "payment.command_rejected",
               MandateStatusChanged: "mandate.status_changed"}
_RESULT = {"delivered": "delivered", "retrying": "retry", "failed": "failed"}


class EndpointBook:
    """Every merchant's latest endpoint, read from the whole ``pay.webhooks.endpoints``."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self.ready = asyncio.Event()
        self.current_ms = 0
        """Every endpoint registered before this wall-clock ms has been read."""
        self._tick = asyncio.Event()

    def idle(self, polled_ms: int) -> None:
        self.current_ms = max(self.current_ms, polled_ms)
        self._tick.set()
        self._tick = asyncio.Event()

    async def current_at(self, at_ms: int, timeout_s: float = 2.0) -> bool:
        """Wait until every endpoint registered before ``at_ms`` has been read (an event
        created right after its merchant registered must find the endpoint, and the book
        is another consumer than the stage's); False if that did not come in time."""
        deadline = time.monotonic() + timeout_s
        while self.current_ms < at_ms:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._tick.wait(), left)
            except TimeoutError:
                return False
        return True

    def apply(self, raw: bytes) -> None:
        try:
            body = decode(raw).body
        except UndecodableEnvelope as exc:
            log.warning("endpoint book skipped an undecodable record: %s", exc)
            return
        if isinstance(body, Endpoint):  # keyed by merchant: the log's order decides
            self.endpoints[body.merchant_id] = body

    def get(self, merchant_id: str) -> Endpoint | None:
        found = self.endpoints.get(merchant_id)
        return found if found is not None and found.url else None

    async def follow(self, settings: Settings, stop: asyncio.Event) -> None:
        await follow(settings.bootstrap_servers(), (t.WEBHOOK_ENDPOINTS,), settings.partitions,
                     self.apply, self.ready, stop, on_idle=self.idle)


def policy_of(settings: Settings) -> Policy:
    return Policy(backoff_ms=settings.webhook_backoff_ms,
                  backoff_max_ms=settings.webhook_backoff_max_ms,
                  retry_period_ms=settings.webhook_retry_period_s * 1000,
                  timeout_ms=int(settings.webhook_timeout_s * 1000))


def payload(env, event_type: str) -> str:
    """What the merchant receives: the event id, its type and the event itself (ops'
    review note replaced, as in the API's answers)."""
    data = env.body.model_dump(mode="json")
    if data.get("trigger") == "review":
        data["reason"] = REVIEWED
    return json.dumps({"id": env.message_id, "type": event_type, "created_ms": env.at_ms,
                       "data": data}, separators=(",", ":"))


def for_merchant(body) -> bool:
    """Ops' own refused commands (a review decision, an exception's resolution) are not the
    merchant's events."""
    return not (isinstance(body, CommandRejected) and body.command_type in OPS_COMMAND_TYPES)


def register(wire: Wire) -> None:
    queues = table(wire, "webhook_queues", "payment id -> undelivered events, oldest first")
    wakes = table(wire, "webhook_wakes", "payment id -> ms its queue's head is due")
    policy = policy_of(wire.settings)
    book = EndpointBook()
    for result in _RESULT.values():  # zeros, not gaps
        WEBHOOK_DELIVERIES.labels(result=result)
    for why in ("no_endpoint", "older_than_retry_period"):
        WEBHOOK_SKIPPED.labels(why=why)
    running: set[asyncio.Task] = set()
    slots = asyncio.Semaphore(CONCURRENT_MAX)
    merchant_slots: defaultdict[str, asyncio.Semaphore] = defaultdict(
        lambda: asyncio.Semaphore(PER_MERCHANT_MAX))
    client: dict[str, httpx.AsyncClient] = {}

    async def handle(event) -> None:
        await book.ready.wait()
        env, key, at = decode(event.message.value), event.message.key, now_ms()
        body = env.body
        raw = queues.get(key)
        queue = Queue.model_validate_json(raw) if raw else None
        delivery = None
        if type(body) in EVENT_TYPES:
            if not for_merchant(body):
                return
            if queue is None and book.get(body.merchant_id) is None and (
                    not await book.current_at(env.at_ms) or book.get(body.merchant_id) is None):
                WEBHOOK_SKIPPED.labels(why="no_endpoint").inc()
                return
            if at - env.at_ms > policy.retry_period_ms:
                WEBHOOK_SKIPPED.labels(why="older_than_retry_period").inc()
                return  # a replay of old history: its time to be delivered is over
            kind = EVENT_TYPES[type(body)]
            queue = enqueue(queue, body.merchant_id, env.message_id, kind, payload(env, kind),
                            env.at_ms)
        elif queue is None:
            return  # an outcome or wake-up for a queue already emptied, or another event
        elif isinstance(body, WebhookAttempted):
            queue, delivery = attempted(queue, body, policy)
        elif not isinstance(body, WebhookWake):
            return
        if delivery is None:
            queue, delivery = settle_lost(queue, key.decode(), at, policy)
        queue, start = next_start(queue, at, policy)
        # Outputs first, then the row: a transient send failure retries this handler on
        # the row as it was, so the same outcome is recomputed and sent (same ids).
        if delivery is not None:
            await wire.send(t.WEBHOOK_DELIVERIES, key.decode(), child(env, delivery, 0, at))
            WEBHOOK_DELIVERIES.labels(result=_RESULT[delivery.state.value]).inc()
        if queue.pending:
            queues[key] = queue.model_dump_json().encode()
            wakes[key] = str(wake_at(queue, policy)).encode()
        else:
            if raw:
                del queues[key]
            if wakes.get(key) is not None:
                del wakes[key]
        if start is not None:
            task = asyncio.create_task(deliver(key.decode(), queue.merchant_id, start))
            running.add(task)
            task.add_done_callback(running.discard)

    async def deliver(queue_key: str, merchant_id: str, start: Start) -> None:
        """One attempt: POST the signed body; its outcome goes back through pay.webhooks.
        The whole attempt (waiting for a slot included) ends within the timeout, so it is
        over before the stage could count it lost and start another: one attempt per event
        at a time, and never an old attempt after a newer event."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(policy.timeout_ms / 1000):
                async with merchant_slots[merchant_id], slots:
                    status, error = await post(book.get(merchant_id), start)
        except TimeoutError:
            status, error = 0, "timeout"
        WEBHOOK_SECONDS.observe(time.perf_counter() - started)
        at = now_ms()
        outcome = WebhookAttempted(queue=queue_key, event_id=start.pending.event_id,
                                   attempt=start.attempt, ok=not error, http_status=status,
                                   error=error, at_ms=at)
        try:
            await wire.send(t.WEBHOOKS, queue_key, child("webhook-attempt", outcome, 0, at))
        except Exception as exc:  # the head stays in flight; the sweeper settles it as lost
            log.warning("webhook outcome for %s not sent: %r", queue_key, exc)

    async def post(endpoint: Endpoint | None, start: Start) -> tuple[int, str]:
        """(HTTP status, error class); the error says what kind of failure, never the
        details of someone else's network."""
        if endpoint is None:
            return 0, "no_endpoint"
        refused = await refusal(endpoint.url, wire.settings.webhook_allow_private)
        if refused:
            return 0, f"refused: {refused}"
        if "http" not in client:
            client["http"] = httpx.AsyncClient(timeout=wire.settings.webhook_timeout_s,
                                               follow_redirects=False)
        body = start.pending.body.encode()
        headers = {"Content-Type": "application/json", "User-Agent": "paycore-webhooks/1",
                   EVENT_ID_HEADER: start.pending.event_id,
                   SIGNATURE_HEADER: sign(endpoint.secret, int(time.time()), body)}
        try:
            answer = await client["http"].post(endpoint.url, content=body, headers=headers)
        except httpx.TimeoutException:
            return 0, "timeout"
        except httpx.ConnectError:
            return 0, "connect_error"
        except httpx.HTTPError as exc:
            return 0, f"transport_error: {type(exc).__name__}"
        if 200 <= answer.status_code < 300:
            return answer.status_code, ""
        return answer.status_code, f"http_{answer.status_code}"

    @wire.app.agent(wire.topic(t.WEBHOOKS, t.EVENTS), name="webhooks")
    async def webhooks_stage(stream):
        await consume("webhooks", wire, stream, handle)

    @wire.app.task
    async def endpoints() -> None:
        """Follow the endpoints for as long as the worker runs; a failure restarts it."""
        while True:
            try:
                await book.follow(wire.settings, asyncio.Event())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook endpoint book stopped; restarting")
                await asyncio.sleep(1.0)

    nudger = Nudger(wire, t.WEBHOOKS, "webhook-sweeper", lambda key, due_ms: WebhookWake(
        queue=key, wake_ms=due_ms), "webhook wake")

    @wire.app.timer(interval=wire.settings.deadline_sweep_ms / 1000, name="webhook_sweeper")
    async def sweep() -> None:
        """Wake the queues whose head is due (a retry, or an attempt whose outcome was lost)."""
        await nudger.sweep(wakes, now_ms(), gauge="webhooks")
