"""The ops console's read model (``api/console_model.py``), fed by hand: timelines in
order, copies and unapplied answers marked, bounded memory, dead letters and their state."""

from __future__ import annotations

import json

import pytest

from api import console_model
from api.console_model import ConsoleView
from domain.dead_letters import DeadLetterResolved, dead_letter_id_for
from domain.events import (
    ChannelOperation,
    ChannelOutcome,
    ChannelRequested,
    ChannelResponded,
    LegApplied,
    PaymentStatusChanged,
)
from domain.ids import payment_id_for
from streams import topics as t
from streams.envelope import child, dead_letter, encode

PID = payment_id_for("m-1", "o-1")
T0 = 1_700_000_000_000


def status(previous: str, now: str, at_ms: int, reason: str = "", trigger: str = "pay",
           serial: str = "") -> PaymentStatusChanged:
    return PaymentStatusChanged(
        payment_id=PID, merchant_id="m-1", merchant_order_no="o-1", status=now,
        previous_status=previous, reason=reason, channel="acq", channel_serial=serial,
        amount_minor=1_000, currency="EUR", captured_minor=0, refunded_minor=0, at_ms=at_ms,
        trigger=trigger)


REQUEST = ChannelRequested(request_id="req-1", payment_id=PID, channel="acq",
                           operation=ChannelOperation.sale, amount_minor=1_000, currency="EUR")
ANSWER = ChannelResponded(request_id="req-1", payment_id=PID, channel="acq",
                          operation=ChannelOperation.sale, outcome=ChannelOutcome.succeeded,
                          amount_minor=1_000, currency="EUR", channel_serial="sn-1",
                          responded_at_ms=T0 + 50)


def observed(view: ConsoleView, body, at_ms: int, cause: str = "c") -> None:
    view.observe(child(cause, body, 0, at_ms))


def record(view: ConsoleView, topic: str, body, at_ms: int, cause: str = "c") -> None:
    view.apply_record(topic, None, encode(child(cause, body, 0, at_ms)), at_ms)


def leg(posting: str, account: str, amount: int) -> LegApplied:
    return LegApplied(posting_id=posting, entry_id="je-1", payment_id=PID, account_id=account,
                      currency="EUR", amount_minor=amount, sequence=1, total_minor=0,
                      available_minor=0, frozen_minor=0, entry_legs=2, version=1,
                      reason="capture")


class TestTimeline:
    def test_a_decision_comes_before_what_it_sent_in_the_same_millisecond(self):
        view = ConsoleView()

        record(view, t.CHANNEL_REQUESTS, REQUEST, T0)  # the console's feed was quicker
        observed(view, status("", "created", T0, "accepted; risk approve, score 0"), T0, "a")
        observed(view, status("created", "processing", T0, "routed: rule r"), T0, "b")
        record(view, t.CHANNEL_CALLBACKS, ANSWER, T0 + 50)
        observed(view, status("processing", "succeeded", T0 + 60, "captured", "sale"),
                 T0 + 60, "d")

        items, dropped = view.timeline(PID)
        assert [(i["kind"], i["title"]) for i in items] == [
            ("risk", "pay accepted: created"), ("routing", "created → processing"),
            ("channel", "sale sent to acq: 1000 EUR"),
            ("callback", "acq callback for sale: succeeded"),
            ("status", "processing → succeeded")]
        assert dropped == 0

    def test_a_repeated_answer_is_counted_and_noted_not_listed_again(self):
        view = ConsoleView()

        for _ in range(3):
            record(view, t.CHANNEL_CALLBACKS, ANSWER, T0)

        (item,), _ = view.timeline(PID)
        assert (item["count"], item["note"], item["ignored"]) == (
            3, "2 copies of the same answer again: ignored", "")

    def test_an_answer_the_order_did_not_apply_says_so(self):
        view = ConsoleView()
        record(view, t.CHANNEL_CALLBACKS, ANSWER, T0)

        record(view, t.UNAPPLIED, ANSWER, T0 + 5, cause="orders")  # same natural id

        (item,), _ = view.timeline(PID)
        assert item["ignored"].startswith("not applied by the order")

    def test_the_legs_of_one_entry_are_one_item(self):
        view = ConsoleView()

        observed(view, leg("p-1", "clearing:acq:EUR", -1_000), T0)
        observed(view, leg("p-2", "merchant:m-1:pending:EUR", 1_000), T0 + 1)
        observed(view, leg("p-2", "merchant:m-1:pending:EUR", 1_000), T0 + 2)

        (item,), _ = view.timeline(PID)
        assert item["detail"] == ("clearing:acq:EUR -1000 EUR; merchant:m-1:pending:EUR "
                                  "+1000 EUR (2 of 2 legs)")

    def test_a_timeline_keeps_its_newest_items_and_counts_the_rest(self, monkeypatch):
        monkeypatch.setattr(console_model, "ITEMS_PER_PAYMENT", 3)
        view = ConsoleView()

        for n in range(5):
            observed(view, status("processing", "processing", T0 + n, f"note {n}"), T0 + n,
                     f"c{n}")

        items, dropped = view.timeline(PID)
        assert ([i["detail"] for i in items], dropped) == (
            ["note 2 (by pay)", "note 3 (by pay)", "note 4 (by pay)"], 2)

    def test_only_the_most_recent_payments_keep_a_timeline(self, monkeypatch):
        monkeypatch.setattr(console_model, "TIMELINES_KEPT", 2)
        view = ConsoleView()

        for n in range(3):
            view._item(f"pay-{n}", "i", T0, "status", "t", "d")
        view._item("pay-1", "j", T0, "status", "t", "d")  # touched again: kept
        view._item("pay-3", "i", T0, "status", "t", "d")

        assert list(view.timelines) == ["pay-1", "pay-3"]


