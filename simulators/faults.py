"""Channel faults a scenario switches on and off: what a simulated channel does wrong, when.

A ``FaultPlan`` reaches the simulator on ``pay.sim.control``; each fault acts on one
channel between ``from_s`` and ``to_s`` seconds after the plan's ``start_ms``, on a
``rate_bps`` share of the payment attempts it sees (drawn from the seed and the request id,
so a rerun with the same seed and the same traffic draws the same requests). Every fault
applied is reported on ``pay.sim.injections``, so a scenario can compare what was injected
with what the core noticed.
"""

from __future__ import annotations

import random
from enum import Enum
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FaultKind(str, Enum):
    outage = "outage"
    """The channel is down: requests are lost (never answered; unknown to status queries
    once it is back, which then say not_found)."""
    decline_spike = "decline_spike"
    """Declines with ``code`` (default: the channel's technical code, so orders fail over)."""
    slow = "slow"
    """Latency grows from normal to ``slow_factor_pct`` percent over the window (slow
    degradation)."""
    no_callback = "no_callback"
    """The callback is lost; a status query finds the outcome."""
    duplicate_callbacks = "duplicate_callbacks"
    """The callback comes three times."""
    out_of_order = "out_of_order"
    """The callback is delivered again 1 to 5 s later, after the payment's later callbacks."""
    late_callback = "late_callback"
    """The callback comes after the order stopped waiting (callback timeout and queries)."""
    amount_mismatch = "amount_mismatch"
    """The channel reports one minor unit less than asked."""
    partial_payment = "partial_payment"
    """The channel reports half the amount paid."""
    success_after_decline = "success_after_decline"
    """The channel declines, then 1.5 s later says the same request succeeded after all
    (it took the money): the order has failed; reconciliation finds it."""
    channel_refund = "channel_refund"
    """The payment succeeds; 1.5 s later the channel refunds it by itself (a refund answer
    for a request we never sent): reconciliation finds it."""


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str
    kind: FaultKind
    from_s: float = Field(ge=0)
    to_s: float = Field(gt=0)
    rate_bps: int = Field(default=10_000, ge=0, le=10_000)
    slow_factor_pct: int = Field(default=500, ge=100, le=100_000)
    code: str | None = None

    @model_validator(mode="after")
    def _window(self) -> Fault:
        if self.to_s <= self.from_s:
            raise ValueError("to_s: must be after from_s")
        return self


class FaultPlan(BaseModel):
    """The control message: which faults, from when (epoch ms)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scenario: str
    seed: int
    start_ms: int
    faults: tuple[Fault, ...] = ()

    def active(self, channel: str, at_ms: int) -> list[tuple[Fault, float]]:
        """Faults on ``channel`` at ``at_ms``, each with how far through its window (0..1)."""
        t = (at_ms - self.start_ms) / 1000
        return [(f, (t - f.from_s) / (f.to_s - f.from_s)) for f in self.faults
                if f.channel == channel and f.from_s <= t < f.to_s]


class Drawn(NamedTuple):
    fault: Fault
    progress: float
    """How far through the fault's window the request came (0..1)."""


def draw(plan: FaultPlan | None, channel: str, request_id: str, at_ms: int) -> list[Drawn]:
    """The faults that hit this request: each active fault, on its ``rate_bps`` share."""
    if plan is None:
        return []
    hits = []
    for fault, progress in plan.active(channel, at_ms):
        rng = random.Random(f"{plan.seed}:{request_id}:{fault.kind.value}")
        if rng.randrange(10_000) < fault.rate_bps:
            hits.append(Drawn(fault, progress))
    return hits
