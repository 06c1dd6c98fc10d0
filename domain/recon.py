"""Continuous reconciliation: three-way matching of one payment, pure.

One ``ReconItem`` per payment id collects what each side said about it:

- the order: its status events (what we think happened, and what we captured and refunded);
- the channel: its callbacks and status-query answers, the latest answer per request;
- the ledger: the payment's legs on its channel's clearing account and on the fee account;
- the channel's settlement lines: what it says it paid us, and when.

After every observation ``observe`` evaluates the item. The three live sides must agree
once the order is final and the item has been quiet for the channel's ``grace_ms`` (until
then a difference is money in flight, not a mismatch). A settlement line is compared with
the order once the live sides agree: one that matches is booked (the order stage moves the
merchants' money from pending to settled and the channel's clearing to cash); one that does
not is held for ops. A payment captured on day T expects its line by T+N: when the channel
closes that period (``SettlementClosed``) and no line came, it is missing at the channel.

Each discrepancy is raised once, as a ``ReconException`` with its kind and every record
involved. Where the channel's rule allows it, the safe ones are resolved automatically: a
channel success for a failed or timed-out order makes the order succeed (and posts it); a
refund the channel made by itself is posted. Everything else waits for ops.

Time comes in as ``at_ms``; dates are UTC days (YYYY-MM-DD). Nothing here reads a clock.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta, timezone
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from domain.commands import Message
from domain.events import (
    ChannelResponded,
    ExceptionResolved,
    LegApplied,
    PaymentStatusChanged,
    SettlementReported,
)
from domain.ids import derive_id
from domain.recon_kinds import ExceptionKind
from domain.routing import INTERNAL_CHANNEL

DAY_MS = 86_400_000
WRITE_OFF = "write_off"
"""The reason of ops' write-off entries (``domain.resolutions``): their clearing legs are
a receivable given up, not a capture."""


K = ExceptionKind


# ---------------------------------------------------------------- rules (config/recon.yaml)


class AutoResolve(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    success_for_failed: bool = False
    """A channel success (callback or settlement line) for the full amount of a failed or
    timed-out order makes the order succeed and posts the capture."""
    channel_refund: bool = False
    """A refund the channel made by itself (it answered a refund we never asked for) is
    posted as a refund of the order."""


class Matching(BaseModel):
    """How one channel's records are matched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str = "*"
    settle_days: int = Field(default=1, ge=0, le=60)
    """T+N: a payment captured on day T is settled in the channel's report for T..T+N."""
    date_window_days: int = Field(default=0, ge=0, le=30)
    """Days a line may be dated after T+N and still match."""
    fee_tolerance_minor: int = Field(default=0, ge=0)
    fee_tolerance_bps: int = Field(default=0, ge=0, le=10_000)
    """A line's fee matches ours within minor units plus basis points of our fee."""
    lines_per_payment: Literal["one", "many"] = "one"
    """``one``: a second line for a payment is a duplicate. ``many``: the channel settles a
    payment in parts (split or partial captures); the lines add up to our amount."""
    line_wait_ms: int = Field(default=10_000, ge=0)
    """How long a line waits for the order's success before it is an exception."""
    grace_ms: int = Field(default=5_000, ge=0)
    """How long the order, the callbacks and the ledger may disagree (money in flight)."""
    booking_grace_ms: int = Field(default=60_000, ge=0)
    """How long a matched line may take to be booked, and a ledger entry to have all its
    legs applied: a settlement file's lines are matched at once and the order and ledger
    stages then work through all of them, and an entry's legs sit on the partitions of
    different (busy) accounts. Raising those after ``grace_ms`` flagged most lines of every
    file as unbooked, then cleared them seconds later."""
    auto_resolve: AutoResolve = AutoResolve()

    def fee_allowance(self, ours_minor: int) -> int:
        return self.fee_tolerance_minor + abs(ours_minor) * self.fee_tolerance_bps // 10_000


class ReconRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = ""
    defaults: Matching = Matching()
    channels: tuple[Matching, ...] = ()
    retention_days: int = Field(default=7, ge=0, le=400)
    """How long a matched item is kept (so a late duplicate line is still recognised)."""
    _merged: dict[str, Matching] = PrivateAttr(default_factory=dict)

    def model_post_init(self, _context) -> None:
        base = self.defaults.model_dump()
        for c in self.channels:  # what the entry sets, the defaults for the rest
            given = c.model_dump(exclude_unset=True)
            if "auto_resolve" in given:
                given["auto_resolve"] = {**base["auto_resolve"], **c.auto_resolve.model_dump(
                    exclude_unset=True)}
            self._merged[c.channel] = Matching.model_validate({**base, **given})

    @model_validator(mode="after")
    def _unique(self) -> ReconRules:
        names = [c.channel for c in self.channels]
        if "*" in names:
            raise ValueError("channels: a channel needs a name ('*' is the defaults)")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"channels: {', '.join(twice)} listed twice")
        return self

    def for_channel(self, name: str) -> Matching:
        """The channel's rule: what its entry sets, the defaults for the rest."""
        found = self._merged.get(name)
        return found if found is not None else self.defaults.model_copy(
            update={"channel": name})


# ---------------------------------------------------------------- messages


class SettlementClosed(Message):
    """A channel's report for ``period`` is complete (sent to every partition): payments
    due by then and not in any report are missing at the channel."""

    channel: str
    period: str
    lines: int = 0


class ReconWake(Message):
    """The recon sweeper's nudge: the item asked to be looked at again at ``wake_ms``."""

    payment_id: str
    wake_ms: int


class ChannelSuccessConfirmed(Message):
    """Reconciliation to the order stage: the channel took this money; succeed the order."""

    payment_id: str
    channel: str
    channel_serial: str
    amount_minor: int
    currency: str
    evidence: str


class ChannelRefundConfirmed(Message):
    """Reconciliation to the order stage: the channel answered a refund (``request_id``)
    the order may never have asked for; if so, it is posted."""

    payment_id: str
    channel: str
    request_id: str
    amount_minor: int
    currency: str
    evidence: str


