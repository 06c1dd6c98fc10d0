"""The recon stage's own arithmetic: which partition a key lives on."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from agents.recon import partition_of


def test_partition_of_agrees_with_the_producers_default_partitioner():
    """A period close handles only the items of its own partition: the stage must compute
    the partition the producers (aiokafka, kafka-python) put each payment's records on."""
    producers = DefaultPartitioner()
    keys = [f"pay_{n:024x}".encode() for n in range(0, 5_000_000, 997)]
    for partitions in (1, 4, 8, 12):
        every = list(range(partitions))
        assert [partition_of(k, partitions) for k in keys] == [
            producers(k, every, every) for k in keys]
