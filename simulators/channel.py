"""How a simulated channel answers one request: outcome, serial and latency, from a seed.

Deterministic: the answer depends only on (seed, request id, profile), so a run replays
identically and a repeated request gets the same answer, as a real channel's would.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

from domain.events import ChannelOperation, ChannelOutcome, ChannelRequested, ChannelResponded
from domain.ids import derive_id
from simulators.faults import Drawn, FaultKind
from streams.channels_config import SimulatorProfile

MAGIC_DECLINE_MINOR = 13
"""Test magic: an amount whose last three digits are 013 is always declined."""
MAGIC_SILENT_MINOR = 409
"""... 409: the channel's callback is lost; a status query finds the outcome."""
MAGIC_LATE_MINOR = 408
"""... 408: the channel answers success only after the order gave up waiting (callback
timeout and every status query: still "processing" until then)."""
MAGIC_BLACK_HOLE_MINOR = 411
"""... 411: the channel answers nothing about this payment, callback or query: the
order's outcome stays unknown (timed_out)."""
MAGIC_TWICE_MINOR = 207
"""... 207: the channel sends its answer twice."""
MAGIC_SHORT_MINOR = 422
"""... 422: the channel reports one minor unit less than asked (amount mismatch)."""
MAGIC_UNAVAILABLE_MINOR = 503
"""... 503: declined with the channel's technical code (``unavailable_code``): failover."""
LATE_BY_MS = 3_000
CARD_NOTIFY_AFTER_MS = 200
"""A card acquirer's asynchronous notification follows its answer by this much."""
WALLET_RESEND_MS = (1_000, 2_000, 4_000, 8_000)
"""A wallet re-sends an unacknowledged notification after these waits, then gives up."""

# z-score of the 99th percentile of a standard normal: lognormal tail from median and p99.
_Z99 = 2.326


class Answer(NamedTuple):
    response: ChannelResponded
    latency_ms: int
    deliveries_ms: tuple[int, ...]
    """When to send the response, after the request: none for a silent channel, two for
    a channel that repeats itself."""
    answers_queries: bool = True
    """False: status queries about this request go unanswered too."""
    redirect: ChannelResponded | None = None
    """A bank's first answer (pending: the payer is on the bank's page), sent at once."""
    until_ack: bool = False
    """A wallet: after the last delivery, re-send until acknowledged."""
    afterwards: tuple[tuple[int, ChannelResponded], ...] = ()
    """Messages the channel sends later of its own accord (ms after the request): a
    success it first declined, a refund nobody asked for."""


def latency_ms(rng: random.Random, profile: SimulatorProfile) -> int:
    median = max(profile.latency_ms_median, 0)
    if median == 0:
        return 0
    p99 = max(profile.latency_ms_p99, median)
    sigma = math.log(p99 / median) / _Z99
    return int(median * math.exp(rng.gauss(0.0, sigma)))


def answer(request: ChannelRequested, profile: SimulatorProfile, seed: int, at_ms: int,
           callback_timeout_ms: int = 30_000) -> Answer:
    rng = random.Random(f"{seed}:{request.request_id}")
    delay = latency_ms(rng, profile)
    outcome, code, amount = ChannelOutcome.succeeded, "", request.amount_minor
    first_leg = request.operation in (ChannelOperation.sale, ChannelOperation.authorize,
                                      ChannelOperation.payout)
    # Magic acts on a payment's first attempt only: a payer's retry on another channel
    # (reference "attempt-N") behaves normally, so switching channel can be staged.
    retry = request.reference.startswith(("attempt-", "failover-"))
    magic = request.amount_minor % 1000 if first_leg and not retry else -1
    if magic == MAGIC_DECLINE_MINOR:
        outcome, code = ChannelOutcome.declined, profile.decline_codes[0]
    elif magic == MAGIC_UNAVAILABLE_MINOR:
        outcome, code = ChannelOutcome.declined, profile.unavailable_code
    elif first_leg and magic not in _MAGIC and rng.randrange(10_000) < profile.decline_bps:
        outcome, code = ChannelOutcome.declined, rng.choice(profile.decline_codes)
    if magic == MAGIC_LATE_MINOR:
        delay = callback_timeout_ms + LATE_BY_MS
    if magic == MAGIC_SHORT_MINOR:
        amount -= 1
    deliveries = {MAGIC_SILENT_MINOR: (), MAGIC_BLACK_HOLE_MINOR: (),
                  MAGIC_TWICE_MINOR: (delay, delay + 50)}.get(magic, (delay,))
    redirect, until_ack = None, False
    if first_leg and deliveries and profile.protocol == "card":
        # The synchronous answer, then the acquirer's asynchronous notification.
        deliveries = (*deliveries, deliveries[-1] + CARD_NOTIFY_AFTER_MS)
    elif first_leg and profile.protocol == "bank" and magic != MAGIC_BLACK_HOLE_MINOR:
        redirect = ChannelResponded(
            request_id=request.request_id, payment_id=request.payment_id,
            channel=request.channel, operation=request.operation,
            outcome=ChannelOutcome.pending, amount_minor=request.amount_minor,
            currency=request.currency, channel_serial="", responded_at_ms=at_ms)
    elif profile.protocol == "wallet" and deliveries:
        until_ack = True
    response = ChannelResponded(
        request_id=request.request_id, payment_id=request.payment_id, channel=request.channel,
        operation=request.operation, outcome=outcome, amount_minor=amount,
        currency=request.currency, channel_serial=derive_id("sn", request.channel,
                                                                 request.request_id),
        decline_code=code, responded_at_ms=at_ms + delay)
    return Answer(response, delay, deliveries, magic != MAGIC_BLACK_HOLE_MINOR, redirect,
                  until_ack)


