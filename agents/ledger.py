"""Ledger: one writer per account. Applies its own legs of each journal entry, by posting id."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict

from agents._stage import consume, table
from domain import ledger
from domain.events import (
    HoldChanged,
    HoldReleaseRequested,
    HoldRequested,
    HoldResolved,
    JournalEntryDecided,
    LegApplied,
)
from domain.ledger import AccountBalance, Hold, PostingStatus
from streams import topics as t
from streams.accounts_config import load_accounts
from streams.app import Wire, now_ms
from streams.envelope import Envelope, child, decode, encode
from streams.metrics import POSTINGS


log = logging.getLogger(__name__)


class AccountRow(BaseModel):
    """The balance and the input offset it reflects, in ONE row so they survive together.

    Faust restores every row from its own changelog; after a crash two rows can come back
    from different moments. Whatever must agree with the balance lives in this row.
    """

    model_config = ConfigDict(frozen=True)

    balance: AccountBalance
    input_offset: int = -1
    """Offset in this account's pay.ledger.postings partition of the last message applied."""
    last_id: str = ""
    last_outcome: str = ""
    last_sent: str = ""
    """The posting/hold id applied at ``input_offset``, what it decided and the event it
    sent, so the most recent one can be answered exactly even if its applied_ids row came
    back older."""


class Applied(BaseModel):
    """What a posting or hold id did, kept so a duplicate gets the same answer."""

    model_config = ConfigDict(frozen=True)

    input_offset: int
    outcome: str
    """The LegApplied envelope sent (legs) or the first decision's status name (holds)."""
    sent: str = ""
    """For holds and releases: the HoldChanged envelope sent, if any."""


