"""Ops' resolutions of reconciliation exceptions, decided by the order stage (it owns the
payment), pure: time comes in as ``now_ms``.

Which action each kind of exception allows (``ALLOWED``), and what it does:

- ``status_mismatch`` (the channel took the order's full amount; the order failed or timed
  out): ``accept_channel_result`` makes the order succeed on that attempt and posts the
  capture, as an automatic resolution does; ``refund`` parks the money in ``suspense:<CCY>``
  and sends it back to the payer through the channel (suspense is emptied when the channel
  confirms).
- ``amount_mismatch`` (the channel took other money than asked; the order is
  ``amount_mismatch``, nothing booked): ``refund`` parks and sends back what it took.
- ``fee_mismatch``: ``accept_channel_result`` posts nothing (the ledger already holds the fee
  the channel kept).
- ``duplicate_settlement``: ``write_off`` books the second line's money (our bank account,
  less the channel's fee) to suspense.
- ``missing_at_channel``: ``write_off`` gives up the receivable on the channel's clearing
  account against suspense.

Every entry balances; each resolution is applied once per exception (the same action again
is a duplicate, another action is refused). The entries are previewed by ``preview`` and
the command carries the preview's digest: the order stage posts only what ops confirmed.
"""

from __future__ import annotations

from typing import NamedTuple

from domain import accounts
from domain.commands import ResolutionAction, ResolveException
from domain.events import (
    ChannelOperation,
    ChannelRequested,
    ExceptionResolved,
    JournalEntryDecided,
    Leg,
)
from domain.ids import derive_id
from domain.money import fee_minor
from domain.order_answers import decide_channel_success, send
from domain.order_state import (
    COMPENSATION_PREFIX,
    CommandStatus,
    Decision,
    Order,
    OrderKind,
    OrderStatus,
    Resolution,
    channel_request,
    note,
    transition,
)
from domain.postings import suspense_in_entry, suspense_out_entry
from domain.recon import WRITE_OFF, ChannelSuccessConfirmed
from domain.recon_kinds import ExceptionKind

A = ResolutionAction
K = ExceptionKind
C = CommandStatus
S = OrderStatus
TRIGGER = "resolve_exception"

ALLOWED: dict[ExceptionKind, frozenset[ResolutionAction]] = {
    K.status_mismatch: frozenset({A.accept_channel_result, A.refund}),
    K.amount_mismatch: frozenset({A.refund}),
    K.fee_mismatch: frozenset({A.accept_channel_result}),
    K.duplicate_settlement: frozenset({A.write_off}),
    K.missing_at_channel: frozenset({A.write_off}),
}
"""Kinds not listed (``missing_in_ours``, ``currency_mismatch``, ``date_out_of_window``) have
no order-side action here: they stay with ops outside the console."""
MONEY_MOVES = frozenset({A.refund, A.write_off})
"""Actions that always post entries (accepting a status mismatch does too: a capture)."""
_UNPAID = frozenset({S.failed, S.timed_out})
_SETTLEABLE = frozenset({S.succeeded, S.partially_refunded, S.refunded})


class FeeTerms(NamedTuple):
    """Our fee on a channel's charges (the order's route; the routing rules for a preview)."""

    fee_bps: int
    fee_fixed_minor: int


class Preview(NamedTuple):
    entries: tuple[JournalEntryDecided, ...]
    """Every entry the resolution posts, now or when the channel confirms a refund."""
    effects: tuple[str, ...]
    """What else happens, in words."""
    digest: str
    """``digest_of(entries)``: put it in the command to confirm exactly these."""


def allowed(kind: ExceptionKind) -> frozenset[ResolutionAction]:
    return ALLOWED.get(kind, frozenset())


def moves_money(kind: ExceptionKind, action: ResolutionAction) -> bool:
    return action in MONEY_MOVES or (kind is K.status_mismatch and
                                     action is A.accept_channel_result)


def digest_of(entries: tuple[JournalEntryDecided, ...]) -> str:
    """What ops confirm: each entry's reason and legs (ids and times aside)."""
    parts = [f"{e.reason}:" + ",".join(sorted(f"{leg.account_id}={leg.amount_minor}"
                                               for leg in e.legs)) for e in entries]
    return derive_id("prv", *parts) if parts else ""


