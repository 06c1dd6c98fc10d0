"""The ledger through the real stack: queries over HTTP, hot-account sub-accounts,
configured overdraft limits, and the auditor's verdict scraped from its /metrics."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from helpers import pay, read_topic, wait_for_final

from domain import accounts
from domain.events import JournalEntryDecided
from domain.ids import payment_id_for
from streams import topics as t

pytestmark = pytest.mark.integration


def _send(producer, command: dict) -> None:
    producer.send(t.COMMANDS, key=command["merchant_order_no"].encode(),
                  value=json.dumps(command).encode())
    producer.flush()



def _poll_json(get, done, timeout_s: float = 20):
    deadline = time.monotonic() + timeout_s
    while True:
        response = get()
        body = response.json() if response.status_code == 200 else None
        if body is not None and done(body) or time.monotonic() > deadline:
            return response.status_code, body
        time.sleep(0.1)


class TestQueries:
    def test_balance_and_entries_served_over_http(self, api, producer, observer, merchant):
        _send(producer, pay(merchant, "q-1", amount_minor=10_000))
        _send(producer, pay(merchant, "q-2", amount_minor=5_000, method="wallet"))
        wait_for_final(observer, merchant, "q-2")
        account = accounts.merchant_pending(merchant, "USD")

        # card 10,000 - (180 + 20); wallet 5,000 - 60
        status, balance = _poll_json(lambda: api.get(f"/v1/accounts/{account}/balance"),
                                     lambda b: b["total_minor"] == 9_800 + 4_940)
        entries = api.get(f"/v1/accounts/{account}/entries").json()["entries"]

        assert status == 200, balance
        assert balance["available_minor"] == 14_740 and balance["frozen_minor"] == 0
        assert sorted(e["amount_minor"] for e in entries) == [4_940, 9_800]
        assert {e["payment_id"] for e in entries} == {payment_id_for(merchant, "q-1"),
                                                      payment_id_for(merchant, "q-2")}

    def test_unknown_account_is_404(self, api):
        assert api.get("/v1/accounts/wallet:nobody:USD/balance").status_code == 404


class TestHotAccounts:
    def test_fee_legs_spread_over_sub_accounts_and_add_up(self, api, stack_settings, producer,
                                                         observer, merchant):
        for i in range(12):
            _send(producer, pay(merchant, f"hot-{i}", amount_minor=10_000))
        for i in range(12):
            assert wait_for_final(observer, merchant, f"hot-{i}").status == "succeeded"
        ours = {payment_id_for(merchant, f"hot-{i}") for i in range(12)}

        copies = read_topic(stack_settings.kafka_bootstrap, t.LEDGER_POSTINGS,
                            stack_settings.partitions,
                            lambda b: isinstance(b, JournalEntryDecided)
                            and b.payment_id in ours, want=36)
        fee_rows = {key.decode() for key, _ in copies if key.startswith(b"fees:USD")}
        observer.wait_until(lambda: all(
            sum(leg.amount_minor for leg in observer.legs.values() if leg.payment_id == p
                and leg.account_id.startswith("fees:USD#")) == 200 for p in ours), 15)
        rows = {leg.account_id for leg in observer.legs.values()
                if leg.payment_id in ours and leg.account_id.startswith("fees:")}
        expected = sum(total for row, total in observer.balances().items()
                       if row.startswith("fees:USD#"))

        assert len(fee_rows) > 1 and all(r.startswith("fees:USD#") for r in fee_rows)
        assert rows == fee_rows
        assert _eventually(lambda: api.get("/v1/accounts/fees:USD/balance").json()[
            "total_minor"] == expected), (expected, api.get("/v1/accounts/fees:USD/balance"))
        assert api.get("/v1/accounts/fees:USD/balance").json()["sub_accounts"] > 1


class TestLimits:
    def test_full_refund_refused_without_overdraft(self, stack, producer, observer, merchant):
        _send(producer, pay(merchant, "full", amount_minor=10_000))
        wait_for_final(observer, merchant, "full")

        _send(producer, {"type": "refund", "merchant_id": merchant, "idempotency_key": "rf",
                         "merchant_order_no": "full", "refund_id": "r1",
                         "amount_minor": 10_000})
        observer.wait_until(lambda: "refund failed" in _last_reason(observer, merchant, "full"),
                            15)

        assert "insufficient_funds" in _last_reason(observer, merchant, "full")
        assert observer.status[payment_id_for(merchant, "full")].status == "succeeded"

    def test_full_refund_allowed_with_configured_overdraft(self, stack, producer, observer):
        # config/accounts.yaml gives "merchant:demo-credit-shop:*" an overdraft of 5,000.00
        shop, order_no = "demo-credit-shop", f"credit-{int(time.time() * 1000)}"
        _send(producer, pay(shop, order_no, amount_minor=10_000))
        wait_for_final(observer, shop, order_no)

        _send(producer, {"type": "refund", "merchant_id": shop, "idempotency_key": f"rf-{order_no}",
                         "merchant_order_no": order_no, "refund_id": "r1",
                         "amount_minor": 10_000})
        final = wait_for_final(observer, shop, order_no, statuses={"refunded"})

        assert final is not None, _last_reason(observer, shop, order_no)
        assert final.refunded_minor == 10_000


class TestAuditor:
    def test_auditor_checks_continuously_and_finds_nothing(self, stack, stack_settings, producer,
                                                           observer, merchant):
        _send(producer, pay(merchant, "audited", amount_minor=3_000))
        wait_for_final(observer, merchant, "audited")
        time.sleep(1)

        metrics = _scrape(stack_settings.auditor_metrics_port)

        assert metrics.get('paycore_audit_checks_total{check="entry_balanced"}', 0) > 0
        assert metrics.get('paycore_audit_checks_total{check="frozen_equals_holds"}', 0) > 0
        assert not {k: v for k, v in metrics.items()
                    if k.startswith("paycore_audit_violations_total") and v}


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def _last_reason(observer, merchant: str, order_no: str) -> str:
    history = observer.history.get(payment_id_for(merchant, order_no), [])
    return history[-1].reason if history else ""


def _eventually(check, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


class TestSettlement:
    def test_channel_settlement_moves_pending_to_settled_then_refund_comes_from_settled(
            self, stack, stack_settings, producer, observer, merchant):
        _send(producer, pay(merchant, "settle", amount_minor=10_000))
        final = wait_for_final(observer, merchant, "settle")
        pending = accounts.merchant_pending(merchant, "USD")
        settled = accounts.merchant_settled(merchant, "USD")
        observer.wait_until(lambda: observer.balances().get(pending) == 9_800, 15)

        _settle(producer, final, amount_minor=10_000, fee_minor=200)  # the channel's line
        observer.wait_until(lambda: observer.balances().get(settled) == 9_800, 15)
        _send(producer, {"type": "refund", "merchant_id": merchant, "idempotency_key": "rf-s",
                         "merchant_order_no": "settle", "refund_id": "r1",
                         "amount_minor": 3_000})
        refunded = wait_for_final(observer, merchant, "settle",
                                  statuses={"partially_refunded"})
        observer.wait_until(lambda: observer.balances().get(settled) == 6_800, 15)

        assert observer.balances()[pending] == 0
        assert observer.balances()[settled] == 6_800
        assert refunded.refunded_minor == 3_000

    def test_settlement_with_other_money_books_nothing_and_goes_to_recon(
            self, stack, stack_settings, producer, observer, merchant):
        _send(producer, pay(merchant, "settle-odd", amount_minor=10_000))
        final = wait_for_final(observer, merchant, "settle-odd")

        _settle(producer, final, amount_minor=9_999, fee_minor=200)
        exceptions = read_topic(stack_settings.kafka_bootstrap, t.RECON_EXCEPTIONS,
                                stack_settings.partitions,
                                lambda b: getattr(b, "payment_id", "") == final.payment_id)
        observer.poll(timeout_ms=1_000)

        assert [(e.body.kind.value, e.body.expected_minor, e.body.reported_minor)
                for _, e in exceptions] == [("amount_mismatch", 10_000, 9_999)]
        assert accounts.merchant_settled(merchant, "USD") not in observer.balances()


def _settle(producer, final, amount_minor: int, fee_minor: int) -> None:
    """The channel's line, dated the day it captured (reconciliation checks the date)."""
    from domain.events import SettlementReported
    from domain.recon import day_of
    from streams.envelope import child, encode

    today = day_of(final.at_ms)
    line = SettlementReported(line_id=f"line-{final.channel_serial}", channel=final.channel,
                              payment_id=final.payment_id, channel_serial=final.channel_serial,
                              amount_minor=amount_minor, currency=final.currency,
                              settled_on=today, period=today, fee_minor=fee_minor)
    producer.send(t.SETTLEMENTS, key=final.payment_id.encode(),
                  value=encode(child("test-settlement-file", line, 0, 0)))
    producer.flush()
