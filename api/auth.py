"""API keys: each bound to one merchant, or the ops key for operations.

Keys come from ``config/api_keys.yaml`` (SHA-256 digests only: the file can be committed and
read by anyone without giving a key away) and from the environment (``PAYCORE_API_KEYS``, a
JSON object merchant -> key, and ``PAYCORE_OPS_KEY``), which is where a deployment puts
secrets. A request presents its key as ``Authorization: Bearer <key>``.

The presented key is hashed and compared with every known digest in constant time, with no
early exit, so the time taken says nothing about how close a guess was. Keys never reach a
log line or a problem document: only the merchant id they stand for does.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api.problems import Problem
from domain.commands import Identifier
from streams.config import load_yaml
from streams.settings import Settings

KEY_LENGTH_MIN = 16
KEY_LENGTH_MAX = 200
Digest = str
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""A key's digest as ``paycore api-key`` prints it: 64 lowercase hex digits."""


def digest_of(key: str) -> Digest:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh key: 32 random bytes, URL-safe (``paycore api-key MERCHANT`` prints one)."""
    return f"pk_{secrets.token_urlsafe(32)}"


@dataclass(frozen=True)
class Principal:
    """Who is asking: a merchant (``merchant_id``) or operations (``ops``)."""

    merchant_id: str = ""
    ops: bool = False

    def owns(self, merchant_id: str) -> bool:
        """May this caller see a record of ``merchant_id``? Ops may see everything."""
        return self.ops or (bool(self.merchant_id) and self.merchant_id == merchant_id)


class MerchantKeys(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    merchant: Identifier
    key_sha256: tuple[Sha256, ...] = Field(min_length=1)
    """Hex SHA-256 of each key valid for this merchant (several while rotating)."""


class ApiKeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    merchants: tuple[MerchantKeys, ...] = ()
    ops_key_sha256: tuple[Sha256, ...] = ()



class KeyRing:
    """Every known key digest and the principal it stands for."""

    def __init__(self, entries: list[tuple[Digest, Principal]]) -> None:
        digests = [d for d, _ in entries]
        if len(set(digests)) != len(digests):
            raise ValueError("one API key is configured twice")
        self.entries = [(bytes.fromhex(d), p) for d, p in entries]

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        entries: list[tuple[Digest, Principal]] = []
        path = settings.config_dir / "api_keys.yaml"
        if path.exists():
            entries += from_file(path)
        for merchant, secret in sorted(settings.api_keys.items()):
            key = secret.get_secret_value()
            _usable(key, f"PAYCORE_API_KEYS[{merchant}]")
            entries.append((digest_of(key), Principal(merchant_id=merchant)))
        ops = settings.ops_key.get_secret_value()
        if ops:
            _usable(ops, "PAYCORE_OPS_KEY")
            entries.append((digest_of(ops), Principal(ops=True)))
        return cls(entries)

    def find(self, key: str) -> Principal | None:
        """The principal of ``key``, comparing against every digest (constant time)."""
        presented = hashlib.sha256(key.encode()).digest()
        found = None
        for digest, principal in self.entries:
            if hmac.compare_digest(presented, digest):
                found = principal
        return found


def _usable(key: str, where: str) -> None:
    """A configured key no request could present is a mistake: say so at start."""
    if not (KEY_LENGTH_MIN <= len(key) <= KEY_LENGTH_MAX and key.isascii()):
        raise ValueError(f"{where}: a key is {KEY_LENGTH_MIN} to {KEY_LENGTH_MAX} ASCII "
                         f"characters (this one has {len(key)})")


def from_file(path: Path) -> list[tuple[Digest, Principal]]:
    keys = load_yaml(path, ApiKeysFile)
    return [(d, Principal(merchant_id=m.merchant)) for m in keys.merchants
            for d in m.key_sha256] + [(d, Principal(ops=True)) for d in keys.ops_key_sha256]


_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def authenticator(ring: KeyRing):
    """FastAPI dependencies: ``caller`` (any valid key), ``merchant`` (a merchant's key) and
    ``ops`` (the ops key). A missing or unknown key is 401; the wrong kind of key is 403."""

    async def caller(request: Request,
                     credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
                     ) -> Principal:
        presented = len(request.headers.getlist("authorization"))
        if presented > 1:  # which one counts would be a guess (a proxy may pick another)
            raise _unauthorized(f"one Authorization header, not {presented}")
        if credentials is None:  # absent, or not a Bearer scheme
            raise _unauthorized("an API key is required: Authorization: Bearer <key>")
        key = credentials.credentials
        principal = None
        if KEY_LENGTH_MIN <= len(key) <= KEY_LENGTH_MAX and key.isascii():
            principal = ring.find(key)
        if principal is None:
            raise _unauthorized("the API key is not valid")
        return principal

    async def merchant(principal: Principal = Depends(caller)) -> Principal:
        if not principal.merchant_id:
            raise Problem(403, "merchant_key_required",
                          "this acts for a merchant: use that merchant's API key")
        return principal

    async def ops(principal: Principal = Depends(caller)) -> Principal:
        if not principal.ops:
            raise Problem(403, "ops_key_required", "operations only: use the ops key")
        return principal

    return caller, merchant, ops
