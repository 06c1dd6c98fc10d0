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
from streams.channels_config import SimulatorProfile

MAGIC_DECLINE_MINOR = 13
"""Test magic: an amount whose last three digits are 013 is always declined."""

# z-score of the 99th percentile of a standard normal: lognormal tail from median and p99.
_Z99 = 2.326


class Answer(NamedTuple):
    response: ChannelResponded
    latency_ms: int


def latency_ms(rng: random.Random, profile: SimulatorProfile) -> int:
    median = max(profile.latency_ms_median, 0)
    if median == 0:
        return 0
    p99 = max(profile.latency_ms_p99, median)
    sigma = math.log(p99 / median) / _Z99
    return int(median * math.exp(rng.gauss(0.0, sigma)))


def answer(request: ChannelRequested, profile: SimulatorProfile, seed: int, at_ms: int) -> Answer:
    rng = random.Random(f"{seed}:{request.request_id}")
    delay = latency_ms(rng, profile)
    outcome, code = ChannelOutcome.succeeded, ""
    first_leg = request.operation in (ChannelOperation.sale, ChannelOperation.authorize)
    if first_leg and request.amount_minor % 1000 == MAGIC_DECLINE_MINOR:
        outcome, code = ChannelOutcome.declined, profile.decline_codes[0]
    elif first_leg and rng.randrange(10_000) < profile.decline_bps:
        outcome, code = ChannelOutcome.declined, rng.choice(profile.decline_codes)
    response = ChannelResponded(
        request_id=request.request_id, payment_id=request.payment_id, channel=request.channel,
        operation=request.operation, outcome=outcome, amount_minor=request.amount_minor,
        currency=request.currency, channel_serial=derive_id(request.channel, request.request_id),
        decline_code=code, responded_at_ms=at_ms + delay)
    return Answer(response, delay)