# ---------------------------------------------------------------- entries


def write_off_entry(payment_id: str, cmd: ResolveException, now_ms: int) -> JournalEntryDecided:
    """A duplicate line's money (our bank account less the channel's fee) to suspense, or a
    receivable the channel will not pay (its clearing account) against suspense."""
    assert cmd.action is A.write_off
    ccy, channel = cmd.currency, cmd.channel
    if cmd.kind is K.duplicate_settlement:
        assert 0 <= cmd.fee_minor <= cmd.amount_minor
        legs = [Leg(account_id=accounts.settlement_cash(channel, ccy), currency=ccy,
                    amount_minor=-(cmd.amount_minor - cmd.fee_minor)),
                Leg(account_id=accounts.channel_fees(channel, ccy), currency=ccy,
                    amount_minor=-cmd.fee_minor),
                Leg(account_id=accounts.suspense(ccy), currency=ccy,
                    amount_minor=cmd.amount_minor)]
    else:
        assert cmd.kind is K.missing_at_channel
        legs = [Leg(account_id=accounts.channel_clearing(channel, ccy), currency=ccy,
                    amount_minor=cmd.amount_minor),
                Leg(account_id=accounts.suspense(ccy), currency=ccy,
                    amount_minor=-cmd.amount_minor)]
    entry = JournalEntryDecided(
        entry_id=derive_id("je", payment_id, WRITE_OFF, cmd.exception_id),
        payment_id=payment_id, reason=WRITE_OFF,
        legs=tuple(leg for leg in legs if leg.amount_minor), decided_at_ms=now_ms)
    assert len(entry.legs) >= 2, entry
    assert sum(leg.amount_minor for leg in entry.legs) == 0, entry
    return entry


def _shown(reason: str, legs: list[Leg], payment_id: str) -> JournalEntryDecided:
    """An entry as previewed: its id is given when the order stage posts it."""
    kept = tuple(leg for leg in legs if leg.amount_minor)
    assert sum(leg.amount_minor for leg in kept) == 0, kept
    return JournalEntryDecided(entry_id="", payment_id=payment_id, reason=reason, legs=kept,
                               decided_at_ms=0)


def preview(payment_id: str, merchant_id: str, cmd: ResolveException,
            terms: FeeTerms) -> Preview:
    """The entries ``decide_resolution`` will post for ``cmd`` (a single-merchant order at
    ``terms``: the order stage refuses the command if its own entries differ)."""
    ccy, amount = cmd.currency, cmd.amount_minor
    clearing = accounts.channel_clearing(cmd.channel, ccy)
    suspense = accounts.suspense(ccy)
    if cmd.action is A.write_off:
        entries: tuple = (write_off_entry(payment_id, cmd, 0),)
        effects = (f"booked to {suspense}, kept there to be investigated",)
    elif cmd.action is A.refund:
        entries = (_shown("parked", [Leg(account_id=clearing, currency=ccy, amount_minor=-amount),
                                     Leg(account_id=suspense, currency=ccy, amount_minor=amount)],
                          payment_id),
                   _shown("parked_returned",
                          [Leg(account_id=suspense, currency=ccy, amount_minor=-amount),
                           Leg(account_id=clearing, currency=ccy, amount_minor=amount)],
                          payment_id))
        effects = (f"a refund of {amount} {ccy} is sent to {cmd.channel}",
                   "the second entry is posted when the channel confirms the refund")
    elif cmd.kind is K.status_mismatch:
        fee = fee_minor(amount, terms.fee_bps, terms.fee_fixed_minor)
        entries = (_shown("capture", [
            Leg(account_id=clearing, currency=ccy, amount_minor=-amount),
            Leg(account_id=accounts.merchant_pending(merchant_id, ccy), currency=ccy,
                amount_minor=amount - fee),
            Leg(account_id=accounts.fee_revenue(ccy), currency=ccy, amount_minor=fee)],
            payment_id),)
        effects = (f"the order succeeds: {cmd.channel} took {amount} {ccy}",)
    else:
        entries, effects = (), ("nothing is posted: the ledger holds the fee the channel kept",)
    return Preview(entries, effects, digest_of(entries))


