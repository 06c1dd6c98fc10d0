"""The ops console's read model: each payment's timeline, the dead letters, a search index
and the live summary.

Fed from two sides: the API's read model hands it every envelope it applies (``pay.events``,
the ledger's entries, reconciliation's exceptions), and its own follower reads what only
the console needs: channel requests and callbacks, answers the order stage did not apply
(``pay.orders.unapplied``), settlement lines, dead letters and ops' actions on them.

Bounded: timelines are kept for the ``TIMELINES_KEPT`` payments seen most recently, each
with at most ``ITEMS_PER_PAYMENT`` items (the oldest go first, and the timeline says how
many went); dead letters, indexes and the summary's window are capped the same way.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict, deque

from pydantic import TypeAdapter, ValidationError

from domain.commands import Identifier
from domain.dead_letters import DeadLetterRecord, DeadLetterResolved, read_dead_letter
from domain.events import (
    ChannelRequested,
    ChannelResponded,
    CommandRejected,
    ExceptionResolved,
    LegApplied,
    PaymentStatusChanged,
    SettlementReported,
)
from domain.ids import payment_id_for
from domain.recon import ReconException, ReconExceptionResolved
from streams import topics as t
from streams.envelope import Envelope, UndecodableEnvelope, decode
from streams.follow import follow_records

TIMELINES_KEPT = 20_000
ITEMS_PER_PAYMENT = 300
INDEX_KEPT = 100_000
"""Search entries (channel serial, merchant order no) kept, most recent first."""
DEAD_LETTERS_KEPT = 5_000
ACTIONS_PER_DEAD_LETTER = 20
FINALS_KEPT = 50_000
WINDOW_MS = 60_000
"""The live summary's window: throughput and success rate over the last minute."""
FOLLOWED = (t.CHANNEL_REQUESTS, t.CHANNEL_CALLBACKS, t.UNAPPLIED, t.SETTLEMENTS,
            t.DEADLETTER, t.DEADLETTER_ACTIONS)
FINAL = frozenset({"succeeded", "failed", "canceled", "amount_mismatch", "timed_out"})
"""A payment's first status among these ends its run (for throughput and success rate)."""
_UNAPPLIED = "not applied by the order (late, contradicting or unknown): kept on " \
             "pay.orders.unapplied for reconciliation and ops"
_COPY = "the same answer again: ignored"
_RANK = {"risk": 0, "routing": 0, "status": 0, "review": 0, "refused": 0, "resolution": 0,
         "match": 0, "reconciliation": 0, "channel": 1, "callback": 1, "ledger": 2}


class Timeline:
    """One payment's items in arrival order, with an index to update an item in place
    (a repeated callback, the next leg of an entry)."""

    def __init__(self) -> None:
        self.items: deque[dict] = deque()
        self.by_id: dict[str, dict] = {}
        self.dropped = 0

    def add(self, item: dict) -> dict:
        self.items.append(item)
        self.by_id[item["id"]] = item
        while len(self.items) > ITEMS_PER_PAYMENT:
            gone = self.items.popleft()
            self.by_id.pop(gone["id"], None)
            self.dropped += 1
        return item

    def ordered(self) -> list[dict]:
        """By time; within a millisecond a decision before what it sent (a status change,
        then the channel request, then the ledger entry), then by arrival: records from
        different topics arrive in any order."""
        return sorted(self.items, key=lambda i: (i["at_ms"], _RANK.get(i["kind"], 1),
                                                 i["seq"]))


