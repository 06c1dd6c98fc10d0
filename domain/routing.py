"""Routing: choose a channel for a payment. Issue 5 grows this into rules and health."""

from __future__ import annotations

from enum import Enum

from domain.commands import Message, Method


class LateSuccess(str, Enum):
    """What to do with a success that arrives after the order timed out."""

    accept = "accept"
    """Book it: the order succeeds after all."""
    refund = "refund"
    """Send the money back through the channel: the order fails."""


class ChannelTerms(Message):
    """What a channel accepts and charges."""

    name: str
    methods: tuple[Method, ...]
    currencies: tuple[str, ...]
    fee_bps: int = 0
    fee_fixed_minor: int = 0
    priority: int = 100
    callback_timeout_ms: int = 30_000
    authorization_ttl_ms: int = 7 * 86_400_000
    late_success: LateSuccess = LateSuccess.refund


class Route(Message):
    """The routing decision, snapshotted into the order so replays charge the same fee."""

    channel: str
    fee_bps: int
    fee_fixed_minor: int
    reason: str
    callback_timeout_ms: int = 30_000
    authorization_ttl_ms: int = 7 * 86_400_000
    late_success: LateSuccess = LateSuccess.refund


INTERNAL_CHANNEL = "internal"
"""Money that moves only inside our ledger (balance pay, transfers): answered at once."""


def internal_route(authorization_ttl_ms: int) -> Route:
    return Route(channel=INTERNAL_CHANNEL, fee_bps=0, fee_fixed_minor=0,
                 reason="internal accounts", callback_timeout_ms=0,
                 authorization_ttl_ms=authorization_ttl_ms)


def choose_route(
    channels: tuple[ChannelTerms, ...], method: Method, currency: str
) -> Route | None:
    """The highest-priority channel (lowest number, then name) that takes method and currency."""
    eligible = [c for c in channels if method in c.methods and currency in c.currencies]
    if not eligible:
        return None
    best = min(eligible, key=lambda c: (c.priority, c.name))
    return Route(
        channel=best.name,
        fee_bps=best.fee_bps,
        fee_fixed_minor=best.fee_fixed_minor,
        callback_timeout_ms=best.callback_timeout_ms,
        authorization_ttl_ms=best.authorization_ttl_ms,
        late_success=best.late_success,
        reason=f"priority {best.priority} of {len(eligible)} eligible "
               f"for {method.value}/{currency}",
    )
