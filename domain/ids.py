"""Deterministic identifiers: every id is derived from its cause, so a replay yields the same id."""

from __future__ import annotations

import hashlib

_SEP = "\x1f"


def derive_id(prefix: str, *parts: str, digest_bytes: int = 12) -> str:
    """A short stable id: ``prefix_`` + hex of a keyed hash of the parts."""
    assert prefix and all(isinstance(p, str) for p in parts)
    digest = hashlib.blake2b(_SEP.join(parts).encode(), digest_size=digest_bytes).hexdigest()
    return f"{prefix}_{digest}"


def payment_id_for(merchant_id: str, merchant_order_no: str) -> str:
    """Our payment id, derived from the merchant's order so follow-up commands find it."""
    return derive_id("pay", merchant_id, merchant_order_no)


def dedup_key_for(merchant_id: str, idempotency_key: str) -> str:
    """Idempotency keys are scoped to their merchant."""
    return f"{merchant_id}{_SEP}{idempotency_key}"


def mandate_key_for(merchant_id: str, mandate_id: str) -> str:
    """The key of a mandate's partition: mandates are scoped to their merchant."""
    return derive_id("mdt", merchant_id, mandate_id)
