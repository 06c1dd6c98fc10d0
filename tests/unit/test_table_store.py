"""Table rows reach RocksDB only with their acked changelog records (streams/table_store.py).

The tables are the stages' own (``agents._stage.table``), written through Faust's table
API into a real RocksDB; only the broker is replaced: the changelog records the table
sends are caught, and acked in the order they were sent, as the producer does.
"""

from __future__ import annotations

import asyncio
import weakref
from types import SimpleNamespace

import pytest
from faust.streams import _current_event
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st

from agents._stage import table
from streams.app import create_app
from streams.settings import Settings
from streams import table_store
from streams.faust_fixes import EXIT_CANNOT_PROCEED
from streams.table_store import OUT_OF_ORDER, AckedStore, AckedTable

PARTITIONS = 2


class _Event:
    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition, topic="pay.in",
                                       tp=TP("pay.in", partition))


class Rig:
    """A table, its changelog records as the broker would get them, their acks."""

    def __init__(self, data_dir, **overrides) -> None:
        settings = Settings(data_dir=data_dir, kafka_bootstrap="127.0.0.1:9",
                            partitions=PARTITIONS, **overrides)
        self.wire = create_app(settings)
        self.rows = table(self.wire, "rows", "test rows")
        self.sent: list = []  # (future, partition), not acked yet, in order
        self.offsets = [0] * PARTITIONS  # the next changelog offset of each partition
        self.acked: list[list] = [[] for _ in range(PARTITIONS)]  # (key, value) in order
        self.wire.app.producer.send_soon = self.sent.append
        self.events: list[_Event] = []
        self.actives: set[TP] = {self.tp(p) for p in range(PARTITIONS)}
        self.wire.app.assignor.assigned_actives = lambda: set(self.actives)

    @property
    def store(self) -> AckedStore:
        return self.rows.data

    def tp(self, partition: int) -> TP:
        return TP(self.rows.changelog_topic_name, partition)

    def on(self, partition: int) -> None:
        """Process as if handling an event of ``partition``."""
        event = _Event(partition)
        self.events.append(event)  # the context holds a weak reference
        _current_event.set(weakref.ref(event))

    def outside(self) -> None:
        _current_event.set(None)

    def ack(self, n: int = 1) -> None:
        for _ in range(n):
            fut = self.sent.pop(0)
            partition = fut.message.partition
            offset = self.offsets[partition]
            self.offsets[partition] += 1
            self.acked[partition].append((fut.message.key, fut.message.value))
            meta = SimpleNamespace(partition=partition, offset=offset,
                                   topic_partition=self.tp(partition))
            fut.message.callback(SimpleNamespace(result=lambda m=meta: m,
                                                 message=fut.message))

    def on_disk(self, partition: int) -> dict[bytes, bytes]:
        db = self.store._db_for_partition(partition)
        return {k: v for k, v in db.items() if k != AckedStore.offset_key}

    def recorded(self, partition: int) -> int | None:
        return self.store.persisted_offset(self.tp(partition))


