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
