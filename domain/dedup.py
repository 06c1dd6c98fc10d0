"""Idempotency keys: same key + same payload = the first result; different payload = conflict."""

from __future__ import annotations

from enum import IntEnum

from domain.commands import Message


class DedupStatus(IntEnum):
    first_seen = 0
    duplicate = 1
    conflict_different_payload = 2
    expired_reused = 3

    def transient(self) -> bool:
        return False


class IdempotencyRecord(Message):
    fingerprint: str
    payment_id: str
    command_type: str
    first_seen_ms: int


def check_idempotency(
    record: IdempotencyRecord | None, fingerprint: str, now_ms: int, retention_ms: int
) -> DedupStatus:
    """Decide what a command with this key and payload is. Expired keys start afresh."""
    assert retention_ms > 0
    if record is None:
        return DedupStatus.first_seen
    if now_ms - record.first_seen_ms > retention_ms:
        return DedupStatus.expired_reused
    if record.fingerprint != fingerprint:
        return DedupStatus.conflict_different_payload
    return DedupStatus.duplicate
