"""What the API answers: every success response has a model (the recon report's shape is
``paycore.recon_report.build``'s), so the OpenAPI document says what a client gets and
schemathesis can hold the API to it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from domain.audit import AuditStatus
from domain.dead_letters import DeadLetterResolved
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


# ---------------------------------------------------------------- the ops console


class TimelineItem(BaseModel):
    """One thing that happened to a payment: a command, a routing or risk decision, a
    channel request or answer, a status change, a ledger entry, a settlement line, a
    reconciliation exception or match, a dead letter, ops' actions."""

    id: str
    seq: int
    """Arrival order at this replica (ties at the same millisecond)."""
    at_ms: int
    kind: str
    title: str
    detail: str
    ignored: str
    """Why the core did not act on it ('' : it did): a late or contradicting answer."""
    note: str
    """What else to know: copies of it that were ignored."""
    count: int
    """How often it arrived (a channel notifying twice: 2)."""


class Timeline(BaseModel):
    payment_id: str
    payment: PaymentView | None
    items: list[TimelineItem]
    dropped: int
    """The oldest items no longer kept (a bounded timeline)."""


class SearchMatch(BaseModel):
    payment_id: str
    merchant_id: str
    merchant_order_no: str
    channel_serial: str
    status: str
    matched_by: str
    """payment_id, merchant_order_no or channel_serial."""


class SearchResults(BaseModel):
    query: str
    matches: list[SearchMatch]


class ExceptionState(BaseModel):
    state: str
    """open, resolving (the order stage applied ops' resolution; reconciliation has not
    said yet), resolved (reconciliation took it in), resolved_by_rule."""
    action: str = ""
    resolver: str = ""
    comment: str = ""
    at_ms: int = 0
    item_state: str = ""
    """closed, or what the reconciliation item still waits for."""
    rule: str = ""


class ExceptionView(BaseModel):
    """A reconciliation exception with every record involved (the fields of
    ``domain.recon.ReconException``), its age, its state and what ops may do."""

    model_config = ConfigDict(extra="allow")

    exception_id: str
    payment_id: str
    kind: str
    age_ms: int
    state: ExceptionState
    actions: list[str]
    not_resolvable: str
    """Why no action applies ('' when some do)."""


class PreviewLeg(BaseModel):
    account_id: str
    currency: str
    amount_minor: int


class PreviewEntry(BaseModel):
    entry_id: str
    """'' until the order stage posts it (its id derives from the request it answers)."""
    reason: str
    legs: list[PreviewLeg]


class ResolutionPreview(BaseModel):
    exception_id: str
    action: str
    moves_money: bool
    entries: list[PreviewEntry]
    effects: list[str]
    digest: str
    """Send it back as ``confirm`` to resolve with exactly these entries."""


class DeadLetterItem(BaseModel):
    dead_letter_id: str
    stage: str
    reason: str
    topic: str
    partition: int
    offset: int
    at_ms: int
    payment_id: str
    """The payment it is about, when that can be told ('' otherwise)."""
    state: str
    """open, replayed or discarded."""
    resolved: DeadLetterResolved | None
    replayable: bool
    """Its topic takes corrected copies and the original is kept whole."""
    truncated: bool
    """Only the first bytes of its key or value are kept (``DeadLetterDetail`` has sizes)."""


class DeadLetterDetail(DeadLetterItem):
    key_text: str | None
    key_base64: str | None
    key_size_bytes: int | None
    """The original key's size; None if unknown (older records) or no key."""
    key_sha256: str | None
    value_text: str | None
    value_base64: str | None
    value_size_bytes: int | None
    """The original value's size, of which at most the first 16 KiB are kept."""
    value_sha256: str | None
    actions: list[DeadLetterResolved]
    """Every answer of the dead-letter stage to ops' actions, refusals included."""


class DeadLetters(BaseModel):
    dead_letters: list[DeadLetterItem]
    total: int
    stages: dict[str, int]
    reasons: dict[str, int]
    """Dead letters per reason (its first part, as the metrics count them)."""


class DeadLetterAccepted(BaseModel):
    dead_letter_id: str
    status: str


class Summary(BaseModel):
    at_ms: int
    window_s: int
    finals: int
    """Payments that reached their first final status in the window."""
    throughput_per_s: float
    success_rate: float | None
    """Succeeded / finals in the window (None: none)."""
    payments: int
    open_reviews: int
    open_exceptions: int
    open_dead_letters: int
    audit_ok: bool | None
    """None: the auditor has not reported."""
    audit_age_ms: int | None
    audit_violations: int
