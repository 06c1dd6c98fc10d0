"""What ops do with dead letters (``domain/dead_letters.py``): replay a corrected copy or
discard with a reason; the first action wins, the same action twice applies once."""

from __future__ import annotations

import base64
import hashlib
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
from streams.envelope import KEPT_BYTES_MAX, dead_letter, dead_letter_key

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

    def test_a_key_that_is_not_utf8_goes_back_as_its_bytes(self):
        record = read_dead_letter(dead_letter("intake", "bad", "pay.commands", 2, 41,
                                              b"\xff\x00o-1", b"{}", 5))
        cmd = replay().model_copy(update={"key": record.key.text,
                                          "key_base64": record.key.base64})

        redelivery = decide_dead_letter(None, cmd, REPLAYABLE, 100).outputs[0]

        assert isinstance(redelivery, Redelivery) and redelivery.key is None
        assert base64.b64decode(redelivery.key_base64) == b"\xff\x00o-1"

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

    def test_a_record_written_before_sizes_were_kept_still_reads(self):
        raw = json.dumps({"stage": "intake", "reason": "r", "topic": "pay.commands",
                          "partition": 0, "offset": 1, "key": {"text": None},
                          "value": {"text": "{}"}, "at_ms": 5}).encode()

        record = read_dead_letter(raw)

        assert (record.value.raw(), record.value.size_bytes, record.truncated) == (
            b"{}", None, False)


BROKER_MESSAGE_BYTES_MAX = 1_000_000
"""What Faust's producer sends at most (``producer_max_request_size``)."""
MIB = 1_048_576


class TestShape:
    def test_a_small_original_is_kept_whole_with_its_size_and_digest(self):
        value = b'{"type":"pay"}'

        doc = json.loads(dead_letter("intake", "r", "pay.commands", 0, 1, b"o-1", value, 5))

        assert doc["value"] == {"text": value.decode(), "size_bytes": len(value),
                                "sha256": hashlib.sha256(value).hexdigest(),
                                "truncated": False}
        assert doc["key"]["truncated"] is False

    @pytest.mark.parametrize("value", [
        b"x" * MIB,                                 # the poison pill of issue 11
        b"\x01" * MIB,                              # escapes to six characters each
        "\u00e9".encode() * (MIB // 2),             # two bytes a character
        bytes(range(256)) * (MIB // 256),           # not UTF-8: base64
    ], ids=["ascii", "control", "two-byte", "binary"])
    def test_a_huge_original_is_cut_to_fit_the_broker_and_says_so(self, value):
        raw = dead_letter("intake", "too_large", "pay.commands", 3, 9, value, value, 5)

        record = read_dead_letter(raw)

        assert len(raw) < BROKER_MESSAGE_BYTES_MAX // 2
        for part in (record.key, record.value):
            kept = part.raw()
            assert len(kept) <= KEPT_BYTES_MAX and len(kept) >= KEPT_BYTES_MAX - 3
            assert value.startswith(kept)
            assert (part.size_bytes, part.truncated) == (len(value), True)
            assert part.sha256 == hashlib.sha256(value).hexdigest()
        assert record.truncated

    def test_an_original_of_exactly_the_limit_is_kept_whole(self):
        value = b"y" * KEPT_BYTES_MAX

        record = read_dead_letter(dead_letter("intake", "r", "pay.commands", 0, 1, None,
                                              value, 5))

        assert (record.value.raw(), record.truncated) == (value, False)

    def test_a_multibyte_character_is_never_cut_in_half(self):
        value = b"a" + "\u20ac".encode() * KEPT_BYTES_MAX  # three bytes each, off by one

        record = read_dead_letter(dead_letter("intake", "r", "pay.commands", 0, 1, None,
                                              value, 5))

        assert record.value.text == "a" + "\u20ac" * ((KEPT_BYTES_MAX - 1) // 3)

    def test_a_huge_reason_is_cut(self):
        doc = json.loads(dead_letter("x", "r" * MIB, "pay.commands", 0, 1, None, b"", 5))

        assert 0 < len(doc["reason"]) <= 2_000

    def test_the_dead_letters_own_key_is_the_original_or_its_first_bytes(self):
        assert dead_letter_key(None) is None
        assert dead_letter_key(b"o-1") == b"o-1"
        assert dead_letter_key(b"k" * MIB) == b"k" * KEPT_BYTES_MAX


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


def test_every_command_intake_could_take_is_kept_whole():
    from domain.intake import COMMAND_BYTES_MAX

    command = b"{" + b"x" * (COMMAND_BYTES_MAX - 2) + b"}"
    record = json.loads(dead_letter("intake", "r", "pay.commands", 0, 0, b"k", command, 1))

    assert (record["value"]["text"].encode(), record["value"]["truncated"]) == (command, False)
