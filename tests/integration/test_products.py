"""Every product and exception path through the real broker, worker and channel simulator.

The simulator's magic amounts (config/channels.yaml) make channels misbehave on purpose:
...409 loses its callback (a status query finds it), ...411 answers nothing, ...408
answers after the timeout and the queries, ...207 answers twice, ...422
reports one minor unit less. Test config: card callbacks time out after 2 s and late
card successes are refunded; wallet authorizations expire after 3 s.
"""

from __future__ import annotations

import json

import pytest
from helpers import pay, wait_for_final

from domain import accounts
from domain.ids import payment_id_for
from streams import topics as t

pytestmark = pytest.mark.integration
USD = "USD"


def _send(producer, command: dict) -> None:
    subject = command.get("merchant_order_no") or command["mandate_id"]
    producer.send(t.COMMANDS, key=subject.encode(), value=json.dumps(command).encode())
    producer.flush()


def _command(merchant: str, type_: str, key: str, **fields) -> dict:
    return {"type": type_, "merchant_id": merchant, "idempotency_key": key, **fields}


def _statuses(observer, merchant: str, order_no: str) -> list[str]:
    return [e.status for e in observer.history[payment_id_for(merchant, order_no)]]


def _balance_becomes(observer, account: str, expected: int, timeout_s: float = 15) -> int:
    observer.wait_until(lambda: observer.balances().get(account) == expected, timeout_s)
    return observer.balances().get(account, 0)


def _topped_up_wallet(producer, observer, merchant: str, amount_minor: int = 10_000) -> str:
    """A wallet funded through the card channel: fee 180 bps + 20 minor (1,000 -> 962)."""
    wallet_id = f"w-{merchant}"
    _send(producer, _command(merchant, "topup", "topup-1", merchant_order_no="topup-1",
                             account_id=wallet_id, amount_minor=amount_minor, currency=USD,
                             method="card"))
    assert wait_for_final(observer, merchant, "topup-1").status == "succeeded"
    return wallet_id


class TestChannelPay:
    @pytest.mark.parametrize("method,channel", [("card", "card_acquirer"),
                                                ("bank", "online_bank"), ("wallet", "wallet")])
    def test_sale_by_each_channel_method_succeeds_on_its_channel(
            self, stack, producer, observer, merchant, method, channel):
        _send(producer, pay(merchant, f"by-{method}", amount_minor=2_500, method=method))

        final = wait_for_final(observer, merchant, f"by-{method}")

        assert (final.status, final.channel) == ("succeeded", channel)
        assert final.channel_serial


class TestBalancePay:
    def test_balance_pay_freezes_then_debits_wallet(self, stack, producer, observer,
                                                    merchant):
        wallet_id = _topped_up_wallet(producer, observer, merchant)  # 10,000 - 200 fee
        wallet = accounts.customer_wallet(wallet_id, USD)

        _send(producer, pay(merchant, "bal-1", amount_minor=5_000, method="balance",
                            payer={"account_id": wallet_id}))
        final = wait_for_final(observer, merchant, "bal-1")

        assert final.status == "succeeded"
        assert _balance_becomes(observer, wallet, 4_800) == 4_800
        merchant_account = accounts.merchant_pending(merchant, USD)
        assert _balance_becomes(observer, merchant_account, 5_000) == 5_000

    def test_balance_pay_fails_when_wallet_short(self, stack, producer, observer, merchant):
        wallet_id = _topped_up_wallet(producer, observer, merchant, 1_000)  # 980 after fee

        _send(producer, pay(merchant, "bal-short", amount_minor=5_000, method="balance",
                            payer={"account_id": wallet_id}))
        final = wait_for_final(observer, merchant, "bal-short")

        assert final.status == "failed"
        assert "insufficient_funds" in final.reason
        assert observer.balances()[accounts.customer_wallet(wallet_id, USD)] == 962

    def test_balance_preauth_captures_twice_then_void_releases_rest(
            self, stack, producer, observer, merchant):
        wallet_id = _topped_up_wallet(producer, observer, merchant)
        wallet = accounts.customer_wallet(wallet_id, USD)
        _send(producer, pay(merchant, "bal-auth", amount_minor=6_000, method="balance",
                            capture="manual", payer={"account_id": wallet_id}))
        assert wait_for_final(observer, merchant, "bal-auth").status == "authorized"

        for i, amount in enumerate((1_000, 2_000)):
            _send(producer, _command(merchant, "capture", f"cap-{i}",
                                     merchant_order_no="bal-auth", amount_minor=amount))
        assert _balance_becomes(observer, wallet, 9_800 - 3_000) == 6_800
        _send(producer, _command(merchant, "void", "void-1", merchant_order_no="bal-auth"))
        final = wait_for_final(observer, merchant, "bal-auth",
                               statuses={"succeeded", "canceled"})

        assert final.status == "succeeded"  # captured part stays; the rest is released
        assert final.captured_minor == 3_000
        assert _statuses(observer, merchant, "bal-auth") == [
            "created", "processing", "authorized", "authorized", "authorized", "succeeded"]


