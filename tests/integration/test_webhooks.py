"""Merchant webhooks over the real stack: a receiver in the test checks every signature,
the order per payment, the retries after failures, and that nothing is lost."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from paycore.hooks import Receiver

pytestmark = pytest.mark.integration
_SHOWN = re.compile(r"^paycore_(webhook_\w+|stage_events_total\{stage=\"webhooks\"|"
                    r"consumer_lag_messages\{group=\"[^\"]*webhooks)")


def _metrics(port: int) -> list[str]:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError as exc:
        return [f"(metrics on {port} unreadable: {exc!r})"]
    return [line for line in text.splitlines() if _SHOWN.match(line)
            and "_bucket" not in line and line.split()[-1] not in ("0.0", "0")]


@pytest.fixture(autouse=True)
def webhooks_stage_state(stack_settings):
    """What the webhooks stage had done and how far behind it was, before and after each
    test: printed, so a failing test shows it (pytest shows a failed test's output)."""
    def show(when: str) -> None:
        lines = _metrics(stack_settings.webhooks_metrics_port) + \
            _metrics(stack_settings.auditor_metrics_port)
        print(f"webhooks stage {when}:", *lines, sep="\n  ")

    show("before")
    yield
    show("after")


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(**rule) -> Receiver:
        made.append(Receiver(**rule))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _register(shop, url: str) -> str:
    answer = shop.client.put("/v1/webhooks/endpoint", json={"url": url})
    assert answer.status_code == 200, answer.text
    assert answer.json()["active"] is True
    assert shop.client.get("/v1/webhooks/endpoint").json()["url"] == url
    return answer.json()["secret"]


def _until(check, timeout_s: float = 45):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    return check()


def _pay(shop, order_no: str, **extra) -> str:
    body = {"merchant_order_no": order_no, "amount": 2_000, "currency": "USD",
            "method": "card", **extra}
    answer = shop.client.post("/v1/payments?wait=20", json=body,
                              headers={"Idempotency-Key": order_no})
    assert answer.status_code == 202, answer.text
    return answer.json()["payment_id"]


def test_every_event_arrives_signed_in_order_after_retries(shop, receiver):
    hooks = receiver(fail_first=1)  # every event's first attempt fails
    secret = _register(shop, hooks.url)
    sales = [_pay(shop, f"wh-sale-{i}") for i in range(3)]
    held = _pay(shop, "wh-manual", capture="manual")
    shop.client.post(f"/v1/payments/{held}/capture", json={},
                     headers={"Idempotency-Key": "wh-cap"})
    rejected = shop.client.post(f"/v1/payments/{sales[0]}/capture", json={},
                                headers={"Idempotency-Key": "wh-cap-again"})
    payments = [*sales, held]

    def histories() -> dict[str, list[str]]:
        return {p: [h["status"] for h in shop.client.get(f"/v1/payments/{p}").json()[
            "history"]] for p in payments}

    def all_delivered():
        want = histories()
        expected = sum(len(h) for h in want.values()) + 1  # + the refused capture
        got = hooks.delivered()
        return (want, got) if len(got) >= expected and want[held][-1] == "succeeded" \
            else None

    found = _until(all_delivered)
    assert found, (histories(), len(hooks.delivered()))
    want, delivered = found

    assert rejected.status_code == 202
    assert hooks.verified(secret) == (len(hooks.requests), len(hooks.requests))
    assert hooks.verified(secret + "x")[0] == 0
    assert {r["event"]["data"]["merchant_id"] for r in delivered} == {shop.id}
    statuses = {p: [r["event"]["data"]["status"] for r in delivered
                    if r["event"]["type"] == "payment.status_changed"
                    and r["event"]["data"]["payment_id"] == p] for p in payments}
    assert statuses == want
    assert [r["event"]["data"]["code"] for r in delivered
            if r["event"]["type"] == "payment.command_rejected"] != []
    attempts = {}
    for r in hooks.requests:
        attempts[r["event_id"]] = attempts.get(r["event_id"], 0) + 1
    assert set(attempts.values()) == {2}, attempts  # one failure, one success, no extra
    assert hooks.in_order()
    states = _until(lambda: _all_delivered(shop, held, len(want[held])), timeout_s=10)
    assert {(d["state"], d["attempts"], d["http_status"]) for d in states} == {
        ("delivered", 2, 200)}
    assert len(states) == len(want[held])
    answer = shop.client.get(f"/v1/payments/{held}/webhooks").json()
    assert answer["pending"] == []
    history_ids = [h["event_id"] for h in shop.client.get(f"/v1/payments/{held}").json()[
        "history"]]
    assert sorted(d["event_id"] for d in answer["deliveries"]) == sorted(history_ids)
    assert [r["event_id"] for r in delivered if r["event"]["data"].get(
        "payment_id") == held] == history_ids  # the webhook id is the event id


def _all_delivered(shop, payment_id: str, events: int) -> list[dict] | None:
    rows = shop.client.get(f"/v1/payments/{payment_id}/webhooks").json()["deliveries"]
    return rows if sum(d["state"] == "delivered" for d in rows) == events else None


def test_an_endpoint_that_never_answers_2xx_is_given_up_and_shown(shop, receiver,
                                                                  stack_settings):
    hooks = receiver(always_fail=True)
    _register(shop, hooks.url)
    payment = _pay(shop, "wh-down")

    def failed():
        rows = shop.client.get(f"/v1/payments/{payment}/webhooks").json()["deliveries"]
        return rows if rows and all(d["state"] == "failed" for d in rows) and len(rows) == 3 \
            else None

    rows = _until(failed, timeout_s=stack_settings.webhook_retry_period_s * 4 + 20)

    assert rows, shop.client.get(f"/v1/payments/{payment}/webhooks").json()
    # the period runs from each event's creation: the first is retried through it, those
    # queued behind it have used theirs up waiting and get their one attempt
    assert rows[0]["attempts"] >= 3, rows
    assert all(d["attempts"] >= 1 and d["http_status"] == 500 for d in rows), rows
    by_event = {}
    for r in hooks.requests:
        by_event.setdefault(r["event_id"], []).append(r["at"])
    # the first event retried for about the period, then given up; the next went after
    first = min(by_event.values(), key=min)
    assert max(first) - min(first) >= 0.5 * stack_settings.webhook_retry_period_s, by_event
    _assert_order_when_given_up(by_event)


def _assert_order_when_given_up(by_event: dict[str, list[float]]) -> None:
    spans = sorted((min(v), max(v)) for v in by_event.values())
    for (_, last_before), (first_after, _) in zip(spans, spans[1:], strict=False):
        assert last_before <= first_after


def test_events_of_a_merchant_without_endpoint_are_not_sent(shop, other_shop, receiver):
    hooks = receiver()
    _register(other_shop, hooks.url)
    _pay(shop, "wh-no-endpoint")
    other = _pay(other_shop, "wh-with-endpoint")

    assert _until(lambda: len(hooks.delivered()) >= 3)
    assert {r["event"]["data"]["payment_id"] for r in hooks.delivered()} == {other}


def test_mandate_events_are_delivered_and_their_state_shown(shop, other_shop, receiver):
    hooks = receiver()
    _register(shop, hooks.url)
    signed = shop.client.post("/v1/mandates", json={
        "mandate_id": "wh-md", "payer_account_id": "payer-1", "currency": "EUR",
        "amount_max": 5_000}, headers={"Idempotency-Key": "wh-md"})
    assert signed.status_code == 202

    def delivered():
        rows = shop.client.get("/v1/mandates/wh-md/webhooks")
        return rows.json() if rows.status_code == 200 and rows.json()["deliveries"] and all(
            d["state"] == "delivered" for d in rows.json()["deliveries"]) else None

    log = _until(delivered)

    assert log, shop.client.get("/v1/mandates/wh-md/webhooks").text
    events = [e["event"] for e in hooks.delivered()]
    assert [e["type"] for e in events] == ["mandate.status_changed"]
    assert events[0]["data"]["status"] == "active"
    assert [d["event_id"] for d in log["deliveries"]] == [e["id"] for e in events]
    assert log["pending"] == []
    assert other_shop.client.get("/v1/mandates/wh-md/webhooks").status_code == 404