# ---------------------------------------------------------------- the order stage's decision


class _Plan(NamedTuple):
    order: Order
    outputs: tuple
    promised: tuple[JournalEntryDecided, ...]
    """Every entry it posts, now or later (what the preview showed)."""


def decide_resolution(order: Order | None, cmd: ResolveException, now_ms: int) -> Decision:
    """Ids, idempotency, fields, lookups, then the preview: in that order."""
    if order is None:
        return Decision(None, (), C.order_not_found)
    assert order.payment_id == cmd.subject_id()
    done = next((r for r in order.resolutions if r.exception_id == cmd.exception_id), None)
    if done is not None:
        same = done.action == cmd.action.value
        return Decision(order, (), C.duplicate if same else C.exception_already_resolved)
    if cmd.action not in allowed(cmd.kind):
        return Decision(order, (), C.action_not_allowed_for_kind)
    channels = {r.channel for r in (order.route, *order.retry_routes)}
    if cmd.currency != order.currency or cmd.channel not in channels:
        return Decision(order, (), C.resolution_facts_differ_from_order)
    planned = _APPLY[(cmd.kind, cmd.action)](order, cmd, now_ms)
    if isinstance(planned, CommandStatus):
        return Decision(order, (), planned)
    if cmd.preview_digest and digest_of(planned.promised) != cmd.preview_digest:
        return Decision(order, (), C.resolution_differs_from_preview)
    said = f"exception {cmd.exception_id} ({cmd.kind.value}) resolved by {cmd.resolver}: " \
           f"{cmd.action.value}; {cmd.comment}"
    moved = note(planned.order, TRIGGER, said, now_ms)
    moved = moved.model_copy(update={"resolutions": moved.resolutions + (Resolution(
        exception_id=cmd.exception_id, action=cmd.action.value, at_ms=now_ms),)})
    entries = tuple(o.entry_id for o in planned.outputs if isinstance(o, JournalEntryDecided))
    event = ExceptionResolved(
        payment_id=order.payment_id, merchant_id=order.merchant_id,
        exception_id=cmd.exception_id, kind=cmd.kind.value, action=cmd.action.value,
        resolver=cmd.resolver, comment=cmd.comment, line_id=cmd.line_id, entry_ids=entries,
        at_ms=now_ms)
    return Decision(moved, planned.outputs + (event,), C.accepted)


def _attempt(order: Order, cmd: ResolveException) -> ChannelRequested | None:
    """The attempt the channel says it was paid for: a sale on that channel for the money."""
    return next((r for r in reversed(order.requests)
                 if r.operation is ChannelOperation.sale and r.channel == cmd.channel
                 and r.amount_minor == cmd.amount_minor and r.currency == cmd.currency), None)


def _sent_back(order: Order, attempt: ChannelRequested) -> bool:
    return any(r.reference == COMPENSATION_PREFIX + attempt.request_id for r in order.requests)


def _accept_success(order: Order, cmd: ResolveException, now_ms: int) -> _Plan | CommandStatus:
    """The channel took the money: the order succeeds on that attempt (captured, posted)."""
    if order.status not in _UNPAID or order.kind is not OrderKind.payment:
        return C.resolution_not_applicable_in_status
    if _attempt(order, cmd) is None:
        return C.resolution_facts_differ_from_order
    confirmed = ChannelSuccessConfirmed(
        payment_id=order.payment_id, channel=cmd.channel, channel_serial="",
        amount_minor=cmd.amount_minor, currency=cmd.currency,
        evidence=f"operations accepted {cmd.channel}'s result (exception {cmd.exception_id})")
    decided = decide_channel_success(order, confirmed, now_ms)
    if decided.status is not C.accepted:
        return C.resolution_not_applicable_in_status
    assert decided.order is not None
    entries = tuple(o for o in decided.outputs if isinstance(o, JournalEntryDecided))
    assert len(entries) == 1, decided.outputs
    return _Plan(decided.order, decided.outputs, entries)


