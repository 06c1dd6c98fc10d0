"""Every table partition opens its RocksDB with the settings' small buffers, not Faust's
defaults (64 MB write buffers, three of them, and a 2 GB block cache per partition)."""

from __future__ import annotations

from agents._stage import table
from streams.app import create_app
from streams.settings import Settings

MB = 1024 * 1024


def test_a_table_partition_opens_with_the_configured_buffers(tmp_path):
    settings = Settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:9", table_memtable_mb=3,
                        table_block_cache_mb=5,
                        partitions=2)
    wire = create_app(settings)
    rows = table(wire, "rows", "test rows")
    store = rows.data
    options = store.rocksdb_options
    assert (options.write_buffer_size, options.max_write_buffer_number,
            options.block_cache_size) == (3 * MB, 2, 5 * MB)
    db = store._db_for_partition(1)  # opened for real, under the worker's datadir
    db[b"k"] = b"v"
    assert db[b"k"] == b"v"
    assert any(tmp_path.rglob("rows-1.db"))
