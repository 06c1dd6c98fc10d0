"""FastAPI app: publishes commands to ``pay.commands``, answers queries from the read model."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timezone
from typing import Annotated, Literal

from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Header, Query, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.problems import COMMON, Problem, field_errors, install, responses
from api.read_model import PaymentsView
from domain.commands import (
    AmountMinor,
    Capture,
    CaptureMode,
    Command,
    Identifier,
    Method,
    Pay,
    Payer,
    Refund,
    Revoke,
    SplitShare,
    Void,
)
from domain.ids import mandate_key_for, payment_id_for
from domain.money import CURRENCY_EXPONENTS
from domain.orders import FINAL_FOR_CLIENTS
from streams import topics as t
from streams.settings import Settings

IdempotencyKey = Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=64)]
WAIT_S_MAX = 30
_STOP_AT = {s.value for s in FINAL_FOR_CLIENTS}


CurrencyCode = Literal[tuple(sorted(CURRENCY_EXPONENTS))]  # type: ignore[valid-type]
"""ISO 4217 codes the core knows: an enum in the OpenAPI document, so a client (or a fuzzer)
knows which are valid before it asks."""


class PaymentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    merchant_id: Identifier
    merchant_order_no: Identifier
    amount: AmountMinor = Field(description="integer minor units")
    currency: CurrencyCode
    method: Method
    capture: CaptureMode = CaptureMode.auto
    payer: Payer = Payer()
    mandate_id: str | None = None
    split: tuple[SplitShare, ...] = ()


class AmountRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: AmountMinor | None = None


class RefundRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refund_id: Identifier
    amount: AmountMinor


def create_api(settings: Settings) -> FastAPI:
    """The app: a producer to pay.commands and a read model following pay.events."""
    view = PaymentsView()
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        stop = asyncio.Event()
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers(), acks=-1)
        await producer.start()
        state["producer"] = producer
        state["follower"] = asyncio.create_task(
            view.follow(settings.bootstrap_servers(), settings.partitions, stop))
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait_for(state["follower"], 5)
            await producer.stop()

    async def publish(cmd: Command, key: str = "") -> None:
        raw = cmd.model_dump_json().encode()
        key = key or getattr(cmd, "merchant_order_no", "") or cmd.subject_id()
        await state["producer"].send_and_wait(t.COMMANDS, key=key.encode(), value=raw)

    app = FastAPI(title="paycore", version="0.1.0", lifespan=lifespan, responses=COMMON)
    install(app)
    _payment_routes(app, view, publish)
    _follow_up_routes(app, view, publish)
    _account_routes(app, view)
    _recon_routes(app, view)
    _health_routes(app, view, state)
    app.state.view = view
    return app


def _build(cls, **fields):
    """A domain command from HTTP fields; its validation errors become a precise 422."""
    try:
        return cls(**fields)
    except ValidationError as exc:
        errors = field_errors(exc.errors())
        fields = ", ".join(e["field"] for e in errors)
        raise Problem(422, "invalid_command", f"invalid: {fields}: {errors[0]['message']}",
                      errors) from exc


def _found(view: PaymentsView, payment_id: str) -> dict:
    row = view.payments.get(payment_id)
    if row is None:
        raise Problem(404, "payment_not_found", f"payment {payment_id} not found")
    return row


async def _wait_for(view: PaymentsView, payment_id: str, wait_s: float) -> dict | None:
    """The payment once it is final or needs the merchant's action, or when time is up."""
    deadline = time.monotonic() + min(wait_s, WAIT_S_MAX)
    async with view.changed:
        while True:
            row = view.payments.get(payment_id)
            if row and row["status"] in _STOP_AT or time.monotonic() >= deadline:
                return row
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(view.changed.wait(), deadline - time.monotonic())


def _payment_routes(app: FastAPI, view: PaymentsView, publish) -> None:
    @app.post("/v1/payments", status_code=202)
    async def create_payment(body: PaymentRequest, idempotency_key: IdempotencyKey,
                             wait: float = Query(default=0, ge=0, le=WAIT_S_MAX)):
        cmd = _build(Pay, merchant_id=body.merchant_id, idempotency_key=idempotency_key,
                     merchant_order_no=body.merchant_order_no, amount_minor=body.amount,
                     currency=body.currency, method=body.method, capture=body.capture,
                     payer=body.payer, mandate_id=body.mandate_id, split=body.split)
        await publish(cmd, cmd.merchant_order_no)
        payment_id = payment_id_for(cmd.merchant_id, cmd.merchant_order_no)
        row = await _wait_for(view, payment_id, wait) if wait else view.payments.get(payment_id)
        return {"payment_id": payment_id, "status": row["status"] if row else "accepted",
                "payment": row}

    @app.get("/v1/payments/{payment_id}", responses=responses(404))
    async def get_payment(payment_id: str):
        return {**_found(view, payment_id), "rejections": view.rejections.get(payment_id, [])}

    @app.get("/v1/payments", responses=responses(404))
    async def find_payment(merchant_id: str, merchant_order_no: str):
        payment_id = view.by_order_no.get((merchant_id, merchant_order_no))
        if payment_id is None:
            raise Problem(404, "payment_not_found", "no payment for that merchant order")
        return _found(view, payment_id)


