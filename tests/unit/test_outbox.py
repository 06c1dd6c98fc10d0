"""The outbox tells a redelivery (send it all again) from a sender's copy (nothing)."""

from __future__ import annotations

from agents._outbox import OUTBOX_CAUSES_KEPT, OutboxEntry, Outgoing, recall, remember

SENT = [Outgoing(topic="pay.events", key="pay_1", value="{}")]


def test_new_cause_is_not_recalled():
    assert recall((), "msg_1", "pay.orders:0:5") is None


def test_same_message_at_the_same_place_is_a_redelivery():
    outbox = remember((), "msg_1", SENT, "pay.channel.callbacks:2:10")

    assert recall(outbox, "msg_1", "pay.channel.callbacks:2:10") == tuple(SENT)


def test_same_message_elsewhere_is_a_copy_with_nothing_to_send():
    outbox = remember((), "msg_1", SENT, "pay.channel.callbacks:2:10")

    assert recall(outbox, "msg_1", "pay.channel.callbacks:2:11") == ()


def test_entries_without_a_place_always_send_again():
    outbox = remember((), "msg_1", SENT)

    assert recall(outbox, "msg_1", "pay.orders:0:7") == tuple(SENT)


def test_bounded_per_key():
    outbox = ()
    for n in range(OUTBOX_CAUSES_KEPT + 5):
        outbox = remember(outbox, f"msg_{n}", SENT, f"t:0:{n}")

    assert len(outbox) == OUTBOX_CAUSES_KEPT
    assert recall(outbox, "msg_0", "t:0:0") is None


def test_a_key_that_is_not_utf8_is_kept_as_bytes_and_others_store_as_before():
    binary = Outgoing(topic="pay.commands", key="", key_base64="/wBvLTE=", value="{}")
    stored = OutboxEntry(cause_id="m", sent=(binary, SENT[0])).model_dump_json()

    back = OutboxEntry.model_validate_json(stored)

    assert [o.key_bytes() for o in back.sent] == [b"\xff\x00o-1", b"pay_1"]
    assert stored.count("key_base64") == 1  # absent where there is none
