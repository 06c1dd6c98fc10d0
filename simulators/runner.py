"""The simulator process: consume channel requests, answer each after its latency."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from aiokafka import TopicPartition

from domain.events import ChannelOperation, ChannelOutcome
from simulators.channel import WALLET_RESEND_MS, Answer, answer, query_answer, with_faults
from simulators.faults import Drawn, FaultKind, FaultPlan, draw
from streams import topics as t
from streams.channels_config import load_simulators
from streams.rules_config import load_routing
from streams.envelope import UndecodableEnvelope, child, decode, encode
from streams.metrics import CHANNEL_REQUESTS, INJECTIONS
from streams.settings import Settings
from streams.tansu import FETCH_MAX_WAIT_MS

log = logging.getLogger(__name__)

SEND_ATTEMPTS = 8


async def run_simulator(settings: Settings, stop: asyncio.Event) -> None:
    profiles = load_simulators(settings.config_dir).by_channel()
    # A "late" answer (magic 408) comes after the order stopped waiting: its callback
    # timeout plus every status query it may send.
    timeouts = {c.name: c.callback_timeout_ms + (
        c.status_queries_max * c.status_query_timeout_ms if c.status_query else 0)
        for c in load_routing(settings.config_dir).channels}
    seen: OrderedDict[str, tuple[int, Answer]] = OrderedDict()
    bootstrap = settings.bootstrap_servers()
    consumer = AIOKafkaConsumer(t.CHANNEL_REQUESTS, bootstrap_servers=bootstrap,
                                group_id=f"{settings.app_id}-simulator",
                                auto_offset_reset="earliest",
                                fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
    control = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                               auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=-1, linger_ms=2)
    await producer.start()
    await consumer.start()
    await control.start()
    control.assign([TopicPartition(t.SIM_CONTROL, p) for p in range(settings.partitions)])
    pending: set[asyncio.Task] = set()
    state = _State(profiles, timeouts, settings.simulator_seed, producer, seen)
    try:
        while not stop.is_set():
            for records in (await control.getmany(timeout_ms=0)).values():
                for record in records:
                    state.plan_from(record.value)
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            for records in batch.values():
                for record in records:
                    task = _schedule(record, state)
                    if task is not None:
                        pending.add(task)
                        task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=5)
    finally:
        await control.stop()
        await consumer.stop()
        await producer.stop()


class _State:
    """What the simulated channels know: their profiles, the requests they received, the
    fault plan in force."""

    def __init__(self, profiles, timeouts, seed: int, producer, seen: OrderedDict) -> None:
        self.profiles, self.timeouts, self.seed = profiles, timeouts, seed
        self.producer, self.seen = producer, seen
        self.plan: FaultPlan | None = None
        self.acked: OrderedDict[str, int] = OrderedDict()

    def plan_from(self, raw: bytes) -> None:
        try:
            plan = FaultPlan.model_validate_json(raw)
        except ValueError as exc:
            log.warning("fault plan refused: %s", exc)
            return
        if self.plan is None or plan.start_ms >= self.plan.start_ms:
            self.plan = plan
            log.warning("fault plan %s in force from %d: %d faults", plan.scenario,
                        plan.start_ms, len(plan.faults))

    def report(self, request, drawn: list[Drawn], at_ms: int) -> None:
        """Tell the scenario what was injected (best effort: a report, not a payment)."""
        for fault, _ in drawn:
            doc = {"scenario": self.plan.scenario if self.plan else "", "channel":
                   request.channel, "kind": fault.kind.value, "payment_id": request.payment_id,
                   "request_id": request.request_id, "operation": request.operation.value,
                   "at_ms": at_ms}
            INJECTIONS.labels(channel=request.channel, kind=fault.kind.value).inc()
            asyncio.ensure_future(self.producer.send(
                t.SIM_INJECTIONS, key=request.payment_id.encode(),
                value=json.dumps(doc, separators=(",", ":")).encode()))


AFTERTHOUGHTS = frozenset({FaultKind.success_after_decline, FaultKind.channel_refund})
SEEN_MAX = 500_000
"""Requests the simulated channels remember for status queries (oldest forgotten first)."""


def _schedule(record, state: _State) -> asyncio.Task | None:
    profiles, timeouts, seed = state.profiles, state.timeouts, state.seed
    producer, seen = state.producer, state.seen
    try:
        env = decode(record.value)
    except UndecodableEnvelope as exc:
        log.warning("simulator skipped an undecodable request: %s", exc)
        return None
    request = env.body
    profile = profiles.get(request.channel)
    if profile is None:
        log.warning("no simulator for channel %s", request.channel)
        return None
    at = int(time.time() * 1000)
    if request.operation is ChannelOperation.ack:
        state.acked[request.reference] = at
        while len(state.acked) > SEEN_MAX:
            state.acked.popitem(last=False)
        return None
    if request.operation is ChannelOperation.query:
        down = [d for d in draw(state.plan, request.channel, request.request_id, at)
                if d.fault.kind is FaultKind.outage]
        if down:  # a channel that is down answers no query either
            return None
        known = seen.get(request.reference.split("/")[0])
        response = query_answer(request, known[1] if known else None,
                                known[0] if known else at, at)
        CHANNEL_REQUESTS.labels(channel=request.channel, operation="query",
                                outcome=response.outcome.value if response else "pending").inc()
        if response is None:
            return None
        reply = Answer(response, 0, (0,))
    else:
        late_after_ms = timeouts.get(request.channel, 30_000)
        reply = answer(request, profile, seed, at, late_after_ms)
        drawn = [d for d in draw(state.plan, request.channel, request.request_id, at)
                 if d.fault.kind not in AFTERTHOUGHTS or (
                     reply.response.outcome is ChannelOutcome.succeeded
                     and request.operation is ChannelOperation.sale)]
        if drawn:  # an afterthought hits only a sale the channel took
            state.report(request, drawn, at)
            reply = with_faults(reply, request, drawn, profile, late_after_ms, seed)
            if reply is None:  # lost in an outage: the channel never knew it
                return None
        seen[request.request_id] = (at, reply)
        while len(seen) > SEEN_MAX:
            seen.popitem(last=False)
        CHANNEL_REQUESTS.labels(channel=request.channel, operation=request.operation.value,
                                outcome=reply.response.outcome.value).inc()
    out = child(env, reply.response, 0, reply.response.responded_at_ms)

    async def deliver() -> None:
        if reply.redirect is not None:  # the bank's page first, the outcome later
            await send_once(child(env, reply.redirect, 1, at))
        waited_ms = 0
        for due_ms in reply.deliveries_ms:
            await asyncio.sleep((due_ms - waited_ms) / 1000)
            waited_ms = due_ms
            await send_once(out)
        for index, (due_ms, message) in enumerate(sorted(reply.afterwards,
                                                         key=lambda a: a[0])):
            await asyncio.sleep(max(0, due_ms - waited_ms) / 1000)
            waited_ms = max(waited_ms, due_ms)
            await send_once(child(env, message, 2 + index, message.responded_at_ms))
        if reply.until_ack:  # a wallet notifies again until acknowledged
            for wait_ms in WALLET_RESEND_MS:
                await asyncio.sleep(wait_ms / 1000)
                if request.request_id in state.acked:
                    return
                await send_once(out)

    async def send_once(message) -> None:
        for attempt in range(SEND_ATTEMPTS):
            try:
                await producer.send_and_wait(t.CHANNEL_CALLBACKS, key=record.key,
                                             value=encode(message))
                return
            except Exception as exc:  # a broker blip must not silently drop the callback
                log.warning("callback for %s not sent (%r), retrying", request.request_id, exc)
                await asyncio.sleep(min(5.0, 0.1 * 2**attempt))
        log.error("callback for %s dropped after %d attempts", request.request_id,
                  SEND_ATTEMPTS)

    return asyncio.create_task(deliver())
