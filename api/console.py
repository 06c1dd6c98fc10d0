"""The ops console: its pages (static files under ``/console``) and the ops routes they use.

Every route needs the ops key (``/v1/ops/*``); the page itself is an empty shell that asks
for the key once per browser session and keeps it in ``sessionStorage``. Every action is a
command on the normal path: a resolution goes through ``pay.commands`` to the order stage,
a dead letter's replay or discard through ``pay.deadletter.actions`` to its stage. The
console reads what happened from the read model, like any other client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Header, Query
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Principal
from api.console_model import WINDOW_MS, ConsoleView
from api.models import (
    Accepted,
    DeadLetterAccepted,
    DeadLetterDetail,
    DeadLetters,
    ExceptionView,
    ResolutionPreview,
    SearchResults,
    Summary,
    Timeline,
)
from api.problems import Problem, responses
from api.read_model import PaymentsView
from domain.commands import Comment, Identifier, ResolutionAction, ResolveException
from domain.dead_letters import (
    VALUE_BYTES_MAX,
    DiscardDeadLetter,
    ReplayDeadLetter,
    action_id_for,
)
from domain.intake import parse_command
from domain.recon import ReconException
from domain.resolutions import FeeTerms, allowed, moves_money, preview
from streams import topics as t
from streams.app import now_ms
from streams.envelope import UndecodableEnvelope, child, decode, encode
from streams.rules_config import watch_routing
from streams.settings import Settings

STATIC = Path(__file__).resolve().parent / "static" / "console"
OpsIdempotencyKey = Annotated[str, Header(
    alias="Idempotency-Key", min_length=1, max_length=60,
    pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,59}$",
    description="an ops action's key: the same key, the same action (applied once)")]
SEARCH_MAX = 20
_UNPAID = ("failed", "timed_out")
_SETTLEABLE = ("succeeded", "partially_refunded", "refunded")
_PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                 "frame-ancestors 'none'", "X-Frame-Options": "DENY",
                 "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PreviewRequest(_Body):
    action: ResolutionAction


class ResolveRequest(_Body):
    action: ResolutionAction
    resolver: Identifier
    comment: Comment
    confirm: str = Field(default="", max_length=64, description="the preview's digest; "
                         "required when the action moves money")


class ReplayRequest(_Body):
    value: str = Field(min_length=1, max_length=VALUE_BYTES_MAX,
                       description="the corrected message, as its topic carries it")
    operator: Identifier
    comment: str = Field(default="", max_length=500)


class DiscardRequest(_Body):
    operator: Identifier
    reason: Comment


def install_console(app: FastAPI, view: PaymentsView, console: ConsoleView, publish, send_raw,
                    keys: dict, settings: Settings, answer) -> None:
    """``answer(view, row, who)`` shows a payment as every other route does."""
    routing = watch_routing(settings.config_dir)
    _page_routes(app)
    _payment_routes(app, view, console, keys, answer)
    _exception_routes(app, view, console, publish, keys, routing)
    _dead_letter_routes(app, console, send_raw, keys)


def _page_routes(app: FastAPI) -> None:
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")

    @app.get("/console", include_in_schema=False)
    async def console_page():
        """The console's shell: no data without the ops key."""
        return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)

    @app.get("/console/", include_in_schema=False)
    async def console_slash():
        return RedirectResponse("/console")


# ---------------------------------------------------------------- payments


