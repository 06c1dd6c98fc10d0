"""Risk scoring: weighted rules over a payment and its payer's recent activity.

Pure and deterministic: ``screen`` takes the payer's row, the command, the time the command
was accepted and the rules; it returns the new row and the verdict. The risk stage runs it
partitioned by payer, and the backtest runs the very same function over a recorded stream,
so a backtest with the live rules reproduces the live decisions.
"""

from __future__ import annotations

import ipaddress
from enum import Enum
from typing import Annotated, Literal, NamedTuple, Union

from pydantic import Field, field_validator, model_validator

from domain.commands import FieldError, Message, Method, Pay, TopUp, Transfer, Withdraw

Screened = Pay | Transfer | TopUp | Withdraw


class RiskDecision(str, Enum):
    approve = "approve"
    review = "review"
    decline = "decline"


class _Rule(Message):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    score: int = Field(ge=0, le=1_000)
    """Added to the payment's total when the rule fires."""


class AmountLimit(_Rule):
    """Above ``max_minor`` for a method and/or currency (and/or command type)."""

    kind: Literal["amount_limit"]
    max_minor: int = Field(ge=0)
    methods: tuple[Method, ...] = ()
    currency: str | None = None
    types: tuple[Literal["pay", "transfer", "topup", "withdraw"], ...] = ()


class Velocity(_Rule):
    """More than ``max_count`` payments, or more than ``max_sum_minor`` in ``currency``, by
    one payer within ``window_ms`` (this payment included)."""

    kind: Literal["velocity"]
    window_ms: int = Field(ge=1_000, le=31 * 86_400_000)
    max_count: int | None = Field(default=None, ge=1, le=255)
    """At most 255: a payer row remembers 256 payments (``SEEN_MAX``)."""
    max_sum_minor: int | None = Field(default=None, ge=1)
    currency: str | None = None

    @model_validator(mode="after")
    def _limit(self) -> Velocity:
        if self.max_count is None and self.max_sum_minor is None:
            raise ValueError("max_count or max_sum_minor: at least one is required")
        if self.max_sum_minor is not None and self.currency is None:
            raise ValueError("currency: required with max_sum_minor")
        return self


class Blocklist(_Rule):
    kind: Literal["blocklist"]
    accounts: tuple[str, ...] = ()
    """Payer account ids or customer ids (either matches)."""
    cards: tuple[str, ...] = ()
    """Card fingerprints."""
    devices: tuple[str, ...] = ()
    ip_ranges: tuple[str, ...] = ()
    """CIDR ranges, IPv4 or IPv6: ``10.66.0.0/16``."""

    @field_validator("ip_ranges")
    @classmethod
    def _cidr(cls, ranges: tuple[str, ...]) -> tuple[str, ...]:
        for item in ranges:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an IP range: {item!r} ({exc})") from exc
        return ranges


class NewAccount(_Rule):
    """A payer first seen less than ``age_ms`` ago paying more than ``max_minor``."""

    kind: Literal["new_account"]
    age_ms: int = Field(ge=1)
    max_minor: int = Field(ge=0)


class CountryMismatch(_Rule):
    """The payer's country differs from the card's issuing country."""

    kind: Literal["country_mismatch"]


class MerchantCategory(_Rule):
    """Merchants in these categories (``merchant_categories``) above ``max_minor``."""

    kind: Literal["merchant_category"]
    categories: tuple[str, ...] = Field(min_length=1)
    max_minor: int = Field(ge=0)


RiskRule = Annotated[
    Union[AmountLimit, Velocity, Blocklist, NewAccount, CountryMismatch, MerchantCategory],
    Field(discriminator="kind"),
]


class Thresholds(Message):
    review: int = Field(ge=1)
    """A total at or above this holds the payment for review."""
    decline: int = Field(ge=1)
    """A total at or above this declines it."""

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.decline < self.review:
            raise ValueError("decline: must be at least the review threshold")
        return self


