"""The HTTP API over real HTTP: commands in through pay.commands, reads from pay.events;
API keys, merchant scoping, the ops routes."""

from __future__ import annotations

import time

import pytest
from helpers import poll_status

pytestmark = pytest.mark.integration



class TestPayments:
    def test_create_and_wait_returns_final_status(self, shop):
        api = shop.client
        body = {"merchant_order_no": "http-1", "amount": 1_999, "currency": "EUR",
                "method": "card"}

        response = api.post("/v1/payments?wait=20", json=body,
                            headers={"Idempotency-Key": "idem-1"})

        assert response.status_code == 202, response.text
        assert response.json()["status"] == "succeeded"
        payment_id = response.json()["payment_id"]
        fetched = api.get(f"/v1/payments/{payment_id}").json()
        assert [h["status"] for h in fetched["history"]] == ["created", "processing",
                                                            "succeeded"]
        assert fetched["channel_serial"] and fetched["merchant_order_no"] == "http-1"
        assert (fetched["authorized_minor"], fetched["captured_minor"],
                fetched["refunded_minor"]) == (1_999, 1_999, 0)
        assert fetched["version"] == 3

    def test_wait_stops_at_risk_review_with_the_rules_that_fired(self, shop):
        api = shop.client
        body = {"merchant_order_no": "http-review",
                "amount": 6_000_000, "currency": "USD", "method": "card",
                "payer": {"customer_id": f"c-{shop.id}", "ip": "203.0.113.5"}}

        response = api.post("/v1/payments?wait=20", json=body,
                            headers={"Idempotency-Key": "idem-review"})

        assert response.status_code == 202, response.text
        assert response.json()["status"] == "risk_review"
        fetched = api.get(f"/v1/payments/{response.json()['payment_id']}").json()
        assert "card-usd-large +50" in fetched["history"][-1]["reason"]

    def test_float_amount_rejected_with_field_named(self, shop):
        api = shop.client
        body = {"merchant_order_no": "http-2", "amount": 10.5,
                "currency": "EUR", "method": "card"}

        response = api.post("/v1/payments", json=body, headers={"Idempotency-Key": "k"})

        assert response.status_code == 422
        assert "amount" in response.text

    def test_missing_idempotency_key_rejected(self, shop):
        api = shop.client
        body = {"merchant_order_no": "http-3", "amount": 100,
                "currency": "EUR", "method": "card"}

        response = api.post("/v1/payments", json=body)

        assert response.status_code == 422
        assert "Idempotency-Key" in response.text

    def test_unknown_payment_is_404(self, api):
        assert api.get("/v1/payments/pay_nope").status_code == 404

    def test_errors_are_problem_documents_with_a_stable_code(self, shop):
        api = shop.client
        missing = api.get("/v1/payments/pay_nope")
        body = {"merchant_order_no": "http-p", "amount": 10.5,
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
        response = api.request("PATCH", "/v1/webhooks/endpoint")

        assert response.status_code == 405
        assert response.headers["allow"] == "DELETE, GET, PUT"
        assert response.json()["code"] == "method_not_allowed"

    def test_the_schema_says_which_currencies_and_ids_are_valid(self, shop):
        api = shop.client
        body = {"merchant_order_no": "bad order", "amount": 100,
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

        for status in ("401", "404", "413", "422", "500"):
            assert "application/problem+json" in answers[status]["content"], status
        assert {"202", "401", "403", "413", "422"} <= set(created)

    def test_a_body_that_is_not_json_is_a_malformed_body_problem(self, shop):
        api = shop.client
        response = api.post("/v1/payments", content=b"\xff{not json",
                            headers={"Idempotency-Key": "m", "Content-Type": "application/json"})

        assert (response.status_code, response.json()["code"]) == (400, "malformed_body")

    def test_a_body_over_the_limit_is_refused_before_it_is_read(self, shop):
        api = shop.client
        body = {"merchant_order_no": "http-big", "amount": 100,
                "currency": "EUR", "method": "card",
                "payer": {"customer_id": "c" * 70_000}}

        response = api.post("/v1/payments", json=body, headers={"Idempotency-Key": "big"})

        assert response.status_code == 413
        assert response.json()["code"] == "body_too_large"

    def test_manual_capture_over_http(self, shop):
        api = shop.client
        body = {"merchant_order_no": "http-4", "amount": 5_000,
                "currency": "USD", "method": "card", "capture": "manual"}
        created = api.post("/v1/payments?wait=20", json=body,
                           headers={"Idempotency-Key": "auth"}).json()

        api.post(f"/v1/payments/{created['payment_id']}/capture", json={"amount": 3_000},
                 headers={"Idempotency-Key": "cap-1"})
        after = _wait_status(api, created["payment_id"], "authorized", captured=3_000)

        assert created["status"] == "authorized"
        assert after["captured_minor"] == 3_000


    def test_revoke_over_http_cancels_unsettled_sale(self, shop):
        api = shop.client
        body = {"merchant_order_no": "http-5", "amount": 4_000,
                "currency": "USD", "method": "card"}
        created = api.post("/v1/payments?wait=20", json=body,
                           headers={"Idempotency-Key": "sale"}).json()

        answer = api.post(f"/v1/payments/{created['payment_id']}/revoke",
                          headers={"Idempotency-Key": "revoke"})
        after = _wait_status(api, created["payment_id"], "canceled", captured=4_000)

        assert answer.status_code == 202
        assert [h["status"] for h in after["history"]][-2:] == ["succeeded", "canceled"]

    def test_split_payment_over_http(self, shop):
        api = shop.client
        body = {"merchant_order_no": "http-6", "amount": 1_000,
                "currency": "USD", "method": "card",
                "split": [{"merchant_id": shop.id, "amount_minor": 600},
                          {"merchant_id": f"{shop.id}-b", "amount_minor": 300}]}

        response = api.post("/v1/payments", json=body, headers={"Idempotency-Key": "split"})

        assert response.status_code == 422
        assert "split" in response.text and "900" in response.text


def _sale(api, order_no: str, amount: int = 2_500, wait: int = 20, **extra) -> dict:
    body = {"merchant_order_no": order_no, "amount": amount, "currency": "USD",
            "method": "card", **extra}
    response = api.post(f"/v1/payments?wait={wait}", json=body,
                        headers={"Idempotency-Key": f"idem-{order_no}"})
    assert response.status_code == 202, response.text
    return response.json()


class TestReadAfterWait:
    def test_a_version_seen_is_never_read_older(self, shop):
        created = _sale(shop.client, "raw-1")
        version = created["payment"]["version"]

        fetched = shop.client.get(f"/v1/payments/{created['payment_id']}",
                                  params={"min_version": version})

        assert fetched.status_code == 200
        assert fetched.json()["version"] >= version
        assert fetched.json()["status"] == created["status"] == "succeeded"

    def test_a_version_not_reached_answers_retry_later(self, shop):
        created = _sale(shop.client, "raw-2")

        ahead = shop.client.get(f"/v1/payments/{created['payment_id']}",
                                params={"min_version": 99})

        assert ahead.status_code == 409 and ahead.headers["retry-after"] == "1"
        assert ahead.json()["code"] == "version_not_reached"


class TestProducts:
    def test_topup_transfer_and_withdrawal_over_http(self, shop, other_shop):
        api = shop.client
        alice, bob = f"alice-{shop.id}", f"bob-{shop.id}"

        topup = api.post("/v1/topups", json={
            "merchant_order_no": "tu-1", "account_id": alice, "amount": 10_000,
            "currency": "USD", "method": "card"}, headers={"Idempotency-Key": "tu-1"})
        _wait_status(api, topup.json()["payment_id"], "succeeded", captured=10_000)
        transfer = api.post("/v1/transfers", json={
            "merchant_order_no": "tr-1", "from_account_id": alice, "to_account_id": bob,
            "amount": 4_000, "currency": "USD"}, headers={"Idempotency-Key": "tr-1"})
        _wait_status(api, transfer.json()["payment_id"], "succeeded", captured=4_000)
        withdrawal = api.post("/v1/withdrawals", json={
            "merchant_order_no": "wd-1", "account_id": bob, "amount": 1_500,
            "currency": "USD", "method": "bank"}, headers={"Idempotency-Key": "wd-1"})
        _wait_status(api, withdrawal.json()["payment_id"], "succeeded", captured=1_500)

        assert {r.status_code for r in (topup, transfer, withdrawal)} == {202}
        # the card top-up's fee (180 + 20) stays with us: 10,000 - 200 - 4,000
        wallet_a, wallet_b = f"wallet:{shop.id}.{alice}:USD", f"wallet:{shop.id}.{bob}:USD"
        alice_balance = poll_status(lambda: api.get(f"/v1/accounts/{wallet_a}/balance"),
                              200, until=lambda b: b["total_minor"] == 5_800)
        bob_balance = poll_status(lambda: api.get(f"/v1/accounts/{wallet_b}/balance"), 200,
                            until=lambda b: b["total_minor"] == 2_500)
        assert (alice_balance["total_minor"], bob_balance["total_minor"]) == (5_800, 2_500)
        entries = api.get(f"/v1/accounts/{wallet_b}/entries").json()["entries"]
        assert sorted(e["amount_minor"] for e in entries) == [-1_500, 4_000]
        # the wallet is this merchant's business, not another's
        assert other_shop.client.get(f"/v1/accounts/{wallet_b}/balance").status_code == 404

    def test_another_merchant_cannot_move_a_customers_money(self, shop, other_shop):
        alice = "alice"
        topup = shop.client.post("/v1/topups", json={
            "merchant_order_no": "tu-mine", "account_id": alice, "amount": 5_000,
            "currency": "USD", "method": "card"}, headers={"Idempotency-Key": "tu-mine"})
        _wait_status(shop.client, topup.json()["payment_id"], "succeeded", captured=5_000)
        mine = f"/v1/accounts/wallet:{shop.id}.{alice}:USD/balance"
        before = poll_status(lambda: shop.client.get(mine), 200)["total_minor"]

        # the same customer name from another merchant is that merchant's own customer
        theft = other_shop.client.post("/v1/transfers", json={
            "merchant_order_no": "steal", "from_account_id": alice,
            "to_account_id": "mule", "amount": 1_000, "currency": "USD"},
            headers={"Idempotency-Key": "steal"})
        payout = other_shop.client.post("/v1/withdrawals", json={
            "merchant_order_no": "steal-2", "account_id": alice, "amount": 1_000,
            "currency": "USD", "method": "bank"}, headers={"Idempotency-Key": "steal-2"})
        charged = _sale(other_shop.client, "steal-3", amount=1_000, method="balance",
                        payer={"account_id": alice})

        assert theft.status_code == payout.status_code == 202
        assert _wait_status(other_shop.client, theft.json()["payment_id"], "failed",
                            captured=0)["status"] == "failed"
        assert _wait_status(other_shop.client, payout.json()["payment_id"], "failed",
                            captured=0)["status"] == "failed"
        assert charged["status"] == "failed"
        assert shop.client.get(mine).json()["total_minor"] == before
        assert other_shop.client.get(mine).status_code == 404

    def test_a_wallet_product_names_its_fields(self, shop):
        response = shop.client.post("/v1/topups", json={
            "merchant_order_no": "tu-bad", "account_id": "a", "amount": 0,
            "currency": "USD", "method": "mandate"}, headers={"Idempotency-Key": "tu-bad"})

        assert response.status_code == 422
        assert [e["field"] for e in response.json()["errors"]] == ["body.amount", "body.method"]


class TestMandates:
    def test_sign_read_and_terminate_a_mandate(self, shop, other_shop):
        api = shop.client
        signed = api.post("/v1/mandates", json={
            "mandate_id": "md-1", "payer_account_id": "iban-9", "currency": "EUR",
            "amount_max": 9_000}, headers={"Idempotency-Key": "s-1"})

        row = poll_status(lambda: api.get("/v1/mandates/md-1"), 200)
        ended = api.delete("/v1/mandates/md-1", headers={"Idempotency-Key": "t-1"})
        after = poll_status(lambda: api.get("/v1/mandates/md-1"), 200,
                      until=lambda r: r["status"] == "terminated")

        assert (signed.status_code, ended.status_code) == (202, 202)
        assert row["status"] == "active"
        assert (row["payer_account_id"], row["amount_minor_max"]) == (f"{shop.id}.iban-9", 9_000)
        assert after["status"] == "terminated"
        assert api.get("/v1/mandates/md-none").status_code == 404
        assert other_shop.client.get("/v1/mandates/md-1").status_code == 404
        assert other_shop.client.delete(
            "/v1/mandates/md-1", headers={"Idempotency-Key": "t-2"}).status_code == 404


class TestKeys:
    PUBLIC = {"/healthz", "/readyz", "/metrics"}

    def test_every_route_but_health_and_metrics_needs_a_key(self, anon):
        paths = anon.get("/openapi.json").json()["paths"]
        answers = {}

        for path, methods in paths.items():
            concrete = path.replace("{payment_id}", "pay_x").replace(
                "{mandate_id}", "md").replace("{account_id}", "merchant:x:pending:USD")
            for method in methods:
                if path not in self.PUBLIC:
                    answers[f"{method} {path}"] = anon.request(
                        method.upper(), concrete, json={}).status_code

        assert len(answers) >= 20
        assert set(answers.values()) == {401}, answers

    def test_a_wrong_key_is_refused_and_said_how_to_ask(self, anon):
        response = anon.get("/v1/payments/pay_x",
                            headers={"Authorization": "Bearer not-a-key-of-anyone-here"})

        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["code"] == "unauthorized"
        assert "not-a-key" not in response.text

    def test_a_merchant_key_is_not_an_ops_key_and_back(self, shop, api):
        assert shop.client.get("/v1/ops/reviews").json()["code"] == "ops_key_required"
        refused = api.post("/v1/payments", json={
            "merchant_order_no": "ops-sale", "amount": 100, "currency": "USD",
            "method": "card"}, headers={"Idempotency-Key": "o"})
        assert (refused.status_code, refused.json()["code"]) == (403, "merchant_key_required")

    def test_the_body_cannot_name_another_merchant(self, shop, other_shop):
        response = shop.client.post("/v1/payments", json={
            "merchant_id": other_shop.id, "merchant_order_no": "theirs", "amount": 100,
            "currency": "USD", "method": "card"}, headers={"Idempotency-Key": "x"})

        assert response.status_code == 422
        assert [e["field"] for e in response.json()["errors"]] == ["body.merchant_id"]

    def test_keys_never_reach_the_api_log(self, stack, shop, anon):
        shop.client.get("/v1/payments/pay_x")
        anon.get("/v1/payments/pay_x", headers={"Authorization": f"Bearer {shop.key}x"})

        log = stack.part("api").log_path.read_text(errors="replace")

        assert shop.key not in log


class TestCrossMerchant:
    def test_another_merchants_records_are_not_found_and_untouched(self, shop, other_shop,
                                                                    api):
        _sale(shop.client, "mine-0")  # money on the merchant's account
        created = _sale(shop.client, "mine-1", amount=3_000, capture="manual")
        payment_id = created["payment_id"]
        own = f"merchant:{shop.id}:pending:USD"
        poll_status(lambda: shop.client.get(f"/v1/accounts/{own}/balance"), 200)
        theirs = other_shop.client
        absent = theirs.get("/v1/payments/pay_does_not_exist")

        attempts = {
            "read": theirs.get(f"/v1/payments/{payment_id}"),
            "find": theirs.get("/v1/payments", params={"merchant_order_no": "mine-1"}),
            "find_named": theirs.get("/v1/payments", params={
                "merchant_order_no": "mine-1", "merchant_id": shop.id}),
            "capture": theirs.post(f"/v1/payments/{payment_id}/capture", json={},
                                   headers={"Idempotency-Key": "steal-1"}),
            "void": theirs.post(f"/v1/payments/{payment_id}/void",
                                headers={"Idempotency-Key": "steal-2"}),
            "refund": theirs.post(f"/v1/payments/{payment_id}/refunds",
                                  json={"refund_id": "r", "amount": 1},
                                  headers={"Idempotency-Key": "steal-3"}),
            "webhooks": theirs.get(f"/v1/payments/{payment_id}/webhooks"),
            "balance": theirs.get(f"/v1/accounts/{own}/balance"),
            "entries": theirs.get(f"/v1/accounts/{own}/entries"),
            "fees": theirs.get("/v1/accounts/fees:USD/balance"),
        }

        assert {name: r.status_code for name, r in attempts.items()} == {
            name: 404 for name in attempts}
        assert attempts["read"].json()["detail"] == absent.json()["detail"].replace(
            "pay_does_not_exist", payment_id)
        time.sleep(1.0)  # had a command gone out, the payment would have moved by now
        after = api.get(f"/v1/payments/{payment_id}").json()
        assert (after["status"], after["version"]) == ("authorized",
                                                        created["payment"]["version"])


class TestOps:
    def test_approve_a_held_payment_and_it_goes_on(self, shop, api):
        held = _sale(shop.client, "ops-review", amount=6_000_000,
                     payer={"customer_id": f"c-{shop.id}", "ip": "203.0.113.5"})
        assert held["status"] == "risk_review"
        queue = api.get("/v1/ops/reviews").json()["reviews"]
        assert held["payment_id"] in [r["payment_id"] for r in queue]

        decided = api.post(f"/v1/ops/payments/{held['payment_id']}/review",
                           json={"decision": "approve", "reviewer": "ana",
                                 "comment": "known customer"},
                           headers={"Idempotency-Key": "rev-1"})
        after = _wait_status(api, held["payment_id"], "succeeded", captured=6_000_000)

        assert decided.status_code == 202
        assert after["status"] == "succeeded"
        assert any("ana" in h["reason"] for h in after["history"]), after["history"]
        seen_by_merchant = shop.client.get(f"/v1/payments/{held['payment_id']}").json()
        reviewed = [h for h in seen_by_merchant["history"] if h["trigger"] == "review"]
        assert reviewed and {h["reason"] for h in reviewed} == {"decided in risk review"}
        assert "known customer" not in str(seen_by_merchant)
        assert held["payment_id"] not in [
            r["payment_id"] for r in api.get("/v1/ops/reviews").json()["reviews"]]

    def test_a_merchant_cannot_decide_its_own_review(self, shop):
        held = _sale(shop.client, "self-review", amount=6_000_000,
                     payer={"customer_id": f"c2-{shop.id}", "ip": "203.0.113.5"})

        response = shop.client.post(f"/v1/ops/payments/{held['payment_id']}/review",
                                    json={"decision": "approve", "reviewer": "me"},
                                    headers={"Idempotency-Key": "self"})

        assert response.status_code == 403

    def test_ledger_audit_status_has_run_checks_and_no_violation(self, shop, api):
        _sale(shop.client, "audited")

        status = poll_status(lambda: api.get("/v1/ops/ledger/audit"), 200,
                       until=lambda s: s["checks"].get("zero_sum", 0) > 0)

        assert status["ok"] is True and not any(status["violations"].values())
        assert status["entries_completed"] > 0

    def test_recon_exceptions_filter_by_kind(self, api):
        everything = api.get("/v1/ops/recon/exceptions").json()
        missing = api.get("/v1/ops/recon/exceptions",
                          params={"kind": "missing_at_channel"}).json()
        bad_kind = api.get("/v1/ops/recon/exceptions", params={"kind": "nonsense"})

        assert everything["total"] >= missing["total"]
        assert all(e["kind"] == "missing_at_channel" for e in missing["exceptions"])
        assert bad_kind.status_code == 422


class TestReadiness:
    def test_ready_means_broker_and_worker(self, anon):
        response = anon.get("/readyz")

        assert response.status_code == 200 and response.json()["ok"] is True


def _wait_status(api, payment_id: str, status: str, captured: int, timeout_s: float = 20):
    deadline = time.monotonic() + timeout_s
    row = {}
    while time.monotonic() < deadline:
        row = api.get(f"/v1/payments/{payment_id}").json()
        if row["status"] == status and row["captured_minor"] == captured:
            return row
        time.sleep(0.1)
    return row


def _replica(settings, log_path, **changes):
    """Another API process on the shared broker (its own port and read model)."""
    import os
    import subprocess
    import sys

    from paycore.stack import _settings_env
    from streams.broker import free_port

    settings = settings.model_copy(update={"api_port": free_port(), **changes})
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "paycore", "api"],
                                   env={**os.environ, **_settings_env(settings)},
                                   stdout=log, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{settings.api_port}"


class TestReplicas:
    def test_a_second_replica_reads_what_the_first_answered(self, shop, stack_settings,
                                                            tmp_path):
        import httpx

        replica, url = _replica(stack_settings, tmp_path / "api-2.log")
        try:
            with httpx.Client(base_url=url, timeout=40,
                              headers={"Authorization": f"Bearer {shop.key}"}) as second:
                poll_status(lambda: _get_or_503(second, "/readyz"), 200, timeout_s=30)
                created = _sale(shop.client, "replica-1")

                read = second.get(f"/v1/payments/{created['payment_id']}",
                                  params={"min_version": created["payment"]["version"]})

            assert read.status_code == 200, read.text
            assert (read.json()["status"], read.json()["version"]) == (
                created["status"], created["payment"]["version"])
        finally:
            replica.terminate()
            replica.wait(10)

    def test_a_production_replica_refuses_webhooks_into_its_own_network(
            self, shop, stack_settings, tmp_path):
        import httpx

        replica, url = _replica(stack_settings, tmp_path / "api-4.log",
                                webhook_allow_private=False)
        try:
            with httpx.Client(base_url=url, timeout=40,
                              headers={"Authorization": f"Bearer {shop.key}"}) as strict:
                poll_status(lambda: _get_or_503(strict, "/readyz"), 200, timeout_s=30)
                answers = [strict.put("/v1/webhooks/endpoint", json={"url": target})
                           for target in ("http://127.0.0.1:9092/", "https://10.0.0.8/",
                                          "https://169.254.169.254/")]

            assert [a.status_code for a in answers] == [422, 422, 422]
            assert {a.json()["code"] for a in answers} == {"url_refused"}
            assert [a.json()["errors"][0]["field"] for a in answers] == ["body.url"] * 3
        finally:
            replica.terminate()
            replica.wait(10)

    def test_a_replica_whose_workers_are_gone_is_not_ready(self, api_ready, stack_settings,
                                                          tmp_path):
        import httpx

        replica, url = _replica(stack_settings, tmp_path / "api-3.log",
                                app_id="paycore-no-workers")
        try:
            with httpx.Client(base_url=url, timeout=40) as lonely:
                answer = poll_status(lambda: _get_or_503(lonely, "/readyz"), 503, timeout_s=30,
                               until=lambda body: "worker" in body.get("detail", ""))

            assert answer["code"] == "not_ready"
            assert answer["detail"] == ("no worker in consumer group paycore-no-workers-v"
                                        f"{stack_settings.app_version}")
        finally:
            replica.terminate()
            replica.wait(10)


def _get_or_503(client, path: str):
    import httpx

    try:
        return client.get(path)
    except httpx.TransportError:
        return httpx.Response(503, json={})