class TestTransfersTopUpsWithdrawals:
    def test_transfer_moves_money_between_wallets(self, stack, producer, observer, merchant):
        source = _topped_up_wallet(producer, observer, merchant)
        target = f"w2-{merchant}"

        _send(producer, _command(merchant, "transfer", "tr-1", merchant_order_no="tr-1",
                                 from_account_id=source, to_account_id=target,
                                 amount_minor=2_500, currency=USD))
        final = wait_for_final(observer, merchant, "tr-1")

        assert final.status == "succeeded"
        assert _balance_becomes(observer, accounts.customer_wallet(target, USD), 2_500) == 2_500
        assert observer.balances()[accounts.customer_wallet(source, USD)] == 7_300

    def test_withdrawal_pays_out_through_bank_after_freezing(self, stack, producer, observer,
                                                             merchant):
        wallet_id = _topped_up_wallet(producer, observer, merchant)

        _send(producer, _command(merchant, "withdraw", "wd-1", merchant_order_no="wd-1",
                                 account_id=wallet_id, amount_minor=4_000, currency=USD))
        final = wait_for_final(observer, merchant, "wd-1")

        assert final.status == "succeeded"
        assert final.channel == "online_bank"
        wallet = accounts.customer_wallet(wallet_id, USD)
        assert _balance_becomes(observer, wallet, 5_800) == 5_800

    def test_declined_withdrawal_releases_frozen_funds(self, stack, producer, observer,
                                                       merchant):
        wallet_id = _topped_up_wallet(producer, observer, merchant)

        _send(producer, _command(merchant, "withdraw", "wd-2", merchant_order_no="wd-2",
                                 account_id=wallet_id, amount_minor=4_013, currency=USD))
        final = wait_for_final(observer, merchant, "wd-2")

        assert final.status == "failed"
        latest = observer.latest_legs()[accounts.customer_wallet(wallet_id, USD)]
        assert latest.total_minor == 9_800


class TestPreAuthorization:
    def test_partial_captures_up_to_authorized_then_rest_refused(
            self, stack, producer, observer, merchant):
        _send(producer, pay(merchant, "auth", amount_minor=10_000, capture="manual"))
        assert wait_for_final(observer, merchant, "auth").status == "authorized"

        _send(producer, _command(merchant, "capture", "c1", merchant_order_no="auth",
                                 amount_minor=6_000))
        _send(producer, _command(merchant, "capture", "c2", merchant_order_no="auth",
                                 amount_minor=4_000))
        final = wait_for_final(observer, merchant, "auth", statuses={"succeeded"})
        _send(producer, _command(merchant, "capture", "c3", merchant_order_no="auth",
                                 amount_minor=1))
        observer.wait_until(lambda: any(r.merchant_id == merchant for r in observer.rejections),
                            15)

        assert final.captured_minor == 10_000
        assert [r.code for r in observer.rejections if r.merchant_id == merchant] == [
            "capture_not_allowed_in_status"]

    def test_authorization_expires_and_is_voided(self, stack, producer, observer, merchant):
        _send(producer, pay(merchant, "expire", amount_minor=3_000, method="wallet",
                            capture="manual"))

        final = wait_for_final(observer, merchant, "expire", statuses={"canceled"},
                               timeout_s=20)

        assert final is not None
        assert _statuses(observer, merchant, "expire") == [
            "created", "processing", "authorized", "canceled"]