class OrderView(BaseModel):
    """The order as its latest status event tells it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: str
    amount_minor: int
    currency: str
    channel: str
    channel_serial: str
    captured_minor: int
    refunded_minor: int
    at_ms: int
    captured_on: str = ""
    """The UTC day the order first captured money (T of T+N); '' if never."""
    first_on: str = ""
    """The UTC day of the first status event seen (a line may be dated from then: an
    order resolved late captured later than the channel took the money)."""

    @property
    def net_minor(self) -> int:
        """What the order kept: nothing once revoked (canceled after a capture: reversed)."""
        if self.status == "canceled":
            return 0
        return self.captured_minor - self.refunded_minor


class CallbackSeen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str
    operation: str
    outcome: str
    amount_minor: int
    currency: str
    channel: str
    channel_serial: str


class LedgerSeen(BaseModel):
    """The payment's posted legs that reconciliation matches, summed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clearing_minor: int = 0
    """Legs on the channel's clearing account from captures, refunds and suspense (a
    capture of 100 is -100: the channel owes us 100)."""
    settled_minor: int = 0
    """Legs on the clearing account from settlements (the channel paid: +100)."""
    fee_minor: int = 0
    """Legs on our fee account: the fee the channel should charge."""
    postings: tuple[str, ...] = ()
    """Posting ids seen: a leg delivered twice counts once."""
    entries: dict[str, tuple[int, int]] = Field(default_factory=dict)
    """entry id -> (legs seen, legs in the entry): an entry is posted when all are seen."""
    written_off_minor: int = 0
    """Legs on the clearing account from ops' write-offs (a receivable the channel will not
    pay, booked to suspense): no longer owed, and not a capture to compare."""

    def incomplete(self) -> list[str]:
        return [e for e, (seen, size) in self.entries.items() if seen < size]


class LineSeen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    line: SettlementReported
    arrived_ms: int
    state: Literal["waiting", "booked", "part", "held", "resolved"] = "waiting"
    """``part``: matched as one of several lines for the payment, booked with the last.
    ``resolved``: held, then settled by ops (written off, say): it no longer waits."""
    booked_ms: int = 0


class ReconException(Message):
    """One discrepancy, with every record involved, for ops (``pay.recon.exceptions``)."""

    exception_id: str
    payment_id: str
    channel: str
    kind: ExceptionKind
    reason: str
    detected_at_ms: int
    line_id: str = ""
    expected_minor: int | None = None
    reported_minor: int | None = None
    resolution: str = ""
    """What reconciliation did about it ('' : it waits for ops)."""
    cleared: bool = False
    """This record clears an exception raised before under the same ``exception_id``: its
    records came in after ``grace_ms`` (a stage ran late) or were corrected, and agree."""
    order: OrderView | None = None
    callbacks: tuple[CallbackSeen, ...] = ()
    ledger: LedgerSeen = LedgerSeen()
    lines: tuple[SettlementReported, ...] = ()


class ReconItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    payment_id: str
    first_ms: int
    changed_ms: int
    order: OrderView | None = None
    callbacks: tuple[CallbackSeen, ...] = ()
    ledger: LedgerSeen = LedgerSeen()
    lines: tuple[LineSeen, ...] = ()
    raised: tuple[str, ...] = ()
    """Keys of the discrepancies raised (each once)."""
    kinds: tuple[ExceptionKind, ...] = ()
    """The kind of each raised discrepancy, in order, waiting for ops or resolved."""
    asked: tuple[str, ...] = ()
    """Automatic resolutions sent to the order stage (each once)."""
    cleared: tuple[str, ...] = ()
    """Raised keys the records made good since (``_caught_up``): late legs or callbacks,
    a correcting entry."""
    asked_ms: dict[str, int] = Field(default_factory=dict)
    """When each was sent: one that has not taken effect ``2 * grace_ms`` later is raised
    again, for ops."""
    confirmed_minor: int = 0
    """Money a settlement line proved the channel took when no callback said so (sent to
    the order stage as a confirmation): it counts as the channel's word."""
    missing_through: str = ""
    """The channel closed its reports through this day while the item had no line."""
    missing_at_ms: int = 0
    """When the missing line is raised, unless a line arrives first."""
    closed_ms: int = 0
    """When everything matched (0: open). Kept ``retention_days``, then removed."""
    matched_ms: int = 0
    """When everything first matched (counted once even if a later record reopens it)."""
    ops_resolved: tuple[str, ...] = ()
    """Keys of raised discrepancies ops resolved (``resolve_exception``, applied by the order
    stage): like an automatic resolution, they no longer keep the item open."""
    counted: Literal["", "agreed", "matched"] = ""
    """How the report counts it once closed: settled by a line, or nothing to settle (a
    declined payment a late success reopened may end up settled: counted again, moved)."""

    @property
    def channel(self) -> str:
        if self.order is not None and self.order.channel:
            return self.order.channel
        for seen in self.lines:
            return seen.line.channel
        for cb in self.callbacks:
            return cb.channel
        return ""

    @property
    def currency(self) -> str:
        if self.order is not None:
            return self.order.currency
        for seen in self.lines:
            return seen.line.currency
        return next((cb.currency for cb in self.callbacks), "")


class Step(NamedTuple):
    item: ReconItem | None
    """None: remove the row."""
    exceptions: tuple[ReconException, ...] = ()
    to_orders: tuple[Message, ...] = ()
    """Lines to book, confirmations: the order stage acts on them."""
    wake_ms: int = 0
    """Look at the item again then (0: only when something arrives)."""
    due: tuple[str, str] | None = None
    """(channel, YYYY-MM-DD): the item waits for that channel's report of that day."""
    matched: bool = False
    """Closed by this step, counted anew: all records agree (for the first time, or now
    settled by a line where it first closed with nothing to settle)."""
    resolutions: tuple[ReconExceptionResolved, ...] = ()
    """Ops' resolutions this step took in, as reconciliation now sees them (for ops)."""


# ---------------------------------------------------------------- reading the sides


FINAL = frozenset({"succeeded", "partially_refunded", "refunded", "failed", "canceled",
                   "amount_mismatch", "timed_out"})
"""Order statuses the live sides are compared at (the rest are still in flight)."""
SETTLEABLE = frozenset({"succeeded", "partially_refunded", "refunded"})
UNPAID = frozenset({"failed", "timed_out"})
"""Statuses a channel success can resolve (``AutoResolve.success_for_failed``)."""
DECIDED_UNPAID = frozenset({"failed", "canceled", "amount_mismatch"})
"""Statuses no late answer changes: a line for them is a mismatch at once."""
_PAY_IN = {"sale": 1, "capture": 1, "refund": -1, "reverse": -1}


def day_of(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc).date().isoformat()


