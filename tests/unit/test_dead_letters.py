"""What ops do with dead letters (``domain/dead_letters.py``): replay a corrected copy or
discard with a reason; the first action wins, the same action twice applies once."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from domain.dead_letters import (
    DeadLetterResolved,
    DeadLetterStatus,
    DiscardDeadLetter,
    Redelivery,
    ReplayDeadLetter,
    action_id_for,
    dead_letter_id_for,
    decide_dead_letter,
    read_dead_letter,
)
from streams.envelope import dead_letter

D = DeadLetterStatus
REPLAYABLE = frozenset({"pay.commands", "pay.orders"})
DL = dead_letter_id_for("intake", "pay.commands", 2, 41)
FIXED = '{"type":"pay","amount_minor":1050}'


def replay(key: str = "k-1", topic: str = "pay.commands") -> ReplayDeadLetter:
    return ReplayDeadLetter(dead_letter_id=DL, action_id=action_id_for(DL, key),
                            operator="ana", comment="amount fixed", topic=topic, key="o-1",
                            value=FIXED, requested_at_ms=10)


def discard(key: str = "k-2") -> DiscardDeadLetter:
    return DiscardDeadLetter(dead_letter_id=DL, action_id=action_id_for(DL, key),
                             operator="bo", reason="test traffic", requested_at_ms=10)


class TestReplay:
    def test_a_corrected_copy_goes_back_to_its_topic_with_its_key(self):
        d = decide_dead_letter(None, replay(), REPLAYABLE, 100)

        assert d.status is D.accepted
        assert d.outputs[0] == Redelivery(topic="pay.commands", key="o-1", value=FIXED)
        answer = d.outputs[1]
        assert isinstance(answer, DeadLetterResolved)
        assert (answer.status, answer.operator, answer.note, answer.at_ms) == (
            "accepted", "ana", "amount fixed", 100)
        assert (d.state.state, d.state.operator) == ("replayed", "ana")

    def test_refused_when_its_topic_takes_no_corrected_copies(self):
        d = decide_dead_letter(None, replay(topic="pay.ledger.entries"), REPLAYABLE, 100)

        assert (d.state, d.status) == (None, D.topic_not_replayable)
        assert [o.status for o in d.outputs] == ["topic_not_replayable"]

    def test_the_same_replay_twice_is_sent_once(self):
        first = decide_dead_letter(None, replay(), REPLAYABLE, 100)

        again = decide_dead_letter(first.state, replay(), REPLAYABLE, 200)

        assert again == (first.state, (), D.duplicate)

    def test_an_empty_copy_is_refused_by_its_shape(self):
        with pytest.raises(ValidationError) as raised:
            ReplayDeadLetter.model_validate({**replay().model_dump(), "value": ""})

        assert raised.value.errors()[0]["loc"] == ("value",)


class TestDiscard:
    def test_discarded_with_its_reason(self):
        d = decide_dead_letter(None, discard(), REPLAYABLE, 100)

        assert (d.status, d.state.state, d.state.note) == (D.accepted, "discarded",
                                                          "test traffic")
        assert [type(o).__name__ for o in d.outputs] == ["DeadLetterResolved"]

    def test_a_reason_is_required(self):
        with pytest.raises(ValidationError) as raised:
            DiscardDeadLetter.model_validate({**discard().model_dump(), "reason": ""})

        assert raised.value.errors()[0]["loc"] == ("reason",)

    @pytest.mark.parametrize("first,then,code", [
        (replay, discard, D.dead_letter_already_replayed),
        (discard, replay, D.dead_letter_already_discarded)])
    def test_the_first_action_wins(self, first, then, code):
        done = decide_dead_letter(None, first(), REPLAYABLE, 100)

        later = decide_dead_letter(done.state, then(), REPLAYABLE, 200)

        assert (later.state, later.status) == (done.state, code)
        assert [o.status for o in later.outputs] == [code.name]


class TestReading:
    def test_a_dead_letter_record_reads_back_with_its_original_bytes(self):
        raw = dead_letter("intake", "invalid command: amount_minor", "pay.commands", 2, 41,
                          b"o-1", b'{"type":"pay"}', 5)

        record = read_dead_letter(raw)

        assert record.dead_letter_id == DL
        assert (record.key.raw(), record.value.raw()) == (b"o-1", b'{"type":"pay"}')

    def test_bytes_that_are_not_utf8_come_back_from_base64(self):
        raw = dead_letter("intake", "not JSON", "pay.commands", 0, 1, None, b"\xff\x00", 5)

        record = read_dead_letter(raw)

        assert (record.key.raw(), record.value.raw()) == (None, b"\xff\x00")

    @pytest.mark.parametrize("raw", [b"", b"not json", json.dumps({"stage": "x"}).encode()])
    def test_anything_else_is_not_a_dead_letter(self, raw):
        assert read_dead_letter(raw) is None


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from(["replay", "discard"]),
                          st.sampled_from(["k-1", "k-2", "k-3"])), min_size=1, max_size=6))
def test_whatever_ops_click_one_action_is_applied_and_once(clicks):
    state, accepted, sent = None, [], []
    for n, (action, key) in enumerate(clicks):
        cmd = replay(key) if action == "replay" else discard(key)

        d = decide_dead_letter(state, cmd, REPLAYABLE, 100 + n)

        state = d.state
        accepted += [cmd.action_id] if d.status is D.accepted else []
        sent += [o for o in d.outputs if isinstance(o, Redelivery)]

    first_action, first_key = clicks[0]
    assert accepted == [action_id_for(DL, first_key)]
    assert len(sent) == (1 if first_action == "replay" else 0)
    assert state.state == ("replayed" if first_action == "replay" else "discarded")
