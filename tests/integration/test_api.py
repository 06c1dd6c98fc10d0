"""The HTTP API over real HTTP: commands in through pay.commands, reads from pay.events."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration



class TestPayments:
    def test_create_and_wait_returns_final_status(self, api, merchant):
        body = {"merchant_id": merchant, "merchant_order_no": "http-1", "amount": 1_999,
                "currency": "EUR", "method": "card"}

        response = api.post("/v1/payments?wait=20", json=body,
                            headers={"Idempotency-Key": "idem-1"})

        assert response.status_code == 202, response.text
        assert response.json()["status"] == "succeeded"
        payment_id = response.json()["payment_id"]
        fetched = api.get(f"/v1/payments/{payment_id}").json()
        assert [h["status"] for h in fetched["history"]] == ["created", "processing",
                                                            "succeeded"]
        assert fetched["channel_serial"]

    def test_wait_stops_at_risk_review_with_the_rules_that_fired(self, api, merchant):
        body = {"merchant_id": merchant, "merchant_order_no": "http-review",
                "amount": 6_000_000, "currency": "USD", "method": "card",
                "payer": {"customer_id": f"c-{merchant}", "ip": "203.0.113.5"}}

        response = api.post("/v1/payments?wait=20", json=body,
                            headers={"Idempotency-Key": "idem-review"})

        assert response.status_code == 202, response.text
        assert response.json()["status"] == "risk_review"
        fetched = api.get(f"/v1/payments/{response.json()['payment_id']}").json()
        assert "card-usd-large +50" in fetched["history"][-1]["reason"]

    def test_float_amount_rejected_with_field_named(self, api, merchant):
        body = {"merchant_id": merchant, "merchant_order_no": "http-2", "amount": 10.5,
                "currency": "EUR", "method": "card"}

        response = api.post("/v1/payments", json=body, headers={"Idempotency-Key": "k"})

        assert response.status_code == 422
        assert "amount" in response.text

    def test_missing_idempotency_key_rejected(self, api, merchant):
        body = {"merchant_id": merchant, "merchant_order_no": "http-3", "amount": 100,
                "currency": "EUR", "method": "card"}

        response = api.post("/v1/payments", json=body)

        assert response.status_code == 422
        assert "Idempotency-Key" in response.text

    def test_unknown_payment_is_404(self, api):
        assert api.get("/v1/payments/pay_nope").status_code == 404

    def test_errors_are_problem_documents_with_a_stable_code(self, api, merchant):
        missing = api.get("/v1/payments/pay_nope")
        body = {"merchant_id": merchant, "merchant_order_no": "http-p", "amount": 10.5,
                "currency": "EUR", "method": "card"}
        invalid = api.post("/v1/payments", json=body, headers={"Idempotency-Key": "k"})
        no_route = api.get("/v1/nothing-here")

        for response in (missing, invalid, no_route):
            assert response.headers["content-type"] == "application/problem+json"
        assert missing.json() == {
            "type": "urn:paycore:problem:payment_not_found", "title": "Not found",
            "status": 404, "detail": "payment pay_nope not found",
            "instance": "/v1/payments/pay_nope", "code": "payment_not_found"}
        problem = invalid.json()
        assert (problem["status"], problem["code"]) == (422, "invalid_request")
        assert [e["field"] for e in problem["errors"]] == ["body.amount"]
        assert no_route.json()["code"] == "not_found"

    def test_a_method_not_allowed_says_which_are(self, api):
        response = api.request("DELETE", "/v1/recon/report")

        assert response.status_code == 405 and response.headers["allow"] == "GET"
        assert response.json()["code"] == "method_not_allowed"

    def test_the_schema_says_which_currencies_and_ids_are_valid(self, api, merchant):
        body = {"merchant_id": merchant, "merchant_order_no": "bad order", "amount": 100,
                "currency": "ZZZ", "method": "card"}

        response = api.post("/v1/payments", json=body, headers={"Idempotency-Key": "z"})
        schema = api.get("/openapi.json").json()["components"]["schemas"]["PaymentRequest"]

        assert [e["field"] for e in response.json()["errors"]] == [
            "body.merchant_order_no", "body.currency"]
        assert "EUR" in schema["properties"]["currency"]["enum"]
        assert schema["properties"]["merchant_order_no"]["pattern"]

    def test_the_openapi_document_declares_the_problem_answers(self, api):
        paths = api.get("/openapi.json").json()["paths"]

        answers = paths["/v1/payments/{payment_id}"]["get"]["responses"]
        created = paths["/v1/payments"]["post"]["responses"]

        for status in ("404", "413", "422", "500"):
            assert "application/problem+json" in answers[status]["content"], status
        assert {"202", "413", "422"} <= set(created)

    def test_a_body_that_is_not_json_is_a_malformed_body_problem(self, api):
        response = api.post("/v1/payments", content=b"\xff{not json",
                            headers={"Idempotency-Key": "m", "Content-Type": "application/json"})

        assert (response.status_code, response.json()["code"]) == (400, "malformed_body")

    def test_a_body_over_the_limit_is_refused_before_it_is_read(self, api, merchant):
        body = {"merchant_id": merchant, "merchant_order_no": "http-big", "amount": 100,
                "currency": "EUR", "method": "card",
                "payer": {"customer_id": "c" * 70_000}}

        response = api.post("/v1/payments", json=body, headers={"Idempotency-Key": "big"})

        assert response.status_code == 413
        assert response.json()["code"] == "body_too_large"

    def test_manual_capture_over_http(self, api, merchant):
        body = {"merchant_id": merchant, "merchant_order_no": "http-4", "amount": 5_000,
                "currency": "USD", "method": "card", "capture": "manual"}
        created = api.post("/v1/payments?wait=20", json=body,
                           headers={"Idempotency-Key": "auth"}).json()

        api.post(f"/v1/payments/{created['payment_id']}/capture", json={"amount": 3_000},
                 headers={"Idempotency-Key": "cap-1"})
        after = _wait_status(api, created["payment_id"], "authorized", captured=3_000)

        assert created["status"] == "authorized"
        assert after["captured_minor"] == 3_000


    def test_revoke_over_http_cancels_unsettled_sale(self, api, merchant):
        body = {"merchant_id": merchant, "merchant_order_no": "http-5", "amount": 4_000,
                "currency": "USD", "method": "card"}
        created = api.post("/v1/payments?wait=20", json=body,
                           headers={"Idempotency-Key": "sale"}).json()

        answer = api.post(f"/v1/payments/{created['payment_id']}/revoke",
                          headers={"Idempotency-Key": "revoke"})
        after = _wait_status(api, created["payment_id"], "canceled", captured=4_000)

        assert answer.status_code == 202
        assert [h["status"] for h in after["history"]][-2:] == ["succeeded", "canceled"]

    def test_split_payment_over_http(self, api, merchant):
        body = {"merchant_id": merchant, "merchant_order_no": "http-6", "amount": 1_000,
                "currency": "USD", "method": "card",
                "split": [{"merchant_id": merchant, "amount_minor": 600},
                          {"merchant_id": f"{merchant}-b", "amount_minor": 300}]}

        response = api.post("/v1/payments", json=body, headers={"Idempotency-Key": "split"})

        assert response.status_code == 422
        assert "split" in response.text and "900" in response.text


class TestMandates:
    def test_mandate_status_answered_from_state(self, api, producer, merchant):
        import json

        from streams import topics as t

        sign = {"type": "sign_mandate", "merchant_id": merchant, "idempotency_key": "s-1",
                "mandate_id": "md-1", "payer_account_id": "iban-9", "currency": "EUR",
                "amount_minor_max": 9_000}
        producer.send(t.COMMANDS, key=b"md-1", value=json.dumps(sign).encode())
        producer.flush()

        row = _poll(lambda: api.get(f"/v1/mandates/{merchant}/md-1"), 200)

        assert row["status"] == "active"
        assert (row["payer_account_id"], row["amount_minor_max"]) == ("iban-9", 9_000)
        assert api.get(f"/v1/mandates/{merchant}/md-none").status_code == 404


def _poll(get, want_status: int, timeout_s: float = 20) -> dict:
    import time

    deadline = time.monotonic() + timeout_s
    response = get()
    while response.status_code != want_status and time.monotonic() < deadline:
        time.sleep(0.1)
        response = get()
    assert response.status_code == want_status, response.text
    return response.json()


def _wait_status(api, payment_id: str, status: str, captured: int, timeout_s: float = 20):
    import time

    deadline = time.monotonic() + timeout_s
    row = {}
    while time.monotonic() < deadline:
        row = api.get(f"/v1/payments/{payment_id}").json()
        if row["status"] == status and row["captured_minor"] == captured:
            return row
        time.sleep(0.1)
    return row
