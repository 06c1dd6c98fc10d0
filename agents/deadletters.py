"""Dead letters: ops' replays and discards, one writer per dead letter.

Reads ``pay.deadletter.actions`` (keyed by dead letter id): the API publishes ops' actions
there, and this stage answers on the same topic, so the topic is the dead letters' audit
trail. A replay sends the corrected copy to the dead letter's original topic, with its
original key: from there it takes the normal path (intake validates a command again, an
internal stage drops a copy it has seen by its message id). The row keeps what became of
the dead letter and the outbox of what was sent for each action.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from agents._outbox import Outgoing, OutboxEntry, recall, remember
from agents._stage import consume, table
from domain.dead_letters import (
    DeadLetterState,
    DiscardDeadLetter,
    Redelivery,
    ReplayDeadLetter,
    decide_dead_letter,
)
from streams import topics as t
from streams.app import Wire, now_ms
from streams.envelope import child, decode, encode


class DeadLetterRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    state: DeadLetterState | None = None
    outbox: tuple[OutboxEntry, ...] = ()


def register(wire: Wire) -> None:
    rows = table(wire, "dead_letters", "dead letter id -> what ops did with it, and outbox")

    async def act(event) -> None:
        env, at = decode(event.message.value), now_ms()
        if not isinstance(env.body, (ReplayDeadLetter, DiscardDeadLetter)):
            return  # our own answers on the same topic
        key = event.message.key
        raw = rows.get(key)
        row = DeadLetterRow.model_validate_json(raw) if raw else DeadLetterRow()
        source = f"{event.message.topic}:{event.message.partition}:{event.message.offset}"
        again = recall(row.outbox, env.message_id, source)
        if again is not None:
            await wire.send_all(again)
            return
        decision = decide_dead_letter(row.state, env.body, t.REPLAYABLE, at)
        outgoing = [Outgoing(topic=out.topic, key=out.key or "", key_base64=out.key_base64,
                             value=out.value)
                    if isinstance(out, Redelivery) else
                    Outgoing(topic=t.DEADLETTER_ACTIONS, key=key.decode(),
                             value=encode(child(env, out, index, at)).decode())
                    for index, out in enumerate(decision.outputs)]
        if outgoing or decision.state != row.state:
            rows[key] = DeadLetterRow(state=decision.state, outbox=remember(
                row.outbox, env.message_id, outgoing, source)).model_dump_json().encode()
        await wire.send_all(outgoing)

    @wire.app.agent(wire.topics[t.DEADLETTER_ACTIONS], name="deadletters")
    async def dead_letter_stage(stream):
        await consume("deadletters", wire, stream, act)