def _order_view(before: OrderView | None, event: PaymentStatusChanged) -> OrderView:
    captured_on = before.captured_on if before is not None else ""
    if not captured_on and event.captured_minor > 0:
        captured_on = day_of(event.at_ms)
    first_on = before.first_on if before is not None and before.first_on else \
        day_of(event.at_ms)
    return OrderView(status=event.status, amount_minor=event.amount_minor, first_on=first_on,
                     currency=event.currency, channel=event.channel or
                     (before.channel if before is not None else ""),
                     channel_serial=event.channel_serial, captured_minor=event.captured_minor,
                     refunded_minor=event.refunded_minor, at_ms=event.at_ms,
                     captured_on=captured_on)


def _is_payout(item: ReconItem) -> bool:
    return any(cb.operation == "payout" for cb in item.callbacks)


def channel_net(item: ReconItem) -> int:
    """What the channel says it took for us, net of its refunds: the latest answer per
    request (a contradicting second answer replaces the first)."""
    return sum(_PAY_IN.get(cb.operation, 0) * cb.amount_minor for cb in item.callbacks
               if cb.outcome == "succeeded")


def _channel_refunds(item: ReconItem) -> int:
    return sum(cb.amount_minor for cb in item.callbacks
               if cb.outcome == "succeeded" and cb.operation == "refund")


def observe(item: ReconItem | None, body: Message, at_ms: int, rules: ReconRules) -> Step:
    """Take one record (a status event, a callback, a posted leg, a settlement line, a
    wake-up, ops' resolution) and evaluate the payment again."""
    if isinstance(body, ExceptionResolved):
        return resolved_by_ops(item, body, at_ms, rules)
    payment_id = body.payment_id
    if item is None:
        if isinstance(body, ReconWake):
            return Step(None)  # removed meanwhile: nothing to look at
        item = ReconItem(payment_id=payment_id, first_ms=at_ms, changed_ms=at_ms)
    changed = _taken(item, body, at_ms)
    if changed is None:  # a wake-up, or a copy: nothing new, but the clock moved
        if isinstance(body, ReconWake) and item.closed_ms and \
                at_ms >= item.closed_ms + rules.retention_days * DAY_MS:
            return Step(None)
        return evaluate(item, at_ms, rules)
    return evaluate(changed.model_copy(update={"changed_ms": at_ms}), at_ms, rules)


def _taken(item: ReconItem, body: Message, at_ms: int) -> ReconItem | None:
    """The item with ``body`` recorded, or None when it adds nothing."""
    if isinstance(body, PaymentStatusChanged):
        view = _order_view(item.order, body)
        return None if view == item.order else item.model_copy(update={"order": view})
    if isinstance(body, ChannelResponded):
        if body.outcome.value == "pending" or body.operation.value in ("ack", "query"):
            return None
        seen = CallbackSeen(request_id=body.request_id, operation=body.operation.value,
                            outcome=body.outcome.value, amount_minor=body.amount_minor,
                            currency=body.currency, channel=body.channel,
                            channel_serial=body.channel_serial)
        if seen in item.callbacks:
            return None
        kept = tuple(cb for cb in item.callbacks if cb.request_id != body.request_id)
        return item.model_copy(update={"callbacks": kept + (seen,)})
    if isinstance(body, LegApplied):
        if body.posting_id in item.ledger.postings:
            return None
        ledger = item.ledger
        kind = body.account_id.split(":", 1)[0]
        seen, _ = ledger.entries.get(body.entry_id, (0, body.entry_legs))
        update = {"postings": ledger.postings + (body.posting_id,),
                  "entries": {**ledger.entries, body.entry_id: (seen + 1, body.entry_legs)}}
        if kind == "clearing" and body.reason == WRITE_OFF:
            update["written_off_minor"] = ledger.written_off_minor + body.amount_minor
        elif kind == "clearing" and body.reason == "settlement_clearing":
            update["settled_minor"] = ledger.settled_minor + body.amount_minor
        elif kind == "clearing":
            update["clearing_minor"] = ledger.clearing_minor + body.amount_minor
        elif kind == "fees" and body.reason != "settlement_clearing":
            update["fee_minor"] = ledger.fee_minor + body.amount_minor
        return item.model_copy(update={"ledger": ledger.model_copy(update=update)})
    if isinstance(body, SettlementReported):
        if any(s.line.line_id == body.line_id and s.line.channel == body.channel
               for s in item.lines):
            return None  # the same line again (a file sent twice): one line
        return item.model_copy(update={"lines": item.lines + (
            LineSeen(line=body, arrived_ms=at_ms),)})
    if isinstance(body, ReconWake):
        return None
    raise TypeError(f"reconciliation does not take {type(body).__name__}")


# ---------------------------------------------------------------- evaluating


class _Finding(NamedTuple):
    key: str
    kind: ExceptionKind
    reason: str
    expected: int | None = None
    reported: int | None = None
    line_id: str = ""
    fixes: tuple[Message, ...] = ()
    resolution: str = ""


class _Eval:
    """One evaluation's working state: the item as it changes, what it raises and asks."""

    def __init__(self, item: ReconItem, at_ms: int, rule: Matching) -> None:
        self.item, self.at, self.rule = item, at_ms, rule
        self.exceptions: list[ReconException] = []
        self.to_orders: list[Message] = []
        self.wakes: list[int] = []

    def wake(self, at_ms: int) -> None:
        self.wakes.append(at_ms)

    def raise_(self, f: _Finding) -> None:
        if f.key in self.item.raised:
            return
        resolution = ""
        if f.fixes and f.key not in self.item.asked:
            self.to_orders.extend(f.fixes)
            resolution = f.resolution
            self.item = self.item.model_copy(update={
                "asked": self.item.asked + (f.key,),
                "asked_ms": {**self.item.asked_ms, f.key: self.at}})
        it = self.item
        self.item = it.model_copy(update={"raised": it.raised + (f.key,),
                                          "kinds": it.kinds + (f.kind,)})
        self.exceptions.append(ReconException(
            exception_id=derive_id("rx", it.payment_id, f.key), payment_id=it.payment_id,
            channel=it.channel, kind=f.kind, reason=f.reason, detected_at_ms=self.at,
            line_id=f.line_id, expected_minor=f.expected, reported_minor=f.reported,
            resolution=resolution, order=it.order, callbacks=it.callbacks, ledger=it.ledger,
            lines=tuple(s.line for s in it.lines)))

    def clear(self, key: str, reason: str, line_id: str = "") -> None:
        """A raised lag finding whose records have since come in: said again, cleared."""
        it = self.item
        assert key in it.raised, key
        if key in it.cleared:
            return
        kind = it.kinds[it.raised.index(key)]
        self.item = it.model_copy(update={"cleared": it.cleared + (key,)})
        self.exceptions.append(ReconException(
            exception_id=derive_id("rx", it.payment_id, key), payment_id=it.payment_id,
            channel=it.channel, kind=kind, reason=reason, detected_at_ms=self.at,
            line_id=line_id, resolution="cleared: the records agree now", cleared=True,
            order=it.order,
            callbacks=it.callbacks, ledger=it.ledger, lines=tuple(s.line for s in it.lines)))

    def set_line(self, index: int, state: str) -> None:
        lines = list(self.item.lines)
        booked = {"booked_ms": self.at} if state == "booked" else {}
        lines[index] = lines[index].model_copy(update={"state": state, **booked})
        self.item = self.item.model_copy(update={"lines": tuple(lines)})


