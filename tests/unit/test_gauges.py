"""The gauges whose values paycore computes: open reconciliation items by age, consumer lag
series that come and go, and a sweeper's overdue rows."""

from __future__ import annotations

import asyncio
from datetime import date

from prometheus_client import REGISTRY

from agents._stage import OVERDUE_MS, Nudger
from agents.recon import open_by_age
from streams import lag


def test_open_items_fall_into_bounded_age_buckets():
    counts = {"wallet|waiting_line|2026-11-22": 2, "wallet|waiting_line|2026-11-21": 1,
              "wallet|waiting_line|2026-11-19": 4, "wallet|waiting_line|2026-11-16": 1,
              "wallet|waiting_line|2026-11-15": 3, "card|exception|2026-10-01": 1,
              "card|exception|2026-11-23": 5, "card|exception|not-a-day": 1}
    assert open_by_age(counts, date(2026, 11, 22)) == {
        ("wallet", "waiting_line", "0d"): 2, ("wallet", "waiting_line", "1d"): 1,
        ("wallet", "waiting_line", "2-6d"): 5, ("wallet", "waiting_line", "7d+"): 3,
        ("card", "exception", "7d+"): 1,
        ("card", "exception", "0d"): 6}  # a day ahead (clock skew) or unreadable: today


def _lag(group: str, topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value("paycore_consumer_lag_messages", {
        "group": group, "topic": topic, "partition": str(partition)})


def test_lag_series_follow_what_groups_committed():
    exported = lag.export({("g-unit", "pay.orders", 0): 5, ("g-unit", "pay.orders", 1): 0},
                          set())
    assert (_lag("g-unit", "pay.orders", 0), _lag("g-unit", "pay.orders", 1)) == (5, 0)

    exported = lag.export({("g-unit", "pay.orders", 1): 7}, exported)

    assert _lag("g-unit", "pay.orders", 0) is None  # no longer committed: no series
    assert _lag("g-unit", "pay.orders", 1) == 7
    assert exported == {("g-unit", "pay.orders", 1)}


class _Wire:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, topic, key, env) -> None:
        self.sent.append(key)


def test_a_sweeper_counts_its_rows_and_those_long_past_due():
    wire = _Wire()
    nudger = Nudger(wire, "t", "unit-sweeper", lambda key, due: {"key": key}, "unit nudge")
    now = 1_000_000
    index = {b"future": str(now + 5).encode(), b"due": str(now - 10).encode(),
             b"stuck": str(now - OVERDUE_MS - 1).encode()}
    asyncio.run(nudger.sweep(index, now, gauge="unit"))

    def value(name: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"index": "unit"})
    assert value("paycore_deadline_index_rows") == 3
    assert value("paycore_overdue_rows") == 1
    assert sorted(wire.sent) == ["due", "stuck"]
