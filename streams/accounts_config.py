"""``config/accounts.yaml``: overdraft limits and hot (split) accounts, validated on load."""

from __future__ import annotations

import hashlib
from fnmatch import fnmatchcase
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from domain.accounts import default_limit, logical_account, sub_account
from streams.config import load_yaml

SHARDS_MAX = 64


class LimitRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    account: str = Field(min_length=1)
    """Glob over account ids."""
    overdraft_minor: StrictInt | None = Field(ge=0)
    """How far below zero available may go, in minor units; null means no limit. An integer:
    ``5000.00`` (major units by mistake) or ``"500"`` is refused, not read as 5000 or 500."""


class HotAccount(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    account: str = Field(min_length=1)
    shards: StrictInt = Field(ge=2, le=SHARDS_MAX)


class AccountsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limits: tuple[LimitRule, ...] = ()
    hot_accounts: tuple[HotAccount, ...] = ()

    def limit_of(self, account_id: str) -> int | None:
        """The overdraft limit of an account or sub-account (None: no limit)."""
        logical = logical_account(account_id)
        rule = next((r for r in self.limits if fnmatchcase(logical, r.account)), None)
        return default_limit(logical) if rule is None else rule.overdraft_minor

    def shards_of(self, account_id: str) -> int:
        rule = next((r for r in self.hot_accounts if fnmatchcase(account_id, r.account)), None)
        return rule.shards if rule else 1

    def place(self, account_id: str, payment_id: str) -> str:
        """The row a payment's leg or hold on ``account_id`` lives in: the account itself,
        or for a hot account the sub-account the payment id hashes to (so a payment's hold
        and the debit that consumes it meet on one row)."""
        shards = self.shards_of(account_id)
        if shards == 1:
            return account_id
        digest = hashlib.blake2b(payment_id.encode(), digest_size=4).digest()
        return sub_account(account_id, int.from_bytes(digest, "big") % shards)


def load_accounts(config_dir: Path) -> AccountsFile:
    path = config_dir / "accounts.yaml"
    if not path.exists():
        return AccountsFile()
    return load_yaml(path, AccountsFile)
