"""Events (past tense) and the inter-stage messages the domain emits and consumes."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Union

from pydantic import Field

from domain.commands import Message, Pay, TopUp, Transfer, Withdraw
from domain.risk import Verdict


class ChannelOperation(str, Enum):
    sale = "sale"
    authorize = "authorize"
    capture = "capture"
    void = "void"
    refund = "refund"
    reverse = "reverse"
    """Take back a captured sale that has not settled (revocation)."""
    payout = "payout"
    """Send money out of a wallet (withdrawal)."""
    ack = "ack"
    """We have the channel's notification: a channel that re-sends until acknowledged
    (a wallet) stops. ``reference``: the request id the notification answered."""
    query = "query"
    """Ask what became of an attempt whose callback did not come (``reference``: the
    attempt's request id, then ``/`` and the query's number). The channel answers with a
    response to the attempt itself, applied like its callback."""


class ChannelOutcome(str, Enum):
    succeeded = "succeeded"
    declined = "declined"
    pending = "pending"
    """Taken, not decided: the payer was sent to the bank's page; the outcome follows."""


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
    via_query: bool = False
    """The answer to a status query rather than the channel's own callback."""


class Leg(Message):
    """One side of a journal entry. Signed: credit positive, debit negative."""

    account_id: str
    currency: str
    amount_minor: int
    hold_id: str = ""
    """When set on a debit, the debit consumes this hold (freeze then debit)."""
    hold_final: bool = True
    """With ``hold_id``: True releases what the debit leaves of the hold; False keeps the
    rest frozen for a later capture (several partial captures of one authorization)."""


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
    hold_id: str = ""
    hold_final: bool = True
    entry_legs: int = 2
    """How many legs the whole entry has (across accounts): the auditor's tally."""
    version: int
    """This account's change count (legs and holds) after this leg."""
    reason: str = ""
    """The journal entry's reason (capture, refund, settlement_clearing, ...)."""


class HoldChange(str, Enum):
    placed = "placed"
    released = "released"


class HoldChanged(Message):
    """The ledger froze or released funds on one account; carries the balance after it."""

    hold_id: str
    payment_id: str
    account_id: str
    currency: str
    change: HoldChange
    amount_minor: int
    version: int
    total_minor: int
    available_minor: int
    frozen_minor: int


class CommandRejected(Message):
    """A well-formed command the core refused, with the status code's name as the reason."""

    payment_id: str
    """The subject the command acted on: a payment id, or a mandate key."""
    merchant_id: str
    merchant_order_no: str
    """Empty for mandate commands."""
    command_type: str
    idempotency_key: str
    code: str
    reason: str
    at_ms: int


class DeadlineReached(Message):
    """The sweeper's nudge: this order's deadline passed (callback timeout, auth expiry)."""

    payment_id: str
    deadline_ms: int


class MandateCheckRequested(Message):
    """The order stage asks the mandate's owner whether a collection may go ahead."""

    payment_id: str
    mandate_key: str
    merchant_id: str
    mandate_id: str
    amount_minor: int
    currency: str


class MandateChecked(Message):
    """The mandate stage's answer, back to the order."""

    payment_id: str
    mandate_key: str
    allowed: bool
    code: str
    payer_account_id: str = ""


class MandateStatusChanged(Message):
    """One per mandate transition, published on ``pay.events`` keyed by mandate key."""

    mandate_key: str
    merchant_id: str
    mandate_id: str
    status: str
    previous_status: str
    payer_account_id: str
    currency: str
    amount_minor_max: int
    collections: int
    at_ms: int


class SettlementReported(Message):
    """A channel's settlement line for one payment: it paid us (gross) for it."""

    line_id: str
    """The channel's own id of the line: the same line twice is one line."""
    channel: str
    payment_id: str
    channel_serial: str
    amount_minor: int
    """Gross settled: what was captured less what was refunded, at the channel."""
    currency: str
    settled_on: str
    """The settlement date, YYYY-MM-DD."""
    fee_minor: int = 0
    """The channel's fee for the line, as it reports it (reconciliation checks it)."""
    period: str = ""
    """The day of the report the line came in (YYYY-MM-DD; '' if not known)."""


class RiskScreened(Message):
    """Risk's verdict on a command that moves new money, on its way to the order stage.
    Carries the command itself, so the order is created from exactly what was screened."""

    payment_id: str
    payer_key: str
    fingerprint: str
    command: Annotated[Union[Pay, Transfer, TopUp, Withdraw], Field(discriminator="type")]
    verdict: Verdict
    screened_at_ms: int
    """When the command reached risk (its velocity time): a backtest replays by this."""


class ExceptionResolved(Message):
    """The order stage applied ops' resolution of a reconciliation exception (on
    ``pay.events``, keyed by payment id): reconciliation marks the discrepancy resolved and
    the console shows who did what and why. Ops' note, not the merchant's event."""

    payment_id: str
    merchant_id: str
    exception_id: str
    kind: str
    action: str
    resolver: str
    comment: str
    line_id: str = ""
    entry_ids: tuple[str, ...] = ()
    """The journal entries the resolution decided (posted through the ledger)."""
    at_ms: int