class TestChannelMisbehaviour:
    def test_lost_callback_found_by_status_query(self, stack, producer, observer, merchant):
        _send(producer, pay(merchant, "lost", amount_minor=2_409))

        final = wait_for_final(observer, merchant, "lost", timeout_s=20)

        assert final.status == "succeeded"
        assert final.reason == "by status query: captured"
        assert _statuses(observer, merchant, "lost") == ["created", "processing", "succeeded"]

    def test_channel_silent_to_callback_and_queries_times_out(self, stack, producer,
                                                             observer, merchant):
        _send(producer, pay(merchant, "silent", amount_minor=2_411))

        final = wait_for_final(observer, merchant, "silent", timeout_s=20)

        assert final.status == "timed_out"
        assert final.reason == ("no answer from card_acquirer in time: outcome unknown; "
                                "a late answer is still applied by rule")

    def test_late_success_after_timeout_refunded_by_rule(self, stack, producer, observer,
                                                         merchant):
        _send(producer, pay(merchant, "late", amount_minor=3_408))

        final = wait_for_final(observer, merchant, "late", statuses={"failed"}, timeout_s=25)

        assert final is not None
        assert _statuses(observer, merchant, "late") == [
            "created", "processing", "timed_out", "failed"]
        assert "late success refunded" in final.reason
        suspense = accounts.suspense(USD)
        payment_id = payment_id_for(merchant, "late")
        observer.wait_until(lambda: len(_legs_of(observer, payment_id, suspense)) == 2, 15)
        parked = _legs_of(observer, payment_id, suspense)
        assert sorted(leg.amount_minor for leg in parked) == [-3_408, 3_408]

    def test_duplicate_callback_applied_once(self, stack, producer, observer, merchant):
        _send(producer, pay(merchant, "twice", amount_minor=5_207))

        final = wait_for_final(observer, merchant, "twice")
        account = accounts.merchant_pending(merchant, USD)
        observer.wait_until(lambda: account in observer.balances(), 15)
        observer.poll(timeout_ms=1_000)  # the second copy has arrived by now

        assert final.status == "succeeded"
        assert _statuses(observer, merchant, "twice") == ["created", "processing", "succeeded"]
        assert observer.balances()[account] == 5_207 - (94 + 20)

    def test_amount_mismatch_books_nothing(self, stack, producer, observer, merchant):
        _send(producer, pay(merchant, "short", amount_minor=7_422))

        final = wait_for_final(observer, merchant, "short")
        observer.poll(timeout_ms=1_000)

        assert final.status == "amount_mismatch"
        assert "7421" in final.reason
        assert accounts.merchant_pending(merchant, USD) not in observer.balances()

    def test_second_success_for_one_order_refunded(self, stack, producer, observer, merchant):
        # The card answer comes late (after 3.5 s); meanwhile the payer pays by wallet.
        _send(producer, pay(merchant, "switch", amount_minor=6_408))
        assert wait_for_final(observer, merchant, "switch", statuses={"processing"})
        _send(producer, pay(merchant, "switch", amount_minor=6_408, method="wallet",
                            idempotency_key="k-switch-wallet"))

        final = wait_for_final(observer, merchant, "switch")
        payment_id = payment_id_for(merchant, "switch")
        suspense = accounts.suspense(USD)
        observer.wait_until(lambda: len(_legs_of(observer, payment_id, suspense)) == 2, 20)

        assert final.status == "succeeded" and final.channel == "wallet", \
            _story(observer, merchant, "switch")
        assert sorted(leg.amount_minor for leg in _legs_of(observer, payment_id, suspense)) \
            == [-6_408, 6_408]
        assert observer.status[payment_id].status == "succeeded"


