"""Routing: choose a channel for a payment. Issue 5 grows this into rules and health."""

from __future__ import annotations

from domain.commands import Message, Method


class ChannelTerms(Message):
    """What a channel accepts and charges."""

    name: str
    methods: tuple[Method, ...]
    currencies: tuple[str, ...]
    fee_bps: int = 0
    fee_fixed_minor: int = 0
    priority: int = 100


class Route(Message):
    """The routing decision, snapshotted into the order so replays charge the same fee."""

    channel: str
    fee_bps: int
    fee_fixed_minor: int
    reason: str


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
        reason=f"priority {best.priority} of {len(eligible)} eligible "
               f"for {method.value}/{currency}",
    )
