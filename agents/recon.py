"""Reconciliation: three-way matching as it happens, partitioned by payment id.

Reads the order's status events (``pay.events``), the channel's callbacks and settlement
lines, and the payment's ledger legs, re-keyed by payment id (``pay.recon``, fed from
``pay.ledger.entries`` by the ``recon_ledger_feed`` agent). One row per payment holds the
item (``domain.recon``) and the outbox of what it sent; two small indexes say which items
wait for a wake-up and which wait for a channel's report of a day. Each partition keeps a
tally (matched, open, exceptions, clearing residual) that is published on
``pay.recon.status`` when it changes; ``paycore recon report`` sums the partitions.

Outputs: exceptions on ``pay.recon.exceptions``; matched lines and automatic resolutions to
the order stage on ``pay.orders``.
"""

from __future__ import annotations

import logging
from datetime import date

from kafka.partitioner.default import murmur2
from pydantic import BaseModel, ConfigDict

from agents._outbox import OutboxEntry, Outgoing, recall, remember
from agents._stage import Nudger, consume, table
from domain.events import (
    ChannelResponded,
    ExceptionResolved,
    LegApplied,
    PaymentStatusChanged,
    SettlementReported,
)
from domain.recon import (
    ExceptionKind,
    ReconItem,
    ReconStatus,
    ReconWake,
    SerialRow,
    SerialSeen,
    SettlementClosed,
    Step,
    Tally,
    by_serial,
    closed_tally,
    day_of,
    observe,
    period_closed,
    raised_tally,
    standing,
)
from streams import topics as t
from streams.app import Wire, now_ms
from streams.envelope import child, decode, encode
from streams.metrics import (
    RECON_AUTO_RESOLVED,
    RECON_EXCEPTIONS,
    RECON_MATCHED,
    RECON_OPEN,
    RECON_RESIDUAL,
)
from streams.rules_config import load_routing, watch_recon

log = logging.getLogger(__name__)
_TAKEN = (PaymentStatusChanged, ChannelResponded, LegApplied, SettlementReported, ReconWake,
          ExceptionResolved)
EXPIRY_SWEEP_S = 60.0
PUBLISH_EVERY_S = 1.0


class ReconRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    item: ReconItem | None = None
    outbox: tuple[OutboxEntry, ...] = ()


class SerialEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    row: SerialRow = SerialRow()
    outbox: tuple[OutboxEntry, ...] = ()