def evaluate(item: ReconItem, at_ms: int, rules: ReconRules) -> Step:
    rule = rules.for_channel(item.channel)
    ev = _Eval(item, at_ms, rule)
    live_agree = _live_sides(ev)
    for index in range(len(ev.item.lines)):
        if ev.item.lines[index].state == "waiting":
            _line(ev, index, live_agree)
    _orphan_callbacks(ev)
    _missing(ev)
    _unbooked(ev)
    _caught_up(ev, live_agree)
    item = ev.item
    due = _due(item, rule)
    matched = False
    done = _settled_through(item, live_agree)
    if done and not item.closed_ms:
        counted = "matched" if any(s.state == "booked" for s in item.lines) else \
            item.counted or "agreed"
        matched = counted != item.counted  # closed first, or now settled by a line
        item = item.model_copy(update={"closed_ms": at_ms, "counted": counted,
                                       "matched_ms": item.matched_ms or at_ms})
        due = None
    elif not done and item.closed_ms:  # a later record reopened it
        item = item.model_copy(update={"closed_ms": 0})
    if item.closed_ms:  # removed at the end of its retention (at once if already past)
        ev.wake(max(item.closed_ms + rules.retention_days * DAY_MS, at_ms + 1))
    future = [w for w in ev.wakes if w > at_ms]
    return Step(item, tuple(ev.exceptions), tuple(ev.to_orders),
                min(future) if future else 0, due, matched)


def _live_sides(ev: _Eval) -> bool:
    """Order, channel and ledger agree (True), or the differences are raised once the
    item has been quiet for ``grace_ms`` (False either way while they differ)."""
    item, order = ev.item, ev.item.order
    if order is None or order.status not in FINAL:
        return False
    if not order.channel or order.channel == INTERNAL_CHANNEL or _is_payout(item):
        return True  # nothing at a channel to compare (balance payments, payouts)
    findings = _live_findings(item, order, ev.rule)
    if not findings:
        return True
    grace = ev.rule.booking_grace_ms if findings[0].key == HALF_APPLIED else ev.rule.grace_ms
    if ev.at - item.changed_ms < grace:
        ev.wake(item.changed_ms + grace)
        return False
    for f in findings:
        ev.raise_(f)
        asked_ms = ev.item.asked_ms.get(f.key)
        if asked_ms is None:
            continue
        due = asked_ms + 2 * ev.rule.grace_ms
        if ev.at < due:
            ev.wake(due)
            continue
        ev.raise_(f._replace(key=f"{f.key}:unresolved", fixes=(), reason=(
            f"still, {2 * ev.rule.grace_ms} ms after the automatic resolution was sent "
            f"(refused by the order stage?): {f.reason}")))
    return False


HALF_APPLIED = "amount:ledger_entry"
"""The finding of an entry applied on some of its legs only (waits ``booking_grace_ms``)."""


def _live_findings(item: ReconItem, order: OrderView, rule: Matching) -> list[_Finding]:
    out: list[_Finding] = []
    other = [cb for cb in item.callbacks if cb.outcome == "succeeded"
             and cb.currency != order.currency]
    if other:
        cb = other[0]
        return [_Finding("currency:callback", K.currency_mismatch,
                         f"{cb.channel} answered {cb.operation} in {cb.currency}, the order "
                         f"is in {order.currency}", order.amount_minor, cb.amount_minor)]
    half = item.ledger.incomplete()
    if half:
        seen, size = item.ledger.entries[half[0]]
        return [_Finding(HALF_APPLIED, K.amount_mismatch,
                         f"ledger entry {half[0]} applied on {seen} of its {size} legs",
                         size, seen)]
    said, ours = channel_net(item), order.net_minor
    if not any(cb.outcome == "succeeded" and _PAY_IN.get(cb.operation) == 1
               for cb in item.callbacks):
        said += item.confirmed_minor  # a line proved the sale no callback told of
    if said != ours:
        out.append(_channel_vs_order(item, order, said, rule))
    booked = -item.ledger.clearing_minor
    if booked != ours:
        out.append(_Finding(f"amount:ledger:{booked}:{ours}", K.amount_mismatch,
                            f"the ledger's clearing for {order.channel} shows {booked}, the "
                            f"order {ours} {order.currency}", ours, booked))
    return out


def _channel_vs_order(item: ReconItem, order: OrderView, said: int, rule: Matching
                      ) -> _Finding:
    ours, ccy = order.net_minor, order.currency
    if order.status == "amount_mismatch":
        return _Finding(f"amount:channel:{said}:{ours}", K.amount_mismatch,
                        f"{order.channel} took {said} {ccy}, we asked {order.amount_minor}",
                        order.amount_minor, said)
    if said > 0 and ours == 0:
        fixes, resolution = (), ""
        took = next((cb for cb in reversed(item.callbacks)
                     if cb.outcome == "succeeded" and _PAY_IN.get(cb.operation) == 1), None)
        if rule.auto_resolve.success_for_failed and order.status in UNPAID \
                and said == order.amount_minor and took is not None:
            fixes = (ChannelSuccessConfirmed(
                payment_id=item.payment_id, channel=took.channel,
                channel_serial=took.channel_serial, amount_minor=said, currency=ccy,
                evidence=f"{took.channel} answered success"),)
            resolution = "the order succeeds and is posted (success_for_failed)"
        where = took.channel if took is not None else order.channel
        return _Finding("status:channel", K.status_mismatch,
                        f"{where} says succeeded ({said} {ccy}), the order says "
                        f"{order.status}", 0, said, fixes=fixes, resolution=resolution)
    extra_refund = _channel_refunds(item) - order.refunded_minor
    if said < ours and extra_refund == ours - said:
        refunds = [cb for cb in item.callbacks
                   if cb.outcome == "succeeded" and cb.operation == "refund"]
        fixes, resolution = (), ""
        if rule.auto_resolve.channel_refund:  # the order stage posts those it never asked for
            fixes = tuple(ChannelRefundConfirmed(
                payment_id=item.payment_id, channel=cb.channel, request_id=cb.request_id,
                amount_minor=cb.amount_minor, currency=cb.currency,
                evidence=f"{cb.channel} refunded by itself") for cb in refunds)
            resolution = "the channel's refund is posted (channel_refund)"
        ids = ",".join(sorted(cb.request_id for cb in refunds))
        return _Finding(f"amount:channel_refund:{ids}", K.amount_mismatch,
                        f"{order.channel} refunded {extra_refund} {ccy} we never asked for",
                        ours, said, fixes=fixes, resolution=resolution)
    if said == 0 and ours > 0:
        return _Finding("status:channel", K.status_mismatch,
                        f"the order says {order.status} ({ours} {ccy}), {order.channel} "
                        "reports no money taken", ours, 0)
    return _Finding(f"amount:channel:{said}:{ours}", K.amount_mismatch,
                    f"{order.channel} took {said} {ccy} net, the order {ours}", ours, said)


