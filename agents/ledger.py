"""Ledger: one writer per account. Applies its own legs of each journal entry, by posting id."""

from __future__ import annotations

from agents._stage import consume, table
from domain import ledger
from domain.events import (
    HoldReleaseRequested,
    HoldRequested,
    HoldResolved,
    JournalEntryDecided,
    LegApplied,
)
from domain.ledger import AccountBalance, Hold, PostingStatus
from streams import topics as t
from streams.app import Wire, now_ms
from streams.envelope import child, decode, encode
from streams.metrics import POSTINGS


def register(wire: Wire) -> None:
    balances = table(wire, "balances", "account id -> balance and open holds")
    applied = table(wire, "applied_postings", "posting id -> the LegApplied it produced")
    hold_decisions = table(wire, "hold_decisions", "hold id -> first decision (status name)")

    def load(account_id: str, currency: str) -> AccountBalance:
        raw = balances.get(account_id.encode())
        if raw is None:
            return ledger.open_account(account_id, currency)
        return AccountBalance.model_validate_json(raw)

    async def post_entry(event, env, entry: JournalEntryDecided, account_id: str) -> None:
        if not ledger.entry_balances(entry):
            await wire.dead_letter("ledger", f"entry_unbalanced: {entry.entry_id}", event)
            return
        for index, leg in enumerate(entry.legs):
            if leg.account_id != account_id:
                continue
            posting_id = ledger.posting_id_for(entry, account_id)
            sent = applied.get(posting_id.encode())
            if sent:  # applied before: say so again (the first send may have died with us)
                POSTINGS.labels(operation="leg", result="exists").inc()
                await wire.topics[t.LEDGER_ENTRIES].send(key=account_id.encode(), value=sent)
                continue
            before = load(account_id, leg.currency)
            after, status = ledger.apply_leg(before, leg)
            POSTINGS.labels(operation="leg", result=status.name).inc()
            if status is not PostingStatus.applied:
                await wire.dead_letter("ledger", f"{status.name}: {posting_id}", event)
                continue
            note = LegApplied(
                posting_id=posting_id, entry_id=entry.entry_id, payment_id=entry.payment_id,
                account_id=account_id, currency=leg.currency, amount_minor=leg.amount_minor,
                sequence=after.legs_applied, total_minor=after.total_minor,
                available_minor=after.available_minor,
                frozen_minor=after.frozen_minor)
            value = encode(child(env, note, index, now_ms()))
            balances[account_id.encode()] = after.model_dump_json().encode()
            applied[posting_id.encode()] = value
            await wire.topics[t.LEDGER_ENTRIES].send(key=account_id.encode(), value=value)

    async def hold(env, req: HoldRequested) -> None:
        before = load(req.account_id, req.currency)
        first = hold_decisions.get(req.hold_id.encode())
        earlier = PostingStatus[first.decode()] if first else None
        after, status = ledger.place_hold(before, Hold(
            hold_id=req.hold_id, payment_id=req.payment_id, amount_minor=req.amount_minor),
            earlier)
        POSTINGS.labels(operation="hold", result=status.name).inc()
        if earlier is None:
            hold_decisions[req.hold_id.encode()] = status.name.encode()
        if status is PostingStatus.applied:
            balances[req.account_id.encode()] = after.model_dump_json().encode()
        placed = status in (PostingStatus.applied, PostingStatus.hold_exists)
        answer = HoldResolved(hold_id=req.hold_id, payment_id=req.payment_id,
                              account_id=req.account_id, placed=placed,
                              reason="" if placed else status.name)
        await wire.send(t.ORDERS, req.payment_id, child(env, answer, 0, now_ms()))

    async def release(req: HoldReleaseRequested) -> None:
        raw = balances.get(req.account_id.encode())
        if raw is None:
            return
        after, status = ledger.release_hold(AccountBalance.model_validate_json(raw), req.hold_id)
        POSTINGS.labels(operation="release", result=status.name).inc()
        if status is PostingStatus.applied:
            balances[req.account_id.encode()] = after.model_dump_json().encode()

    async def handle(event) -> None:
        env = decode(event.message.value)
        account_id = event.message.key.decode()
        if isinstance(env.body, JournalEntryDecided):
            await post_entry(event, env, env.body, account_id)
        elif isinstance(env.body, HoldRequested):
            await hold(env, env.body)
        elif isinstance(env.body, HoldReleaseRequested):
            await release(env.body)
        else:
            await wire.dead_letter("ledger", f"unexpected kind {type(env.body).__name__}", event)

    @wire.app.agent(wire.topics[t.LEDGER_POSTINGS], name="ledger")
    async def ledger_stage(stream):
        await consume("ledger", wire, stream, handle)
