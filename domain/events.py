"""Events (past tense) and the inter-stage messages the domain emits and consumes."""

from __future__ import annotations

from enum import Enum

from domain.commands import Message


class ChannelOperation(str, Enum):
    sale = "sale"
    authorize = "authorize"
    capture = "capture"
    void = "void"
    refund = "refund"


class ChannelOutcome(str, Enum):
    succeeded = "succeeded"
    declined = "declined"


class ChannelRequested(Message):
    """The core asks a channel to move money. ``request_id`` is derived from its cause."""

    request_id: str
    payment_id: str
    channel: str
    operation: ChannelOperation
    amount_minor: int
    currency: str
    reference: str = ""
    """Refund id for a refund, capture sequence for a capture; empty otherwise."""


class ChannelResponded(Message):
    """A channel's callback (or status-query answer) for one request."""

    request_id: str
    payment_id: str
    channel: str
    operation: ChannelOperation
    outcome: ChannelOutcome
    amount_minor: int
    currency: str
    channel_serial: str
    decline_code: str = ""
    responded_at_ms: int = 0


class Leg(Message):
    """One side of a journal entry. Signed: credit positive, debit negative."""

    account_id: str
    currency: str
    amount_minor: int
    hold_id: str = ""
    """When set on a debit, the debit consumes this hold (freeze then debit)."""


class JournalEntryDecided(Message):
    """A balanced journal entry, decided once by the order stage."""

    entry_id: str
    payment_id: str
    reason: str
    legs: tuple[Leg, ...]
    decided_at_ms: int


class HoldRequested(Message):
    """Try phase of try/confirm/cancel: freeze funds on one account."""

    hold_id: str
    payment_id: str
    account_id: str
    currency: str
    amount_minor: int


class HoldReleaseRequested(Message):
    """Cancel phase: release a hold without moving money."""

    hold_id: str
    payment_id: str
    account_id: str


class HoldResolved(Message):
    """The ledger's answer to a hold request, sent back to the order stage."""

    hold_id: str
    payment_id: str
    account_id: str
    placed: bool
    reason: str = ""


class PaymentStatusChanged(Message):
    """One per order transition, published on ``pay.events``."""

    payment_id: str
    merchant_id: str
    merchant_order_no: str
    status: str
    previous_status: str
    reason: str
    channel: str
    channel_serial: str
    amount_minor: int
    currency: str
    captured_minor: int
    refunded_minor: int
    at_ms: int
    trigger: str
    """What caused it: the command type or the channel operation."""


class LegApplied(Message):
    """The ledger applied one leg; carries the account's balance after it (read models)."""

    posting_id: str
    entry_id: str
    payment_id: str
    account_id: str
    currency: str
    amount_minor: int
    sequence: int
    """This account's leg count after this leg: the highest sequence is the latest."""
    total_minor: int
    available_minor: int
    frozen_minor: int


class CommandRejected(Message):
    """A well-formed command the core refused, with the status code's name as the reason."""

    payment_id: str
    merchant_id: str
    merchant_order_no: str
    command_type: str
    idempotency_key: str
    code: str
    reason: str
    at_ms: int
