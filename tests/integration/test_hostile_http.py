"""Hostile HTTP: what a careless or malicious client sends that test_api.py and the
schemathesis run (test_openapi_fuzz.py) do not: merchants whose ids are prefixes of each
other's, raw HTTP framing, odd JSON, malformed keys and ids. Each answer is a precise 4xx
problem document and changes nothing."""

from __future__ import annotations

import json
import socket
import time
import uuid

import pytest
from helpers import poll_status

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


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
    poll_status(lambda: shop.client.get(f"/v1/accounts/{wallet}/balance"), 200)
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
        before = poll_status(lambda: acme_eu.client.get(f"{path}/balance"), 200,
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


def _order_absent(shop, *orders: str) -> None:
    """None of these merchant orders became a payment (checked after a moment: commands
    are asynchronous, and one that went out would show by then)."""
    time.sleep(0.5)
    for order in orders:
        found = shop.client.get("/v1/payments", params={"merchant_order_no": order})
        assert found.status_code == 404, (order, found.text)


def _sale_body(order: str) -> bytes:
    return (f'{{"merchant_order_no":"{order}","amount":100,"currency":"USD",'
            f'"method":"card"}}').encode()


def _raw(port: int, head: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    """One request over a bare socket, framed exactly as given (``Connection: close``):
    the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    header_block, _, content = rest.partition(b"\r\n\r\n")
    headers = dict(line.decode("latin-1").lower().split(": ", 1)
                   for line in header_block.split(b"\r\n") if b": " in line)
    return int(status_line.split()[1]), headers, content


def _head(shop, order: str, *extra: str, path: str = "/v1/payments") -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: paycore", "Connection: close",
             f"Authorization: Bearer {shop.key}", f"Idempotency-Key: {order}",
             "Content-Type: application/json", *extra]
    return "\n".join(lines) + "\n"


class TestFraming:
    def test_a_chunked_body_is_refused_before_it_is_read_whatever_its_size(
            self, prefix_shops, stack_settings):
        acme = prefix_shops[0]
        small, large, both = (f"ch-{uuid.uuid4().hex[:8]}" for _ in range(3))
        port, chunked = stack_settings.api_port, "Transfer-Encoding: chunked"
        one = b"%x\r\n%s\r\n0\r\n\r\n" % (len(_sale_body(small)), _sale_body(small))
        # 16 KiB of chunks and no last chunk: the answer comes without waiting for the rest
        many = (b"1000\r\n" + b"x" * 0x1000 + b"\r\n") * 4

        answers = {
            "small": _raw(port, _head(acme, small, chunked), one),
            "large": _raw(port, _head(acme, large, chunked), many),
            "both": _raw(port, _head(acme, both, f"Content-Length: {len(_sale_body(both))}",
                                     chunked), _sale_body(both)),
        }

        for name, code in (("small", 411), ("large", 411), ("both", 400)):
            status, headers, content = answers[name]
            assert (status, headers["content-type"]) == (code, PROBLEM), (name, content)
        assert json.loads(answers["large"][2])["code"] == "length_required"
        assert json.loads(answers["both"][2])["code"] == "ambiguous_body_length"
        _order_absent(acme, small, large, both)

    def test_a_content_length_that_lies_is_never_a_payment(self, prefix_shops, stack_settings):
        acme = prefix_shops[0]
        short, bad = f"cl-{uuid.uuid4().hex[:8]}", f"cl-{uuid.uuid4().hex[:8]}"
        body = _sale_body(short)

        cut = _raw(stack_settings.api_port,
                   _head(acme, short, f"Content-Length: {len(body) - 9}"), body)
        unreadable = [_raw(stack_settings.api_port, _head(acme, bad, *lengths), _sale_body(bad))
                      for lengths in (["Content-Length: abc"], ["Content-Length: -1"],
                                      ["Content-Length: 5", "Content-Length: 7"])]

        assert (cut[0], cut[1]["content-type"]) == (400, PROBLEM), cut
        assert json.loads(cut[2])["code"] == "malformed_body"
        # the HTTP server refuses these before the app sees them (plain text, not a problem)
        assert [answer[0] for answer in unreadable] == [400, 400, 400]
        _order_absent(acme, short, bad)


class TestBodies:
    def test_json_the_api_cannot_read_one_way_is_malformed(self, prefix_shops):
        acme = prefix_shops[0]
        tag = uuid.uuid4().hex[:8]
        sent = {
            f"dup-{tag}": (b'{"merchant_order_no":"dup-%s","amount":1,"amount":100000,'
                           b'"currency":"USD","method":"card"}' % tag.encode()),
            f"dupn-{tag}": (b'{"merchant_order_no":"dupn-%s","amount":100,"currency":"USD",'
                            b'"method":"card","payer":{"ip":"203.0.113.5","ip":"10.0.0.1"}}'
                            % tag.encode()),
            f"deep-{tag}": (b'{"merchant_order_no":"deep-%s","amount":100,"currency":"USD",'
                            b'"method":"card","payer":' % tag.encode()
                            + b"[" * 30_000 + b"]" * 30_000 + b"}"),
            f"cut-{tag}": _sale_body(f"cut-{tag}")[:-1],
        }

        answers = {order: acme.client.post("/v1/payments", content=body, headers={
            "Idempotency-Key": order, "Content-Type": "application/json"})
            for order, body in sent.items()}

        for answer in answers.values():
            _problem(answer, 400, "malformed_body")
        assert "duplicate key amount" in answers[f"dup-{tag}"].json()["detail"]
        assert "duplicate key ip" in answers[f"dupn-{tag}"].json()["detail"]
        _order_absent(acme, *sent)

    def test_a_body_not_sent_as_json_is_an_unsupported_media_type(self, prefix_shops):
        acme = prefix_shops[0]
        types = {"text": "text/plain", "form": "application/x-www-form-urlencoded",
                 "none": None, "utf16": "application/json; charset=utf-16",
                 "multi": "multipart/form-data; boundary=x", "xml": "application/xml"}
        orders = {name: f"ct-{name}-{uuid.uuid4().hex[:6]}" for name in types}

        answers = {}
        for name, media in types.items():
            body = _sale_body(orders[name])
            headers = {"Idempotency-Key": orders[name]}
            if media:
                headers["Content-Type"] = media
            if name == "utf16":
                body = body.decode().encode("utf-16")
            answers[name] = acme.client.post("/v1/payments", content=body, headers=headers)

        for answer in answers.values():
            _problem(answer, 415, "unsupported_media_type")
        _order_absent(acme, *orders.values())


class TestHeaders:
    def test_a_malformed_idempotency_key_is_refused_by_name(self, prefix_shops, stack_settings):
        acme = prefix_shops[0]
        keys = ["", "a b", "k" * 65, "-lead", ".dot", "k/1", "k%20", "k;1"]
        orders = [f"ik-{i}-{uuid.uuid4().hex[:6]}" for i in range(len(keys) + 2)]

        answers = [acme.client.post("/v1/payments", content=_sale_body(order), headers={
            "Idempotency-Key": key, "Content-Type": "application/json"})
            for key, order in zip(keys, orders[:len(keys)], strict=True)]
        answers.append(acme.client.post("/v1/payments", content=_sale_body(orders[-2]),
                                        headers={"Idempotency-Key": "ké".encode(),
                                                 "Content-Type": "application/json"}))
        control = _raw(stack_settings.api_port, _head(
            acme, "k\x01x", f"Content-Length: {len(_sale_body(orders[-1]))}"),
            _sale_body(orders[-1]))

        for answer in answers:
            problem = _problem(answer, 422, "invalid_request")
            assert [e["field"] for e in problem["errors"]] == ["header.Idempotency-Key"]
        assert (control[0], json.loads(control[2])["errors"][0]["field"]) == (
            422, "header.Idempotency-Key")
        _order_absent(acme, *orders)

    def test_a_key_presented_any_other_way_is_not_a_key(self, prefix_shops, anon):
        acme, acme_eu = prefix_shops
        path = "/v1/webhooks/endpoint"
        bearer = f"Bearer {acme.key}"

        refused = {
            "no scheme": anon.get(path, headers={"Authorization": acme.key}),
            "basic": anon.get(path, headers={"Authorization": f"Basic {acme.key}"}),
            "token": anon.get(path, headers={"Authorization": f"Token {acme.key}"}),
            "x-api-key": anon.get(path, headers={"X-API-Key": acme.key}),
            "query": anon.get(path, params={"api_key": acme.key, "access_token": acme.key}),
            "cookie": anon.get(path, headers={"Cookie": f"api_key={acme.key}"}),
            "suffix": anon.get(path, headers={"Authorization": f"{bearer} extra"}),
            "two, first good": anon.get(path, headers=[("Authorization", bearer),
                                                      ("Authorization", "Bearer " + "x" * 24)]),
            "two, second good": anon.get(path, headers=[("Authorization", "Bearer " + "x" * 24),
                                                       ("Authorization", bearer)]),
            "two merchants": anon.get(path, headers=[("Authorization", bearer), (
                "Authorization", f"Bearer {acme_eu.key}")]),
            "same twice": anon.get(path, headers=[("Authorization", bearer)] * 2),
        }
        lowercase = anon.get(path, headers={"Authorization": f"bearer {acme.key}"})

        for name, answer in refused.items():
            assert answer.headers.get("www-authenticate") == "Bearer", name
            _problem(answer, 401, "unauthorized")
        assert acme.key not in str([a.text for a in refused.values()])
        assert lowercase.status_code in (200, 404)  # the scheme is case-insensitive (RFC 9110)


class TestPaths:
    def test_an_id_that_could_name_nothing_is_refused_by_name(self, prefix_shops):
        acme = prefix_shops[0]
        bad = ["a" * 5_000, "pay%00x", "pay%0d%0aSet-Cookie:x", "%C3%A9", "pay x", "-pay"]

        answers = {}
        for raw_id in bad:
            answers[f"payment {raw_id[:9]}"] = (acme.client.get(f"/v1/payments/{raw_id}"),
                                                "path.payment_id")
            answers[f"refund {raw_id[:9]}"] = (acme.client.post(
                f"/v1/payments/{raw_id}/refunds", json={"refund_id": "r", "amount": 1},
                headers={"Idempotency-Key": "r"}), "path.payment_id")
            answers[f"mandate {raw_id[:9]}"] = (acme.client.get(f"/v1/mandates/{raw_id}"),
                                                "path.mandate_id")
            answers[f"account {raw_id[:9]}"] = (acme.client.get(
                f"/v1/accounts/merchant:{raw_id}:pending:USD/balance"), "path.account_id")

        for name, (answer, field) in answers.items():
            problem = _problem(answer, 422, "invalid_request")
            assert [e["field"] for e in problem["errors"]] == [field], name
            assert len(answer.content) < 2_000, name  # the id is not echoed back

    def test_a_path_that_climbs_out_reaches_no_route(self, prefix_shops, stack_settings):
        acme = prefix_shops[0]
        climbs = ["/v1/payments/..%2F..%2Fops%2Freviews", "/v1/payments/%2e%2e/ops/reviews",
                  "/v1/accounts/..%2Fops%2Fsummary/balance", "/v1/mandates/..%2F..%2Fops"]

        answers = [acme.client.get(path) for path in climbs]
        raw = _raw(stack_settings.api_port, "\n".join([
            "GET /v1/payments/../ops/reviews HTTP/1.1", "Host: paycore", "Connection: close",
            f"Authorization: Bearer {acme.key}"]) + "\n")

        for answer in answers:
            assert answer.status_code in (404, 422), answer.text
            assert answer.headers["content-type"] == PROBLEM
            assert "reviews" not in answer.json() and "payments" not in answer.json()
        assert (raw[0], json.loads(raw[2])["code"]) == (404, "not_found")