class TestRefundsAndRevocation:
    def test_concurrent_refunds_over_captured_one_refused(self, stack, producer, observer,
                                                          merchant):
        _send(producer, pay(merchant, "paid", amount_minor=10_000))
        wait_for_final(observer, merchant, "paid")

        for refund_id in ("r1", "r2"):
            _send(producer, _command(merchant, "refund", f"k-{refund_id}",
                                     merchant_order_no="paid", refund_id=refund_id,
                                     amount_minor=6_000))
        observer.wait_until(lambda: any(r.merchant_id == merchant for r in observer.rejections),
                            15)
        final = wait_for_final(observer, merchant, "paid", statuses={"partially_refunded"})

        assert final.refunded_minor == 6_000
        assert [r.code for r in observer.rejections if r.merchant_id == merchant] == [
            "refund_exceeds_captured"]

    def test_revoke_before_settlement_returns_everything(self, stack, producer, observer,
                                                         merchant):
        _send(producer, pay(merchant, "rev", amount_minor=10_000))
        wait_for_final(observer, merchant, "rev")
        account = accounts.merchant_pending(merchant, USD)
        _balance_becomes(observer, account, 9_800)

        _send(producer, _command(merchant, "revoke", "revoke-1", merchant_order_no="rev"))
        final = wait_for_final(observer, merchant, "rev", statuses={"canceled"})

        assert final is not None, _story(observer, merchant, "rev")
        assert _balance_becomes(observer, account, 0) == 0


class TestSplitAndMandates:
    def test_split_payment_credits_each_merchant_net_of_fee(self, stack, producer, observer,
                                                            merchant):
        other = f"{merchant}-b"
        _send(producer, pay(merchant, "split", amount_minor=10_000,
                            split=[{"merchant_id": merchant, "amount_minor": 7_000},
                                   {"merchant_id": other, "amount_minor": 3_000}]))

        assert wait_for_final(observer, merchant, "split").status == "succeeded"

        # fee 200 split 140 / 60
        assert _balance_becomes(observer, accounts.merchant_pending(merchant, USD), 6_860) \
            == 6_860
        assert _balance_becomes(observer, accounts.merchant_pending(other, USD), 2_940) == 2_940

    def test_mandate_collects_until_terminated(self, stack, producer, observer, merchant):
        _send(producer, _command(merchant, "sign_mandate", "sign-1", mandate_id="md-1",
                                 payer_account_id="iban-1", currency=USD,
                                 amount_minor_max=50_000))
        _send(producer, pay(merchant, "coll-1", amount_minor=20_000, method="mandate",
                            mandate_id="md-1"))
        assert wait_for_final(observer, merchant, "coll-1").status == "succeeded"

        _send(producer, _command(merchant, "terminate_mandate", "end-1", mandate_id="md-1"))
        observer.wait_until(lambda: any(m.status == "terminated" and m.merchant_id == merchant
                                        for m in observer.mandates.values()), 15)
        _send(producer, pay(merchant, "coll-2", amount_minor=20_000, method="mandate",
                            mandate_id="md-1"))
        final = wait_for_final(observer, merchant, "coll-2")

        assert final.status == "failed"
        assert "mandate_terminated" in final.reason
        mandate = next(m for m in observer.mandates.values() if m.merchant_id == merchant)
        assert (mandate.status, mandate.collections) == ("terminated", 1)


def _legs_of(observer, payment_id: str, account: str) -> list:
    return [leg for leg in observer.legs.values()
            if leg.payment_id == payment_id and leg.account_id == account]


def _story(observer, merchant: str, order_no: str) -> str:
    """What happened to an order, for a failing assertion's message."""
    payment_id = payment_id_for(merchant, order_no)
    lines = [f"{e.status}: {e.reason} ({e.trigger})" for e in observer.history[payment_id]]
    lines += [f"rejected {r.command_type}: {r.code}" for r in observer.rejections
              if r.payment_id == payment_id]
    return "\n".join(lines)
