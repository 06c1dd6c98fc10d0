"""``config/channels.yaml``: what each channel accepts and charges, and how its simulator acts."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from domain.commands import Method
from domain.routing import ChannelTerms, LateSuccess
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
    callback_timeout_ms: int = Field(default=30_000, ge=100, le=86_400_000)
    """No answer by then: the order is ``timed_out`` (a late answer still resolves it)."""
    authorization_ttl_ms: int = Field(default=7 * 86_400_000, ge=100)
    """An authorization not captured by then is voided automatically."""
    late_success: LateSuccess = LateSuccess.refund
    """A success after the timeout: ``accept`` books it, ``refund`` sends it back."""
    simulator: SimulatorProfile = SimulatorProfile()

    @field_validator("methods")
    @classmethod
    def _outside_methods(cls, methods: tuple[Method, ...]) -> tuple[Method, ...]:
        if Method.balance in methods:
            raise ValueError("balance is paid inside the ledger, not through a channel")
        return methods

    def terms(self) -> ChannelTerms:
        return ChannelTerms(name=self.name, methods=self.methods, currencies=self.currencies,
                            fee_bps=self.fee_bps, fee_fixed_minor=self.fee_fixed_minor,
                            priority=self.priority, callback_timeout_ms=self.callback_timeout_ms,
                            authorization_ttl_ms=self.authorization_ttl_ms,
                            late_success=self.late_success)


class ChannelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: tuple[ChannelConfig, ...] = Field(min_length=1)
    balance_authorization_ttl_ms: int = Field(default=7 * 86_400_000, ge=100)
    """An authorization on a wallet balance not captured by then is released."""


def load_channels(config_dir: Path) -> ChannelsFile:
    return load_yaml(config_dir / "channels.yaml", ChannelsFile)