def query_answer(query: ChannelRequested, known: Answer | None, requested_at_ms: int,
                 now_ms: int) -> ChannelResponded | None:
    """What the channel says when asked about an attempt (``query.reference`` is
    ``request_id/operation/n``): its outcome once decided, nothing while it is still
    processing (or for a black hole), and ``not_found`` for a request it never got."""
    request_id, operation, _ = query.reference.split("/")
    if known is None:
        return ChannelResponded(
            request_id=request_id, payment_id=query.payment_id, channel=query.channel,
            operation=ChannelOperation(operation), outcome=ChannelOutcome.declined,
            amount_minor=query.amount_minor, currency=query.currency,
            channel_serial="", decline_code="not_found", responded_at_ms=now_ms,
            via_query=True)
    if not known.answers_queries or now_ms < requested_at_ms + known.latency_ms:
        return None
    return known.response.model_copy(update={"via_query": True, "responded_at_ms": now_ms})


AFTERTHOUGHT_MS = 1_500
"""How long after its answer a channel changes its mind (success after decline) or
refunds by itself."""

_MAGIC = frozenset({MAGIC_DECLINE_MINOR, MAGIC_SILENT_MINOR, MAGIC_LATE_MINOR,
                    MAGIC_TWICE_MINOR, MAGIC_SHORT_MINOR, MAGIC_UNAVAILABLE_MINOR,
                    MAGIC_BLACK_HOLE_MINOR})


def with_faults(reply: Answer, request: ChannelRequested, drawn: list[Drawn],
                profile: SimulatorProfile, late_after_ms: int, seed: int) -> Answer | None:
    """The answer as the faults that hit this request change it; None: the request is lost
    (an outage). Payment attempts take every fault; follow-ups (capture, refund, void)
    only outages and repeated callbacks."""
    first_leg = request.operation in (ChannelOperation.sale, ChannelOperation.authorize,
                                      ChannelOperation.payout)
    response, delay, deliveries = reply.response, reply.latency_ms, reply.deliveries_ms
    for fault, progress in drawn:
        kind = fault.kind
        if kind is FaultKind.outage:
            return None
        if kind is FaultKind.duplicate_callbacks and deliveries:
            deliveries = (deliveries[0], deliveries[0] + 50, deliveries[0] + 300)
        elif kind is FaultKind.out_of_order and deliveries:
            rng = random.Random(f"{seed}:{request.request_id}:reorder")
            deliveries = (deliveries[0], deliveries[0] + rng.randrange(1_000, 5_000))
        elif not first_leg:
            continue
        elif kind is FaultKind.decline_spike:
            response = response.model_copy(update={
                "outcome": ChannelOutcome.declined,
                "decline_code": fault.code or profile.unavailable_code})
        elif kind is FaultKind.slow:
            factor = 1 + (fault.slow_factor_pct / 100 - 1) * progress
            delay = int(delay * factor)
            deliveries = tuple(int(d * factor) for d in deliveries)
        elif kind is FaultKind.no_callback:
            deliveries = ()
            reply = reply._replace(until_ack=False)
        elif kind is FaultKind.late_callback:
            delay = late_after_ms + LATE_BY_MS
            deliveries = (delay,)
        elif kind is FaultKind.amount_mismatch:
            response = response.model_copy(update={"amount_minor": request.amount_minor - 1})
        elif kind is FaultKind.partial_payment:
            response = response.model_copy(
                update={"amount_minor": max(request.amount_minor // 2, 1)})
        elif kind is FaultKind.success_after_decline and request.operation is \
                ChannelOperation.sale and response.outcome is ChannelOutcome.succeeded:
            took = response.model_copy(update={
                "responded_at_ms": response.responded_at_ms + AFTERTHOUGHT_MS})
            response = response.model_copy(update={
                "outcome": ChannelOutcome.declined, "decline_code": profile.decline_codes[0]})
            reply = reply._replace(afterwards=reply.afterwards + (
                (max(deliveries, default=delay) + AFTERTHOUGHT_MS, took),))
        elif kind is FaultKind.channel_refund and request.operation is \
                ChannelOperation.sale and response.outcome is ChannelOutcome.succeeded:
            refund_id = derive_id("chrefund", request.request_id)
            back = response.model_copy(update={
                "request_id": refund_id, "operation": ChannelOperation.refund,
                "channel_serial": derive_id("sn", request.channel, refund_id),
                "responded_at_ms": response.responded_at_ms + AFTERTHOUGHT_MS})
            reply = reply._replace(afterwards=reply.afterwards + (
                (max(deliveries, default=delay) + AFTERTHOUGHT_MS, back),))
    at = response.responded_at_ms - reply.latency_ms
    response = response.model_copy(update={"responded_at_ms": at + delay})
    return reply._replace(response=response, latency_ms=delay, deliveries_ms=deliveries)
