"""What the API answers: every success response has a model (the recon report's shape is
``paycore.recon_report.build``'s), so the OpenAPI document says what a client gets and
schemathesis can hold the API to it."""

from __future__ import annotations

from pydantic import BaseModel

from domain.audit import AuditStatus
from domain.events import CommandRejected
from domain.webhooks import WebhookDelivery


class HistoryItem(BaseModel):
    event_id: str
    """The event's id: the ``id`` of its webhook."""
    status: str
    reason: str
    trigger: str
    """What caused it: the command type or the channel operation."""
    at_ms: int


class Rejection(CommandRejected):
    """A well-formed command the core refused, with its stable code and reason."""

    event_id: str


class PaymentView(BaseModel):
    """A payment (or transfer, top-up, withdrawal): the three identifiers (ours, the
    merchant's order number, the channel's serial), the amounts, the history."""

    payment_id: str
    merchant_id: str
    merchant_order_no: str
    channel_serial: str
    status: str
    channel: str
    amount_minor: int
    currency: str
    authorized_minor: int
    captured_minor: int
    refunded_minor: int
    version: int
    """How many status changes this answer includes: pass it as ``min_version`` to any
    replica and it answers with at least this state."""
    history: list[HistoryItem]
    rejections: list[Rejection]


class PaymentCreated(BaseModel):
    payment_id: str
    status: str
    """``accepted`` until the first status is known; ``rejected`` when the command was
    refused (see ``rejection``)."""
    payment: PaymentView | None
    rejection: Rejection | None = None


class Accepted(BaseModel):
    """A command on its way: ``status`` names what was asked; follow the payment for the
    outcome."""

    payment_id: str
    status: str


class MandateAccepted(BaseModel):
    mandate_id: str
    status: str


class MandateHistoryItem(BaseModel):
    event_id: str
    status: str
    at_ms: int


class MandateView(BaseModel):
    mandate_key: str
    merchant_id: str
    mandate_id: str
    status: str
    payer_account_id: str
    currency: str
    amount_minor_max: int
    collections: int
    history: list[MandateHistoryItem]
    rejections: list[Rejection]


class Balance(BaseModel):
    account_id: str
    currency: str
    total_minor: int
    available_minor: int
    frozen_minor: int
    sub_accounts: int


class Entry(BaseModel):
    entry_id: str
    posting_id: str
    payment_id: str
    amount_minor: int
    currency: str
    row: str
    """The ledger row (the account, or the sub-account of a split account)."""
    row_total_minor: int


class Entries(BaseModel):
    account_id: str
    entries: list[Entry]


class EndpointCreated(BaseModel):
    url: str
    secret: str
    """The signing secret, shown once: verify ``Paycore-Signature`` with it."""
    version: int
    active: bool
    """Whether this replica saw the registration take effect before answering."""


class EndpointView(BaseModel):
    url: str
    version: int


class DeliveryLog(BaseModel):
    deliveries: list[WebhookDelivery]
    """Each attempted event's latest state (retrying, delivered, failed)."""
    pending: list[str]
    """Events since the endpoint was registered and not attempted yet (queued behind
    another, or just created), by event id."""


class Deliveries(DeliveryLog):
    payment_id: str


class MandateDeliveries(DeliveryLog):
    mandate_id: str


class Reviews(BaseModel):
    reviews: list[PaymentView]


class ReconExceptions(BaseModel):
    exceptions: list[dict]
    total: int


class AuditView(AuditStatus):
    ok: bool
    """No check has ever failed."""
    age_ms: int
    """How old the auditor's latest status is (it reports at least every 30 s)."""


class Ready(BaseModel):
    ok: bool
    payments: int


class Health(BaseModel):
    ok: bool
