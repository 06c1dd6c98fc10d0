"""Ledger posting rules: which balanced journal entry each money movement of an order is.

Every entry id derives from the request that caused it, so a replay decides the same entry
and the ledger applies it once. Debits on limited accounts always consume a hold placed
first (try/confirm/cancel), so no leg can be refused once the entry is decided.
"""

from __future__ import annotations

from domain import accounts
from domain.commands import Method, SplitShare
from domain.events import ChannelRequested, JournalEntryDecided, Leg, SettlementReported
from domain.ids import derive_id
from domain.money import fee_minor
from domain.order_state import (
    COMPENSATION_PREFIX,
    PAYER_HOLD,
    REVOKE_HOLD,
    SETTLE_HOLD_PREFIX,
    Order,
    OrderKind,
    hold_id_for,
    refund_funds,
)


def split_pro_rata(amount_minor: int, shares: tuple[SplitShare, ...]) -> list[int]:
    """Divide ``amount_minor`` in proportion to the shares, each part within one minor unit
    of its exact proportion: the units left after rounding down go one each to the largest
    remainders (ties: the larger share, then the earlier one)."""
    assert amount_minor >= 0
    total = sum(s.amount_minor for s in shares)
    assert total > 0
    parts = [amount_minor * s.amount_minor // total for s in shares]
    left = amount_minor - sum(parts)
    assert 0 <= left < len(shares)
    by_remainder = sorted(range(len(shares)), key=lambda i: (
        -(amount_minor * shares[i].amount_minor % total), -shares[i].amount_minor, i))
    for i in by_remainder[:left]:
        parts[i] += 1
    assert sum(parts) == amount_minor
    return parts


def _merchant_credits(order: Order, amount_minor: int, fee: int) -> list[Leg]:
    """What the merchants are owed for ``amount_minor`` charged: the net, split if asked.
    The net itself is split (not gross and fee apart), so no share can come out negative."""
    assert 0 <= fee <= amount_minor
    ccy = order.currency
    shares = order.split or (SplitShare(merchant_id=order.merchant_id,
                                        amount_minor=order.amount_minor),)
    nets = split_pro_rata(amount_minor - fee, shares)
    legs = [Leg(account_id=accounts.merchant_pending(s.merchant_id, ccy), currency=ccy,
                amount_minor=net) for s, net in zip(shares, nets, strict=True)]
    return [leg for leg in legs if leg.amount_minor]


def _payer_debit(order: Order, amount_minor: int, final: bool) -> Leg:
    return Leg(account_id=order.payer_account_id, currency=order.currency,
               amount_minor=-amount_minor, hold_id=hold_id_for(order.payment_id, PAYER_HOLD),
               hold_final=final)


def _clearing(request: ChannelRequested, amount_minor: int) -> Leg:
    return Leg(account_id=accounts.channel_clearing(request.channel, request.currency),
               currency=request.currency, amount_minor=amount_minor)


def _fee_leg(order: Order, fee: int) -> list[Leg]:
    if not fee:
        return []
    return [Leg(account_id=accounts.fee_revenue(order.currency), currency=order.currency,
                amount_minor=fee)]


def charge_fee(order: Order, request: ChannelRequested) -> int:
    route = order.route_for(request.channel)
    return fee_minor(request.amount_minor, route.fee_bps, route.fee_fixed_minor)


def capture_entry(order: Order, request: ChannelRequested, now_ms: int) -> JournalEntryDecided:
    """Money in for a sale or capture: from the channel (or the payer's frozen funds) to the
    merchants, net of our fee. A balance capture keeps the rest of the hold for later
    captures unless it is the last."""
    if order.kind is OrderKind.topup:
        return _topup_entry(order, request, now_ms)
    if order.kind is OrderKind.transfer:
        return _transfer_entry(order, request, now_ms)
    if order.kind is OrderKind.withdrawal:
        return _payout_entry(order, request, now_ms)
    amount, fee = request.amount_minor, charge_fee(order, request)
    if order.method == Method.balance.value:
        final = _captured_through(order, request) >= order.authorized_minor
        source = _payer_debit(order, amount, final)
    else:
        source = _clearing(request, -amount)
    legs = [source, *_merchant_credits(order, amount, fee), *_fee_leg(order, fee)]
    return _entry(order, request, "capture", legs, now_ms)


def _captured_through(order: Order, request: ChannelRequested) -> int:
    """What the successful sales and captures up to and including ``request`` took: from the
    append-only applied list, so a replay after later captures decides the same entry."""
    done = 0
    for applied in order.applied:
        if applied.operation.value in ("sale", "capture") and applied.outcome.value == "succeeded":
            done += applied.amount_minor
        if applied.request_id == request.request_id:
            return done
    raise AssertionError(f"capture entry for a request never applied: {request.request_id}")


def _topup_entry(order: Order, request: ChannelRequested, now_ms: int) -> JournalEntryDecided:
    amount, fee = request.amount_minor, charge_fee(order, request)
    legs = [_clearing(request, -amount),
            Leg(account_id=order.payer_account_id, currency=order.currency,
                amount_minor=amount - fee), *_fee_leg(order, fee)]
    return _entry(order, request, "topup", [leg for leg in legs if leg.amount_minor], now_ms)


def _transfer_entry(order: Order, request: ChannelRequested, now_ms: int) -> JournalEntryDecided:
    legs = [_payer_debit(order, request.amount_minor, True),
            Leg(account_id=order.payee_account_id, currency=order.currency,
                amount_minor=request.amount_minor)]
    return _entry(order, request, "transfer", legs, now_ms)


def _payout_entry(order: Order, request: ChannelRequested, now_ms: int) -> JournalEntryDecided:
    """No fee on payouts: the wallet is debited exactly what leaves through the channel."""
    legs = [_payer_debit(order, request.amount_minor, True), _clearing(request,
                                                                       request.amount_minor)]
    return _entry(order, request, "payout", legs, now_ms)


def _money_back_to(order: Order, request: ChannelRequested, amount_minor: int) -> Leg:
    if order.method == Method.balance.value:
        return Leg(account_id=order.payer_account_id, currency=order.currency,
                   amount_minor=amount_minor)
    return _clearing(request, amount_minor)


def refund_entry(order: Order, request: ChannelRequested, now_ms: int) -> JournalEntryDecided:
    """The merchant's frozen funds go back to the payer; the fee is not returned. A split
    payment's refunds are borne by the merchant that took the payment."""
    amount = request.amount_minor
    legs = [
        Leg(account_id=refund_funds(order, request.reference), currency=order.currency,
            amount_minor=-amount, hold_id=hold_id_for(order.payment_id, request.reference)),
        _money_back_to(order, request, amount),
    ]
    return _entry(order, request, "refund", legs, now_ms)


def revocation_amounts(order: Order) -> tuple[int, int]:
    """(merchant net, fee) to take back when a captured payment is revoked in full."""
    captured = _captured_ids(order)
    fee = sum(charge_fee(order, r) for r in order.requests if r.request_id in captured)
    return order.captured_minor - fee, fee


def _captured_ids(order: Order) -> set[str]:
    """Sales and captures the order kept: a duplicate or late charge sent back is not one,
    nor a success reported with other money (recorded for recon, never booked)."""
    sent_back = {r.reference for r in order.requests
                 if r.reference.startswith(COMPENSATION_PREFIX)}
    asked = {r.request_id: r for r in order.requests}
    return {a.request_id for a in order.applied
            if a.operation.value in ("sale", "capture") and a.outcome.value == "succeeded"
            and COMPENSATION_PREFIX + a.request_id not in sent_back
            and (a.amount_minor, a.currency) == (asked[a.request_id].amount_minor,
                                                 asked[a.request_id].currency)}


def reversal_entry(order: Order, request: ChannelRequested, now_ms: int) -> JournalEntryDecided:
    """Revocation: the capture undone, fee included (nothing settled, nothing earned)."""
    ccy = order.currency
    net, fee = revocation_amounts(order)
    legs = [
        Leg(account_id=accounts.merchant_pending(order.merchant_id, ccy), currency=ccy,
            amount_minor=-net, hold_id=hold_id_for(order.payment_id, REVOKE_HOLD)),
        _money_back_to(order, request, net + fee),
    ]
    if fee:
        legs.append(Leg(account_id=accounts.fee_revenue(ccy), currency=ccy, amount_minor=-fee))
    return _entry(order, request, "revoke", [leg for leg in legs if leg.amount_minor], now_ms)


def suspense_in_entry(order: Order, request: ChannelRequested, amount_minor: int,
                      now_ms: int) -> JournalEntryDecided:
    """A charge the order must not keep (duplicate, late): parked in suspense until it is
    refunded through the channel."""
    legs = [_clearing(request, -amount_minor),
            Leg(account_id=accounts.suspense(request.currency), currency=request.currency,
                amount_minor=amount_minor)]
    return _entry(order, request, "parked", legs, now_ms)


def suspense_out_entry(order: Order, request: ChannelRequested,
                       now_ms: int) -> JournalEntryDecided:
    legs = [Leg(account_id=accounts.suspense(request.currency), currency=request.currency,
                amount_minor=-request.amount_minor), _clearing(request, request.amount_minor)]
    return _entry(order, request, "parked_returned", legs, now_ms)


def _entry(order: Order, request: ChannelRequested, reason: str, legs: list[Leg],
           now_ms: int) -> JournalEntryDecided:
    entry = JournalEntryDecided(
        entry_id=derive_id("je", request.request_id), payment_id=order.payment_id,
        reason=reason, legs=tuple(legs), decided_at_ms=now_ms)
    assert len(entry.legs) >= 2, entry
    assert sum(leg.amount_minor for leg in entry.legs) == 0, entry
    assert len({leg.account_id for leg in entry.legs}) == len(entry.legs), entry
    return entry


def pending_by_merchant(order: Order) -> dict[str, int]:
    """What this payment left on each merchant's pending account: the net of every capture
    it kept, less the refunds taken (from the merchant that took the payment)."""
    kept = _captured_ids(order)
    owed: dict[str, int] = {}
    for request in order.requests:
        if request.request_id in kept:
            for leg in _merchant_credits(order, request.amount_minor, charge_fee(order, request)):
                owed[leg.account_id] = owed.get(leg.account_id, 0) + leg.amount_minor
    primary = accounts.merchant_pending(order.merchant_id, order.currency)
    assert all(v >= 0 for v in owed.values()), (order.payment_id, owed)
    owed[primary] = owed.get(primary, 0) - order.refunded_minor
    # Refunds can take more than the primary's own part (the fee is not returned; a small
    # or no split share): the rest came out of its other funds, nothing of this is left.
    return {account: v for account, v in owed.items() if v > 0}


def settlement_entry(order: Order, now_ms: int) -> JournalEntryDecided:
    """Pending to settled, merchant by merchant, each debit consuming its settlement hold."""
    legs: list[Leg] = []
    for part in order.settle_holds:
        merchant_id = part.merchant_id
        legs.append(Leg(account_id=part.account_id, currency=order.currency,
                        amount_minor=-part.amount_minor,
                        hold_id=hold_id_for(order.payment_id, SETTLE_HOLD_PREFIX + merchant_id)))
        legs.append(Leg(account_id=accounts.merchant_settled(merchant_id, order.currency),
                        currency=order.currency, amount_minor=part.amount_minor))
    entry = JournalEntryDecided(
        entry_id=derive_id("je", order.payment_id, "settlement"), payment_id=order.payment_id,
        reason="settlement", legs=tuple(legs), decided_at_ms=now_ms)
    assert len(entry.legs) >= 2, entry
    assert sum(leg.amount_minor for leg in entry.legs) == 0, entry
    return entry


def clearing_settlement_entry(order: Order, report: SettlementReported, now_ms: int
                              ) -> JournalEntryDecided | None:
    """The channel paid: its clearing account is credited with the gross it settled, our
    bank account (``cash``) receives the gross less the channel's fee, and the fee it kept
    is our cost (``chfees``). Clearing for the payment nets to zero. None for a zero line."""
    ccy, channel = report.currency, report.channel
    legs = [Leg(account_id=accounts.channel_clearing(channel, ccy), currency=ccy,
                amount_minor=report.amount_minor),
            Leg(account_id=accounts.settlement_cash(channel, ccy), currency=ccy,
                amount_minor=-(report.amount_minor - report.fee_minor)),
            Leg(account_id=accounts.channel_fees(channel, ccy), currency=ccy,
                amount_minor=-report.fee_minor)]
    legs = [leg for leg in legs if leg.amount_minor]
    if not legs:
        return None
    entry = JournalEntryDecided(
        entry_id=derive_id("je", order.payment_id, "clearing", report.line_id),
        payment_id=order.payment_id, reason="settlement_clearing", legs=tuple(legs),
        decided_at_ms=now_ms)
    assert len(entry.legs) >= 2 and sum(leg.amount_minor for leg in entry.legs) == 0, entry
    return entry
