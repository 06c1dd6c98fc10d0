"""FastAPI app: publishes commands to ``pay.commands``, answers queries from the read model.

Every route but health and metrics needs an API key (``api.auth``). A merchant's key acts
for that merchant only: its payments, accounts, mandates and webhook endpoint; anything
else answers 404, exactly as if it did not exist. The ops key reads everything and is the
only key for ``/v1/ops/*`` (risk review decisions, reconciliation, ledger audit).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from datetime import datetime, timezone
from typing import Annotated, Literal

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import Depends, FastAPI, Header, Path, Query, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from api.models import (
    Accepted,
    AuditView,
    Balance,
    Deliveries,
    EndpointCreated,
    EndpointView,
    Entries,
    Health,
    MandateAccepted,
    MandateDeliveries,
    MandateView,
    PaymentCreated,
    PaymentView,
    ReconExceptions,
    Ready,
    Reviews,
)
from api.auth import KeyRing, Principal, authenticator
from api.console import exception_state, exception_view, install_console
from api.console_model import ConsoleView
from api.problems import COMMON, Problem, field_errors, install, responses
from api.read_model import PaymentsView
from domain.accounts import merchants_customer
from domain.commands import (
    AmountMinor,
    Capture,
    CaptureMode,
    Command,
    OPS_COMMAND_TYPES,
    Identifier,
    Method,
    Pay,
    Payer,
    Refund,
    Review,
    ReviewDecision,
    Revoke,
    SignMandate,
    SplitShare,
    TerminateMandate,
    TopUp,
    Transfer,
    Void,
    Withdraw,
)
from domain.ids import mandate_key_for, payment_id_for
from domain.money import CURRENCY_EXPONENTS
from domain.orders import FINAL_FOR_CLIENTS
from domain.recon import ExceptionKind
from domain.webhooks import REVIEWED, Endpoint
from streams import topics as t
from streams.app import group_of, now_ms
from streams.egress import refusal
from streams.envelope import child, encode
from streams.settings import Settings

IdempotencyKey = Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=64,
                                       pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
PathId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
"""A payment or mandate id in a path: an identifier, so an id that could name nothing is a
422 (and no answer echoes kilobytes or control characters back)."""
AccountPath = Annotated[str, Path(max_length=200,
                                  pattern=r"^[a-z]+(:[A-Za-z0-9][A-Za-z0-9._-]*)+$")]
"""An account id in a path: ``<kind>:<part>:...``, each part an identifier's characters."""
WAIT_S_MAX = 30
OPS_KEY_LENGTH_MAX = 60
"""An ops command's idempotency key is prefixed ``ops-`` (ops and the merchant never share
one) and must still be an identifier."""
CATCH_UP_S = 5
READY_CACHE_S = 1.0
_STOP_AT = {s.value for s in FINAL_FOR_CLIENTS}
_AUTHORIZED = {"authorized", "succeeded"}

CurrencyCode = Literal[tuple(sorted(CURRENCY_EXPONENTS))]  # type: ignore[valid-type]
"""ISO 4217 codes the core knows: an enum in the OpenAPI document, so a client (or a fuzzer)
knows which are valid before it asks."""