def _line(ev: _Eval, index: int, live_agree: bool) -> None:
    seen = ev.item.lines[index]
    line, order = seen.line, ev.item.order
    waited = ev.at - seen.arrived_ms >= ev.rule.line_wait_ms
    if order is None:
        if not waited:
            ev.wake(seen.arrived_ms + ev.rule.line_wait_ms)
            return
        ev.set_line(index, "held")
        ev.raise_(_Finding(f"ours:{line.line_id}", K.missing_in_ours,
                           f"{line.channel} settled {line.amount_minor} {line.currency} for a "
                           "payment we have no record of", None, line.amount_minor,
                           line.line_id))
        return
    if order.status not in SETTLEABLE:
        if order.status in DECIDED_UNPAID or waited:
            _line_for_unpaid(ev, index)
        else:  # the success may be on its way (a late callback, a status query)
            ev.wake(seen.arrived_ms + ev.rule.line_wait_ms)
        return
    if not live_agree:
        # Lines are compared with records that agree: while the live sides differ (money
        # in flight, or a discrepancy raised and perhaps being resolved) the line waits;
        # the next record re-evaluates it. One discrepancy, one exception.
        return
    finding = _line_finding(ev.item, line, order, ev.rule)
    if finding is not None:
        ev.set_line(index, "held")
        ev.raise_(finding)
        return
    _book(ev, index)


def _line_for_unpaid(ev: _Eval, index: int) -> None:
    """A line for an order that did not succeed: the channel says it was paid. With
    ``success_for_failed`` (and the line for the order's full amount) the order is made to
    succeed and the line waits to be booked; otherwise the line is held for ops."""
    line, order = ev.item.lines[index].line, ev.item.order
    assert order is not None
    key = f"status:line:{line.line_id}"
    if "status:channel" in ev.item.raised:
        key = "status:channel"  # the callbacks told it already: one discrepancy
    fix, resolution = None, ""
    if ev.rule.auto_resolve.success_for_failed and order.status in UNPAID | {"processing"} \
            and line.currency == order.currency and line.amount_minor == order.amount_minor \
            and line.channel == order.channel:
        fix = ChannelSuccessConfirmed(
            payment_id=line.payment_id, channel=line.channel,
            channel_serial=line.channel_serial, amount_minor=line.amount_minor,
            currency=line.currency, evidence=f"settlement line {line.line_id}")
        resolution = "the order succeeds and is posted (success_for_failed)"
    if fix is None and key not in ev.item.asked:
        ev.set_line(index, "held")
    asked = key in ev.item.asked
    ev.raise_(_Finding(key, K.status_mismatch,
                       f"{line.channel} settled {line.amount_minor} {line.currency}, the "
                       f"order says {order.status}", 0, line.amount_minor, line.line_id,
                       fixes=(fix,) if fix is not None else (), resolution=resolution))
    if fix is not None and not asked and key in ev.item.asked and not channel_net(ev.item):
        ev.item = ev.item.model_copy(update={"confirmed_minor": line.amount_minor})
    asked_ms = ev.item.asked_ms.get(key)
    if asked_ms is None or ev.item.lines[index].state != "waiting":
        return
    due = asked_ms + 2 * ev.rule.grace_ms
    if ev.at < due:
        ev.wake(due)
        return
    ev.set_line(index, "held")  # the order stage did not take it: ops decide
    ev.raise_(_Finding(f"{key}:unresolved", K.status_mismatch,
                       f"still, {2 * ev.rule.grace_ms} ms after the order was asked to "
                       f"succeed on line {line.line_id} (refused by the order stage?): the "
                       f"order says {order.status}", 0, line.amount_minor, line.line_id))


def _line_finding(item: ReconItem, line: SettlementReported, order: OrderView, rule: Matching
                  ) -> _Finding | None:
    taken = [s for s in item.lines if s.state in ("booked", "part")]
    key = line.line_id
    if rule.lines_per_payment == "one" and taken:
        first = taken[0].line
        return _Finding(f"duplicate:{key}", K.duplicate_settlement,
                        f"{line.channel} settled the payment again (line {first.line_id} "
                        "settled it first)", 0, line.amount_minor, key)
    if line.channel != order.channel:
        return _Finding(f"channel:{key}", K.status_mismatch,
                        f"{line.channel} settled it, the order was paid via {order.channel}",
                        0, line.amount_minor, key)
    if line.currency != order.currency:
        return _Finding(f"currency:{key}", K.currency_mismatch,
                        f"line in {line.currency}, the order in {order.currency}",
                        order.net_minor, line.amount_minor, key)
    open_minor = order.net_minor - sum(s.line.amount_minor for s in taken)
    if rule.lines_per_payment == "many" and line.amount_minor > open_minor and \
            any(s.line.amount_minor == line.amount_minor for s in taken):
        return _Finding(f"duplicate:{key}", K.duplicate_settlement,
                        f"{line.channel} settled this part again", open_minor,
                        line.amount_minor, key)
    too_much = line.amount_minor > open_minor if rule.lines_per_payment == "many" \
        else line.amount_minor != open_minor
    if too_much:
        return _Finding(f"amount:{key}", K.amount_mismatch,
                        f"line gross {line.amount_minor} {line.currency}, ours {open_minor}",
                        open_minor, line.amount_minor, key)
    window = _date_problem(line, order, rule)
    if window:
        return _Finding(f"date:{key}", K.date_out_of_window, window, None, None, key)
    return None