class RiskRules(Message):
    """``config/risk.yaml``."""

    thresholds: Thresholds
    review_ttl_ms: int = Field(default=86_400_000, ge=1_000)
    """A payment nobody reviewed by then is declined."""
    merchant_categories: dict[str, str] = {}
    """merchant id -> category code (MCC), for ``merchant_category`` rules."""
    rules: tuple[RiskRule, ...] = ()
    version: str = ""
    """Set by the loader: a digest of the file, recorded with every decision."""

    @model_validator(mode="after")
    def _unique(self) -> RiskRules:
        ids = [r.id for r in self.rules]
        for i, rule in enumerate(self.rules):
            if rule.id in ids[:i]:
                raise FieldError(f"rule id {rule.id} is used twice", ("rules", i, "id"))
        return self

    def history_ms(self) -> int:
        """How far back the payer rows must remember payments."""
        windows = [r.window_ms for r in self.rules if isinstance(r, Velocity)]
        return max(windows, default=0)


class Hit(Message):
    rule_id: str
    score: int
    reason: str


class Verdict(Message):
    decision: RiskDecision
    score: int
    hits: tuple[Hit, ...] = ()
    version: str = ""
    review_ttl_ms: int = 0
    """For a review: how long ops have to decide before the payment is declined."""

    def summary(self) -> str:
        fired = ", ".join(f"{h.rule_id} +{h.score} ({h.reason})" for h in self.hits)
        return (f"risk {self.decision.value}, score {self.score}"
                f"{': ' + fired if fired else ''} [rules {self.version or '?'}]")


class Seen(Message):
    """One payment by this payer, as the velocity windows count it."""

    payment_id: str
    at_ms: int
    amount_minor: int
    currency: str


class Recent(Message):
    """A recent verdict, kept so a redelivered command gets exactly the same answer."""

    payment_id: str
    fingerprint: str
    verdict: Verdict


class PayerActivity(Message):
    """The risk table's row, one per payer (partitioned by payer)."""

    first_seen_ms: int
    seen: tuple[Seen, ...] = ()
    recent: tuple[Recent, ...] = ()


SEEN_MAX = 256
"""Payments a row remembers at most: the row is rewritten (and its changelog record sent)
on every payment, so it stays small. A count rule's ``max_count`` must stay below it."""
RECENT_MAX = 32


class Facts(NamedTuple):
    """What the rules look at, taken from any screened command."""

    payment_id: str
    merchant_id: str
    type: str
    method: Method
    currency: str
    amount_minor: int
    accounts: tuple[str, ...]
    card: str
    card_country: str
    country: str
    device: str
    ip: str


def facts_of(cmd: Screened) -> Facts:
    if isinstance(cmd, Pay):
        p = cmd.payer
        ids = tuple(i for i in (p.account_id, p.customer_id) if i)
        return Facts(cmd.subject_id(), cmd.merchant_id, cmd.type, cmd.method, cmd.currency,
                     cmd.amount_minor, ids, p.card_fingerprint or "", p.card_country or "",
                     p.country or "", p.device_id or "", str(p.ip) if p.ip else "")
    account = cmd.from_account_id if isinstance(cmd, Transfer) else cmd.account_id
    method = Method.balance if isinstance(cmd, Transfer) else cmd.method
    return Facts(cmd.subject_id(), cmd.merchant_id, cmd.type, method, cmd.currency,
                 cmd.amount_minor, (account,), "", "", "", "", "")


def payer_key(cmd: Screened) -> str:
    """The risk stage's partition key: the payer, as well as we can name them. A payer we
    cannot name is screened alone (no velocity), keyed by the payment."""
    if isinstance(cmd, Transfer):
        return f"acct:{cmd.from_account_id}"
    if isinstance(cmd, (TopUp, Withdraw)):
        return f"acct:{cmd.account_id}"
    p = cmd.payer
    for prefix, value in (("acct", p.account_id), ("cust", p.customer_id),
                          ("card", p.card_fingerprint), ("dev", p.device_id)):
        if value:
            return f"{prefix}:{value}"
    return f"pay:{cmd.subject_id()}"