class TestSearchAndSummary:
    def test_serials_and_order_numbers_find_their_payment(self):
        view = ConsoleView()

        observed(view, status("processing", "succeeded", T0, serial="sn-9"), T0)

        assert view.serials["sn-9"] == PID
        assert view.order_nos["o-1"] == {PID}

    def test_only_a_payments_first_final_status_counts_for_throughput(self):
        view = ConsoleView()

        observed(view, status("processing", "succeeded", T0), T0, "a")
        observed(view, status("succeeded", "refunded", T0 + 1), T0 + 1, "b")
        observed(view, status("processing", "failed", T0 - 120_000), T0, "c")

        assert view.finals_since(T0 - 60_000) == ["succeeded"]


class TestDeadLetters:
    def parked(self, view: ConsoleView, offset: int = 7) -> str:
        command = {"type": "pay", "merchant_id": "m-1", "merchant_order_no": "o-1",
                   "amount_minor": 10.5}
        raw = dead_letter("intake", "invalid command: amount_minor", t.COMMANDS, 1, offset,
                          b"o-1", json.dumps(command).encode(), T0)
        view.apply_record(t.DEADLETTER, b"o-1", raw, T0)
        return dead_letter_id_for("intake", t.COMMANDS, 1, offset)

    def test_a_dead_letter_is_linked_to_the_payment_its_command_names(self):
        view = ConsoleView()

        dl_id = self.parked(view)
        self.parked(view)  # parked again after a restart: one dead letter

        assert list(view.dead_letters) == [dl_id]
        assert view.dead_letters[dl_id]["payment_id"] == PID
        assert [i["kind"] for i in view.timeline(PID)[0]] == ["dead_letter"]

    @pytest.mark.parametrize("value", [
        b'{"merchant_id": "m-\\udfff", "merchant_order_no": "o-1"}',  # a lone surrogate
        b'{"merchant_id": "m-1", "merchant_order_no": "o-\\ud800"}',
        b'{"type":"pay","merchant_id":"m-1","merchant_order_no":"o-1","pad":"' + b"x" * 40_000,
        b"[" * 9_000 + b"]" * 7_000,  # too deep for the JSON parser
    ], ids=["merchant", "order", "truncated", "deep"])
    def test_a_hostile_command_is_listed_without_a_payment(self, value):
        view = ConsoleView()
        raw = dead_letter("intake", "invalid command: merchant_id", t.COMMANDS, 0, 3, b"k",
                          value, T0)

        view.apply_record(t.DEADLETTER, b"k", raw, T0)

        (found,) = view.dead_letters.values()
        assert found["payment_id"] == ""

    @pytest.mark.parametrize("first,state", [("replay", "replayed"), ("discard", "discarded")])
    def test_its_first_accepted_action_is_its_state_and_refusals_are_kept(self, first, state):
        view = ConsoleView()
        dl_id = self.parked(view)
        answers = [DeadLetterResolved(dead_letter_id=dl_id, action_id="a-1", action=first,
                                      status="accepted", operator="ana", note="n", at_ms=T0),
                   DeadLetterResolved(dead_letter_id=dl_id, action_id="a-2", action="discard",
                                      status=f"dead_letter_already_{state}", operator="bo",
                                      note="late", at_ms=T0 + 1)]

        for n, answer in enumerate(answers + answers):
            record(view, t.DEADLETTER_ACTIONS, answer, T0 + n, cause=f"c{n}")

        found = view.dead_letters[dl_id]
        assert (found["state"], found["resolved"].operator) == (state, "ana")
        assert [a.status for a in found["actions"]] == ["accepted",
                                                       f"dead_letter_already_{state}"]