def _follow_up_routes(app: FastAPI, view: PaymentsView, publish) -> None:
    def order_of(payment_id: str) -> dict:
        row = _found(view, payment_id)
        return {"merchant_id": row["merchant_id"], "merchant_order_no": row["merchant_order_no"]}

    @app.post("/v1/payments/{payment_id}/capture", status_code=202, responses=responses(404))
    async def capture(payment_id: str, body: AmountRequest, idempotency_key: IdempotencyKey):
        await publish(_build(Capture, **order_of(payment_id), idempotency_key=idempotency_key,
                             amount_minor=body.amount))
        return {"payment_id": payment_id, "status": "capture_requested"}

    @app.post("/v1/payments/{payment_id}/void", status_code=202, responses=responses(404))
    async def void(payment_id: str, idempotency_key: IdempotencyKey):
        await publish(_build(Void, **order_of(payment_id), idempotency_key=idempotency_key))
        return {"payment_id": payment_id, "status": "void_requested"}

    @app.post("/v1/payments/{payment_id}/revoke", status_code=202, responses=responses(404))
    async def revoke(payment_id: str, idempotency_key: IdempotencyKey):
        await publish(_build(Revoke, **order_of(payment_id), idempotency_key=idempotency_key))
        return {"payment_id": payment_id, "status": "revoke_requested"}

    @app.get("/v1/mandates/{merchant_id}/{mandate_id}", responses=responses(404))
    async def get_mandate(merchant_id: str, mandate_id: str):
        key = mandate_key_for(merchant_id, mandate_id)
        row = view.mandates.get(key)
        if row is None:
            raise Problem(404, "mandate_not_found", f"mandate {mandate_id} not found")
        return {**row, "rejections": view.rejections.get(key, [])}

    @app.post("/v1/payments/{payment_id}/refunds", status_code=202, responses=responses(404))
    async def refund(payment_id: str, body: RefundRequest, idempotency_key: IdempotencyKey):
        await publish(_build(Refund, **order_of(payment_id), idempotency_key=idempotency_key,
                             refund_id=body.refund_id, amount_minor=body.amount))
        return {"payment_id": payment_id, "status": "refund_requested"}


def _account_routes(app: FastAPI, view: PaymentsView) -> None:
    @app.get("/v1/accounts/{account_id}/balance", responses=responses(404))
    async def balance(account_id: str):
        found = view.balance(account_id)
        if found is None:
            raise Problem(404, "account_not_found", f"account {account_id} has no entries")
        return found

    @app.get("/v1/accounts/{account_id}/entries", responses=responses(404))
    async def entries(account_id: str, limit: int = Query(default=100, ge=1, le=1_000)):
        legs = list(view.journal.get(account_id, ()))[-limit:]
        if not legs and view.balance(account_id) is None:
            raise Problem(404, "account_not_found", f"account {account_id} has no entries")
        return {"account_id": account_id, "entries": [
            {"entry_id": leg.entry_id, "posting_id": leg.posting_id,
             "payment_id": leg.payment_id, "amount_minor": leg.amount_minor,
             "currency": leg.currency, "row": leg.account_id,
             "row_total_minor": leg.total_minor} for leg in reversed(legs)]}


def _recon_routes(app: FastAPI, view: PaymentsView) -> None:
    @app.get("/v1/recon/report")
    async def recon_report():
        """The recon partitions' latest tallies summed, and the exceptions kept in memory
        (``paycore.recon_report.build``); open items age against today's UTC day."""
        return view.recon.report(datetime.now(timezone.utc).date())


def _health_routes(app: FastAPI, view: PaymentsView, state: dict) -> None:
    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    @app.get("/readyz", responses=responses(503))
    async def readyz():
        if state["follower"].done():
            raise Problem(503, "not_ready", "read model stopped; see the API log")
        if not view.caught_up.is_set():
            raise Problem(503, "not_ready", "read model still catching up")
        return {"ok": True, "payments": len(view.payments)}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