def _payment_routes(app: FastAPI, view: PaymentsView, console: ConsoleView, keys: dict,
                    answer) -> None:
    ops = keys["ops"]

    @app.get("/v1/ops/search", response_model=SearchResults, responses=responses(401, 403))
    async def search(q: str = Query(min_length=1, max_length=128),
                     who: Principal = Depends(ops)):
        """Payments by our payment id, the merchant's order number (any merchant) or the
        channel's serial: exact matches."""
        query = q.strip()
        found: dict[str, str] = {}
        if query in view.payments or query in console.timelines:
            found[query] = "payment_id"
        for payment_id in sorted(console.order_nos.get(query, ())):
            found.setdefault(payment_id, "merchant_order_no")
        serial = console.serials.get(query)
        if serial:
            found.setdefault(serial, "channel_serial")
        matches = []
        for payment_id, how in list(found.items())[:SEARCH_MAX]:
            row = view.payments.get(payment_id, {})
            matches.append({"payment_id": payment_id, "matched_by": how,
                            "merchant_id": row.get("merchant_id", ""),
                            "merchant_order_no": row.get("merchant_order_no", ""),
                            "channel_serial": row.get("channel_serial", ""),
                            "status": row.get("status", "unknown")})
        return {"query": query, "matches": matches}

    @app.get("/v1/ops/payments/{payment_id}/timeline", response_model=Timeline,
             responses=responses(401, 403, 404))
    async def timeline(payment_id: str, who: Principal = Depends(ops)):
        """Everything that happened to the payment, in order, with timestamps: commands,
        routing and risk decisions, channel requests and answers (copies and late ones
        marked ignored), status changes, ledger entries, settlement lines, reconciliation,
        dead letters, ops' actions."""
        items, dropped = console.timeline(payment_id)
        row = view.payments.get(payment_id)
        if row is None and not items:
            raise Problem(404, "payment_not_found", f"payment {payment_id} not found")
        return {"payment_id": payment_id, "payment": answer(view, row, who) if row else None,
                "items": items, "dropped": dropped}

    @app.get("/v1/ops/summary", response_model=Summary, responses=responses(401, 403))
    async def summary(who: Principal = Depends(ops)):
        """The live strip: throughput and success rate over the last minute, what waits for
        ops, the ledger auditor's word."""
        return _summary(view, console, now_ms())


def _summary(view: PaymentsView, console: ConsoleView, at_ms: int) -> dict:
    finals = console.finals_since(at_ms - WINDOW_MS)
    audit = view.audit
    return {
        "at_ms": at_ms, "window_s": WINDOW_MS // 1000, "finals": len(finals),
        "throughput_per_s": round(len(finals) / (WINDOW_MS / 1000), 3),
        "success_rate": round(finals.count("succeeded") / len(finals), 4) if finals else None,
        "payments": len(view.payments), "open_reviews": len(view.in_review),
        "open_exceptions": sum(1 for e in view.recon.exceptions.values()
                               if exception_state(view, console, e)["state"] == "open"),
        "open_dead_letters": sum(1 for d in console.dead_letters.values()
                                 if d["state"] == "open"),
        "audit_ok": None if audit is None else audit.clean,
        "audit_age_ms": None if audit is None else max(0, at_ms - audit.at_ms),
        "audit_violations": 0 if audit is None else sum(audit.violations.values())}


# ---------------------------------------------------------------- reconciliation exceptions


def exception_state(view: PaymentsView, console: ConsoleView, e: ReconException) -> dict:
    if e.resolution:
        return {"state": "resolved_by_rule", "rule": e.resolution}
    seen = view.recon.resolutions.get(e.exception_id)
    if seen is not None:
        return {"state": "resolved", "action": seen.action, "resolver": seen.resolver,
                "comment": seen.comment, "at_ms": seen.at_ms, "item_state": seen.item_state}
    applied = console.applied.get(e.exception_id)
    if applied is not None:
        return {"state": "resolving", "action": applied.action, "resolver": applied.resolver,
                "comment": applied.comment, "at_ms": applied.at_ms}
    return {"state": "open"}


def _actions(view: PaymentsView, e: ReconException) -> tuple[list[str], str]:
    """What ops may do about it now, or why nothing."""
    if not e.payment_id or e.payment_id not in view.payments or e.order is None:
        return [], "no payment of ours to own it: resolve it outside the console"
    kinds = allowed(e.kind)
    if not kinds:
        return [], f"the console has no action for {e.kind.value}"
    status = e.order.status
    if e.kind.value == "status_mismatch" and not (e.reported_minor and status in _UNPAID):
        return [], "only a channel's success for an unpaid order can be resolved here"
    if e.kind.value == "amount_mismatch" and status != "amount_mismatch":
        return [], "only an order the channel paid other money for can be refunded here"
    if e.kind.value == "missing_at_channel" and status not in _SETTLEABLE:
        return [], f"the order is {status}: nothing to write off"
    if e.kind.value == "duplicate_settlement" and not _line(e):
        return [], "the duplicate line is not among the exception's records"
    actions = sorted(a.value for a in kinds)
    if e.line_id and "refund" in actions:
        actions.remove("refund")  # the channel paid it over already: accept, then refund
    return actions, ""


