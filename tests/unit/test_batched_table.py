"""The stages' write-back tables: a batch's rows are written once each, in their partition."""

from __future__ import annotations

import weakref
from types import SimpleNamespace

from faust.streams import _current_event, current_event

from agents._stage import BatchedTable


class RecordingTable(dict):
    """A Faust table's dict face, recording the partition of the event each write ran under
    (Faust's RocksDB store and changelog take the partition from ``current_event()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[bytes, bytes | None, int]] = []

    def __setitem__(self, key, value) -> None:
        self.writes.append((key, value, current_event().message.partition))
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self.writes.append((key, None, current_event().message.partition))
        super().__delitem__(key)


class Event:
    """What a table write reads of Faust's current event (weakly referenced, like Faust's)."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


def event(partition: int) -> Event:
    return Event(partition)


def during(ev) -> None:
    """What ``consume`` does before it hands an event to its handler (a weak reference, as
    Faust's own: the caller keeps the event alive, as a batch does)."""
    _current_event.set(weakref.ref(ev))


class TestBatchedTable:
    def test_reads_see_the_batchs_writes_before_the_table_does(self):
        table = BatchedTable(RecordingTable())
        one = event(1)
        during(one)

        table[b"k"] = b"v1"

        assert table.get(b"k") == b"v1"
        assert table.table == {}

    def test_a_key_changed_many_times_is_written_once_with_its_last_value(self):
        table = BatchedTable(RecordingTable())
        first, second = event(3), event(3)
        during(first)
        table[b"acct"] = b"100"
        during(second)
        table[b"acct"] = b"250"

        written = table.flush()

        assert written == 1
        assert table.table.writes == [(b"acct", b"250", 3)]
        assert table.get(b"acct") == b"250"

    def test_each_key_is_written_in_the_partition_of_the_event_that_last_changed_it(self):
        table = BatchedTable(RecordingTable())
        batch = [event(p) for p in (0, 5, 2)]  # consume's batch keeps its events alive
        for ev, key in zip(batch, (b"a", b"b", b"a"), strict=True):
            during(ev)
            table[key] = key + b"!"

        table.flush()

        assert sorted(table.table.writes) == [(b"a", b"a!", 2), (b"b", b"b!", 5)]

    def test_delete_hides_the_row_at_once_and_removes_it_at_flush(self):
        base = RecordingTable()
        base.update({b"gone": b"x", b"kept": b"y"})
        table = BatchedTable(base)
        four = event(4)
        during(four)

        del table[b"gone"]

        assert table.get(b"gone") is None
        assert table.get(b"gone", b"default") == b"default"
        assert dict(table.items()) == {b"kept": b"y"}
        table.flush()
        assert base == {b"kept": b"y"}
        assert base.writes == [(b"gone", None, 4)]

    def test_delete_of_a_row_only_in_the_batch_writes_nothing(self):
        table = BatchedTable(RecordingTable())
        one = event(1)
        during(one)
        table[b"new"] = b"1"
        del table[b"new"]

        table.flush()

        assert table.table.writes == []
        assert table.get(b"new") is None

    def test_items_merge_the_table_and_the_batch(self):
        base = RecordingTable()
        base.update({b"a": b"old", b"b": b"same"})
        table = BatchedTable(base)
        zero = event(0)
        during(zero)
        table[b"a"] = b"new"
        table[b"c"] = b"added"

        assert dict(table.items()) == {b"a": b"new", b"b": b"same", b"c": b"added"}

    def test_flush_leaves_nothing_pending_and_a_second_flush_writes_nothing(self):
        table = BatchedTable(RecordingTable())
        zero = event(0)
        during(zero)
        table[b"a"] = b"1"

        assert (table.flush(), table.flush()) == (1, 0)
        assert table.pending == {}
