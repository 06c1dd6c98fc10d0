"""Hostile HTTP: what a careless or malicious client sends that test_api.py and the
schemathesis run (test_openapi_fuzz.py) do not: merchants whose ids are prefixes of each
other's, raw HTTP framing, odd JSON, malformed keys and ids. Each answer is a precise 4xx
problem document and changes nothing."""

from __future__ import annotations

import time
import uuid

import pytest

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


def _poll(get, want_status: int, timeout_s: float = 20, until=lambda _body: True) -> dict:
    deadline = time.monotonic() + timeout_s
    response = get()
    while not (response.status_code == want_status and until(response.json())) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
        response = get()
    assert response.status_code == want_status, response.text
    return response.json()


def _problem(response, status: int, code: str) -> dict:
    """The answer is a problem document with this status and code (and says it is one)."""
    assert (response.status_code, response.headers.get("content-type")) == (status, PROBLEM), \
        response.text
    body = response.json()
    assert (body["status"], body["code"], body["type"]) == (
        status, code, f"urn:paycore:problem:{code}"), body
    return body


def _topped_up(shop, customer: str, amount: int = 5_000) -> str:
    """Top ``customer``'s wallet up by card; the ledger's wallet id once it shows."""
    order = f"tu-{uuid.uuid4().hex[:8]}"
    answer = shop.client.post("/v1/topups", json={
        "merchant_order_no": order, "account_id": customer, "amount": amount,
        "currency": "USD", "method": "card"}, headers={"Idempotency-Key": order})
    assert answer.status_code == 202, answer.text
    wallet = f"wallet:{shop.id}.{customer}:USD"
    _poll(lambda: shop.client.get(f"/v1/accounts/{wallet}/balance"), 200)
    return wallet


class TestPrefixMerchants:
    """``m-acme`` and ``m-acme.eu``: the shorter id, plus a dot, starts the longer one's
    customers' wallet names (``wallet:m-acme.eu.<customer>:USD``)."""

    def test_a_prefix_merchant_cannot_read_or_move_the_longer_ones_customers(
            self, prefix_shops):
        acme, acme_eu = prefix_shops
        bob = f"bob-{uuid.uuid4().hex[:8]}"
        wallet = _topped_up(acme_eu, bob)
        path = f"/v1/accounts/{wallet}"
        before = _poll(lambda: acme_eu.client.get(f"{path}/balance"), 200,
                       until=lambda b: b["total_minor"] > 0)
        disguised, tag = f"eu.{bob}", uuid.uuid4().hex[:8]

        reads = {"balance": acme.client.get(f"{path}/balance"),
                 "entries": acme.client.get(f"{path}/entries")}
        moves = {
            "transfer": acme.client.post("/v1/transfers", json={
                "merchant_order_no": f"tr-{tag}", "from_account_id": disguised,
                "to_account_id": f"mule-{tag}", "amount": 1_000, "currency": "USD"},
                headers={"Idempotency-Key": f"tr-{tag}"}),
            "withdrawal": acme.client.post("/v1/withdrawals", json={
                "merchant_order_no": f"wd-{tag}", "account_id": disguised, "amount": 1_000,
                "currency": "USD", "method": "bank"}, headers={"Idempotency-Key": f"wd-{tag}"}),
            "topup": acme.client.post("/v1/topups", json={
                "merchant_order_no": f"tu-{tag}", "account_id": disguised, "amount": 1_000,
                "currency": "USD", "method": "card"}, headers={"Idempotency-Key": f"tu-{tag}"}),
            "balance_pay": acme.client.post("/v1/payments", json={
                "merchant_order_no": f"bp-{tag}", "amount": 1_000, "currency": "USD",
                "method": "balance", "payer": {"account_id": disguised}},
                headers={"Idempotency-Key": f"bp-{tag}"}),
            "mandate": acme.client.post("/v1/mandates", json={
                "mandate_id": f"md-{tag}", "payer_account_id": disguised, "currency": "USD",
                "amount_max": 1_000}, headers={"Idempotency-Key": f"md-{tag}"}),
        }

        for answer in reads.values():
            _problem(answer, 404, "account_not_found")
        fields = {"transfer": "body.from_account_id", "withdrawal": "body.account_id",
                  "topup": "body.account_id", "balance_pay": "body.payer.account_id",
                  "mandate": "body.payer_account_id"}
        for name, answer in moves.items():
            problem = _problem(answer, 422, "invalid_request")
            assert [e["field"] for e in problem["errors"]] == [fields[name]], name
        time.sleep(1.0)  # had a command gone out, the wallet would have moved by now
        after = acme_eu.client.get(f"{path}/balance").json()
        assert after == before
        assert acme.client.get(f"/v1/mandates/md-{tag}").status_code == 404
