"""Table rows reach RocksDB only once the broker has their changelog records.

Faust writes a table row to RocksDB at once and sends its changelog record afterwards. A
worker killed in between comes back with rows in RocksDB that no changelog has, and
``streams/local_state.py`` had to drop such a worker's state and rebuild every table from
the changelogs: a restart that grows with history (up to 85 s in a 30-minute soak).

Here a row that is set or deleted is held in memory, per partition, until the broker acks
its changelog record. The ack's record (the exact bytes the changelog holds) and its
offset, Faust's "persisted offset" of that partition, are then written to RocksDB in one
batch. RocksDB is so always a prefix of the changelog, up to the offset it records, and a
restart after a SIGKILL keeps it and reads only the changelog after that offset, as after a
clean stop. Reads see the held rows first: the stage sees its own writes at once.

The producer sends the records of a partition in order and acks them in order (aiokafka
keeps one batch in flight per partition). An ack at or below the offset already recorded
would break that; it is logged and counted, and its row is not written
(``paycore_table_acks_out_of_order_total``). A partition taken away, or kept only as a
standby, drops its held rows, and acks that arrive for it afterwards are ignored: the
changelog has them, and whoever reads that partition next recovers them from there.

A changelog record the broker refuses, or a RocksDB write that fails, would leave a row
only in memory: the worker exits with ``EXIT_CANNOT_PROCEED`` instead, its supervisor
restarts it, and it goes on from the acked prefix on disk with its input delivered again.
Global tables, tables with their own partitioner and exactly-once transactions keep
Faust's own store.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from functools import partial
from typing import Any, Iterator, Optional

import faust
import rocksdict
from faust.stores.rocksdb import Store
from faust.streams import current_event
from faust.types import TP
from faust.types.enums import ProcessingGuarantee
from prometheus_client import Counter

from streams.faust_fixes import EXIT_CANNOT_PROCEED

log = logging.getLogger(__name__)

OUT_OF_ORDER = Counter("paycore_table_acks_out_of_order_total",
                       "Changelog acks at or below a partition's recorded offset (none "
                       "expected): their rows were not written to RocksDB", ["table"])
NOT_HELD = object()  # no row held for the key (a held row's value may be None: deleted)
_exit = os._exit  # replaced in tests


def cannot_proceed(what: str, *args: Any) -> None:
    """A row would stay only in memory: exit to be restarted from the acked prefix."""
    log.critical(what + ": exiting, to restart from the rows on disk and have the input "
                 "delivered again", *args)
    logging.shutdown()
    _exit(EXIT_CANNOT_PROCEED)


class AckedStore(Store):
    """Faust's RocksDB store with rows held until their changelog record is acked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # partition -> key -> [value or None for deleted, writes not acked yet]
        self._held: dict[int, dict[bytes, list]] = defaultdict(dict)
        self._epochs: dict[int, int] = defaultdict(int)
        self._recorded: dict[int, int] = {}

    # -- writes -------------------------------------------------------------------------
    def epoch(self, partition: int) -> int:
        """Bumped whenever ``partition`` is taken away: acks sent before are ignored."""
        return self._epochs[partition]

    def _hold(self, key: bytes, value: Optional[bytes]) -> None:
        event = current_event()
        assert event is not None, "a table row is written while processing an event"
        partition = event.message.partition
        self._db_for_partition(partition)  # as Faust: the partition's database is open
        self._key_index[key] = partition
        row = self._held[partition].get(key)
        if row is None:
            self._held[partition][key] = [value, 1]
        else:
            row[0] = value
            row[1] += 1

    def _set(self, key: bytes, value: Optional[bytes]) -> None:
        self._hold(key, value)

    def _del(self, key: bytes) -> None:
        self._hold(key, None)

    def acked(self, epoch: int, partition: int, key: bytes, value: Optional[bytes],
              offset: int) -> None:
        """The changelog record of ``key`` (``value``, None if deleted) is at ``offset``."""
        if epoch != self._epochs[partition] or partition not in self._dbs:
            return
        db = self._dbs[partition]
        recorded = self._recorded.get(partition)
        if recorded is None:
            raw = db.get(self.offset_key)
            recorded = int(raw) if raw is not None else -1
        if offset <= recorded:
            OUT_OF_ORDER.labels(table=self.table_name).inc()
            log.error("%s[%d]: changelog ack at %d, at or below the recorded %d: its row "
                      "is not written", self.table_name, partition, offset, recorded)
        else:
            batch = rocksdict.WriteBatch(raw_mode=True)
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
            batch.put(self.offset_key, str(offset).encode())
            try:
                db.write(batch)
            except Exception as exc:  # disk full, I/O error: the row would stay in memory
                cannot_proceed("%s[%d]: RocksDB write at %d failed: %r", self.table_name,
                               partition, offset, exc)
                return
            self._recorded[partition] = offset
        held = self._held[partition]
        row = held.get(key)
        if row is not None:
            row[1] -= 1
            if row[1] <= 0:
                del held[key]

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        super().set_persisted_offset(tp, offset)  # recovery: rows and offset from the log
        self._recorded[tp.partition] = offset

    def _forget(self, partition: int) -> None:
        self._held.pop(partition, None)
        self._recorded.pop(partition, None)
        self._epochs[partition] += 1

    def revoke_partitions(self, table, tps) -> None:
        for tp in tps:
            if tp.topic in table.changelog_topic.topics:
                self._forget(tp.partition)
        super().revoke_partitions(table, tps)

    async def on_rebalance(self, assigned, revoked, newly_assigned,
                           generation_id: int = 0) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        # An active partition kept as a standby is not revoked, but its changelog is now
        # replayed into RocksDB by the standby reader: its held rows and acks are not ours.
        actives = self.app.assignor.assigned_actives()
        topic = self.table.changelog_topic_name
        for partition in list(self._held):
            if TP(topic=topic, partition=partition) not in actives:
                self._forget(partition)

    def reset_state(self) -> None:
        for partition in list(self._held) + list(self._recorded):
            self._forget(partition)
        super().reset_state()

    def held_rows(self) -> int:
        return sum(len(rows) for rows in self._held.values())

    # -- reads: held rows first ---------------------------------------------------------
    def _held_value(self, key: bytes) -> Any:
        event = current_event()
        if event is not None and not self.table.is_global and not self.table.use_partitioner:
            row = self._held.get(event.message.partition, {}).get(key)
            return NOT_HELD if row is None else row[0]
        for partition, rows in self._held.items():
            row = rows.get(key)
            if row is not None and partition in self._dbs:
                return row[0]
        return NOT_HELD

    def _get(self, key: bytes) -> Optional[bytes]:
        value = self._held_value(key)
        return super()._get(key) if value is NOT_HELD else value

    def _contains(self, key: bytes) -> bool:
        value = self._held_value(key)
        return super()._contains(key) if value is NOT_HELD else value is not None

    def _active_partitions(self) -> Iterator[tuple[int, Any]]:
        actives = self.app.assignor.assigned_actives()
        topic = self.table.changelog_topic_name
        for partition, db in list(self._dbs.items()):
            if self.table.is_global or TP(topic=topic, partition=partition) in actives:
                yield partition, db

    def _iteritems(self) -> Iterator[tuple[bytes, bytes]]:
        for partition, db in self._active_partitions():
            held = dict(self._held.get(partition, {}))
            for key, row in held.items():
                if row[0] is not None:
                    yield key, row[0]
            for key, value in self._visible_items(db):
                if key not in held:
                    yield key, value

    def _iterkeys(self) -> Iterator[bytes]:
        for key, _value in self._iteritems():
            yield key

    def _itervalues(self) -> Iterator[bytes]:
        for _key, value in self._iteritems():
            yield value

    def _size(self) -> int:
        return sum(1 for _ in self._iteritems())