def _line(e: ReconException):
    return next((s for s in e.lines if s.line_id == e.line_id), None)


def _command(view: PaymentsView, e: ReconException, action: ResolutionAction, resolver: str,
             comment: str, key: str, digest: str = "") -> ResolveException:
    """The resolution command, its facts copied from the exception."""
    row = view.payments[e.payment_id]
    line = _line(e)
    channel, amount, fee = e.channel, e.reported_minor or 0, 0
    if e.kind.value in ("duplicate_settlement", "fee_mismatch") and line is not None:
        channel, amount, fee = line.channel, line.amount_minor, line.fee_minor
    if e.kind.value == "fee_mismatch":
        amount, fee = 0, 0
    elif e.kind.value == "missing_at_channel":
        amount = e.expected_minor or 0
    elif e.kind.value == "status_mismatch":
        took = next((cb for cb in e.callbacks if cb.outcome == "succeeded"
                     and cb.operation == "sale" and cb.amount_minor == amount), None)
        channel = took.channel if took is not None else line.channel if line else channel
    return ResolveException(
        merchant_id=row["merchant_id"], merchant_order_no=row["merchant_order_no"],
        idempotency_key=key, exception_id=e.exception_id, kind=e.kind, action=action,
        resolver=resolver, comment=comment, channel=channel, currency=row["currency"],
        amount_minor=amount, fee_minor=fee, line_id=e.line_id, preview_digest=digest)


def exception_view(view: PaymentsView, console: ConsoleView, e: ReconException,
                    at_ms: int) -> dict:
    actions, why = _actions(view, e)
    state = exception_state(view, console, e)
    if state["state"] != "open":
        actions, why = [], f"{state['state'].replace('_', ' ')}"
    return {**e.model_dump(mode="json"), "age_ms": max(0, at_ms - e.detected_at_ms),
            "state": state, "actions": actions, "not_resolvable": why}


def _exception_routes(app: FastAPI, view: PaymentsView, console: ConsoleView, publish,
                      keys: dict, routing) -> None:
    ops = keys["ops"]
    scoped = responses(401, 403, 404, 409)

    def found(exception_id: str) -> ReconException:
        e = view.recon.exceptions.get(exception_id)
        if e is None:
            raise Problem(404, "exception_not_found", f"exception {exception_id} not found")
        return e

    def may(e: ReconException, action: ResolutionAction) -> None:
        shown = exception_view(view, console, e, now_ms())
        if action.value not in shown["actions"]:
            why = shown["not_resolvable"] or f"{action.value} is not an action for " \
                f"{e.kind.value} here; allowed: {', '.join(shown['actions'])}"
            code = "exception_not_open" if shown["state"]["state"] != "open" else \
                "action_not_allowed"
            raise Problem(409, code, why)

    def terms(channel: str) -> FeeTerms:
        routing.check()
        found_terms = routing.current.channel(channel)
        return FeeTerms(found_terms.fee_bps, found_terms.fee_fixed_minor) if found_terms \
            else FeeTerms(0, 0)

    @app.get("/v1/ops/recon/exceptions/{exception_id}", response_model=ExceptionView,
             responses=responses(401, 403, 404))
    async def recon_exception(exception_id: str, who: Principal = Depends(ops)):
        """One exception: every record involved, its age and state, the actions allowed."""
        return exception_view(view, console, found(exception_id), now_ms())

    @app.post("/v1/ops/recon/exceptions/{exception_id}/preview",
              response_model=ResolutionPreview, responses=scoped)
    async def preview_resolution(exception_id: str, body: PreviewRequest,
                                 who: Principal = Depends(ops)):
        """The journal entries a resolution will post, computed by the order stage's own
        function; nothing is sent. Confirm with the digest."""
        e = found(exception_id)
        may(e, body.action)
        cmd = _command(view, e, body.action, "preview", "preview", "ops-preview")
        shown = preview(e.payment_id, cmd.merchant_id, cmd, terms(cmd.channel))
        return {"exception_id": exception_id, "action": body.action.value,
                "moves_money": moves_money(e.kind, body.action),
                "entries": [{"entry_id": x.entry_id, "reason": x.reason,
                             "legs": [leg.model_dump() for leg in x.legs]}
                            for x in shown.entries],
                "effects": list(shown.effects), "digest": shown.digest}

    @app.post("/v1/ops/recon/exceptions/{exception_id}/resolve", response_model=Accepted,
              status_code=202, responses=responses(401, 403, 404, 409, 422))
    async def resolve(exception_id: str, body: ResolveRequest,
                      idempotency_key: OpsIdempotencyKey, who: Principal = Depends(ops)):
        """Resolve by an allowed action: a ``resolve_exception`` command to the order stage
        (audited in the payment's timeline; reconciliation then closes the item). An action
        that moves money needs the preview's digest as ``confirm``."""
        e = found(exception_id)
        may(e, body.action)
        if moves_money(e.kind, body.action) and not body.confirm:
            raise Problem(422, "confirmation_required", "this action moves money: preview it "
                          "and send the preview's digest as confirm",
                          [{"field": "body.confirm", "message": "required for this action"}])
        cmd = _command(view, e, body.action, body.resolver, body.comment,
                       f"ops-{idempotency_key}", body.confirm)
        await publish(cmd)
        return {"payment_id": e.payment_id, "status": "resolution_requested"}


