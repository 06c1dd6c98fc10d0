"""Risk: screens every command that moves new money, partitioned by payer.

One row per payer (recent payments for the velocity windows, recent verdicts so a
redelivered command gets the same answer). The verdict travels with the command to the
order stage, which creates the order approved, held for review, or declined.
"""

from __future__ import annotations

import logging

from agents._stage import consume, table
from domain.events import RiskScreened
from domain.orders import fingerprint_of
from domain.risk import PayerActivity, RiskDecision, screen
from streams import topics as t
from streams.app import Wire
from streams.envelope import child, decode
from streams.metrics import RISK_DECISIONS, RISK_RULE_HITS
from streams.rules_config import watch_risk

RELOAD_EVERY_S = 1.0
log = logging.getLogger(__name__)


def register(wire: Wire) -> None:
    payers = table(wire, "risk_payers", "payer -> recent payments and verdicts")
    rules = watch_risk(wire.settings.config_dir)
    for decision in RiskDecision:  # zeros, not gaps
        RISK_DECISIONS.labels(decision=decision.value)
    for rule in rules.current.rules:  # (a rule added by a reload starts at its first hit)
        RISK_RULE_HITS.labels(rule=rule.id)

    async def handle(event) -> None:
        env = decode(event.message.value)
        cmd, key = env.body, event.message.key
        raw = payers.get(key)
        row = PayerActivity.model_validate_json(raw) if raw else None
        fingerprint = fingerprint_of(cmd)
        # The time the command was forwarded to us, not the clock: a redelivery and a
        # backtest see the same windows.
        updated, verdict = screen(row, cmd, fingerprint, env.at_ms, rules.current)
        if updated != row:
            payers[key] = updated.model_dump_json().encode()
        screened = RiskScreened(payment_id=cmd.subject_id(), payer_key=key.decode(),
                                fingerprint=fingerprint, command=cmd, verdict=verdict,
                                screened_at_ms=env.at_ms)
        RISK_DECISIONS.labels(decision=verdict.decision.value).inc()
        for hit in verdict.hits:
            RISK_RULE_HITS.labels(rule=hit.rule_id).inc()
        await wire.send(t.ORDERS, screened.payment_id, child(env, screened, 0, env.at_ms))

    @wire.app.agent(wire.topics[t.RISK], name="risk")
    async def risk_stage(stream):
        await consume("risk", wire, stream, handle)

    @wire.app.timer(interval=RELOAD_EVERY_S, name="risk_rules_reload")
    async def reload() -> None:
        try:
            rules.check()
        except Exception:  # a timer must not die: the rules in force stay
            log.exception("risk rules check failed")