class ConsoleView:
    def __init__(self) -> None:
        self.timelines: OrderedDict[str, Timeline] = OrderedDict()
        self.serials: OrderedDict[str, str] = OrderedDict()
        self.order_nos: OrderedDict[str, set[str]] = OrderedDict()
        self.dead_letters: OrderedDict[str, dict] = OrderedDict()
        self.applied: dict[str, ExceptionResolved] = {}
        """Exception id -> ops' resolution as the order stage applied it."""
        self.finals: deque[tuple[int, str]] = deque(maxlen=FINALS_KEPT)
        self.caught_up = asyncio.Event()
        self._seq = 0

    # ------------------------------------------------------------ feeding

    async def follow(self, bootstrap: str, partitions: int, stop: asyncio.Event) -> None:
        await follow_records(bootstrap, FOLLOWED, partitions, self.apply_record,
                             self.caught_up, stop)

    def apply_record(self, topic: str, key: bytes | None, value: bytes, at_ms: int = 0
                     ) -> None:
        """One record of the console's own topics; ``at_ms`` (the record's timestamp)
        dates what carries no time of its own."""
        if topic == t.DEADLETTER:
            record = read_dead_letter(value)
            if record is not None:
                self._dead_letter(record)
            return
        try:
            env = decode(value)
        except UndecodableEnvelope:
            return  # the stage that reads it dead-letters it; nothing for a timeline
        body = env.body
        if not env.at_ms:
            env = env._replace(at_ms=at_ms)
        if topic == t.UNAPPLIED:
            self._unapplied(env)
        elif isinstance(body, ChannelRequested):
            self._request(env, body)
        elif isinstance(body, ChannelResponded):
            self._callback(env, body)
        elif isinstance(body, SettlementReported) and body.payment_id:
            self._item(body.payment_id, env.message_id, env.at_ms, "settlement_line",
                       f"settlement line {body.line_id} from {body.channel}",
                       f"gross {body.amount_minor} {body.currency}, fee {body.fee_minor}, "
                       f"settled on {body.settled_on} (report {body.period or '?'})")
        elif isinstance(body, DeadLetterResolved):
            self._dead_letter_answer(body)

    def observe(self, env: Envelope) -> None:
        """An envelope the API's read model applied (a copy of a message already seen is
        not passed on)."""
        body = env.body
        if isinstance(body, PaymentStatusChanged):
            self._status(env, body)
        elif isinstance(body, CommandRejected):
            self._item(body.payment_id, env.message_id, body.at_ms, "refused",
                       f"{body.command_type} refused: {body.code}",
                       f"{body.reason} (idempotency key {body.idempotency_key})")
        elif isinstance(body, LegApplied) and body.payment_id:
            self._leg(env, body)
        elif isinstance(body, ReconException) and body.payment_id:
            rule = f"; {body.resolution}" if body.resolution else ""
            self._item(body.payment_id, body.exception_id, body.detected_at_ms,
                       "recon_exception", f"reconciliation exception: {body.kind.value}",
                       body.reason + rule)
        elif isinstance(body, ReconExceptionResolved) and body.payment_id:
            self._item(body.payment_id, f"seen-{body.exception_id}", body.at_ms,
                       "reconciliation", f"reconciliation took in the resolution of "
                       f"{body.kind}", f"item {body.item_state}")
        elif isinstance(body, ExceptionResolved):
            self.applied[body.exception_id] = body
            entries = ", ".join(body.entry_ids) or "no entry"
            self._item(body.payment_id, env.message_id, body.at_ms, "resolution",
                       f"{body.kind} resolved by {body.resolver}: {body.action}",
                       f"{body.comment} ({entries})")

    # ------------------------------------------------------------ one kind each

    def _item(self, payment_id: str, item_id: str, at_ms: int, kind: str, title: str,
              detail: str, **extra) -> dict:
        timeline = self.timelines.get(payment_id)
        if timeline is None:
            timeline = self.timelines[payment_id] = Timeline()
            while len(self.timelines) > TIMELINES_KEPT:
                self.timelines.popitem(last=False)
        else:
            self.timelines.move_to_end(payment_id)
        found = timeline.by_id.get(item_id)
        if found is not None:
            return found
        self._seq += 1
        return timeline.add({"id": item_id, "seq": self._seq, "at_ms": at_ms, "kind": kind,
                             "title": title, "detail": detail, "ignored": "", "note": "",
                             "count": 1, **extra})

    def _status(self, env: Envelope, body: PaymentStatusChanged) -> None:
        kind = "status"
        if body.reason.startswith("accepted; risk") or body.trigger == "risk":
            kind = "risk"
        elif body.reason.startswith(("routed:", "failover")):
            kind = "routing"
        elif body.trigger in ("review", "settlement", "reconciliation"):
            kind = {"settlement": "match"}.get(body.trigger, body.trigger)
        moved = body.previous_status != body.status
        title = f"{body.previous_status} → {body.status}" if moved else \
            f"noted while {body.status}"
        if not body.previous_status:
            title = f"{body.trigger} accepted: {body.status}"
        self._item(body.payment_id, env.message_id, body.at_ms, kind, title,
                   f"{body.reason} (by {body.trigger})")
        self._index(body)
        if body.status in FINAL and body.previous_status not in FINAL:
            self.finals.append((body.at_ms, body.status))

    def _index(self, body: PaymentStatusChanged) -> None:
        if body.channel_serial:
            self.serials[body.channel_serial] = body.payment_id
            self.serials.move_to_end(body.channel_serial)
        self.order_nos.setdefault(body.merchant_order_no, set()).add(body.payment_id)
        self.order_nos.move_to_end(body.merchant_order_no)
        for index in (self.serials, self.order_nos):
            while len(index) > INDEX_KEPT:
                index.popitem(last=False)

    def _request(self, env: Envelope, body: ChannelRequested) -> None:
        what = {"query": "status query", "ack": "acknowledgement"}.get(
            body.operation.value, body.operation.value)
        self._item(body.payment_id, env.message_id, env.at_ms, "channel",
                   f"{what} sent to {body.channel}: {body.amount_minor} {body.currency}",
                   f"request {body.request_id}" + (f", {body.reference}" if body.reference
                                                   else ""))

    def _callback(self, env: Envelope, body: ChannelResponded) -> None:
        timeline = self.timelines.get(body.payment_id)
        seen = timeline.by_id.get(env.message_id) if timeline is not None else None
        if seen is not None:  # the channel (or the broker) delivered it again
            seen["count"] += 1
            copies = seen["count"] - 1
            seen["note"] = f"{copies} {'copy' if copies == 1 else 'copies'} of {_COPY}"
            return
        how = "status query answer" if body.via_query else "callback"
        declined = f" ({body.decline_code})" if body.decline_code else ""
        self._item(body.payment_id, env.message_id, body.responded_at_ms or env.at_ms,
                   "callback", f"{body.channel} {how} for {body.operation.value}: "
                   f"{body.outcome.value}{declined}",
                   f"{body.amount_minor} {body.currency}, serial {body.channel_serial or '-'},"
                   f" request {body.request_id}")

    def _unapplied(self, env: Envelope) -> None:
        payment_id = getattr(env.body, "payment_id", "")
        timeline = self.timelines.get(payment_id)
        seen = timeline.by_id.get(env.message_id) if timeline is not None else None
        if seen is not None:
            seen["ignored"] = _UNAPPLIED
        elif payment_id:
            self._item(payment_id, env.message_id, env.at_ms, "unapplied",
                       f"{type(env.body).__name__} not applied", _UNAPPLIED,
                       ignored=_UNAPPLIED)

    def _leg(self, env: Envelope, leg: LegApplied) -> None:
        item = self._item(leg.payment_id, leg.entry_id, env.at_ms, "ledger",
                          f"ledger entry: {leg.reason or 'entry'}", "", legs=[])
        if leg.posting_id in {p for p, *_ in item["legs"]}:
            return
        item["legs"].append((leg.posting_id, leg.account_id, leg.amount_minor, leg.currency))
        item["detail"] = "; ".join(f"{account} {amount:+d} {ccy}"
                                   for _, account, amount, ccy in item["legs"])
        item["detail"] += f" ({len(item['legs'])} of {leg.entry_legs} legs)"

    def _dead_letter(self, record: DeadLetterRecord) -> None:
        dl_id = record.dead_letter_id
        if dl_id in self.dead_letters:
            return  # the same original parked again: one dead letter
        payment_id = _payment_of(record)
        self.dead_letters[dl_id] = {
            "dead_letter_id": dl_id, "record": record, "payment_id": payment_id,
            "state": "open", "resolved": None, "actions": []}
        while len(self.dead_letters) > DEAD_LETTERS_KEPT:
            self.dead_letters.popitem(last=False)
        if payment_id:
            self._item(payment_id, dl_id, record.at_ms, "dead_letter",
                       f"dead letter from {record.stage}", record.reason)

    def _dead_letter_answer(self, answer: DeadLetterResolved) -> None:
        found = self.dead_letters.get(answer.dead_letter_id)
        if found is None:
            return
        if any(a.action_id == answer.action_id and a.status == answer.status
               for a in found["actions"]):
            return
        found["actions"] = (found["actions"] + [answer])[-ACTIONS_PER_DEAD_LETTER:]
        if answer.status == "accepted" and found["resolved"] is None:
            found["resolved"] = answer
            found["state"] = "replayed" if answer.action == "replay" else "discarded"
        if found["payment_id"]:
            self._item(found["payment_id"], f"{answer.action_id}-{answer.status}",
                       answer.at_ms, "dead_letter_action",
                       f"dead letter {answer.action}: {answer.status} by {answer.operator}",
                       answer.note)

    # ------------------------------------------------------------ reading

    def timeline(self, payment_id: str) -> tuple[list[dict], int]:
        found = self.timelines.get(payment_id)
        if found is None:
            return [], 0
        return found.ordered(), found.dropped

    def finals_since(self, since_ms: int) -> list[str]:
        return [status for at_ms, status in self.finals if at_ms >= since_ms]


_IDENTIFIER: TypeAdapter = TypeAdapter(Identifier)


def _identifiers(*values) -> bool:
    """All are identifiers as commands have them (a dead letter's may be anything: a lone
    surrogate, which no id can be derived from, a control character, megabytes)."""
    try:
        for value in values:
            _IDENTIFIER.validate_python(value)
    except ValidationError:
        return False
    return True


def _payment_of(record: DeadLetterRecord) -> str:
    """The payment a dead letter is about, when it can be told: a command naming its
    merchant and order, an internal message naming its payment, or a payment id as key."""
    raw = record.value.raw()
    if raw:
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, bad UTF-8, nested too deep
            doc = None
        if isinstance(doc, dict):
            body = doc.get("body") if isinstance(doc.get("body"), dict) else doc
            merchant, order_no = body.get("merchant_id"), body.get("merchant_order_no")
            if isinstance(body.get("payment_id"), str) and body["payment_id"]:
                return body["payment_id"]
            if _identifiers(merchant, order_no):
                return payment_id_for(merchant, order_no)
    key = record.key.text or ""
    return key if key.startswith("pay_") else ""
