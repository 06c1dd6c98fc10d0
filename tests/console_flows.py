"""What the ops console's tests set up on the shared stack: a sale, a payment held for risk
review, a duplicate settlement (a reconciliation exception), a dead-lettered command."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from domain.events import SettlementReported
from domain.ids import payment_id_for
from streams import topics as t
from streams.envelope import child, encode

AMOUNT, FEE = 10_000, 200
"""A card sale of 100.00 USD and the card acquirer's fee for it (1.8% + 0.20)."""


def poll(get, until, timeout_s: float = 25.0, every_s: float = 0.2):
    """``get()`` until ``until(answer)`` holds or the time is up; the last answer."""
    deadline = time.monotonic() + timeout_s
    answer = get()
    while not until(answer) and time.monotonic() < deadline:
        time.sleep(every_s)
        answer = get()
    return answer


def sale(shop, order_no: str, amount: int = AMOUNT, **extra) -> dict:
    body = {"merchant_order_no": order_no, "amount": amount, "currency": "USD",
            "method": "card", **extra}
    response = shop.client.post("/v1/payments?wait=20", json=body,
                                headers={"Idempotency-Key": f"idem-{order_no}"})
    assert response.status_code == 202, response.text
    return response.json()


def held_for_review(shop, order_no: str) -> dict:
    held = sale(shop, order_no, amount=6_000_000,
                payer={"customer_id": f"c-{shop.id}-{order_no}", "ip": "203.0.113.5"})
    assert held["status"] == "risk_review", held
    return held


def settle(producer, payment: dict, line_id: str) -> None:
    today = datetime.now(timezone.utc).date().isoformat()
    line = SettlementReported(
        line_id=line_id, channel=payment["payment"]["channel"],
        payment_id=payment["payment_id"], channel_serial=payment["payment"]["channel_serial"],
        amount_minor=AMOUNT, currency="USD", settled_on=today, period=today, fee_minor=FEE)
    producer.send(t.SETTLEMENTS, key=payment["payment_id"].encode(),
                  value=encode(child(f"file-{line_id}", line, 0, 0)))
    producer.flush()


def duplicate_settlement(shop, api, producer, order_no: str) -> tuple[dict, dict]:
    """A sale the channel settles twice: (the payment, its duplicate_settlement exception)."""
    paid = sale(shop, order_no)
    assert paid["status"] == "succeeded", paid
    settle(producer, paid, f"{order_no}-line-1")
    settled = f"/v1/accounts/merchant:{shop.id}:settled:USD/balance"
    poll(lambda: api.get(settled), lambda r: r.status_code == 200)
    settle(producer, paid, f"{order_no}-line-2")

    def mine(answer) -> list[dict]:
        return [e for e in answer.json()["exceptions"] if e["payment_id"] == paid["payment_id"]]

    found = poll(lambda: api.get("/v1/ops/recon/exceptions",
                                 params={"kind": "duplicate_settlement", "limit": 1000}),
                 lambda r: bool(mine(r)))
    assert mine(found), found.text[-2000:]
    return paid, mine(found)[0]


def dead_lettered(producer, api, merchant_id: str, order_no: str,
                  key: bytes | None = None) -> dict:
    """A pay command with a float amount, keyed by its order number unless ``key`` is given:
    intake parks it. Its dead letter, once listed."""
    command = {"type": "pay", "merchant_id": merchant_id, "idempotency_key": f"k-{order_no}",
               "merchant_order_no": order_no, "amount_minor": 10.5, "currency": "USD",
               "method": "card"}
    producer.send(t.COMMANDS, key=key or order_no.encode(), value=json.dumps(command).encode())
    producer.flush()
    payment_id = payment_id_for(merchant_id, order_no)

    def mine(answer) -> list[dict]:
        return [d for d in answer.json()["dead_letters"] if d["payment_id"] == payment_id]

    found = poll(lambda: api.get("/v1/ops/deadletters", params={"stage": "intake",
                                                                 "limit": 1000}),
                 lambda r: bool(mine(r)))
    assert mine(found), found.text[-2000:]
    return mine(found)[0]