def _send_back(order: Order, attempt: ChannelRequested, amount_minor: int, now_ms: int
               ) -> _Plan:
    """Park what the channel took in suspense and refund it through the channel; the
    channel's confirmation empties suspense (``order_answers._on_compensation``)."""
    back = channel_request(order, order.route_for(attempt.channel), ChannelOperation.refund,
                           amount_minor, COMPENSATION_PREFIX + attempt.request_id)
    parked = suspense_in_entry(order, attempt, amount_minor, now_ms)
    moved, sent = send(order, back, now_ms)
    return _Plan(moved, (parked, *sent), (parked, suspense_out_entry(order, back, now_ms)))


def _refund_success(order: Order, cmd: ResolveException, now_ms: int) -> _Plan | CommandStatus:
    """The channel took money for an order that did not succeed: give it back."""
    if cmd.line_id:
        return C.refund_not_allowed_for_settled_line
    if order.status not in _UNPAID or order.kind is not OrderKind.payment:
        return C.resolution_not_applicable_in_status
    attempt = _attempt(order, cmd)
    if attempt is None:
        return C.resolution_facts_differ_from_order
    if _sent_back(order, attempt):
        return C.resolution_not_applicable_in_status
    plan = _send_back(order, attempt, cmd.amount_minor, now_ms)
    if order.status is not S.timed_out:
        return plan
    moved, event = transition(plan.order, S.failed, TRIGGER, "the channel's success is "
                              "refunded by operations", now_ms, deadline_ms=0)
    return plan._replace(order=moved, outputs=(event, *plan.outputs))


def _refund_other_money(order: Order, cmd: ResolveException, now_ms: int
                        ) -> _Plan | CommandStatus:
    """The channel took other money than asked (nothing was booked): give back what it took."""
    if order.status is not S.amount_mismatch:
        return C.resolution_not_applicable_in_status
    asked = {r.request_id: r for r in order.requests}
    taken = next((a for a in order.applied if a.operation is ChannelOperation.sale
                  and a.outcome.value == "succeeded" and a.request_id in asked
                  and (a.amount_minor, a.currency) != (asked[a.request_id].amount_minor,
                                                       asked[a.request_id].currency)), None)
    if taken is None or (taken.amount_minor, taken.currency) != (cmd.amount_minor,
                                                                  cmd.currency):
        return C.resolution_facts_differ_from_order
    attempt = asked[taken.request_id]
    if _sent_back(order, attempt):
        return C.resolution_not_applicable_in_status
    return _send_back(order, attempt, taken.amount_minor, now_ms)


def _accept_fee(order: Order, cmd: ResolveException, now_ms: int) -> _Plan:
    """The channel's fee stands; the ledger booked it with the line already."""
    return _Plan(order, (), ())


def _write_off_duplicate(order: Order, cmd: ResolveException, now_ms: int
                         ) -> _Plan | CommandStatus:
    if not cmd.line_id or cmd.amount_minor <= 0 or cmd.fee_minor > cmd.amount_minor:
        return C.resolution_facts_differ_from_order
    entry = write_off_entry(order.payment_id, cmd, now_ms)
    return _Plan(order, (entry,), (entry,))


def _write_off_missing(order: Order, cmd: ResolveException, now_ms: int
                       ) -> _Plan | CommandStatus:
    """The channel will not settle what we captured: the receivable is given up."""
    if order.status not in _SETTLEABLE or order.settlement:
        return C.resolution_not_applicable_in_status
    net = order.captured_minor - order.refunded_minor
    paid_via = order.paid_via or order.route.channel
    if net <= 0 or net != cmd.amount_minor or cmd.channel != paid_via:
        return C.resolution_facts_differ_from_order
    entry = write_off_entry(order.payment_id, cmd, now_ms)
    return _Plan(order, (entry,), (entry,))


_APPLY = {
    (K.status_mismatch, A.accept_channel_result): _accept_success,
    (K.status_mismatch, A.refund): _refund_success,
    (K.amount_mismatch, A.refund): _refund_other_money,
    (K.fee_mismatch, A.accept_channel_result): _accept_fee,
    (K.duplicate_settlement, A.write_off): _write_off_duplicate,
    (K.missing_at_channel, A.write_off): _write_off_missing,
}
assert set(_APPLY) == {(k, a) for k, actions in ALLOWED.items() for a in actions}