CustomerId = Annotated[str, StringConstraints(
    strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
"""A merchant's id for its customer: an identifier without dots, since the ledger names the
customer ``<merchant>.<customer>`` and a merchant id may hold dots (``m-acme.eu``)."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PayerRequest(Payer):
    """Who pays; ``account_id`` is the merchant's customer whose wallet pays."""

    account_id: CustomerId | None = None


class PaymentRequest(_Body):
    merchant_order_no: Identifier
    amount: AmountMinor = Field(description="integer minor units")
    currency: CurrencyCode
    method: Method
    capture: CaptureMode = CaptureMode.auto
    payer: PayerRequest = PayerRequest()
    mandate_id: Identifier | None = Field(default=None,
                                          description="required with method mandate")
    split: tuple[SplitShare, ...] = ()


_CUSTOMER = "your customer's wallet: the ledger names it wallet:<merchant>.<this>:<CCY>"


class TransferRequest(_Body):
    merchant_order_no: Identifier
    from_account_id: CustomerId = Field(description=_CUSTOMER)
    to_account_id: CustomerId = Field(description=_CUSTOMER)
    amount: AmountMinor
    currency: CurrencyCode


class WalletRequest(_Body):
    """A top-up (a channel pays into the wallet) or a withdrawal (the wallet pays out)."""

    merchant_order_no: Identifier
    account_id: CustomerId = Field(description=_CUSTOMER)
    amount: AmountMinor
    currency: CurrencyCode
    method: Literal["card", "bank", "wallet"]


class MandateRequest(_Body):
    mandate_id: Identifier
    payer_account_id: CustomerId = Field(description=_CUSTOMER)
    currency: CurrencyCode
    amount_max: AmountMinor = Field(description="the most one collection may take")


class AmountRequest(_Body):
    amount: AmountMinor | None = None


class RefundRequest(_Body):
    refund_id: Identifier
    amount: AmountMinor


class ReviewRequest(_Body):
    decision: ReviewDecision
    reviewer: Identifier
    comment: str = Field(default="", max_length=500)


class EndpointRequest(_Body):
    url: AnyHttpUrl = Field(description="http(s) URL receiving POSTed events")


def create_api(settings: Settings) -> FastAPI:
    """The app: a producer to pay.commands and a read model following pay.events; the
    ops console's pages and their read model."""
    view = PaymentsView()
    console = ConsoleView()
    view.observers.append(console.observe)
    state: dict = {"ready_at": 0.0, "ready": None, "ready_lock": asyncio.Lock()}
    ring = KeyRing.from_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        stop = asyncio.Event()
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers(), acks=-1)
        await producer.start()
        state["producer"] = producer
        state["follower"] = asyncio.create_task(
            view.follow(settings.bootstrap_servers(), settings.partitions, stop))
        state["console"] = asyncio.create_task(
            console.follow(settings.bootstrap_servers(), settings.partitions, stop))
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait_for(state["follower"], 5)
            await asyncio.wait_for(state["console"], 5)
            await producer.stop()

    async def publish(cmd: Command, key: str = "") -> None:
        raw = cmd.model_dump_json().encode()
        key = key or getattr(cmd, "merchant_order_no", "") or cmd.subject_id()
        await state["producer"].send_and_wait(t.COMMANDS, key=key.encode(), value=raw)

    async def send_raw(topic: str, key: str, value: bytes) -> None:
        await state["producer"].send_and_wait(topic, key=key.encode(), value=value)

    async def send(topic: str, key: str, body) -> None:
        at = now_ms()
        await state["producer"].send_and_wait(
            topic, key=key.encode(), value=encode(child(f"api-{topic}-{key}-{at}", body, 0, at)))

    app = FastAPI(title="paycore", version="0.1.0", lifespan=lifespan, responses=COMMON)
    install(app)
    caller, merchant, ops = authenticator(ring)
    keys = {"caller": caller, "merchant": merchant, "ops": ops}
    _payment_routes(app, view, publish, keys)
    _follow_up_routes(app, view, publish, keys)
    _product_routes(app, publish, keys)
    _mandate_routes(app, view, publish, keys)
    _account_routes(app, view, keys)
    _webhook_routes(app, view, send, keys, settings)
    _ops_routes(app, view, console, publish, keys)
    install_console(app, view, console, publish, send_raw, keys, settings, _answer)
    _health_routes(app, view, state, settings, console)
    app.state.view = view
    app.state.console = console
    return app


def _wallet(who: Principal, customer: str) -> str:
    """A merchant names its customers' wallets by its own ids; the ledger's wallet id is
    ``<merchant>.<customer>`` (``wallet:<merchant>.<customer>:<CCY>``), and a customer id
    holds no dot, so no merchant can name, move or read another's customer's money."""
    return merchants_customer(who.merchant_id, customer)


def _payer(who: Principal, payer: PayerRequest) -> dict:
    """The command's payer: the customer named as the ledger names it. A dict, so the
    command validates it (a wallet name over the identifier limit is a 422)."""
    fields = payer.model_dump(exclude_none=True)
    if payer.account_id is not None:
        fields["account_id"] = _wallet(who, payer.account_id)
    return fields


def _build(cls, **fields):
    """A domain command from HTTP fields; its validation errors become a precise 422."""
    try:
        return cls(**fields)
    except ValidationError as exc:
        errors = field_errors(exc.errors())
        fields = ", ".join(e["field"] for e in errors)
        raise Problem(422, "invalid_command", f"invalid: {fields}: {errors[0]['message']}",
                      errors) from exc


def _visible(view: PaymentsView, payment_id: str, who: Principal) -> dict | None:
    """The payment if this caller may see it (None alike for absent and not theirs)."""
    row = view.payments.get(payment_id)
    return row if row is not None and who.owns(row["merchant_id"]) else None


def _found(view: PaymentsView, payment_id: str, who: Principal) -> dict:
    row = _visible(view, payment_id, who)
    if row is None:
        raise Problem(404, "payment_not_found", f"payment {payment_id} not found")
    return row


def _mandate(view: PaymentsView, mandate_id: str, who: Principal,
             merchant_id: str | None = None) -> tuple[str, dict]:
    """A mandate's key and row if this caller may see it: a merchant its own, ops any
    merchant's it names. 404 alike for absent and not theirs."""
    owner = merchant_id if who.ops else who.merchant_id
    key = mandate_key_for(owner or "", mandate_id)
    row = view.mandates.get(key)
    if row is None or not owner or (merchant_id and not who.owns(merchant_id)):
        raise Problem(404, "mandate_not_found", f"mandate {mandate_id} not found")
    return key, row


def _answer(view: PaymentsView, row: dict, who: Principal) -> dict:
    """A payment as clients see it: status, the three identifiers, the amounts, history.
    A merchant does not see ops' review notes nor ops' refused commands."""
    authorized = any(h["status"] in _AUTHORIZED for h in row["history"])
    history, rejections = row["history"], view.rejections.get(row["payment_id"], [])
    if not who.ops:
        history = [{**h, "reason": REVIEWED} if h["trigger"] == "review" else h
                   for h in history]
        rejections = [r for r in rejections if r["command_type"] not in OPS_COMMAND_TYPES]
    return {**row, "history": history, "version": len(row["history"]),
            "authorized_minor": row["amount_minor"] if authorized else 0,
            "rejections": rejections}


async def _until(view: PaymentsView, ready, timeout_s: float) -> bool:
    """Wait until ``ready()`` holds or the time is up; whether it holds."""
    deadline = time.monotonic() + timeout_s
    async with view.changed:
        while not ready():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(view.changed.wait(), left)
    return True


def _payment_routes(app: FastAPI, view: PaymentsView, publish, keys: dict) -> None:
    merchant, caller = keys["merchant"], keys["caller"]

    @app.post("/v1/payments", response_model=PaymentCreated,
              status_code=202, responses=responses(401, 403))
    async def create_payment(body: PaymentRequest, idempotency_key: IdempotencyKey,
                             who: Principal = Depends(merchant),
                             wait: float = Query(default=0, ge=0, le=WAIT_S_MAX)):
        """Create a payment. With ``wait`` the answer comes when the payment is final or
        needs an action (capture, review), or when the seconds are up."""
        cmd = _build(Pay, merchant_id=who.merchant_id, idempotency_key=idempotency_key,
                     merchant_order_no=body.merchant_order_no, amount_minor=body.amount,
                     currency=body.currency, method=body.method, capture=body.capture,
                     payer=_payer(who, body.payer),
                     mandate_id=body.mandate_id, split=body.split)
        await publish(cmd, cmd.merchant_order_no)
        payment_id = payment_id_for(cmd.merchant_id, cmd.merchant_order_no)

        def refused() -> dict | None:
            return next((r for r in view.rejections.get(payment_id, ())
                         if r["idempotency_key"] == idempotency_key), None)

        if wait:
            await _until(view, lambda: refused() is not None or (view.payments.get(
                payment_id) or {}).get("status") in _STOP_AT, wait)
        row, rejection = view.payments.get(payment_id), refused()
        status = "rejected" if rejection else row["status"] if row else "accepted"
        return {"payment_id": payment_id, "status": status, "rejection": rejection,
                "payment": _answer(view, row, who) if row else None}

    @app.get("/v1/payments/{payment_id}", response_model=PaymentView,
             responses=responses(401, 404, 409))
    async def get_payment(payment_id: PathId, who: Principal = Depends(caller),
                          min_version: int = Query(default=0, ge=0, le=10_000)):
        """A payment. ``min_version`` (a ``version`` seen before, say from a ``wait``) makes
        this replica catch up to it first, so a read never goes back in time."""
        if min_version:  # absent and not theirs wait alike: the time tells nothing
            await _until(view, lambda: len((_visible(view, payment_id, who) or {
                "history": ()})["history"]) >= min_version, CATCH_UP_S)
            row = _found(view, payment_id, who)
            if len(row["history"]) < min_version:
                raise Problem(409, "version_not_reached",
                              f"this replica has version {len(row['history'])} of the payment, "
                              f"not {min_version}; retry", headers={"Retry-After": "1"})
        return _answer(view, _found(view, payment_id, who), who)

    @app.get("/v1/payments", response_model=PaymentView, responses=responses(401, 404))
    async def find_payment(merchant_order_no: str, who: Principal = Depends(caller),
                           merchant_id: str | None = Query(
                               default=None, description="ops only: whose order")):
        owner = merchant_id if who.ops else who.merchant_id
        payment_id = view.by_order_no.get((owner or "", merchant_order_no))
        if payment_id is None or (merchant_id and not who.owns(merchant_id)):
            raise Problem(404, "payment_not_found", "no payment for that merchant order")
        return _answer(view, _found(view, payment_id, who), who)


def _follow_up_routes(app: FastAPI, view: PaymentsView, publish, keys: dict) -> None:
    merchant = keys["merchant"]
    scoped = responses(401, 403, 404)

    def order_of(payment_id: str, who: Principal) -> dict:
        row = _found(view, payment_id, who)
        return {"merchant_id": row["merchant_id"], "merchant_order_no": row["merchant_order_no"]}

    @app.post("/v1/payments/{payment_id}/capture", response_model=Accepted,
              status_code=202, responses=scoped)
    async def capture(payment_id: PathId, body: AmountRequest, idempotency_key: IdempotencyKey,
                      who: Principal = Depends(merchant)):
        await publish(_build(Capture, **order_of(payment_id, who),
                             idempotency_key=idempotency_key, amount_minor=body.amount))
        return {"payment_id": payment_id, "status": "capture_requested"}

    @app.post("/v1/payments/{payment_id}/void", response_model=Accepted,
              status_code=202, responses=scoped)
    async def void(payment_id: PathId, idempotency_key: IdempotencyKey,
                   who: Principal = Depends(merchant)):
        await publish(_build(Void, **order_of(payment_id, who), idempotency_key=idempotency_key))
        return {"payment_id": payment_id, "status": "void_requested"}

    @app.post("/v1/payments/{payment_id}/revoke", response_model=Accepted,
              status_code=202, responses=scoped)
    async def revoke(payment_id: PathId, idempotency_key: IdempotencyKey,
                     who: Principal = Depends(merchant)):
        await publish(_build(Revoke, **order_of(payment_id, who),
                             idempotency_key=idempotency_key))
        return {"payment_id": payment_id, "status": "revoke_requested"}

    @app.post("/v1/payments/{payment_id}/refunds", response_model=Accepted,
              status_code=202, responses=scoped)
    async def refund(payment_id: PathId, body: RefundRequest, idempotency_key: IdempotencyKey,
                     who: Principal = Depends(merchant)):
        await publish(_build(Refund, **order_of(payment_id, who),
                             idempotency_key=idempotency_key, refund_id=body.refund_id,
                             amount_minor=body.amount))
        return {"payment_id": payment_id, "status": "refund_requested"}


def _product_routes(app: FastAPI, publish, keys: dict) -> None:
    merchant = keys["merchant"]

    async def accepted(cmd) -> dict:
        await publish(cmd, cmd.merchant_order_no)
        return {"payment_id": payment_id_for(cmd.merchant_id, cmd.merchant_order_no),
                "status": "accepted"}

    @app.post("/v1/transfers", response_model=Accepted,
              status_code=202, responses=responses(401, 403))
    async def transfer(body: TransferRequest, idempotency_key: IdempotencyKey,
                       who: Principal = Depends(merchant)):
        """Move money between two wallets (the source's funds are frozen first)."""
        return await accepted(_build(
            Transfer, merchant_id=who.merchant_id, idempotency_key=idempotency_key,
            merchant_order_no=body.merchant_order_no,
            from_account_id=_wallet(who, body.from_account_id),
            to_account_id=_wallet(who, body.to_account_id), amount_minor=body.amount,
            currency=body.currency))

    @app.post("/v1/topups", response_model=Accepted, status_code=202, responses=responses(401, 403))
    async def topup(body: WalletRequest, idempotency_key: IdempotencyKey,
                    who: Principal = Depends(merchant)):
        """Recharge a wallet through a channel."""
        return await accepted(_build(TopUp, merchant_id=who.merchant_id,
                                     idempotency_key=idempotency_key,
                                     **_wallet_fields(who, body)))

    @app.post("/v1/withdrawals", response_model=Accepted,
              status_code=202, responses=responses(401, 403))
    async def withdrawal(body: WalletRequest, idempotency_key: IdempotencyKey,
                         who: Principal = Depends(merchant)):
        """Pay out of a wallet through a channel (frozen first, debited on success)."""
        return await accepted(_build(Withdraw, merchant_id=who.merchant_id,
                                     idempotency_key=idempotency_key,
                                     **_wallet_fields(who, body)))


def _wallet_fields(who: Principal, body: WalletRequest) -> dict:
    return {"merchant_order_no": body.merchant_order_no,
            "account_id": _wallet(who, body.account_id),
            "amount_minor": body.amount, "currency": body.currency, "method": body.method}


def _mandate_routes(app: FastAPI, view: PaymentsView, publish, keys: dict) -> None:
    merchant, caller = keys["merchant"], keys["caller"]

    @app.post("/v1/mandates", response_model=MandateAccepted,
              status_code=202, responses=responses(401, 403))
    async def sign_mandate(body: MandateRequest, idempotency_key: IdempotencyKey,
                           who: Principal = Depends(merchant)):
        """The payer signed a collection mandate: payments with method ``mandate`` may then
        collect up to ``amount_max`` each from the payer's wallet."""
        cmd = _build(SignMandate, merchant_id=who.merchant_id, idempotency_key=idempotency_key,
                     mandate_id=body.mandate_id,
                     payer_account_id=_wallet(who, body.payer_account_id),
                     currency=body.currency, amount_minor_max=body.amount_max)
        await publish(cmd)
        return {"mandate_id": body.mandate_id, "status": "sign_requested"}

    @app.delete("/v1/mandates/{mandate_id}", response_model=MandateAccepted,
                status_code=202, responses=responses(401, 403, 404))
    async def terminate_mandate(mandate_id: PathId, idempotency_key: IdempotencyKey,
                                who: Principal = Depends(merchant)):
        _mandate(view, mandate_id, who)
        await publish(_build(TerminateMandate, merchant_id=who.merchant_id,
                             idempotency_key=idempotency_key, mandate_id=mandate_id))
        return {"mandate_id": mandate_id, "status": "terminate_requested"}

    @app.get("/v1/mandates/{mandate_id}", response_model=MandateView, responses=responses(401, 404))
    async def get_mandate(mandate_id: PathId, who: Principal = Depends(caller),
                          merchant_id: str | None = Query(
                              default=None, description="ops only: whose mandate")):
        key, row = _mandate(view, mandate_id, who, merchant_id)
        return {**row, "rejections": view.rejections.get(key, [])}


def _account_routes(app: FastAPI, view: PaymentsView, keys: dict) -> None:
    caller = keys["caller"]

    def visible(account_id: str, who: Principal) -> None:
        if view.balance(account_id) is None or not view.may_see(account_id, who):
            raise Problem(404, "account_not_found", f"account {account_id} not found")

    @app.get("/v1/accounts/{account_id}/balance", response_model=Balance,
             responses=responses(401, 404))
    async def balance(account_id: AccountPath, who: Principal = Depends(caller)):
        """A merchant sees its own accounts and its customers' wallets."""
        visible(account_id, who)
        return view.balance(account_id)

    @app.get("/v1/accounts/{account_id}/entries", response_model=Entries,
             responses=responses(401, 404))
    async def entries(account_id: AccountPath, who: Principal = Depends(caller),
                      limit: int = Query(default=100, ge=1, le=1_000)):
        """The latest legs, newest first."""
        visible(account_id, who)
        legs = list(reversed(view.journal.get(account_id, ())))[:limit]
        return {"account_id": account_id, "entries": [
            {"entry_id": leg.entry_id, "posting_id": leg.posting_id,
             "payment_id": leg.payment_id, "amount_minor": leg.amount_minor,
             "currency": leg.currency, "row": leg.account_id,
             "row_total_minor": leg.total_minor} for leg in legs]}


def _webhook_routes(app: FastAPI, view: PaymentsView, send, keys: dict,
                    settings: Settings) -> None:
    merchant, caller = keys["merchant"], keys["caller"]

    @app.put("/v1/webhooks/endpoint", response_model=EndpointCreated,
             responses=responses(401, 403))
    async def set_endpoint(body: EndpointRequest, who: Principal = Depends(merchant)):
        """Register (or replace) where this merchant's events go: an https URL whose host
        is public. The answer carries the signing secret, once: keep it to verify
        ``Paycore-Signature``. Events from the moment the workers read it are sent."""
        refused = await refusal(str(body.url), settings.webhook_allow_private)
        if refused:
            raise Problem(422, "url_refused", f"url: {refused}",
                          [{"field": "body.url", "message": refused}])
        endpoint = Endpoint(merchant_id=who.merchant_id, url=str(body.url),
                            secret=f"whsec_{secrets.token_urlsafe(32)}", version=now_ms(),
                            at_ms=now_ms())
        return {**await put_endpoint(endpoint), "secret": endpoint.secret}

    async def put_endpoint(endpoint: Endpoint) -> dict:
        await send(t.WEBHOOK_ENDPOINTS, endpoint.merchant_id, endpoint)
        ok = await _until(view, lambda: view.endpoint_is(endpoint.merchant_id,
                                                         endpoint.version), CATCH_UP_S)
        return {"url": endpoint.url, "version": endpoint.version, "active": ok}

    @app.get("/v1/webhooks/endpoint", response_model=EndpointView,
             responses=responses(401, 403, 404))
    async def get_endpoint(who: Principal = Depends(merchant)):
        found = view.endpoints.get(who.merchant_id)
        if found is None or not found.url:
            raise Problem(404, "endpoint_not_found", "no webhook endpoint registered")
        return {"url": found.url, "version": found.version}

    @app.delete("/v1/webhooks/endpoint", status_code=204, responses=responses(401, 403))
    async def delete_endpoint(who: Principal = Depends(merchant)):
        """Stop sending; events not yet delivered keep retrying until the retry period ends
        (register again in time and they arrive)."""
        await put_endpoint(Endpoint(merchant_id=who.merchant_id, url="", secret="",
                                    version=now_ms(), at_ms=now_ms()))
        return Response(status_code=204)

    @app.get("/v1/payments/{payment_id}/webhooks", response_model=Deliveries,
             responses=responses(401, 404))
    async def deliveries(payment_id: PathId, who: Principal = Depends(caller)):
        """Each event's delivery: state (retrying, delivered, failed), attempts, last
        answer, next attempt."""
        row = _found(view, payment_id, who)
        return {"payment_id": payment_id, **_delivery_log(view, payment_id, row)}

    @app.get("/v1/mandates/{mandate_id}/webhooks", response_model=MandateDeliveries,
             responses=responses(401, 404))
    async def mandate_deliveries(mandate_id: PathId, who: Principal = Depends(caller),
                                 merchant_id: str | None = Query(
                                     default=None, description="ops only: whose mandate")):
        """The mandate's events' delivery, as for a payment."""
        key, row = _mandate(view, mandate_id, who, merchant_id)
        return {"mandate_id": mandate_id, **_delivery_log(view, key, row)}


def _delivery_log(view: PaymentsView, queue: str, row: dict) -> dict:
    """Each attempted event's latest state, and the events since the endpoint was
    registered that no attempt has reached yet."""
    states = view.deliveries.get(queue, {})
    endpoint = view.endpoints.get(row["merchant_id"])
    since = endpoint.at_ms if endpoint is not None and endpoint.url else None
    events = [(h["event_id"], h["at_ms"]) for h in row["history"]] + [
        (r["event_id"], r["at_ms"]) for r in view.rejections.get(queue, [])
        if r["command_type"] not in OPS_COMMAND_TYPES]
    return {"deliveries": [d.model_dump(mode="json") for d in states.values()],
            "pending": [] if since is None else [
                e for e, at in events if e not in states and at >= since]}


def _ops_routes(app: FastAPI, view: PaymentsView, console: ConsoleView, publish,
                keys: dict) -> None:
    ops = keys["ops"]
    only = responses(401, 403)

    @app.get("/v1/ops/reviews", response_model=Reviews, responses=only)
    async def reviews(who: Principal = Depends(ops)):
        """Payments held for a risk review, oldest first, with the rules that fired."""
        rows = sorted((view.payments[p] for p in view.in_review),
                      key=lambda r: r["history"][-1]["at_ms"])
        return {"reviews": [_answer(view, r, who) for r in rows]}

    @app.post("/v1/ops/payments/{payment_id}/review", response_model=Accepted, status_code=202,
              responses=responses(401, 403, 404))
    async def review(payment_id: PathId, body: ReviewRequest, idempotency_key: IdempotencyKey,
                     who: Principal = Depends(ops)):
        """Approve or reject a payment held in ``risk_review`` (a command, audited in the
        payment's history with the reviewer and comment)."""
        row = _found(view, payment_id, who)
        if len(idempotency_key) > OPS_KEY_LENGTH_MAX:
            raise Problem(422, "invalid_request", "Idempotency-Key: at most 60 characters "
                          "for ops", [{"field": "header.Idempotency-Key",
                                       "message": "at most 60 characters for ops"}])
        await publish(_build(Review, merchant_id=row["merchant_id"],
                             merchant_order_no=row["merchant_order_no"],
                             idempotency_key=f"ops-{idempotency_key}", decision=body.decision,
                             reviewer=body.reviewer, comment=body.comment))
        return {"payment_id": payment_id, "status": "review_requested"}

    @app.get("/v1/ops/recon/report", responses=only)
    async def recon_report(who: Principal = Depends(ops)):
        """The recon partitions' latest tallies summed, and the exceptions kept in memory
        (``paycore.recon_report.build``); open items age against today's UTC day."""
        return view.recon.report(datetime.now(timezone.utc).date())

    @app.get("/v1/ops/recon/exceptions", response_model=ReconExceptions, responses=only)
    async def recon_exceptions(who: Principal = Depends(ops), kind: ExceptionKind | None = None,
                               channel: str | None = None,
                               state: Literal["open", "resolving", "resolved",
                                              "resolved_by_rule"] | None = None,
                               limit: int = Query(default=100, ge=1, le=1_000)):
        """Reconciliation exceptions, newest first, with every record involved, their age,
        state (open, resolving, resolved by ops, resolved by rule) and allowed actions."""
        at = now_ms()
        found = [e for e in reversed(view.recon.exceptions.values())
                 if (kind is None or e.kind == kind) and (channel is None or e.channel == channel)
                 and (state is None or exception_state(view, console, e)["state"] == state)]
        return {"exceptions": [exception_view(view, console, e, at) for e in found[:limit]],
                "total": len(found)}

    @app.get("/v1/ops/ledger/audit", response_model=AuditView, responses=responses(401, 403, 503))
    async def ledger_audit(who: Principal = Depends(ops)):
        """The ledger auditor's latest status: checks run, violations (must be none)."""
        status = view.audit
        if status is None:
            raise Problem(503, "not_ready", "the auditor has not reported yet")
        return {"ok": status.clean, "age_ms": max(0, now_ms() - status.at_ms),
                **status.model_dump(mode="json")}


def _health_routes(app: FastAPI, view: PaymentsView, state: dict, settings: Settings,
                   console: ConsoleView) -> None:
    @app.get("/healthz", response_model=Health)
    async def healthz():
        return {"ok": True}

    @app.get("/readyz", response_model=Ready, responses=responses(503))
    async def readyz():
        """Ready when the read model is current, the broker answers and a worker holds the
        partitions (its consumer group has members). Checked at most once a second."""
        if state["follower"].done():
            raise Problem(503, "not_ready", "read model stopped; see the API log")
        if not view.caught_up.is_set():
            raise Problem(503, "not_ready", "read model still catching up")
        if state["console"].done():
            raise Problem(503, "not_ready", "console read model stopped; see the API log")
        if not console.caught_up.is_set():
            raise Problem(503, "not_ready", "console read model still catching up")
        async with state["ready_lock"]:  # one broker check at a time, shared
            if time.monotonic() - state["ready_at"] > READY_CACHE_S:
                state["ready"] = await _workers_assigned(settings)
                state["ready_at"] = time.monotonic()
        if state["ready"] is not None:
            raise Problem(503, "not_ready", state["ready"])
        return {"ok": True, "payments": len(view.payments)}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _workers_assigned(settings: Settings) -> str | None:
    """None when the broker answers and the workers' group has members; else why not."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers(),
                                request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), 3)
        groups = await asyncio.wait_for(admin.describe_consumer_groups([group_of(settings)]), 3)
    except Exception as exc:  # any failure here means: not ready, and why
        return f"broker not reachable: {type(exc).__name__}"
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    members = _members(groups)
    return None if members else f"no worker in consumer group {group_of(settings)}"


def _members(groups) -> int:
    """Members of the described group (aiokafka answers a DescribeGroupsResponse)."""
    count = 0
    for response in groups:
        for group in getattr(response, "groups", ()):
            members = group[5] if len(group) > 5 else ()
            count += len(members)
    return count
