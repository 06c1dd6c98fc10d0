"""``config/channels.yaml``: how each channel's simulator behaves (terms are in routing.yaml)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from streams.config import load_yaml


class SimulatorProfile(BaseModel):
    """How the simulated channel behaves. Rates are basis points (1/10,000)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str = ""
    protocol: str = Field(default="card", pattern=r"^(card|bank|wallet)$")
    """card: an answer, then an asynchronous notification of the same outcome; bank: the
    payer is redirected (a pending answer), the outcome is notified later; wallet: the
    outcome is notified again and again until paycore acknowledges it."""
    latency_ms_median: int = Field(default=20, ge=0, le=60_000)
    latency_ms_p99: int = Field(default=80, ge=0, le=120_000)
    decline_bps: int = Field(default=0, ge=0, le=10_000)
    decline_codes: tuple[str, ...] = Field(default=("do_not_honor",), min_length=1)
    unavailable_code: str = "issuer_unavailable"
    """The decline code of a technical failure (magic amount 503): routing.yaml lists it
    among the channel's retriable_declines, so the order fails over."""


class SimulatorsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    simulators: tuple[SimulatorProfile, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> SimulatorsFile:
        names = [s.channel for s in self.simulators]
        if len(set(names)) != len(names) or "" in names:
            raise ValueError(f"simulators: each needs its own channel name, got {names}")
        return self

    def by_channel(self) -> dict[str, SimulatorProfile]:
        return {s.channel: s for s in self.simulators}


def load_simulators(config_dir: Path) -> SimulatorsFile:
    return load_yaml(config_dir / "channels.yaml", SimulatorsFile)
