"""The stage guard: transient failures retry, bad messages dead-letter, nothing escapes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka.errors import KafkaConnectionError

from agents import _stage


class RecordingWire:
    """A Wire stand-in that records dead letters (the port the guard uses)."""

    def __init__(self, fail_times: int = 0):
        self.dead: list[str] = []
        self.fail_times = fail_times

    async def dead_letter(self, stage, reason, event):
        if self.fail_times:
            self.fail_times -= 1
            raise KafkaConnectionError()
        self.dead.append(reason)


def event():
    return SimpleNamespace(message=SimpleNamespace(topic="t", partition=0, offset=7))


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    async def instant(_seconds):
        return None

    monkeypatch.setattr(_stage.asyncio, "sleep", instant)


class TestGuard:
    def test_transient_failure_retried_until_it_clears(self):
        calls = []

        async def handle(_event):
            calls.append(1)
            if len(calls) < 3:
                raise KafkaConnectionError()

        wire = RecordingWire()
        asyncio.run(_stage.guarded("s", wire, event(), handle))

        assert len(calls) == 3
        assert wire.dead == []

    def test_bad_message_dead_lettered_with_reason(self):
        async def handle(_event):
            raise ValueError("amount_minor: must be positive")

        wire = RecordingWire()
        asyncio.run(_stage.guarded("s", wire, event(), handle))

        assert wire.dead == ["unexpected: ValueError: amount_minor: must be positive"]

    def test_dead_letter_retried_when_broker_blips(self):
        async def handle(_event):
            raise KeyError("x")

        wire = RecordingWire(fail_times=2)
        asyncio.run(_stage.guarded("s", wire, event(), handle))

        assert len(wire.dead) == 1

    def test_process_exits_unacked_when_transient_never_clears(self, monkeypatch):
        exits = []
        monkeypatch.setattr(_stage.os, "_exit", lambda code: exits.append(code))

        async def handle(_event):
            raise KafkaConnectionError()

        asyncio.run(_stage.guarded("s", RecordingWire(), event(), handle))

        assert exits == [_stage.EXIT_CANNOT_PROCEED]

    def test_non_retriable_kafka_error_is_dead_lettered_not_retried(self):
        from aiokafka.errors import MessageSizeTooLargeError

        calls = []

        async def handle(_event):
            calls.append(1)
            raise MessageSizeTooLargeError()

        wire = RecordingWire()
        asyncio.run(_stage.guarded("s", wire, event(), handle))

        assert len(calls) == 1
        assert wire.dead and "MessageSizeTooLargeError" in wire.dead[0]


class TestConsume:
    def test_the_stage_holds_no_reference_to_an_event_while_it_waits_for_the_next(self):
        # A rebalance waits until every unacked message is gone; an idle stage must not be
        # what keeps one alive.
        import gc
        import weakref

        handled, refs, waiting = [], [], asyncio.Event()

        class Event:  # weakly referable, unlike a SimpleNamespace
            message = SimpleNamespace(topic="t", partition=0, offset=1)

        class Stream:
            async def events(self):
                first = Event()
                refs.append(weakref.ref(first))
                yield first
                del first
                waiting.set()
                await asyncio.Event().wait()  # no next event: the flow is suspended

        async def handle(e):
            handled.append(e.message.offset)

        async def run():
            task = asyncio.create_task(_stage.consume("t", RecordingWire(), Stream(), handle))
            await asyncio.wait_for(waiting.wait(), 5)
            gc.collect()
            alive = refs[0]() is not None
            task.cancel()
            return alive

        assert asyncio.run(run()) is False
        assert handled == [1]
