"""A read model of payments fed by ``pay.events``: every API replica keeps its own copy.

It also follows ``pay.ledger.entries`` (balances, journals), the reconciliation topics
(``pay.recon.status``, ``pay.recon.exceptions``) for the recon report, the webhook endpoints
and delivery states, and the ledger auditor's status."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections import deque
from datetime import date

from api.auth import Principal
from domain.accounts import AccountKind, kind_of, logical_account, wallet_merchant
from domain.audit import AuditStatus
from domain.events import (
    CommandRejected,
    HoldChanged,
    LegApplied,
    MandateStatusChanged,
    PaymentStatusChanged,
)
from domain.recon import ReconException, ReconExceptionResolved, ReconStatus
from domain.webhooks import Endpoint, WebhookDelivery
from paycore import recon_report
from streams import topics as t
from streams.envelope import UndecodableEnvelope, decode
from streams.follow import follow

log = logging.getLogger(__name__)
JOURNAL_KEPT = 1_000
RECON_EXCEPTIONS_KEPT = 10_000
FOLLOWED = (t.EVENTS, t.LEDGER_ENTRIES, t.RECON_STATUS, t.RECON_EXCEPTIONS,
            t.WEBHOOK_ENDPOINTS, t.WEBHOOK_DELIVERIES, t.AUDIT_STATUS)
REJECTIONS_KEPT = 50
"""Per payment: its most recent refused commands."""
SEEN_IDS_KEPT = 1_000_000
"""Message ids remembered to drop redelivered copies (a copy comes soon after its original)."""
DELIVERIES_KEPT = 200
"""Per payment: the delivery state of its latest events (bounded)."""


def kind_of_safe(account_id: str) -> AccountKind | None:
    try:
        return kind_of(account_id)
    except ValueError:
        return None


class ReconView:
    """Each recon partition's latest status and the most recent exceptions (bounded),
    deduplicated by ``exception_id``: the inputs of ``paycore.recon_report.build``; and how
    reconciliation took in ops' resolutions of them."""

    def __init__(self, exceptions_max: int = RECON_EXCEPTIONS_KEPT) -> None:
        assert exceptions_max > 0
        self.statuses: dict[int, ReconStatus] = {}
        self.exceptions: OrderedDict[str, ReconException] = OrderedDict()
        """exception id -> the exception, oldest received first."""
        self.exceptions_max = exceptions_max
        self.resolutions: OrderedDict[str, ReconExceptionResolved] = OrderedDict()
        """exception id -> reconciliation's latest word on ops' resolution of it."""

    def apply(self, body: ReconStatus | ReconException | ReconExceptionResolved) -> None:
        if isinstance(body, ReconExceptionResolved):
            kept = self.resolutions.get(body.exception_id)
            if kept is None or body.at_ms >= kept.at_ms:
                self.resolutions[body.exception_id] = body
            while len(self.resolutions) > self.exceptions_max:
                self.resolutions.popitem(last=False)
        elif isinstance(body, ReconStatus):
            kept = self.statuses.get(body.partition)
            if kept is None or body.at_ms >= kept.at_ms:
                self.statuses[body.partition] = body
        elif body.exception_id not in self.exceptions or body.cleared:
            self.exceptions[body.exception_id] = body  # a clearing record replaces it
            while len(self.exceptions) > self.exceptions_max:
                self.exceptions.popitem(last=False)

    def report(self, today: date) -> dict:
        return recon_report.build(list(self.statuses.values()),
                                  list(self.exceptions.values()), today)