def partition_of(key: bytes, partitions: int) -> int:
    """The partition the producers' default partitioner gives ``key`` (murmur2)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def register(wire: Wire) -> None:
    rows = table(wire, "recon_items", "payment id -> reconciliation item and outbox")
    wakes = table(wire, "recon_wakes", "payment id -> ms to look at the item again")
    dues = table(wire, "recon_due", "payment id -> channel|day whose report must settle it")
    tallies = table(wire, "recon_tallies", "tally:<partition> -> that partition's Tally")
    serials = table(wire, "recon_serials", "channel serial -> its payment, lines waiting")
    expiries = table(wire, "recon_expiries", "payment id -> ms its matched item goes")
    rules = watch_recon(wire.settings.config_dir)
    partitions = wire.settings.partitions
    for channel in load_routing(wire.settings.config_dir).channels:  # zeros, not gaps
        RECON_MATCHED.labels(channel=channel.name)
        for kind in ExceptionKind:
            RECON_EXCEPTIONS.labels(kind=kind.value, channel=channel.name)
            RECON_AUTO_RESOLVED.labels(kind=kind.value, channel=channel.name)
    dirty: set[int] = set(range(partitions))

    def tally_key(partition: int) -> bytes:
        return f"tally:{partition}".encode()

    def tally_of(partition: int) -> Tally:
        raw = tallies.get(tally_key(partition))
        return Tally.model_validate_json(raw) if raw else Tally()

    def bump(partition: int, delta: Tally) -> None:
        if delta != Tally():
            tallies[tally_key(partition)] = tally_of(partition).add(delta) \
                .model_dump_json().encode()
            dirty.add(partition)

    def set_wake(key: bytes, wake_ms: int, expiry: bool) -> None:
        """Index the row's next wake-up. A row whose only wake-up is its removal, days away
        (a matched item, a serial already known), waits in the expiry index the expiry
        timer reads once a minute, so the sweeper's index stays the rows still at work."""
        wake_in, other = (expiries, wakes) if expiry else (wakes, expiries)
        if wake_ms:
            value = str(wake_ms).encode()
            if wake_in.get(key) != value:  # unchanged: no changelog message
                wake_in[key] = value
        elif wake_in.get(key) is not None:
            del wake_in[key]
        if other.get(key) is not None:
            del other[key]

    def apply(key: bytes, partition: int, before: ReconItem | None, step: Step) -> None:
        """Keep the indexes in step with the item, and move the partition's tally by the
        difference (the item's standing before and after, plus what it raised)."""
        bump(partition, standing(step.item).add(standing(before), -1).add(raised_tally(step))
             .add(closed_tally(before, step.item)))
        set_wake(key, step.wake_ms, step.item is not None and step.item.closed_ms > 0)
        if step.due is not None:
            due = "|".join(step.due).encode()
            if dues.get(key) != due:
                dues[key] = due
        elif dues.get(key) is not None:
            del dues[key]
        channel = step.item.channel if step.item is not None else "?"
        for e in step.exceptions:
            if not e.cleared:  # a clearing record resolves one raised before
                RECON_EXCEPTIONS.labels(kind=e.kind.value, channel=e.channel or "?").inc()
            if e.resolution:
                RECON_AUTO_RESOLVED.labels(kind=e.kind.value, channel=e.channel or "?").inc()
        if step.matched and step.item is not None and step.item.counted == "matched":
            RECON_MATCHED.labels(channel=channel).inc()

    def outgoing_of(env, step: Step, key: str, at: int) -> list[Outgoing]:
        out = [Outgoing(topic=t.RECON_EXCEPTIONS, key=key,
                        value=encode(child(env, e, i, at)).decode())
               for i, e in enumerate(step.exceptions)]
        out += [Outgoing(topic=t.ORDERS, key=key,
                         value=encode(child(env, m, i, at)).decode())
                for i, m in enumerate(step.to_orders)]
        out += [Outgoing(topic=t.RECON_EXCEPTIONS, key=key,  # ops' resolutions, as seen here
                         value=encode(child(env, r, i, at)).decode())
                for i, r in enumerate(step.resolutions)]
        return out

    async def handle(event) -> None:
        env, at = decode(event.message.value), now_ms()
        body, partition = env.body, event.message.partition
        if isinstance(body, SettlementClosed):
            await close_period(env, body, partition, at)
            return
        key = event.message.key
        source = f"{event.message.topic}:{partition}:{event.message.offset}"
        if isinstance(body, SerialSeen) or (
                isinstance(body, SettlementReported) and not body.payment_id) or (
                isinstance(body, ReconWake) and serials.get(key) is not None
                and rows.get(key) is None):
            await by_channel_serial(env, key, body, at, source, partition)
            return
        if not isinstance(body, _TAKEN):
            return  # other events on pay.events (a command refused): nothing to match
        raw = rows.get(key)
        row = ReconRow.model_validate_json(raw) if raw else ReconRow()
        again = recall(row.outbox, env.message_id, source)
        if again is not None:
            await wire.send_all(again)
            return
        step = observe(row.item, body, at, rules.current)
        outgoing = outgoing_of(env, step, key.decode(), at) + serials_seen(
            env, row.item, step.item, at)
        if step.item is None:
            if raw:
                del rows[key]
        elif step.item != row.item or outgoing:
            rows[key] = ReconRow(item=step.item, outbox=remember(
                row.outbox, env.message_id, outgoing, source)).model_dump_json().encode()
        apply(key, partition, row.item, step)
        await wire.send_all(outgoing)

    def serials_seen(env, before: ReconItem | None, after: ReconItem | None, at: int
                     ) -> list[Outgoing]:
        """A success with a serial not seen before: index it, keyed by the serial, for lines
        that name only the serial."""
        if after is None:
            return []
        known = {cb.channel_serial for cb in (before.callbacks if before else ())}
        fresh = {(cb.channel_serial, cb.channel) for cb in after.callbacks
                 if cb.outcome == "succeeded" and cb.channel_serial
                 and cb.channel_serial not in known}
        return [Outgoing(topic=t.RECON, key=serial, value=encode(child(env, SerialSeen(
            serial=serial, payment_id=after.payment_id, channel=channel), i, at)).decode())
            for i, (serial, channel) in enumerate(sorted(fresh))]

    async def by_channel_serial(env, key: bytes, body, at: int, source: str, partition: int
                                ) -> None:
        """Lines that name only the channel's serial, and the serials of our payments."""
        raw = serials.get(key)
        entry = SerialEntry.model_validate_json(raw) if raw else SerialEntry()
        again = recall(entry.outbox, env.message_id, source)
        if again is not None:
            await wire.send_all(again)
            return
        step = by_serial(entry.row if raw else None, body, at, rules.current)
        out = [Outgoing(topic=t.RECON, key=line.payment_id,
                        value=encode(child(env, line, i, at)).decode())
               for i, line in enumerate(step.forward)]
        out += [Outgoing(topic=t.RECON_EXCEPTIONS, key=key.decode(),
                         value=encode(child(env, e, i, at)).decode())
                for i, e in enumerate(step.exceptions)]
        if step.row is None:
            if raw:
                del serials[key]
        elif step.row != entry.row or out or not raw:
            serials[key] = SerialEntry(row=step.row, outbox=remember(
                entry.outbox, env.message_id, out, source)).model_dump_json().encode()
        set_wake(key, step.wake_ms, step.row is not None and bool(step.row.payment_id)
                 and not step.row.waiting)
        for e in step.exceptions:
            RECON_EXCEPTIONS.labels(kind=e.kind.value, channel=e.channel or "?").inc()
        if step.exceptions:
            bump(partition, raised_tally(Step(None, step.exceptions)))
        await wire.send_all(out)

    async def close_period(env, closed: SettlementClosed, partition: int, at: int) -> None:
        """The channel's report for a day is complete: this partition's items due by then
        without a line are missing at the channel. Reads the (small) due index once a day
        per channel; each item decides for itself."""
        due = [(key, value.decode().split("|")) for key, value in dues.items()]
        mine = [key for key, (channel, day) in due if channel == closed.channel
                and day <= closed.period and partition_of(key, partitions) == partition]
        for key in mine:
            raw = rows.get(key)
            row = ReconRow.model_validate_json(raw) if raw else ReconRow()
            if row.item is None:
                del dues[key]
                continue
            step = period_closed(row.item, closed, at, rules.current)
            outgoing = outgoing_of(env, step, key.decode(), at)
            rows[key] = ReconRow(item=step.item, outbox=remember(
                row.outbox, env.message_id, outgoing, f"close:{closed.channel}:"
                f"{closed.period}")).model_dump_json().encode()
            apply(key, partition, row.item,
                  step._replace(wake_ms=step.wake_ms or int(wakes.get(key) or 0)))
            await wire.send_all(outgoing)
        bump(partition, Tally(closed_periods={closed.channel: closed.period}))

    @wire.app.agent(wire.topic(t.RECON, t.EVENTS, t.CHANNEL_CALLBACKS, t.SETTLEMENTS),
                    name="recon")
    async def recon_stage(stream):
        await consume("recon", wire, stream, handle)

    async def feed(event) -> None:
        """Every posted leg of a payment, re-keyed by its payment id (recon needs them all to
        know an entry is fully posted; it sums the clearing and fee legs)."""
        env = decode(event.message.value)
        leg = env.body
        if isinstance(leg, LegApplied) and leg.payment_id:
            await wire.send(t.RECON, leg.payment_id, env)

    @wire.app.agent(wire.topics[t.LEDGER_ENTRIES], name="recon_ledger_feed")
    async def recon_ledger_feed(stream):
        await consume("recon_ledger_feed", wire, stream, feed)

    nudger = Nudger(wire, t.RECON, "recon-sweeper", lambda key, due_ms: ReconWake(
        payment_id=key, wake_ms=due_ms), "recon wake")

    @wire.app.timer(interval=wire.settings.deadline_sweep_ms / 1000, name="recon_sweeper")
    async def sweep() -> None:
        """Wake the items whose time came (a grace ran out, a line waited long enough)."""
        await nudger.sweep(wakes, now_ms(), gauge="recon")

    @wire.app.timer(interval=EXPIRY_SWEEP_S, name="recon_expiry")
    async def expire() -> None:
        """Remove matched items kept ``retention_days`` (their wake-up removes them)."""
        await nudger.sweep(expiries, now_ms())

    @wire.app.timer(interval=PUBLISH_EVERY_S, name="recon_publish")
    async def publish() -> None:
        """Each changed partition's tally on pay.recon.status (the report's source)."""
        try:
            rules.check()
            at = now_ms()
            assigned = {tp.partition for tp in wire.app.assignor.assigned_actives()
                        if tp.topic == t.RECON}
            for partition in sorted(dirty & assigned):
                status = ReconStatus(partition=partition, at_ms=at, tally=tally_of(partition))
                await wire.send(t.RECON_STATUS, f"p{partition}",
                                child(f"recon-status-{partition}-{at}", status, 0, at))
                dirty.discard(partition)
            _gauges([tally_of(p) for p in assigned])
        except Exception:  # a timer must not die: the next tick publishes
            log.exception("recon status publish failed")


