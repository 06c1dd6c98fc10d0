"""Routing: which channels may take a payment, in which order, and why.

Pure: ``plan_route`` turns (rules, the payment's facts, each channel's health as seen now)
into an ordered candidate list. The order stage snapshots the plan into the order, so a
replay charges the same fee and fails over to the same next channel. ``ChannelHealth``
keeps the sliding window and circuit breaker that feed it; it takes the time as an
argument, so tests drive it without a clock.
"""

from __future__ import annotations

import fnmatch
from collections import deque
from enum import Enum
from typing import Mapping, NamedTuple

from pydantic import Field, model_validator

from domain.commands import FieldError, Message, Method
from domain.ids import derive_id


class LateSuccess(str, Enum):
    """What to do with a success that arrives after the order timed out."""

    accept = "accept"
    """Book it: the order succeeds after all."""
    refund = "refund"
    """Send the money back through the channel: the order fails."""


class ChannelTerms(Message):
    """What a channel accepts and charges (``config/routing.yaml``, ``channels``)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    kind: str = Field(default="card", pattern=r"^(card|bank|wallet)$")
    methods: tuple[Method, ...] = Field(min_length=1)
    currencies: tuple[str, ...] = Field(min_length=1)
    amount_min_minor: int = Field(default=1, ge=1)
    amount_max_minor: int = Field(default=10**15, ge=1)
    fee_bps: int = Field(default=0, ge=0, le=10_000)
    fee_fixed_minor: int = Field(default=0, ge=0)
    priority: int = 100
    callback_timeout_ms: int = Field(default=30_000, ge=100, le=86_400_000)
    """No answer by then: the order is ``timed_out`` (or fails over; a late answer still
    resolves it)."""
    authorization_ttl_ms: int = Field(default=7 * 86_400_000, ge=100)
    """An authorization not captured by then is voided automatically."""
    late_success: LateSuccess = LateSuccess.refund
    """A success after the timeout: ``accept`` books it, ``refund`` sends it back."""
    status_query: bool = False
    """The channel answers status queries: when a callback does not come in time, the
    order asks (up to ``status_queries_max`` times, ``status_query_timeout_ms`` apart)
    before it fails over or times out."""
    status_queries_max: int = Field(default=2, ge=1, le=10)
    status_query_timeout_ms: int = Field(default=5_000, ge=100, le=3_600_000)
    retriable_declines: tuple[str, ...] = ()
    """Decline codes that say "the channel could not", not "the payer may not": these fail
    over to the next candidate and count as channel errors for the circuit breaker."""
    notify_until_ack: bool = False
    """The channel re-sends each notification until we acknowledge it (wallets do)."""
    failover_on_timeout: bool = False
    """Try the next candidate when this channel does not answer in time. Off by default: a
    silent channel may still have charged the payer; the order stays open for the late
    answer, and a second success is sent back, but the payer sees two charges meanwhile."""

    @model_validator(mode="after")
    def _sane(self) -> ChannelTerms:
        if Method.balance in self.methods:
            raise ValueError("methods: balance is paid inside the ledger, not through a channel")
        if self.amount_min_minor > self.amount_max_minor:
            raise ValueError("amount_min_minor: above amount_max_minor")
        return self

    def takes(self, method: Method, currency: str, amount_minor: int) -> bool:
        return (method in self.methods and currency in self.currencies
                and self.amount_min_minor <= amount_minor <= self.amount_max_minor)

    def fee_minor(self, amount_minor: int) -> int:
        """Basis points rounded half up, plus the fixed part (integers only)."""
        return (amount_minor * self.fee_bps + 5_000) // 10_000 + self.fee_fixed_minor


class Strategy(str, Enum):
    priority = "priority"
    """The rule's list order (else each channel's ``priority``)."""
    weighted = "weighted"
    """Split traffic by weight (70/30): the payment id picks, so a replay picks the same."""
    cheapest = "cheapest"
    """The lowest fee for this amount first."""


class Match(Message):
    """What a rule applies to; an empty field matches everything."""

    methods: tuple[Method, ...] = ()
    currencies: tuple[str, ...] = ()
    amount_min_minor: int = Field(default=0, ge=0)
    amount_max_minor: int | None = Field(default=None, ge=0)
    merchants: tuple[str, ...] = ()
    """Shell-style globs over merchant ids."""
    payer_countries: tuple[str, ...] = ()


class RoutingRule(Message):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    when: Match = Match()
    strategy: Strategy = Strategy.priority
    channels: tuple[str, ...] = ()
    """Candidates in order; empty: every channel that takes the payment."""
    weights: dict[str, int] = {}
    """For ``weighted``: channel -> weight (any positive integers: 70/30, 7/3)."""

    @model_validator(mode="after")
    def _weights(self) -> RoutingRule:
        if self.strategy is Strategy.weighted:
            if not self.weights:
                raise ValueError("weights: required for strategy weighted")
            if any(w <= 0 for w in self.weights.values()):
                raise ValueError("weights: must be positive")
        elif self.weights:
            raise ValueError("weights: only for strategy weighted")
        return self


class HealthPolicy(Message):
    """Dynamic health, per channel, over a sliding window of recent attempts."""

    window_ms: int = Field(default=60_000, ge=1_000)
    min_samples: int = Field(default=20, ge=1)
    """Fewer attempts than this in the window: no judgement yet."""
    min_success_rate_bps: int = Field(default=5_000, ge=0, le=10_000)
    """Below this success rate a channel moves behind the healthy ones."""
    max_latency_p50_ms: int | None = Field(default=None, ge=1)
    """Above this median answer time a channel moves behind the healthy ones too."""
    exploration_bps: int = Field(default=200, ge=0, le=10_000)
    """Share of payments that try a demoted channel first, so its figures stay current."""
    breaker_error_rate_bps: int = Field(default=5_000, ge=1, le=10_000)
    """Errors (timeouts, retriable declines) at or above this share open the breaker."""
    breaker_min_samples: int = Field(default=10, ge=1)
    breaker_open_ms: int = Field(default=30_000, ge=100)
    """How long an open breaker refuses traffic before one probe may go through."""


class RoutingRules(Message):
    """``config/routing.yaml``."""

    channels: tuple[ChannelTerms, ...] = Field(min_length=1)
    rules: tuple[RoutingRule, ...] = ()
    """First match wins; without a match every channel that takes the payment, by priority."""
    health: HealthPolicy = HealthPolicy()
    max_attempts: int = Field(default=2, ge=1, le=5)
    """Attempts per payment across channels (failover); 1 turns failover off."""
    balance_authorization_ttl_ms: int = Field(default=7 * 86_400_000, ge=100)
    """An authorization on a wallet balance not captured by then is released."""
    version: str = ""
    """Set by the loader: a digest of the file, recorded with every decision."""

    @model_validator(mode="after")
    def _references(self) -> RoutingRules:
        names = [c.name for c in self.channels]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise FieldError(f"channel {name} is listed twice", ("channels", i, "name"))
        ids = [r.id for r in self.rules]
        for i, rule in enumerate(self.rules):
            if rule.id in ids[:i]:
                raise FieldError(f"rule id {rule.id} is used twice", ("rules", i, "id"))
            for field in ("channels", "weights"):
                unknown = [n for n in getattr(rule, field) if n not in names]
                if unknown:
                    raise FieldError(f"rule {rule.id} names unknown channels {unknown}",
                                     ("rules", i, field))
        return self

    def channel(self, name: str) -> ChannelTerms | None:
        return next((c for c in self.channels if c.name == name), None)


class Route(Message):
    """One attempt's channel and terms, snapshotted into the order so replays charge the
    same fee and apply the same timeout rules."""

    channel: str
    fee_bps: int
    fee_fixed_minor: int
    reason: str
    callback_timeout_ms: int = 30_000
    authorization_ttl_ms: int = 7 * 86_400_000
    late_success: LateSuccess = LateSuccess.refund
    retriable_declines: tuple[str, ...] = ()
    failover_on_timeout: bool = False
    status_queries_max: int = 0
    """0: the channel takes no status queries."""
    status_query_timeout_ms: int = 5_000


class RoutePlan(Message):
    """The routing decision: candidates in order (the first is tried first, the rest are
    failover), which rule chose them, why, and under which rules version."""

    candidates: tuple[Route, ...]
    rule_id: str
    version: str
    scores: str
    """Per candidate: fee, health and breaker state at the moment of the decision."""
    max_attempts: int = 1
    probe: str = ""
    """A half-open channel this payment probes ('' if none)."""


class Breaker(str, Enum):
    closed = "closed"
    open = "open"
    half_open = "half_open"
    """Open long enough: one probe may go through; its outcome closes or re-opens."""


class HealthView(NamedTuple):
    samples: int
    success_rate_bps: int
    error_rate_bps: int
    latency_p50_ms: int
    breaker: Breaker

    @property
    def judged(self) -> bool:
        return self.samples > 0


UNKNOWN_HEALTH = HealthView(0, 10_000, 0, 0, Breaker.closed)

INTERNAL_CHANNEL = "internal"
"""Money that moves only inside our ledger (balance pay, transfers): answered at once."""


def internal_route(authorization_ttl_ms: int) -> Route:
    return Route(channel=INTERNAL_CHANNEL, fee_bps=0, fee_fixed_minor=0,
                 reason="internal accounts", callback_timeout_ms=0,
                 authorization_ttl_ms=authorization_ttl_ms)


def internal_plan(authorization_ttl_ms: int, version: str = "") -> RoutePlan:
    route = internal_route(authorization_ttl_ms)
    return RoutePlan(candidates=(route,), rule_id="internal", version=version,
                     scores="internal accounts")


class Payment(NamedTuple):
    """The facts routing looks at."""

    payment_id: str
    merchant_id: str
    method: Method
    currency: str
    amount_minor: int
    payer_country: str = ""


def matching_rule(rules: RoutingRules, p: Payment) -> RoutingRule | None:
    for rule in rules.rules:
        w = rule.when
        if w.methods and p.method not in w.methods:
            continue
        if w.currencies and p.currency not in w.currencies:
            continue
        if p.amount_minor < w.amount_min_minor:
            continue
        if w.amount_max_minor is not None and p.amount_minor > w.amount_max_minor:
            continue
        if w.merchants and not any(fnmatch.fnmatchcase(p.merchant_id, g) for g in w.merchants):
            continue
        if w.payer_countries and p.payer_country not in w.payer_countries:
            continue
        return rule
    return None


def _draw(payment_id: str, salt: str, modulus: int) -> int:
    """A number in [0, modulus) fixed by the payment id: weighted splits and exploration
    are reproducible (a replay, a backtest) yet spread evenly over payments."""
    return int(derive_id("draw", salt, payment_id).split("_")[-1][:12], 16) % modulus


def plan_route(rules: RoutingRules, p: Payment,
               health: Mapping[str, HealthView] | None = None) -> RoutePlan | None:
    """Ordered candidates for a payment, or None if no channel takes it."""
    health = health or {}
    rule = matching_rule(rules, p)
    eligible = [c for c in rules.channels if c.takes(p.method, p.currency, p.amount_minor)]
    if rule is not None and rule.channels:
        listed = {name: i for i, name in enumerate(rule.channels)}
        eligible = sorted((c for c in eligible if c.name in listed), key=lambda c: listed[c.name])
    elif rule is not None and rule.weights:
        eligible = [c for c in eligible if c.name in rule.weights]
    else:
        eligible.sort(key=lambda c: (c.priority, c.name))
    if not eligible:
        return None
    strategy = rule.strategy if rule is not None else Strategy.priority
    ordered = _by_strategy(eligible, strategy, rule, p)
    view = {c.name: health.get(c.name, UNKNOWN_HEALTH) for c in ordered}
    policy = rules.health

    def unhealthy(c: ChannelTerms) -> bool:
        v = view[c.name]
        if v.samples < policy.min_samples:
            return False
        limit = policy.max_latency_p50_ms
        slow = limit is not None and v.latency_p50_ms > limit
        return v.success_rate_bps < policy.min_success_rate_bps or slow

    probes = [c for c in ordered if view[c.name].breaker is Breaker.half_open]
    shut = [c for c in ordered if view[c.name].breaker is Breaker.open]
    usable = [c for c in ordered if view[c.name].breaker is Breaker.closed]
    healthy = [c for c in usable if not unhealthy(c)]
    demoted = [c for c in usable if unhealthy(c)]
    front = probes[:1]
    explore = ""
    if not front and demoted and _draw(p.payment_id, "explore", 10_000) < policy.exploration_bps:
        front, demoted = demoted[:1], demoted[1:]
        explore = f" (exploring {front[0].name})"
    final = front + [c for c in healthy + demoted + probes[1:] if c not in front]
    if not final:
        final = shut  # every breaker open: try anyway rather than refuse the payer
    why = f"rule {rule.id} ({strategy.value})" if rule is not None else "no rule: by priority"
    scores = "; ".join(_score(c, p.amount_minor, view[c.name]) for c in ordered)
    candidates = tuple(_route(c, f"{why}{explore}") for c in final)
    return RoutePlan(candidates=candidates, rule_id=rule.id if rule is not None else "",
                     version=rules.version, scores=scores, max_attempts=rules.max_attempts,
                     probe=probes[0].name if probes and final[0] is probes[0] else "")


def _by_strategy(eligible: list[ChannelTerms], strategy: Strategy, rule: RoutingRule | None,
                 p: Payment) -> list[ChannelTerms]:
    if strategy is Strategy.cheapest:
        return sorted(eligible, key=lambda c: (c.fee_minor(p.amount_minor), c.priority, c.name))
    if strategy is Strategy.weighted:
        assert rule is not None
        weights = [(c, rule.weights.get(c.name, 0)) for c in eligible]
        weights = [(c, w) for c, w in weights if w > 0]
        total = sum(w for _, w in weights)
        if not total:
            return eligible
        point, first = _draw(p.payment_id, rule.id, total), weights[0][0]
        for channel, weight in weights:
            if point < weight:
                first = channel
                break
            point -= weight
        rest = sorted((c for c, _ in weights if c is not first),
                      key=lambda c: (-rule.weights[c.name], c.name))
        return [first, *rest]
    return eligible


def _score(c: ChannelTerms, amount_minor: int, v: HealthView) -> str:
    health = (f"success {v.success_rate_bps / 100:.1f}% of {v.samples}, "
              f"p50 {v.latency_p50_ms} ms" if v.judged else "no recent attempts")
    return f"{c.name}: fee {c.fee_minor(amount_minor)}, {health}, breaker {v.breaker.value}"


def _route(c: ChannelTerms, reason: str) -> Route:
    return Route(channel=c.name, fee_bps=c.fee_bps, fee_fixed_minor=c.fee_fixed_minor,
                 reason=reason, callback_timeout_ms=c.callback_timeout_ms,
                 authorization_ttl_ms=c.authorization_ttl_ms, late_success=c.late_success,
                 retriable_declines=c.retriable_declines,
                 failover_on_timeout=c.failover_on_timeout,
                 status_queries_max=c.status_queries_max if c.status_query else 0,
                 status_query_timeout_ms=c.status_query_timeout_ms)


def choose_route(rules: RoutingRules, p: Payment,
                 health: Mapping[str, HealthView] | None = None) -> Route | None:
    """The first candidate only (a payer's own retry on another method uses this)."""
    plan = plan_route(rules, p, health)
    return plan.candidates[0] if plan else None


# ---------------------------------------------------------------- health


class Outcome(str, Enum):
    succeeded = "succeeded"
    declined = "declined"
    """The payer's side said no: not the channel's fault."""
    error = "error"
    """A timeout or a retriable (technical) decline: counts against the breaker."""


class _Channel:
    __slots__ = ("samples", "ok", "errors", "breaker", "opened_at_ms", "probing_since_ms",
                 "p50_ms", "p50_at_ms")

    def __init__(self) -> None:
        self.samples: deque[tuple[int, Outcome, int]] = deque()
        self.ok = self.errors = 0  # running counts over ``samples``: no scan per payment
        self.breaker = Breaker.closed
        self.opened_at_ms = 0
        self.probing_since_ms = 0
        self.p50_ms = 0
        self.p50_at_ms = -10**18

    def add(self, sample: tuple[int, Outcome, int]) -> None:
        self.samples.append(sample)
        self.ok += sample[1] is Outcome.succeeded
        self.errors += sample[1] is Outcome.error

    def drop_oldest(self) -> None:
        _, outcome, _ = self.samples.popleft()
        self.ok -= outcome is Outcome.succeeded
        self.errors -= outcome is Outcome.error

    def clear(self) -> None:
        self.samples.clear()
        self.ok = self.errors = 0


class ChannelHealth:
    """Success rate, error rate and latency per channel over a sliding window, plus a
    circuit breaker: opens on an error spike, lets one probe through after
    ``breaker_open_ms``, closes when the probe succeeds, re-opens when it fails.

    Each worker keeps its own, from the attempts it sees (like a client-side breaker):
    with payments spread over partitions every worker sees a fair sample."""

    SAMPLES_MAX = 5_000
    P50_EVERY_MS = 500

    def __init__(self, policy: HealthPolicy) -> None:
        self.policy = policy
        self._channels: dict[str, _Channel] = {}

    def _get(self, channel: str) -> _Channel:
        return self._channels.setdefault(channel, _Channel())

    def _trim(self, state: _Channel, now_ms: int) -> None:
        horizon = now_ms - self.policy.window_ms
        while state.samples and (state.samples[0][0] < horizon
                                 or len(state.samples) > self.SAMPLES_MAX):
            state.drop_oldest()

    def record(self, channel: str, outcome: Outcome, latency_ms: int, now_ms: int) -> None:
        """One attempt's outcome; ``latency_ms`` -1 if unknown (a timeout, a restart)."""
        state = self._get(channel)
        state.add((now_ms, outcome, latency_ms))  # -1: latency unknown
        self._trim(state, now_ms)
        if state.breaker is not Breaker.closed and state.probing_since_ms:
            if outcome is Outcome.error:  # the probe failed: open again
                state.breaker, state.opened_at_ms = Breaker.open, now_ms
            else:
                state.breaker = Breaker.closed
                state.clear()  # judge the recovered channel afresh
            state.probing_since_ms = 0
            return
        if state.breaker is Breaker.closed:
            n, errors = len(state.samples), state.errors
            if n >= self.policy.breaker_min_samples and \
                    errors * 10_000 >= self.policy.breaker_error_rate_bps * n:
                state.breaker, state.opened_at_ms = Breaker.open, now_ms

    def probe_started(self, channel: str, now_ms: int) -> None:
        self._get(channel).probing_since_ms = now_ms

    def view(self, channel: str, now_ms: int) -> HealthView:
        state = self._get(channel)
        self._trim(state, now_ms)
        breaker = state.breaker
        if breaker is Breaker.open and now_ms - state.opened_at_ms >= self.policy.breaker_open_ms:
            # A probe that never came back (lost, timed out unseen) frees the slot again.
            stale = now_ms - state.probing_since_ms >= self.policy.breaker_open_ms
            breaker = Breaker.half_open if not state.probing_since_ms or stale else Breaker.open
        n = len(state.samples)
        if not n:
            return HealthView(0, 10_000, 0, 0, breaker)
        if now_ms - state.p50_at_ms >= self.P50_EVERY_MS:  # a sort, at most twice a second
            known = sorted(lat for _, _, lat in state.samples if lat >= 0)
            state.p50_ms = known[len(known) // 2] if known else 0
            state.p50_at_ms = now_ms
        return HealthView(n, state.ok * 10_000 // n, state.errors * 10_000 // n, state.p50_ms,
                          breaker)

    def views(self, channels, now_ms: int) -> dict[str, HealthView]:
        return {c: self.view(c, now_ms) for c in channels}

    def breaker(self, channel: str, now_ms: int) -> Breaker:
        return self.view(channel, now_ms).breaker
