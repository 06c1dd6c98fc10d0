"""Faust agents: one module per stage, each a thin adapter around one domain function."""

from __future__ import annotations

from agents import dedup, intake, ledger, orders
from streams.app import Wire

STAGES = (intake, dedup, orders, ledger)
"""Listed explicitly, in flow order: no blind autodiscovery."""


def register_stages(wire: Wire) -> Wire:
    for stage in STAGES:
        stage.register(wire)
    return wire