# ---------------------------------------------------------------- dead letters


def _dead_letter_item(found: dict, detail: bool = False) -> dict:
    record = found["record"]
    item = {"dead_letter_id": found["dead_letter_id"], "stage": record.stage,
            "reason": record.reason, "topic": record.topic, "partition": record.partition,
            "offset": record.offset, "at_ms": record.at_ms, "payment_id": found["payment_id"],
            "state": found["state"], "resolved": found["resolved"],
            "replayable": record.topic in t.REPLAYABLE and not record.truncated,
            "truncated": record.truncated}
    if detail:
        item.update(key_text=record.key.text, key_base64=record.key.base64,
                    key_size_bytes=record.key.size_bytes, key_sha256=record.key.sha256,
                    value_text=record.value.text, value_base64=record.value.base64,
                    value_size_bytes=record.value.size_bytes,
                    value_sha256=record.value.sha256, actions=found["actions"])
    return item


def _reason_of(reason: str) -> str:
    return reason.split(":", 1)[0][:40]


def _checked_copy(topic: str, value: str) -> str:
    """Why the corrected copy would be refused again where it goes ('' : it would not)."""
    if topic == t.COMMANDS:
        cmd, reason = parse_command(value.encode())
        return "" if cmd is not None else reason
    try:
        decode(value.encode())
    except UndecodableEnvelope as exc:
        return f"not an envelope this topic carries: {exc}"
    return ""


def _dead_letter_list(app: FastAPI, console: ConsoleView, keys: dict) -> None:
    ops = keys["ops"]

    @app.get("/v1/ops/deadletters", response_model=DeadLetters, responses=responses(401, 403))
    async def dead_letters(who: Principal = Depends(ops), stage: str | None = None,
                           reason: str | None = Query(default=None, max_length=200),
                           state: Literal["open", "replayed", "discarded"] | None = None,
                           limit: int = Query(default=100, ge=1, le=1_000)):
        """Dead letters, newest first, by stage and reason (a part of it) and state."""
        entries = list(reversed(console.dead_letters.values()))
        chosen = [d for d in entries if (stage is None or d["record"].stage == stage)
                  and (reason is None or reason.lower() in d["record"].reason.lower())
                  and (state is None or d["state"] == state)]
        stages: dict[str, int] = {}
        reasons: dict[str, int] = {}
        for d in entries:
            stages[d["record"].stage] = stages.get(d["record"].stage, 0) + 1
            why = _reason_of(d["record"].reason)
            reasons[why] = reasons.get(why, 0) + 1
        return {"dead_letters": [_dead_letter_item(d) for d in chosen[:limit]],
                "total": len(chosen), "stages": stages, "reasons": reasons}


