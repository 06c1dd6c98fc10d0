"""The ledger stage's crash rules, driven with dict tables and recording topics.

After a SIGKILL Faust restores every row from its own changelog, so the account row and an
id's applied record can come back from different moments. These tests restore them that
way by hand and check that nothing is applied twice and every hold request is answered.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

from agents.ledger import LedgerStage
from domain import accounts
from domain.events import HoldReleaseRequested, HoldRequested, JournalEntryDecided, Leg
from streams import topics as t
from streams.app import Wire
from streams.envelope import Envelope, encode

MERCHANT = accounts.merchant_pending("m-1", "USD")
CLEARING = accounts.channel_clearing("acq", "USD")


class RecordingTopic:
    def __init__(self, name: str, sent: list):
        self.name, self.sent = name, sent

    async def send(self, key, value):
        self.sent.append((self.name, key, value))


class DictApp:
    """The part of a Faust App the stage uses: tables are dicts, topics record sends."""

    def __init__(self, sent: list):
        self.sent = sent

    def Table(self, name, **_kwargs):  # noqa: N802 - Faust's name
        return {}

    def topic(self, *names, **_kwargs):
        return RecordingTopic(names[0], self.sent)


def stage() -> tuple[LedgerStage, list]:
    sent: list = []
    # Dict tables: the stage's crash rules, not the acked store (tests/unit/test_table_store.py).
    settings = SimpleNamespace(partitions=4, config_dir=Path("config"), table_memtable_mb=2,
                               table_block_cache_mb=4, table_rows_after_ack=False)
    wire = Wire(app=DictApp(sent), settings=settings)
    for name in t.ALL:
        wire.topics[name] = wire.topic(name)
    return LedgerStage(wire), sent


def deliver(ledger: LedgerStage, account_id: str, body, offset: int) -> None:
    value = encode(Envelope(f"msg-{offset}", "trace", 0, body))
    message = SimpleNamespace(topic=t.LEDGER_POSTINGS, partition=0, offset=offset,
                              key=account_id.encode(), value=value, headers=())
    asyncio.run(ledger.handle(SimpleNamespace(message=message)))


def capture(amount: int = 1_000) -> JournalEntryDecided:
    return JournalEntryDecided(entry_id="je-1", payment_id="pay-1", reason="capture",
                               decided_at_ms=0, legs=(
                                   Leg(account_id=CLEARING, currency="USD", amount_minor=-amount),
                                   Leg(account_id=MERCHANT, currency="USD", amount_minor=amount)))


def total(ledger: LedgerStage) -> int:
    return ledger.load(MERCHANT, "USD").balance.total_minor


def answers(sent: list) -> list[dict]:
    return [json.loads(v)["body"] for topic, _k, v in sent if topic == t.ORDERS]


def hold(amount: int = 500) -> HoldRequested:
    return HoldRequested(hold_id="h-1", payment_id="pay-1", account_id=MERCHANT,
                         currency="USD", amount_minor=amount)


class TestPostingAfterCrash:
    def test_copy_not_applied_again_when_applied_record_came_back_older(self):
        ledger, sent = stage()
        deliver(ledger, MERCHANT, capture(), offset=10)
        ledger.applied.clear()  # the crash: the account row survived, the record did not

        deliver(ledger, MERCHANT, capture(), offset=10)  # redelivered input
        deliver(ledger, MERCHANT, capture(), offset=20)  # a copy re-sent upstream

        assert total(ledger) == 1_000
        notes = [v for topic, _k, v in sent if topic == t.LEDGER_ENTRIES]
        assert len(notes) == 3 and len(set(notes)) == 1  # the same LegApplied, said again

    def test_replayed_input_applied_when_account_row_came_back_older(self):
        ledger, _sent = stage()
        deliver(ledger, MERCHANT, capture(), offset=10)
        ledger.accounts.clear()  # the crash: the record survived, the account row did not

        deliver(ledger, MERCHANT, capture(), offset=10)

        assert total(ledger) == 1_000


class TestHoldAfterCrash:
    def test_refused_hold_still_answered_when_its_record_was_lost(self):
        ledger, sent = stage()
        deliver(ledger, MERCHANT, hold(), offset=5)  # refused: no funds
        deliver(ledger, MERCHANT, capture(10), offset=6)  # moves the row's offset on
        ledger.applied.clear()
        sent.clear()

        deliver(ledger, MERCHANT, hold(), offset=5)

        assert [a["placed"] for a in answers(sent)] == [False]

    def test_released_hold_not_placed_again_by_a_late_copy(self):
        ledger, sent = stage()
        deliver(ledger, MERCHANT, capture(), offset=1)
        deliver(ledger, MERCHANT, hold(), offset=5)
        ledger.applied.pop(b"h-1")  # the crash loses the hold's record
        deliver(ledger, MERCHANT, hold(), offset=5)  # redelivered: repairs the record
        deliver(ledger, MERCHANT, HoldReleaseRequested(hold_id="h-1", payment_id="pay-1",
                                                       account_id=MERCHANT), offset=6)

        deliver(ledger, MERCHANT, hold(), offset=9)  # a copy from upstream

        balance = ledger.load(MERCHANT, "USD").balance
        assert balance.frozen_minor == 0
        assert balance.holds == ()
