"""Dedup: idempotency keys per merchant, partitioned by (merchant, idempotency key)."""

from __future__ import annotations

from agents._stage import consume, table
from domain.dedup import DedupStatus, IdempotencyRecord, check_idempotency
from domain.events import CommandRejected
from domain.commands import SCREENED, MandateCommand
from domain.risk import payer_key
from domain.orders import fingerprint_of
from streams import topics as t
from streams.app import Wire, now_ms
from streams.envelope import child, decode
from streams.metrics import COMMANDS


def register(wire: Wire) -> None:
    seen = table(wire, "idempotency_keys", "merchant+key -> first payload fingerprint")
    retention_ms = wire.settings.idempotency_retention_ms

    async def check(event) -> None:
        env = decode(event.message.value)
        cmd, key, at = env.body, event.message.key, now_ms()
        fingerprint = fingerprint_of(cmd)
        raw = seen.get(key)
        record = IdempotencyRecord.model_validate_json(raw) if raw else None
        status = check_idempotency(record, fingerprint, at, retention_ms)
        payment_id = cmd.subject_id()
        order_no = getattr(cmd, "merchant_order_no", "")
        COMMANDS.labels(type=cmd.type, result=status.name).inc()
        if status is DedupStatus.conflict_different_payload:
            rejected = CommandRejected(
                payment_id=payment_id, merchant_id=cmd.merchant_id,
                merchant_order_no=order_no, command_type=cmd.type,
                idempotency_key=cmd.idempotency_key, code=status.name,
                reason="idempotency key already used with a different payload", at_ms=at)
            await wire.send(t.EVENTS, payment_id, child(env, rejected, 0, at))
            return
        if status in (DedupStatus.first_seen, DedupStatus.expired_reused):
            seen[key] = IdempotencyRecord(fingerprint=fingerprint, payment_id=payment_id,
                                          command_type=cmd.type,
                                          first_seen_ms=at).model_dump_json().encode()
        # Duplicates go on too: the owner answers them with the first result, and a
        # redelivery after a crash (key stored, forward lost) must still reach it.
        # New money is screened by risk first, partitioned by payer; the rest goes straight
        # to the order (or mandate) it acts on.
        if isinstance(cmd, SCREENED):
            await wire.send(t.RISK, payer_key(cmd), child(env, cmd, 0, at))
            return
        owner = t.MANDATES if isinstance(cmd, MandateCommand) else t.ORDERS
        await wire.send(owner, payment_id, child(env, cmd, 0, at))

    @wire.app.agent(wire.topics[t.DEDUP], name="dedup")
    async def dedup(stream):
        await consume("dedup", wire, stream, check)