def screen(row: PayerActivity | None, cmd: Screened, fingerprint: str, at_ms: int,
           rules: RiskRules) -> tuple[PayerActivity, Verdict]:
    """Score one command against the rules and the payer's history before it."""
    facts = facts_of(cmd)
    row = row or PayerActivity(first_seen_ms=at_ms)
    for item in row.recent:
        if item.payment_id == facts.payment_id and item.fingerprint == fingerprint:
            return row, item.verdict  # redelivered: the same answer
    index = next((i for i, s in enumerate(row.seen) if s.payment_id == facts.payment_id), None)
    before = row.seen if index is None else row.seen[:index]
    this = Seen(payment_id=facts.payment_id, at_ms=at_ms, amount_minor=facts.amount_minor,
                currency=facts.currency)
    if index is not None:
        this = row.seen[index]  # the same order again (a payer's retry): counted once
    verdict = evaluate(rules, facts, before, this, row.first_seen_ms)
    seen = row.seen if index is not None else row.seen + (this,)
    horizon = at_ms - rules.history_ms()
    seen = tuple(s for s in seen if s.at_ms >= horizon)[-SEEN_MAX:]
    recent = (*row.recent, Recent(payment_id=facts.payment_id, fingerprint=fingerprint,
                                  verdict=verdict))[-RECENT_MAX:]
    return row.model_copy(update={"seen": seen, "recent": recent}), verdict


def evaluate(rules: RiskRules, f: Facts, before: tuple[Seen, ...], this: Seen,
             first_seen_ms: int) -> Verdict:
    hits = tuple(h for rule in rules.rules if (h := _fire(rule, rules, f, before, this,
                                                          first_seen_ms)) is not None)
    score = sum(h.score for h in hits)
    decision = RiskDecision.approve
    if score >= rules.thresholds.decline:
        decision = RiskDecision.decline
    elif score >= rules.thresholds.review:
        decision = RiskDecision.review
    ttl = rules.review_ttl_ms if decision is RiskDecision.review else 0
    return Verdict(decision=decision, score=score, hits=hits, version=rules.version,
                   review_ttl_ms=ttl)


def _fire(rule, rules: RiskRules, f: Facts, before: tuple[Seen, ...], this: Seen,
          first_seen_ms: int) -> Hit | None:
    def hit(reason: str) -> Hit:
        return Hit(rule_id=rule.id, score=rule.score, reason=reason)

    if isinstance(rule, AmountLimit):
        if rule.methods and f.method not in rule.methods:
            return None
        if rule.currency and f.currency != rule.currency:
            return None
        if rule.types and f.type not in rule.types:
            return None
        if f.amount_minor > rule.max_minor:
            return hit(f"amount {f.amount_minor} {f.currency} over {rule.max_minor}")
        return None
    if isinstance(rule, Velocity):
        start = this.at_ms - rule.window_ms
        window = [s for s in before if start < s.at_ms <= this.at_ms] + [this]
        if rule.max_count is not None and len(window) > rule.max_count:
            return hit(f"{len(window)} payments in {rule.window_ms // 1000} s "
                       f"(max {rule.max_count})")
        if rule.max_sum_minor is not None:
            total = sum(s.amount_minor for s in window if s.currency == rule.currency)
            if total > rule.max_sum_minor:
                return hit(f"{total} {rule.currency} in {rule.window_ms // 1000} s "
                           f"(max {rule.max_sum_minor})")
        return None
    if isinstance(rule, Blocklist):
        for account in f.accounts:
            if account in rule.accounts:
                return hit(f"account {account} blocked")
        if f.card and f.card in rule.cards:
            return hit("card blocked")
        if f.device and f.device in rule.devices:
            return hit(f"device {f.device} blocked")
        if f.ip:
            address = ipaddress.ip_address(f.ip)
            if address.version == 6 and address.ipv4_mapped is not None:
                address = address.ipv4_mapped  # ::ffff:198.51.100.7 is an IPv4 client
            for cidr in rule.ip_ranges:
                network = ipaddress.ip_network(cidr, strict=False)
                if address.version == network.version and address in network:
                    return hit(f"ip in blocked range {cidr}")
        return None
    if isinstance(rule, NewAccount):
        age = this.at_ms - first_seen_ms
        if age < rule.age_ms and f.amount_minor > rule.max_minor:
            return hit(f"payer first seen {age // 1000} s ago, amount {f.amount_minor} "
                       f"over {rule.max_minor}")
        return None
    if isinstance(rule, CountryMismatch):
        if f.country and f.card_country and f.country != f.card_country:
            return hit(f"payer in {f.country}, card from {f.card_country}")
        return None
    assert isinstance(rule, MerchantCategory), type(rule)
    category = rules.merchant_categories.get(f.merchant_id, "")
    if category in rule.categories and f.amount_minor > rule.max_minor:
        return hit(f"merchant category {category}, amount {f.amount_minor} over "
                   f"{rule.max_minor}")
    return None