def _date_problem(line: SettlementReported, order: OrderView, rule: Matching) -> str:
    if line.period and line.settled_on != line.period:
        return f"line dated {line.settled_on}, in the report for {line.period}"
    if not order.captured_on:
        return ""
    first = date.fromisoformat(min(order.first_on or order.captured_on, order.captured_on))
    last = date.fromisoformat(order.captured_on) + timedelta(
        days=rule.settle_days + rule.date_window_days)
    settled = date.fromisoformat(line.settled_on)
    if not first <= settled <= last:
        return (f"line dated {line.settled_on}, captured {order.captured_on}: expected "
                f"{first.isoformat()}..{last.isoformat()} (T+{rule.settle_days}"
                f"{'+' + str(rule.date_window_days) if rule.date_window_days else ''})")
    return ""


def _book(ev: _Eval, index: int) -> None:
    """The line matches: book it (``many``: once the parts add up to the order)."""
    item, order = ev.item, ev.item.order
    assert order is not None
    line = item.lines[index].line
    if ev.rule.lines_per_payment == "one":
        ev.set_line(index, "booked")
        _fee_check(ev, (line,), order)
        ev.to_orders.append(line)
        return
    ev.set_line(index, "part")
    parts = tuple(s.line for s in ev.item.lines if s.state == "part")
    if sum(p.amount_minor for p in parts) < order.net_minor:
        return
    for i, s in enumerate(ev.item.lines):
        if s.state == "part":
            ev.set_line(i, "booked")
    _fee_check(ev, parts, order)
    ev.to_orders.append(SettlementReported(
        line_id=derive_id("stl-many", *(p.line_id for p in parts)), channel=line.channel,
        payment_id=line.payment_id, channel_serial=line.channel_serial,
        amount_minor=order.net_minor, currency=line.currency,
        settled_on=max(p.settled_on for p in parts), period=line.period,
        fee_minor=sum(p.fee_minor for p in parts)))


def _fee_check(ev: _Eval, parts: tuple[SettlementReported, ...], order: OrderView) -> None:
    """A fee off by more than the tolerance is raised; the line is booked all the same:
    the money arrived, and the ledger records the fee the channel took."""
    ours, theirs = ev.item.ledger.fee_minor, sum(p.fee_minor for p in parts)
    if abs(theirs - ours) > ev.rule.fee_allowance(ours):
        key = parts[-1].line_id
        ev.raise_(_Finding(f"fee:{key}", K.fee_mismatch,
                           f"{parts[-1].channel} charged {theirs} {order.currency}, ours "
                           f"{ours} (tolerance {ev.rule.fee_allowance(ours)})", ours, theirs,
                           key))


def _orphan_callbacks(ev: _Eval) -> None:
    """A channel success for a payment we never had (its order never appeared)."""
    item = ev.item
    if item.order is not None or channel_net(item) <= 0 or item.lines:
        return
    last = max(item.first_ms, item.changed_ms)
    if ev.at - last < ev.rule.line_wait_ms:
        ev.wake(last + ev.rule.line_wait_ms)
        return
    ev.raise_(_Finding("ours:callback", K.missing_in_ours,
                       f"{item.channel} reports taking {channel_net(item)} "
                       f"{item.currency} for a payment we have no record of", None,
                       channel_net(item)))


def expects_line(item: ReconItem) -> bool:
    """The channel owes us a settlement line for this payment."""
    order = item.order
    return (order is not None and order.status in SETTLEABLE and order.net_minor > 0
            and bool(order.channel) and order.channel != INTERNAL_CHANNEL
            and not _is_payout(item))


def _due(item: ReconItem, rule: Matching) -> tuple[str, str] | None:
    """The channel and day whose report must settle the item: none once a line settled it
    (or was held), or once the deadline was reached. Parts that do not add up yet (``many``)
    are still due."""
    if not expects_line(item) or item.missing_through or any(
            s.state in ("booked", "held", "waiting") for s in item.lines):
        return None
    assert item.order is not None
    captured = date.fromisoformat(item.order.captured_on or day_of(item.order.at_ms))
    return item.order.channel, (captured + timedelta(days=rule.settle_days)).isoformat()


def _settled_through(item: ReconItem, live_agree: bool) -> bool:
    """Everything agrees and nothing waits: the item can close. A booked line counts once
    the order stage posted the channel's payment (its clearing legs are in)."""
    if not live_agree or any(s.state in ("waiting", "part", "held") for s in item.lines):
        return False
    if len(item.raised) and not _all_resolved(item):
        return False
    if item.ledger.settled_minor != _booked_minor(item):
        return False
    if expects_line(item):
        return any(s.state == "booked" for s in item.lines) or "missing" in item.ops_resolved
    return True


def _booked_minor(item: ReconItem) -> int:
    return sum(s.line.amount_minor for s in item.lines if s.state == "booked")


def _unbooked(ev: _Eval) -> None:
    """A line sent to the order stage whose payment was not posted within
    ``booking_grace_ms``: the order refused it (a refund in flight, a status that cannot
    settle)."""
    item = ev.item
    booked = [s for s in item.lines if s.state == "booked"]
    if not booked or item.ledger.settled_minor == _booked_minor(item):
        return
    last = max(booked, key=lambda s: s.booked_ms)
    if ev.at < last.booked_ms + ev.rule.booking_grace_ms:
        ev.wake(last.booked_ms + ev.rule.booking_grace_ms)
        return
    order = item.order
    ev.raise_(_Finding(f"unbooked:{last.line.line_id}", K.status_mismatch,
                       f"line {last.line.line_id} matched, but the order "
                       f"({order.status if order else 'unknown'}) did not book it",
                       _booked_minor(item), item.ledger.settled_minor, last.line.line_id))


LIVE_FINDINGS = ("currency:callback", "amount:ledger", "amount:channel", "status:channel")
"""Keys of the live sides' findings (order, callbacks, ledger): raised once the records
differ for ``grace_ms``, so that money stuck between stages is seen."""


def _caught_up(ev: _Eval, live_agree: bool) -> None:
    """Clear the findings the records have since made good: a late leg or callback (a
    backlog, a worker restarting) or a correcting entry. Those an automatic resolution
    was sent for are settled by it instead."""
    item = ev.item
    for key in item.raised:
        if key in item.cleared or key in item.asked or key in item.ops_resolved:
            continue
        if key.startswith(LIVE_FINDINGS) and live_agree:
            ev.clear(key, "cleared: order, channel and ledger agree now (records that came "
                          "after grace_ms, or an entry that corrected them)")
        elif key.startswith("unbooked:") and \
                item.ledger.settled_minor == _booked_minor(item):
            ev.clear(key, "cleared: the order stage booked the line after the exception",
                     key.removeprefix("unbooked:"))