@pytest.fixture(autouse=True)
def loop():
    """The event loop the table's futures are made on (they are made outside a coroutine)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


@pytest.fixture
def rig(tmp_path):
    return Rig(tmp_path)


def test_a_row_reaches_rocksdb_with_its_offset_only_when_acked(rig):
    rig.on(1)
    rig.rows[b"k"] = b"v1"
    assert rig.rows[b"k"] == b"v1" and b"k" in rig.rows  # the stage sees its write at once
    assert rig.on_disk(1) == {} and rig.recorded(1) is None
    assert [f.message.key for f in rig.sent] == [b"k"]
    rig.ack()
    assert rig.on_disk(1) == {b"k": b"v1"} and rig.recorded(1) == 0
    assert rig.store.held_rows() == 0


def test_a_row_written_twice_before_its_acks_reads_the_newest(rig):
    rig.on(0)
    rig.rows[b"k"] = b"v1"
    rig.rows[b"k"] = b"v2"
    rig.ack()
    assert rig.on_disk(0) == {b"k": b"v1"} and rig.recorded(0) == 0
    assert rig.rows[b"k"] == b"v2"
    rig.ack()
    assert rig.on_disk(0) == {b"k": b"v2"} and rig.recorded(0) == 1
    assert rig.store.held_rows() == 0


def test_a_delete_is_held_too(rig):
    rig.on(0)
    rig.rows[b"k"] = b"v"
    rig.ack()
    del rig.rows[b"k"]
    assert rig.rows.get(b"k") is None and b"k" not in rig.rows
    assert rig.on_disk(0) == {b"k": b"v"}
    rig.outside()
    assert dict(rig.rows.items()) == {} and len(rig.rows) == 0  # a timer's view
    rig.ack()
    assert rig.on_disk(0) == {} and rig.recorded(0) == 1


def test_iteration_merges_held_rows_with_rocksdb_for_active_partitions_only(rig):
    rig.on(0)
    rig.rows[b"a"] = b"1"
    rig.rows[b"b"] = b"2"
    rig.ack(2)
    rig.rows[b"b"] = b"3"
    rig.on(1)
    rig.rows[b"c"] = b"4"
    rig.outside()
    assert dict(rig.rows.items()) == {b"a": b"1", b"b": b"3", b"c": b"4"}
    assert sorted(rig.rows.keys()) == [b"a", b"b", b"c"] and len(rig.rows) == 3
    assert rig.rows[b"c"] == b"4"  # outside an event: every partition's held rows
    rig.actives = {rig.tp(0)}
    assert dict(rig.rows.items()) == {b"a": b"1", b"b": b"3"}


def test_a_revoked_partition_drops_its_held_rows_and_ignores_late_acks(rig):
    rig.on(1)
    rig.rows[b"k"] = b"v"
    rig.store.revoke_partitions(rig.rows, {rig.tp(1)})
    assert rig.store.held_rows() == 0
    rig.ack()  # the broker has it; whoever reads partition 1 next recovers it from there
    assert rig.on_disk(1) == {} and rig.recorded(1) is None


def test_a_partition_kept_only_as_a_standby_drops_its_held_rows_and_late_acks(rig, loop):
    rig.on(1)
    rig.rows[b"k"] = b"v"
    rig.actives = {rig.tp(0)}  # partition 1 still assigned, as a standby: not revoked
    loop.run_until_complete(rig.store.on_rebalance(
        assigned={rig.tp(0), rig.tp(1)}, revoked=set(), newly_assigned=set()))
    assert rig.store.held_rows() == 0
    rig.ack()  # the standby reader replays it from the changelog
    assert rig.on_disk(1) == {} and rig.recorded(1) is None


@pytest.fixture
def exits(monkeypatch):
    codes: list[int] = []
    monkeypatch.setattr(table_store, "_exit", codes.append)
    return codes


def test_a_changelog_record_the_broker_refuses_makes_the_worker_exit(rig, exits, loop):
    rig.on(0)
    rig.rows[b"k"] = b"v"
    fut = rig.sent.pop(0)
    fut.set_exception(RuntimeError("broker refused"))  # what Faust's _on_published does
    loop.run_until_complete(asyncio.sleep(0))  # the future's done callbacks run
    assert exits == [EXIT_CANNOT_PROCEED]
    assert rig.on_disk(0) == {}  # the row was never acked: not on disk


class _FailingWrites:
    def __init__(self, db) -> None:
        self.get = db.get

    def write(self, _batch) -> None:
        raise OSError("No space left on device")


def test_a_failed_rocksdb_write_makes_the_worker_exit(rig, exits):
    rig.on(0)
    rig.rows[b"k"] = b"v"
    good = rig.store._db_for_partition(0)
    rig.store._dbs[0] = _FailingWrites(good)
    rig.ack()
    assert exits == [EXIT_CANNOT_PROCEED]
    assert rig.recorded(0) is None


def test_global_tables_keep_faust_store(tmp_path):
    wire = create_app(Settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:9",
                               partitions=PARTITIONS))
    rows = wire.app.tables.add(AckedTable(wire.app, name="g", is_global=True,
                                          beacon=wire.app.tables.beacon, key_type=bytes,
                                          value_type=bytes))
    assert not isinstance(rows.data, AckedStore)


def test_an_ack_out_of_order_is_counted_and_not_written(rig):
    rig.on(0)
    rig.rows[b"a"] = b"1"
    rig.rows[b"b"] = b"2"
    first, second = rig.sent
    rig.sent[:] = [second, first]
    before = OUT_OF_ORDER.labels(table=rig.store.table_name)._value.get()
    rig.offsets[0] = 5
    rig.ack()  # b at 5
    rig.offsets[0] = 4
    rig.ack()  # a at 4: below what RocksDB already records
    assert rig.on_disk(0) == {b"b": b"2"} and rig.recorded(0) == 5
    assert OUT_OF_ORDER.labels(table=rig.store.table_name)._value.get() == before + 1


def test_recovery_from_the_changelog_moves_the_recorded_offset(rig):
    rig.on(0)
    rig.store.set_persisted_offset(rig.tp(0), 41)  # what apply_changelog_batch does last
    rig.rows[b"k"] = b"v"
    rig.offsets[0] = 41
    rig.ack()  # at or below 41: a record recovery already applied
    assert rig.on_disk(0) == {} and rig.recorded(0) == 41


def test_faust_own_store_when_switched_off(tmp_path):
    rig = Rig(tmp_path, table_rows_after_ack=False)
    assert not isinstance(rig.store, AckedStore)
    rig.on(0)
    rig.rows[b"k"] = b"v"
    assert rig.on_disk(0) == {b"k": b"v"}  # at once, before any ack


_ops = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, PARTITIONS - 1), st.sampled_from(b"abc"),
              st.binary(min_size=1, max_size=3)),
    st.tuples(st.just("del"), st.integers(0, PARTITIONS - 1), st.sampled_from(b"abc")),
    st.tuples(st.just("ack"), st.integers(1, 4)),
), max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops=_ops)
def test_rocksdb_is_always_the_acked_prefix_of_the_changelog(tmp_path_factory, ops):
    """After any interleaving of writes and in-order acks, each partition's RocksDB holds
    exactly its acked changelog records folded in order, with the last one's offset (what
    a SIGKILL leaves behind), and reads see every write."""
    rig = Rig(tmp_path_factory.mktemp("rows"))
    written: list[dict[bytes, bytes]] = [{} for _ in range(PARTITIONS)]
    for op in ops:
        if op[0] == "ack":
            rig.ack(min(op[1], len(rig.sent)))
            continue
        partition, key = op[1], bytes([op[2]])
        rig.on(partition)
        if op[0] == "set":
            rig.rows[key] = op[3]
            written[partition][key] = op[3]
        else:
            del rig.rows[key]
            written[partition].pop(key, None)
    for partition in range(PARTITIONS):
        folded: dict[bytes, bytes] = {}
        for key, value in rig.acked[partition]:
            if value is None:
                folded.pop(key, None)
            else:
                folded[key] = value
        assert rig.on_disk(partition) == folded
        n = len(rig.acked[partition])
        assert rig.recorded(partition) == (n - 1 if n else None)
        rig.on(partition)
        for key in (b"a", b"b", b"c"):
            assert rig.rows.get(key) == written[partition].get(key)
    rig.ack(len(rig.sent))
    assert rig.store.held_rows() == 0
    for partition in range(PARTITIONS):
        assert rig.on_disk(partition) == written[partition]