class PaymentsView:
    """Latest status and history per payment, and waiters for status changes."""

    def __init__(self) -> None:
        self.payments: dict[str, dict] = {}
        self.by_order_no: dict[tuple[str, str], str] = {}
        self.rejections: dict[str, list[dict]] = {}
        self.mandates: dict[str, dict] = {}
        self.rows: dict[str, LegApplied | HoldChanged] = {}
        """Per ledger row (account or sub-account): its latest change, by version."""
        self.sub_accounts: dict[str, set[str]] = {}
        self.journal: dict[str, deque] = {}
        """Per account: its most recent legs, newest last (bounded)."""
        self.changed = asyncio.Condition()
        self.caught_up = asyncio.Event()
        self.recon = ReconView()
        self.in_review: set[str] = set()
        """Payments whose latest status is risk_review (the ops review queue)."""
        self.endpoints: dict[str, Endpoint] = {}
        self.deliveries: dict[str, OrderedDict[str, WebhookDelivery]] = {}
        self.audit: AuditStatus | None = None
        self.observers: list = []
        """Called with every envelope applied (the console's timelines)."""
        self._seen_ids: OrderedDict[str, None] = OrderedDict()

    def endpoint_is(self, merchant_id: str, version: int) -> bool:
        found = self.endpoints.get(merchant_id)
        return found is not None and found.version == version

    def may_see(self, account_id: str, who: Principal) -> bool:
        """Ops see every account; a merchant its own (``merchant:<id>:...``) and its
        customers' wallets (``wallet:<id>.<customer>:<CCY>``, named so by the API: the
        customer's id holds no dot, so ``<id>`` is everything before the last one).
        Clearing, fee, cash and suspense accounts are ops' only."""
        if who.ops:
            return True
        if not who.merchant_id:
            return False
        kind, parts = kind_of_safe(account_id), account_id.split(":")
        if kind in (AccountKind.merchant_pending, AccountKind.merchant_settled):
            return parts[1] == who.merchant_id
        return wallet_merchant(account_id) == who.merchant_id  # exact: not a prefix

    def apply(self, body, event_id: str = "") -> None:
        if isinstance(body, PaymentStatusChanged):
            row = self.payments.setdefault(body.payment_id, {"history": []})
            row.update(body.model_dump(exclude={"previous_status", "reason", "trigger", "at_ms"}))
            row["history"].append({"event_id": event_id, "status": body.status,
                                   "reason": body.reason,
                                   "trigger": body.trigger, "at_ms": body.at_ms})
            self.by_order_no[(body.merchant_id, body.merchant_order_no)] = body.payment_id
            if row["status"] == "risk_review":
                self.in_review.add(body.payment_id)
            else:
                self.in_review.discard(body.payment_id)
        elif isinstance(body, (LegApplied, HoldChanged)):
            self._ledger(body)
        elif isinstance(body, MandateStatusChanged):
            row = self.mandates.setdefault(body.mandate_key, {"history": []})
            row.update(body.model_dump(exclude={"previous_status", "at_ms"}))
            row["history"].append({"event_id": event_id, "status": body.status,
                                   "at_ms": body.at_ms})
        elif isinstance(body, CommandRejected):
            kept = self.rejections.setdefault(body.payment_id, [])
            kept.append({**body.model_dump(), "event_id": event_id})
            del kept[:-REJECTIONS_KEPT]
        elif isinstance(body, Endpoint):
            self.endpoints[body.merchant_id] = body  # keyed by merchant: log order decides
        elif isinstance(body, WebhookDelivery):
            kept = self.deliveries.setdefault(body.queue, OrderedDict())
            before = kept.get(body.event_id)
            if before is None or (body.attempts, body.at_ms) >= (before.attempts, before.at_ms):
                kept[body.event_id] = body
            while len(kept) > DELIVERIES_KEPT:
                kept.popitem(last=False)
        elif isinstance(body, AuditStatus):
            if self.audit is None or body.at_ms >= self.audit.at_ms:
                self.audit = body

    def _ledger(self, body: LegApplied | HoldChanged) -> None:
        latest = self.rows.get(body.account_id)
        if latest is None or body.version > latest.version:
            self.rows[body.account_id] = body
        account = logical_account(body.account_id)
        self.sub_accounts.setdefault(account, set()).add(body.account_id)
        if isinstance(body, LegApplied):
            self.journal.setdefault(account, deque(maxlen=JOURNAL_KEPT)).append(body)

    def balance(self, account_id: str) -> dict | None:
        """One exact figure for an account, adding up a hot account's sub-accounts."""
        rows = [self.rows[r] for r in sorted(self.sub_accounts.get(account_id, ()))]
        if not rows:
            return None
        return {"account_id": account_id, "currency": rows[0].currency,
                "total_minor": sum(r.total_minor for r in rows),
                "available_minor": sum(r.available_minor for r in rows),
                "frozen_minor": sum(r.frozen_minor for r in rows),
                "sub_accounts": len(rows)}

    async def follow(self, bootstrap: str, partitions: int, stop: asyncio.Event) -> None:
        await follow(bootstrap, FOLLOWED, partitions, self._apply_raw, self.caught_up, stop,
                     self._notify)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def _apply_raw(self, raw: bytes) -> None:
        try:
            env = decode(raw)
        except UndecodableEnvelope as exc:
            log.warning("read model skipped an undecodable event: %s", exc)
            return
        if isinstance(env.body, (ReconStatus, ReconException, ReconExceptionResolved)):
            self.recon.apply(env.body)  # idempotent as it is: no message id kept
            self._observed(env)
            return
        if env.message_id in self._seen_ids:
            return  # a redelivered copy: same deterministic id
        self._seen_ids[env.message_id] = None
        if len(self._seen_ids) > SEEN_IDS_KEPT:
            self._seen_ids.popitem(last=False)
        self.apply(env.body, env.message_id)
        self._observed(env)

    def _observed(self, env) -> None:
        for observer in self.observers:
            observer(env)
