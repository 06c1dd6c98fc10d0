"""``config/channels.yaml``: what each channel accepts and charges, and how its simulator acts."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from domain.commands import Method
from domain.routing import ChannelTerms
from streams.config import load_yaml


class SimulatorProfile(BaseModel):
    """How the simulated channel behaves. Rates are basis points (1/10,000)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms_median: int = Field(default=20, ge=0, le=60_000)
    latency_ms_p99: int = Field(default=80, ge=0, le=120_000)
    decline_bps: int = Field(default=0, ge=0, le=10_000)
    decline_codes: tuple[str, ...] = ("do_not_honor",)


class ChannelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    kind: str = Field(pattern=r"^(card|bank|wallet)$")
    methods: tuple[Method, ...]
    currencies: tuple[str, ...]
    fee_bps: int = Field(default=0, ge=0, le=10_000)
    fee_fixed_minor: int = Field(default=0, ge=0)
    priority: int = 100
    simulator: SimulatorProfile = SimulatorProfile()

    def terms(self) -> ChannelTerms:
        return ChannelTerms(name=self.name, methods=self.methods, currencies=self.currencies,
                            fee_bps=self.fee_bps, fee_fixed_minor=self.fee_fixed_minor,
                            priority=self.priority)


class ChannelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: tuple[ChannelConfig, ...] = Field(min_length=1)


def load_channels(config_dir: Path) -> ChannelsFile:
    return load_yaml(config_dir / "channels.yaml", ChannelsFile)