class AckedTable(faust.Table):
    """A Faust table whose rows go to an ``AckedStore`` when the store is RocksDB."""

    def _new_store_by_url(self, url):
        if (str(url).split(":", 1)[0] != "rocksdb" or self.is_global or self.use_partitioner
                or self.app.conf.processing_guarantee == ProcessingGuarantee.EXACTLY_ONCE):
            return super()._new_store_by_url(url)
        return AckedStore(url, self.app, self, table_name=self.name, key_type=self.key_type,
                          key_serializer=self.key_serializer,
                          value_serializer=self.value_serializer,
                          value_type=self.value_type, loop=self.loop, options=self.options)

    def send_changelog(self, partition, key, value, key_serializer=None,
                       value_serializer=None):
        store = self.data
        if not isinstance(store, AckedStore) or partition is None or self.app.in_transaction:
            return super().send_changelog(partition, key, value, key_serializer,
                                          value_serializer)
        fut = self.changelog_topic.send_soon(
            key=key, value=value, partition=partition,
            key_serializer=key_serializer or self.key_serializer,
            value_serializer=value_serializer or self.value_serializer,
            callback=partial(self._on_acked, store.epoch(partition)),
            eager_partitioning=True)
        fut.add_done_callback(partial(self._on_sent, partition))  # the callback: acks only
        return fut

    def _on_sent(self, partition: int, fut) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            cannot_proceed("%s[%d]: changelog record refused: %r", self.name, partition,
                           fut.exception())

    def _on_acked(self, epoch: int, fut) -> None:
        res = fut.result()
        self.data.acked(epoch, res.partition, fut.message.key, fut.message.value, res.offset)
