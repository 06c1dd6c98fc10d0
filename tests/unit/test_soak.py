"""The soak's own judgement: what it calls an allowed history, a failure and a verdict."""

from __future__ import annotations

import random
from types import SimpleNamespace

from paycore.soak import AVOID, MAGIC, amount_for, check_histories


def _observer(**histories: str) -> SimpleNamespace:
    return SimpleNamespace(history={p: [SimpleNamespace(status=s) for s in h.split()]
                                    for p, h in histories.items()})


def test_in_flight_prefixes_pass_and_repeats_or_changed_finals_do_not():
    observer = _observer(a="created processing", b="created processing succeeded",
                         c="created processing timed_out failed",
                         d="created created processing", e="created processing failed succeeded",
                         f="processing")

    assert sorted(check_histories(observer)) == [
        "d: created > created > processing", "e: created > processing > failed > succeeded",
        "f: processing"]
    assert check_histories(observer, final_only=True)[0].startswith("a: ")


def test_amounts_carry_only_the_magic_the_soak_expects():
    rng = random.Random(3)
    tails = {amount_for(rng) % 1000 for _ in range(5_000)}

    assert set(MAGIC) <= tails
    assert not tails & (set(AVOID) - set(MAGIC))


def test_an_entry_with_a_leg_missing_is_named_with_its_legs():
    from domain.events import LegApplied
    from paycore.observe import Observer

    def leg(posting: str, entry: str, account: str, amount: int) -> LegApplied:
        return LegApplied(posting_id=posting, entry_id=entry, payment_id=f"pay-{entry}",
                          account_id=account, currency="USD", amount_minor=amount,
                          sequence=1, total_minor=amount, available_minor=amount,
                          frozen_minor=0, version=1)

    observer = Observer.__new__(Observer)  # no consumer: the legs are given here
    observer.legs = {p.posting_id: p for p in (
        leg("p1", "e1", "customer", -500), leg("p2", "e1", "clearing", 500),
        leg("p3", "e2", "customer", -700))}
    assert observer.unbalanced_entries() == [
        {"entry_id": "e2", "payment_id": "pay-e2", "sum_minor": -700,
         "legs": [("customer", -700)]}]