_GAUGED: set[tuple[str, ...]] = set()


def _gauges(tallies: list[Tally]) -> None:
    """Open items and residuals on this worker's partitions (zeroed when they go away)."""
    for labels in _GAUGED:
        (RECON_OPEN if labels[0] == "open" else RECON_RESIDUAL).labels(*labels[1:]).set(0)
    total = Tally()
    for tally in tallies:
        total = total.add(tally)
    today = date.fromisoformat(day_of(now_ms()))
    for (channel, state, age), n in open_by_age(total.open, today).items():
        RECON_OPEN.labels(channel, state, age).set(n)
        _GAUGED.add(("open", channel, state, age))
    for (channel, ccy), n in _by_first_two(total.residual).items():
        RECON_RESIDUAL.labels(channel, ccy).set(n)
        _GAUGED.add(("residual", channel, ccy))


AGE_BUCKETS = ((0, "0d"), (1, "1d"), (2, "2-6d"), (7, "7d+"))
"""An open item's age in whole days since it opened: bounded labels for the gauge."""


def open_by_age(counts: dict[str, int], today: date) -> dict[tuple[str, str, str], int]:
    """``channel|state|opened_on`` counts summed per (channel, state, age bucket)."""
    out: dict[tuple[str, str, str], int] = {}
    for key, n in counts.items():
        channel, state, opened_on = key.split("|")
        try:
            days = (today - date.fromisoformat(opened_on)).days
        except ValueError:
            days = 0
        age = next(label for floor, label in reversed(AGE_BUCKETS) if days >= floor) \
            if days >= 0 else "0d"
        out[(channel, state, age)] = out.get((channel, state, age), 0) + n
    return out


def _by_first_two(counts: dict[str, int]) -> dict[tuple[str, str], int]:
    """``a|b|day`` counts summed over the days."""
    out: dict[tuple[str, str], int] = {}
    for key, n in counts.items():
        a, b, _ = key.split("|")
        out[(a, b)] = out.get((a, b), 0) + n
    return out