def _all_resolved(item: ReconItem) -> bool:
    """Raised discrepancies that an automatic resolution, or ops, have since settled, or
    that the records made good by themselves (``_caught_up``)."""
    return all(key in item.asked or key in item.ops_resolved or key in item.cleared
               for key in item.raised)


def period_closed(item: ReconItem, closed: SettlementClosed, at_ms: int, rules: ReconRules
                  ) -> Step:
    """The channel's report for ``closed.period`` is complete: a payment due by then that
    no line settled is missing at the channel, once ``grace_ms`` more has passed (a line
    that named only the channel's serial takes one more hop to reach its payment)."""
    rule = rules.for_channel(item.channel)
    due = _due(item, rule)
    if due is None or due[0] != closed.channel or due[1] > closed.period:
        return Step(item, due=due)
    marked = item.model_copy(update={"missing_through": closed.period,
                                     "missing_at_ms": at_ms + rule.grace_ms})
    return evaluate(marked, at_ms, rules)


def _missing(ev: _Eval) -> None:
    """Past the channel's deadline (and its grace): no line at all is missing at the
    channel; parts that do not add up to ours are an amount mismatch (held)."""
    item, order = ev.item, ev.item.order
    if not item.missing_through or not expects_line(item) or any(
            s.state in ("booked", "held", "waiting") for s in item.lines):
        return
    assert order is not None
    if ev.at < item.missing_at_ms:
        ev.wake(item.missing_at_ms)
        return
    parts = [i for i, s in enumerate(item.lines) if s.state == "part"]
    if parts:
        got = sum(item.lines[i].line.amount_minor for i in parts)
        for i in parts:
            ev.set_line(i, "held")
        last = item.lines[parts[-1]].line
        ev.raise_(_Finding(f"amount:{last.line_id}", K.amount_mismatch,
                           f"{last.channel}'s lines through {item.missing_through} add up to "
                           f"{got} {order.currency}, ours {order.net_minor}", order.net_minor,
                           got, last.line_id))
        return
    ev.raise_(_Finding("missing", K.missing_at_channel,
                       f"captured {order.captured_on} ({order.net_minor} {order.currency}), "
                       f"not in {item.channel}'s reports through {item.missing_through} "
                       f"(T+{ev.rule.settle_days})", order.net_minor, None))


# ---------------------------------------------------------------- lines by channel serial


class SerialSeen(Message):
    """Reconciliation to itself: the channel's serial for one of our payments, keyed by the
    serial, so a settlement line that names only the serial finds its payment."""

    serial: str
    payment_id: str
    channel: str


class SerialRow(BaseModel):
    """One channel serial: the payment it belongs to (once seen), and lines that named only
    the serial and wait for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    payment_id: str = ""
    channel: str = ""
    seen_ms: int = 0
    """When the serial's payment was seen; the row goes ``retention_days`` later."""
    waiting: tuple[LineSeen, ...] = ()
    raised: tuple[str, ...] = ()


class SerialStep(NamedTuple):
    row: SerialRow | None
    """None: remove the row (kept ``retention_days`` after its payment was seen)."""
    forward: tuple[SettlementReported, ...] = ()
    """Lines now known to be the payment's: on to its item (keyed by payment id)."""
    exceptions: tuple[ReconException, ...] = ()
    wake_ms: int = 0


def by_serial(row: SerialRow | None, body: Message, at_ms: int, rules: ReconRules
              ) -> SerialStep:
    """A line without our payment id waits for the serial's payment (``SerialSeen``) up to
    the channel's ``line_wait_ms``; then it is missing in our records."""
    row = row or SerialRow()
    kept_ms = rules.retention_days * DAY_MS
    if isinstance(body, SerialSeen):
        if row.payment_id == body.payment_id:
            return SerialStep(row, wake_ms=row.seen_ms + kept_ms)
        known = row.model_copy(update={"payment_id": body.payment_id, "channel": body.channel,
                                       "seen_ms": at_ms, "waiting": ()})
        return SerialStep(known, tuple(s.line.model_copy(update={
            "payment_id": body.payment_id}) for s in row.waiting), wake_ms=at_ms + kept_ms)
    if isinstance(body, ReconWake) and row.payment_id and not row.waiting:
        if at_ms >= row.seen_ms + kept_ms:
            return SerialStep(None)
        return SerialStep(row, wake_ms=row.seen_ms + kept_ms)
    if isinstance(body, SettlementReported):
        if row.payment_id:
            return SerialStep(row, (body.model_copy(update={"payment_id": row.payment_id}),),
                              wake_ms=row.seen_ms + kept_ms)
        if any(s.line.line_id == body.line_id for s in row.waiting):
            return SerialStep(row, wake_ms=_serial_wake(row, rules))
        row = row.model_copy(update={"waiting": row.waiting + (
            LineSeen(line=body, arrived_ms=at_ms),)})
    exceptions = []
    for seen in row.waiting:
        line = seen.line
        wait = rules.for_channel(line.channel).line_wait_ms
        key = f"ours:{line.line_id}"
        if at_ms - seen.arrived_ms < wait or key in row.raised:
            continue
        row = row.model_copy(update={"raised": row.raised + (key,)})
        exceptions.append(ReconException(
            exception_id=derive_id("rx", line.channel, line.channel_serial, key),
            payment_id="", channel=line.channel, kind=K.missing_in_ours,
            reason=f"{line.channel} settled {line.amount_minor} {line.currency} under serial "
                   f"{line.channel_serial}, which no payment of ours has",
            detected_at_ms=at_ms, line_id=line.line_id, reported_minor=line.amount_minor,
            lines=(line,)))
    return SerialStep(row, (), tuple(exceptions), _serial_wake(row, rules))


def _serial_wake(row: SerialRow, rules: ReconRules) -> int:
    pending = [s.arrived_ms + rules.for_channel(s.line.channel).line_wait_ms
               for s in row.waiting if f"ours:{s.line.line_id}" not in row.raised]
    return min(pending, default=0)


# ---------------------------------------------------------------- totals for the report