class LedgerStage:
    """The account-partitioned tables and what each posting message does to them.

    A message is already reflected in the balance when its offset is at most the row's
    ``input_offset`` (a redelivery), or when its posting/hold id was applied from an
    offset at most that (a copy sent again upstream). Inputs replay in offset order, so a
    row restored to an older moment is brought forward again before any later copy comes.
    """

    def __init__(self, wire: Wire):
        self.wire = wire
        self.accounts = table(wire, "accounts", "account id -> balance and input offset")
        self.applied = table(wire, "applied_ids", "posting or hold id -> offset and outcome")
        self.policy = load_accounts(wire.settings.config_dir)

    def load(self, account_id: str, currency: str) -> AccountRow:
        raw = self.accounts.get(account_id.encode())
        if raw is None:
            return AccountRow(balance=ledger.open_account(account_id, currency))
        return AccountRow.model_validate_json(raw)

    def store(self, balance: AccountBalance, offset: int, some_id: str, outcome: str,
              sent: str = "") -> None:
        """One write for the balance, the offset it reflects and the last outcome; then the
        id's own record (which may come back older after a crash: see ``seen``)."""
        row = AccountRow(balance=balance, input_offset=offset, last_id=some_id,
                         last_outcome=outcome, last_sent=sent)
        self.accounts[balance.account_id.encode()] = row.model_dump_json().encode()
        self.remember(some_id, offset, outcome, sent)

    def remember(self, some_id: str, offset: int, outcome: str, sent: str = "") -> Applied:
        applied = Applied(input_offset=offset, outcome=outcome, sent=sent)
        self.applied[some_id.encode()] = applied.model_dump_json().encode()
        return applied

    def seen(self, row: AccountRow, some_id: str, offset: int) -> tuple[bool, Applied | None]:
        """Whether the row already reflects this message, and the id's earlier outcome."""
        raw = self.applied.get(some_id.encode())
        earlier = Applied.model_validate_json(raw) if raw else None
        if offset <= row.input_offset:  # redelivered: handled before, whatever it did
            if earlier is None:  # its record came back older than the row: repair it,
                # or a later copy from upstream would be applied a second time
                same = row.last_id == some_id
                if not same:  # also what a message read out of order looks like: say so
                    log.warning("%s at offset %d, below the row's input offset %d, has no "
                                "record of its own: taken as applied", some_id, offset,
                                row.input_offset)
                earlier = self.remember(some_id, offset, row.last_outcome if same else "",
                                        row.last_sent if same else "")
            return True, earlier
        if earlier is not None and earlier.input_offset <= row.input_offset:
            return True, earlier  # the same id again from upstream, already in the row
        return False, None

    async def handle(self, event) -> None:
        """The event's key is the row: an account, or one sub-account of a hot account."""
        env = decode(event.message.value)
        row_id = event.message.key.decode()
        offset = event.message.offset
        if isinstance(env.body, JournalEntryDecided):
            await self.post_entry(event, env, row_id, offset)
        elif isinstance(env.body, HoldRequested):
            await self.hold(env, env.body, row_id, offset)
        elif isinstance(env.body, HoldReleaseRequested):
            await self.release(env, env.body, row_id, offset)
        else:
            await self.wire.dead_letter("ledger", f"unexpected kind {type(env.body).__name__}",
                                        event)

    async def post_entry(self, event, env: Envelope, row_id: str, offset: int) -> None:
        entry: JournalEntryDecided = env.body
        if not ledger.entry_balances(entry):
            await self.wire.dead_letter("ledger", f"entry_unbalanced: {entry.entry_id}", event)
            return
        for index, leg in enumerate(entry.legs):
            if self.policy.place(leg.account_id, entry.payment_id) == row_id:
                reason = await self.post_leg(env, entry, index, row_id, offset)
                if reason:
                    await self.wire.dead_letter("ledger", reason, event)

    async def post_leg(self, env: Envelope, entry: JournalEntryDecided, index: int,
                       row_id: str, offset: int) -> str:
        """Apply one leg once; returns a dead-letter reason, or '' when all is well."""
        leg = entry.legs[index].model_copy(update={"account_id": row_id})
        posting_id = ledger.posting_id_for(entry, row_id)
        key = row_id.encode()
        row = self.load(row_id, leg.currency)
        seen, earlier = self.seen(row, posting_id, offset)
        if seen:  # say so again: the first send may have died with us
            POSTINGS.labels(operation="leg", result="exists").inc()
            if earlier is not None and earlier.outcome:
                await self.wire.topics[t.LEDGER_ENTRIES].send(key=key,
                                                              value=earlier.outcome.encode())
            return ""
        after, status = ledger.apply_leg(row.balance, leg, self.policy.limit_of(row_id))
        POSTINGS.labels(operation="leg", result=status.name).inc()
        if status is not PostingStatus.applied:
            return f"{status.name}: {posting_id}"
        note = LegApplied(
            posting_id=posting_id, entry_id=entry.entry_id, payment_id=entry.payment_id,
            account_id=row_id, currency=leg.currency, amount_minor=leg.amount_minor,
            sequence=after.legs_applied, total_minor=after.total_minor,
            available_minor=after.available_minor, frozen_minor=after.frozen_minor,
            hold_id=leg.hold_id, hold_final=leg.hold_final, entry_legs=len(entry.legs),
            version=after.version, reason=entry.reason)
        value = encode(child(env, note, index, now_ms()))
        self.store(after, offset, posting_id, value.decode())
        await self.wire.topics[t.LEDGER_ENTRIES].send(key=key, value=value)
        return ""

    def _changed(self, env: Envelope, after: AccountBalance, hold_id: str, payment_id: str,
                 change: str, amount_minor: int) -> str:
        note = HoldChanged(
            hold_id=hold_id, payment_id=payment_id, account_id=after.account_id,
            currency=after.currency, change=change, amount_minor=amount_minor,
            version=after.version, total_minor=after.total_minor,
            available_minor=after.available_minor, frozen_minor=after.frozen_minor)
        return encode(child(env, note, 0, now_ms())).decode()

    async def _resend(self, row_id: str, sent: str) -> None:
        if sent:
            await self.wire.topics[t.LEDGER_ENTRIES].send(key=row_id.encode(),
                                                          value=sent.encode())

    async def hold(self, env: Envelope, req: HoldRequested, row_id: str, offset: int) -> None:
        row = self.load(row_id, req.currency)
        seen, earlier = self.seen(row, req.hold_id, offset)
        if seen and not earlier.outcome:  # decided, but the answer is not known any more
            still_open = any(h.hold_id == req.hold_id for h in row.balance.holds)
            status = PostingStatus.applied if still_open else PostingStatus.hold_outcome_unknown
            log.warning("hold %s redelivered after a crash: answering %s", req.hold_id,
                        status.name)
            earlier = self.remember(req.hold_id, earlier.input_offset, status.name)
        after, status = ledger.place_hold(
            row.balance,
            Hold(hold_id=req.hold_id, payment_id=req.payment_id, amount_minor=req.amount_minor),
            PostingStatus[earlier.outcome] if earlier else None, self.policy.limit_of(row_id))
        POSTINGS.labels(operation="hold", result=status.name).inc()
        if earlier is None:
            sent = self._changed(env, after, req.hold_id, req.payment_id, "placed",
                                 req.amount_minor) if status is PostingStatus.applied else ""
            self.store(after, offset, req.hold_id, status.name, sent)  # a refusal moves it too
            await self._resend(row_id, sent)
        else:
            await self._resend(row_id, earlier.sent)
        placed = status in (PostingStatus.applied, PostingStatus.hold_exists)
        answer = HoldResolved(hold_id=req.hold_id, payment_id=req.payment_id,
                              account_id=req.account_id, placed=placed,
                              reason="" if placed else status.name)
        await self.wire.send(t.ORDERS, req.payment_id, child(env, answer, 0, now_ms()))

    async def release(self, env: Envelope, req: HoldReleaseRequested, row_id: str,
                      offset: int) -> None:
        raw = self.accounts.get(row_id.encode())
        if raw is None:
            return
        row = AccountRow.model_validate_json(raw)
        release_id = f"release:{req.hold_id}"
        if offset <= row.input_offset:  # redelivered: say again what it did
            done = self.applied.get(release_id.encode())
            sent = row.last_sent if row.last_id == release_id else (
                Applied.model_validate_json(done).sent if done else "")
            await self._resend(row_id, sent)
            return
        hold = next((h for h in row.balance.holds if h.hold_id == req.hold_id), None)
        after, status = ledger.release_hold(row.balance, req.hold_id)
        POSTINGS.labels(operation="release", result=status.name).inc()
        sent = self._changed(env, after, req.hold_id, req.payment_id, "released",
                             hold.amount_minor) if hold is not None else ""
        self.store(after, offset, release_id, status.name, sent)
        await self._resend(row_id, sent)


def register(wire: Wire) -> None:
    stage = LedgerStage(wire)

    @wire.app.agent(wire.topics[t.LEDGER_POSTINGS], name="ledger")
    async def ledger_stage(stream):
        await consume("ledger", wire, stream, stage.handle)
