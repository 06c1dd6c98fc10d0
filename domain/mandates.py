"""Collection mandates: one writer per mandate (merchant + mandate id).

A payment by ``mandate`` asks the mandate's owner first (a stream-table join across
partitions, like a hold): the answer says whether the mandate is active and within its
limit. Commands and checks for one mandate are serialized on its partition, so a
collection checked before a termination goes ahead and one checked after is refused.
"""

from __future__ import annotations

from enum import Enum, IntEnum
from typing import NamedTuple

from domain.commands import Message, SignMandate, TerminateMandate
from domain.events import MandateChecked, MandateCheckRequested, MandateStatusChanged
from domain.order_state import fingerprint_of


class MandateStatus(str, Enum):
    active = "active"
    terminated = "terminated"


class MandateCode(IntEnum):
    """One member per reason, numbers fixed forever."""

    accepted = 0
    duplicate = 1
    mandate_exists_with_different_payload = 2
    mandate_not_found = 3
    mandate_terminated = 4
    mandate_exceeds_limit = 5
    mandate_currency_mismatch = 6

    def transient(self) -> bool:
        return False


class Mandate(Message):
    mandate_key: str
    merchant_id: str
    mandate_id: str
    payer_account_id: str
    currency: str
    amount_minor_max: int
    status: MandateStatus
    fingerprint: str
    signed_at_ms: int
    terminated_at_ms: int = 0
    collections: int = 0
    """Collections allowed so far (each payment id counted once)."""
    last_checked: tuple[str, ...] = ()
    """Recent payment ids answered, so a repeated check is answered alike, not recounted."""


class MandateDecision(NamedTuple):
    mandate: Mandate | None
    outputs: tuple[Message, ...]
    code: MandateCode


CHECKS_REMEMBERED = 64


def _event(mandate: Mandate, previous: str, now_ms: int) -> MandateStatusChanged:
    return MandateStatusChanged(
        mandate_key=mandate.mandate_key, merchant_id=mandate.merchant_id,
        mandate_id=mandate.mandate_id, status=mandate.status.value, previous_status=previous,
        payer_account_id=mandate.payer_account_id, currency=mandate.currency,
        amount_minor_max=mandate.amount_minor_max, collections=mandate.collections,
        at_ms=now_ms)


def decide_mandate_command(mandate: Mandate | None, cmd: SignMandate | TerminateMandate,
                           now_ms: int) -> MandateDecision:
    if isinstance(cmd, SignMandate):
        fingerprint = fingerprint_of(cmd)
        if mandate is not None:
            code = MandateCode.duplicate if mandate.fingerprint == fingerprint \
                else MandateCode.mandate_exists_with_different_payload
            return MandateDecision(mandate, (), code)
        signed = Mandate(
            mandate_key=cmd.subject_id(), merchant_id=cmd.merchant_id, mandate_id=cmd.mandate_id,
            payer_account_id=cmd.payer_account_id, currency=cmd.currency,
            amount_minor_max=cmd.amount_minor_max, status=MandateStatus.active,
            fingerprint=fingerprint, signed_at_ms=now_ms)
        return MandateDecision(signed, (_event(signed, "", now_ms),), MandateCode.accepted)
    assert isinstance(cmd, TerminateMandate), type(cmd)
    if mandate is None:
        return MandateDecision(None, (), MandateCode.mandate_not_found)
    if mandate.status is MandateStatus.terminated:
        return MandateDecision(mandate, (), MandateCode.duplicate)
    ended = mandate.model_copy(update={"status": MandateStatus.terminated,
                                       "terminated_at_ms": now_ms})
    return MandateDecision(ended, (_event(ended, "active", now_ms),), MandateCode.accepted)


def decide_mandate_check(mandate: Mandate | None, check: MandateCheckRequested, now_ms: int
                         ) -> MandateDecision:
    """Is this collection allowed? Lookups, then limits; the answer goes back to the order."""
    code = _check(mandate, check)
    allowed = code is MandateCode.accepted
    answer = MandateChecked(payment_id=check.payment_id, mandate_key=check.mandate_key,
                            allowed=allowed, code=code.name,
                            payer_account_id=mandate.payer_account_id if allowed else "")
    if not allowed or check.payment_id in mandate.last_checked:
        return MandateDecision(mandate, (answer,), code)
    counted = mandate.model_copy(update={
        "collections": mandate.collections + 1,
        "last_checked": (mandate.last_checked + (check.payment_id,))[-CHECKS_REMEMBERED:]})
    return MandateDecision(counted, (answer,), code)


def _check(mandate: Mandate | None, check: MandateCheckRequested) -> MandateCode:
    if mandate is None:
        return MandateCode.mandate_not_found
    assert mandate.mandate_key == check.mandate_key
    if mandate.status is MandateStatus.terminated:
        return MandateCode.mandate_terminated
    if check.currency != mandate.currency:
        return MandateCode.mandate_currency_mismatch
    if check.amount_minor > mandate.amount_minor_max:
        return MandateCode.mandate_exceeds_limit
    return MandateCode.accepted