def _dead_letter_routes(app: FastAPI, console: ConsoleView, send_raw, keys: dict) -> None:
    ops = keys["ops"]
    scoped = responses(401, 403, 404, 409, 422)
    _dead_letter_list(app, console, keys)

    def found(dead_letter_id: str, open_only: bool = False) -> dict:
        entry = console.dead_letters.get(dead_letter_id)
        if entry is None:
            raise Problem(404, "dead_letter_not_found", f"dead letter {dead_letter_id} "
                          "not found")
        if open_only and entry["state"] != "open":
            raise Problem(409, f"dead_letter_already_{entry['state']}",
                          f"dead letter {dead_letter_id} was {entry['state']} by "
                          f"{entry['resolved'].operator}")
        return entry

    @app.get("/v1/ops/deadletters/{dead_letter_id}", response_model=DeadLetterDetail,
             responses=responses(401, 403, 404))
    async def dead_letter(dead_letter_id: str, who: Principal = Depends(ops)):
        """One dead letter: the raw message (text, or base64), its state, every action."""
        return _dead_letter_item(found(dead_letter_id), detail=True)

    @app.post("/v1/ops/deadletters/{dead_letter_id}/replay", response_model=DeadLetterAccepted,
              status_code=202, responses=scoped)
    async def replay(dead_letter_id: str, body: ReplayRequest, idempotency_key: OpsIdempotencyKey,
                     who: Principal = Depends(ops)):
        """Send a corrected copy back to the original topic (with the original key),
        through the dead-letter stage: recorded on ``pay.deadletter.actions``."""
        record = found(dead_letter_id, open_only=True)["record"]
        if record.topic not in t.REPLAYABLE:
            raise Problem(409, "dead_letter_not_replayable", f"{record.topic} takes no "
                          "corrected copies: discard it")
        if record.truncated:
            raise Problem(409, "dead_letter_truncated", "only the first bytes of the original "
                          "are kept (its key or value was too large): it cannot be replayed "
                          "as it came; discard it")
        refused = _checked_copy(record.topic, body.value)
        if refused:
            raise Problem(422, "replay_invalid", f"value: {refused}",
                          [{"field": "body.value", "message": refused}])
        cmd = ReplayDeadLetter(dead_letter_id=dead_letter_id,
                               action_id=action_id_for(dead_letter_id, idempotency_key),
                               operator=body.operator, comment=body.comment,
                               topic=record.topic, key=record.key.text,
                               key_base64=record.key.base64, value=body.value,
                               requested_at_ms=now_ms())
        await send_raw(t.DEADLETTER_ACTIONS, dead_letter_id,
                       encode(child(f"api-{cmd.action_id}", cmd, 0, cmd.requested_at_ms)))
        return {"dead_letter_id": dead_letter_id, "status": "replay_requested"}

    @app.post("/v1/ops/deadletters/{dead_letter_id}/discard",
              response_model=DeadLetterAccepted, status_code=202, responses=scoped)
    async def discard(dead_letter_id: str, body: DiscardRequest,
                      idempotency_key: OpsIdempotencyKey, who: Principal = Depends(ops)):
        """Drop it for good, with the reason (recorded on ``pay.deadletter.actions``)."""
        found(dead_letter_id, open_only=True)
        cmd = DiscardDeadLetter(dead_letter_id=dead_letter_id,
                                action_id=action_id_for(dead_letter_id, idempotency_key),
                                operator=body.operator, reason=body.reason,
                                requested_at_ms=now_ms())
        await send_raw(t.DEADLETTER_ACTIONS, dead_letter_id,
                       encode(child(f"api-{cmd.action_id}", cmd, 0, cmd.requested_at_ms)))
        return {"dead_letter_id": dead_letter_id, "status": "discard_requested"}