class Tally(BaseModel):
    """What one partition's items add up to; the report sums the partitions.

    Keys are ``|``-joined so the JSON stays flat: ``open``: channel|state|opened_on;
    ``residual``: channel|currency|day (what the channel still owes us on its clearing
    account for payments captured that day); ``matched``: channel."""

    model_config = ConfigDict(extra="forbid")

    matched: dict[str, int] = Field(default_factory=dict)
    """Payments settled by a line that matched order, callbacks and ledger."""
    agreed: dict[str, int] = Field(default_factory=dict)
    """Payments closed with nothing to settle (declined, failed, balance): all sides agree."""
    matched_minor: dict[str, int] = Field(default_factory=dict)
    """channel|currency -> gross matched."""
    exceptions: dict[str, int] = Field(default_factory=dict)
    """kind -> discrepancies raised (cumulative)."""
    auto_resolved: dict[str, int] = Field(default_factory=dict)
    open: dict[str, int] = Field(default_factory=dict)
    residual: dict[str, int] = Field(default_factory=dict)
    closed_periods: dict[str, str] = Field(default_factory=dict)
    """channel -> latest period closed."""

    def add(self, part: Tally, sign: int = 1) -> Tally:
        def merged(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            out = Counter(a)
            for k, v in b.items():
                out[k] += sign * v
            return {k: v for k, v in sorted(out.items()) if v}
        periods = dict(self.closed_periods)
        for channel, period in part.closed_periods.items():
            periods[channel] = max(period, periods.get(channel, ""))
        return Tally(matched=merged(self.matched, part.matched),
                     agreed=merged(self.agreed, part.agreed),
                     matched_minor=merged(self.matched_minor, part.matched_minor),
                     exceptions=merged(self.exceptions, part.exceptions),
                     auto_resolved=merged(self.auto_resolved, part.auto_resolved),
                     open=merged(self.open, part.open),
                     residual=merged(self.residual, part.residual),
                     closed_periods=periods)


def open_state(item: ReconItem) -> str:
    """Why an open item is open, for the report's ageing."""
    if not _all_resolved(item):
        return "exception"
    if item.order is None:
        return "awaiting_order"
    if item.order.status not in FINAL:
        return "in_flight"
    if expects_line(item) and not any(s.state == "booked" for s in item.lines):
        return "awaiting_line"
    return "matching"


def standing(item: ReconItem | None) -> Tally:
    """The item's share of the open items and residuals (its current state). Matches are
    counted once, when they happen (``closed_tally``), so the report's totals do not
    shrink when matched items are removed after their retention."""
    if item is None:
        return Tally()
    channel, ccy = item.channel or "?", item.currency or "?"
    day = (item.order.captured_on if item.order and item.order.captured_on
           else day_of(item.first_ms))
    owed = -(item.ledger.clearing_minor + item.ledger.settled_minor +
             item.ledger.written_off_minor)
    tally = Tally(residual={f"{channel}|{ccy}|{day}": owed} if owed else {})
    if not item.closed_ms:
        tally.open = {f"{channel}|{open_state(item)}|{day_of(item.first_ms)}": 1}
    return tally


def closed_tally(before: ReconItem | None, after: ReconItem | None) -> Tally:
    """Closed payments, counted once (cumulative: removal after retention keeps them):
    settled by a line (with its gross), or nothing to settle; moved if that changes."""
    was = before.counted if before is not None else ""
    now = after.counted if after is not None else was
    if now == was:
        return Tally()
    return _counted(after, now).add(_counted(before, was), -1)


def _counted(item: ReconItem | None, how: str) -> Tally:
    if item is None or not how:
        return Tally()
    channel, ccy = item.channel or "?", item.currency or "?"
    if how == "agreed":
        return Tally(agreed={channel: 1})
    gross = sum(s.line.amount_minor for s in item.lines if s.state == "booked")
    return Tally(matched={channel: 1},
                 matched_minor={f"{channel}|{ccy}": gross} if gross else {})


class ReconStatus(Message):
    """One recon partition's tally, published when it changes (``pay.recon.status``)."""

    partition: int
    at_ms: int
    tally: Tally


def raised_tally(step: Step) -> Tally:
    """The discrepancies this step raised, by kind (cumulative counters)."""
    kinds = Counter(e.kind.value for e in step.exceptions if not e.cleared)
    auto = Counter(e.kind.value for e in step.exceptions if e.resolution)
    return Tally(exceptions=dict(kinds), auto_resolved=dict(auto))


# ---------------------------------------------------------------- ops' resolutions


class ReconExceptionResolved(Message):
    """Reconciliation took in ops' resolution of one of its exceptions
    (``pay.recon.exceptions``): what was done, by whom and why, and where the item stands."""

    exception_id: str
    payment_id: str
    kind: str
    action: str
    resolver: str
    comment: str
    at_ms: int
    item_state: str
    """``closed`` (everything agrees now), an open state (``open_state``: what it still
    waits for), or ``unknown`` (no such exception on the payment's item)."""


def resolved_by_ops(item: ReconItem | None, resolved: ExceptionResolved, at_ms: int,
                    rules: ReconRules) -> Step:
    """Ops resolved one of the item's discrepancies (the order stage applied it): it no
    longer keeps the item open. A line held for it is looked at again when the order took
    the channel's result, and settled by the resolution otherwise. Applied once."""
    key = None if item is None else next(
        (k for k in item.raised
         if derive_id("rx", item.payment_id, k) == resolved.exception_id), None)
    if item is None or key is None:
        return Step(item, resolutions=(_resolution(resolved, at_ms, "unknown"),))
    if key not in item.ops_resolved:
        again = "waiting" if resolved.action == "accept_channel_result" else "resolved"
        lines = tuple(s.model_copy(update={"state": again})
                      if s.state == "held" and s.line.line_id == resolved.line_id
                      and resolved.line_id else s for s in item.lines)
        item = item.model_copy(update={"ops_resolved": item.ops_resolved + (key,),
                                       "lines": lines, "changed_ms": at_ms})
    step = evaluate(item, at_ms, rules)
    state = "closed" if step.item is not None and step.item.closed_ms else \
        open_state(step.item) if step.item is not None else "unknown"
    return step._replace(resolutions=(_resolution(resolved, at_ms, state),))


def _resolution(resolved: ExceptionResolved, at_ms: int, state: str) -> ReconExceptionResolved:
    return ReconExceptionResolved(
        exception_id=resolved.exception_id, payment_id=resolved.payment_id, kind=resolved.kind,
        action=resolved.action, resolver=resolved.resolver, comment=resolved.comment,
        at_ms=at_ms, item_state=state)
