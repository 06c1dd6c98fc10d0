"""Faust agents: one module per stage, each a thin adapter around one domain function."""

from __future__ import annotations

from agents import deadletters, dedup, intake, ledger, mandates, orders, recon, risk, webhooks
from streams.app import Wire

STAGES = (intake, dedup, risk, orders, mandates, ledger, recon, deadletters, webhooks)
"""Listed explicitly, in flow order: no blind autodiscovery."""


def register_stages(wire: Wire) -> Wire:
    wanted = {name.strip() for name in wire.settings.stages.split(",") if name.strip()}
    known = {stage.__name__.rsplit(".", 1)[-1]: stage for stage in STAGES}
    unknown = wanted - set(known)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; known: {sorted(known)}")
    for name, stage in known.items():
        if name in wanted:
            stage.register(wire)
    return wire
