"""The demo's product tour: one of each product, in order, with the outcome checked.

Top-up, balance pay, transfer, withdrawal, mandate collection (before and after the
mandate is terminated), split payment, revocation, a failover, a risk decline and a risk
review approved by ops, all for the merchant ``demo-tour``.
The wallets' balances are checked against the demo's own arithmetic.
"""

from __future__ import annotations

from domain import accounts
from domain.ids import payment_id_for
from domain.money import fee_minor
from paycore.observe import Observer, command_producer, send_command
from streams.rules_config import load_routing
from streams.settings import Settings

MERCHANT = "demo-tour"
PARTNER = "demo-partner"


def _cmd(type_: str, n: str, **fields) -> dict:
    return {"type": type_, "merchant_id": MERCHANT, "idempotency_key": f"tour-{n}", **fields}


STEPS: list[tuple[str, dict, str]] = [
    ("top-up by card", _cmd("topup", "1", merchant_order_no="t-topup", account_id="alice",
                            amount_minor=50_000, currency="USD", method="card"), "succeeded"),
    ("balance pay", _cmd("pay", "2", merchant_order_no="t-balance", amount_minor=12_000,
                         currency="USD", method="balance", payer={"account_id": "alice"}),
     "succeeded"),
    ("transfer", _cmd("transfer", "3", merchant_order_no="t-transfer",
                      from_account_id="alice", to_account_id="bob", amount_minor=5_000,
                      currency="USD"), "succeeded"),
    ("withdrawal to bank", _cmd("withdraw", "4", merchant_order_no="t-withdraw",
                                account_id="bob", amount_minor=3_000, currency="USD"),
     "succeeded"),
    ("mandate signed", _cmd("sign_mandate", "5", mandate_id="md-alice",
                            payer_account_id="iban-alice", currency="USD",
                            amount_minor_max=20_000), "active"),
    ("mandate collection", _cmd("pay", "6", merchant_order_no="t-collect-1",
                                amount_minor=7_000, currency="USD", method="mandate",
                                mandate_id="md-alice"), "succeeded"),
    ("mandate terminated", _cmd("terminate_mandate", "7", mandate_id="md-alice"),
     "terminated"),
    ("collection refused", _cmd("pay", "8", merchant_order_no="t-collect-2",
                                amount_minor=7_000, currency="USD", method="mandate",
                                mandate_id="md-alice"), "failed"),
    ("split payment", _cmd("pay", "9", merchant_order_no="t-split", amount_minor=10_000,
                           currency="USD", method="card",
                           split=[{"merchant_id": MERCHANT, "amount_minor": 6_000},
                                  {"merchant_id": PARTNER, "amount_minor": 4_000}]),
     "succeeded"),
    ("sale to revoke", _cmd("pay", "10", merchant_order_no="t-revoke", amount_minor=9_000,
                            currency="USD", method="card"), "succeeded"),
    ("revocation", _cmd("revoke", "11", merchant_order_no="t-revoke"), "canceled"),
    # Routing: the acquirer answers "issuer unavailable" (magic ...503): the order fails
    # over to the backup acquirer (config/routing.yaml).
    ("failover to backup", _cmd("pay", "12", merchant_order_no="t-failover",
                                amount_minor=4_503, currency="USD", method="card"),
     "succeeded"),
    # Risk (config/risk.yaml): a blocklisted device is declined; a large first payment is
    # held for review, then approved by ops with a review command.
    ("risk: blocked device", _cmd("pay", "13", merchant_order_no="t-blocked",
                                  amount_minor=2_000, currency="USD", method="card",
                                  payer={"device_id": "device-emulator-farm"}), "failed"),
    ("risk: held for review", _cmd("pay", "14", merchant_order_no="t-review",
                                   amount_minor=6_000_000, currency="USD", method="card",
                                   payer={"customer_id": "carol"}), "risk_review"),
    ("review approved", _cmd("review", "15", merchant_order_no="t-review",
                             decision="approve", reviewer="ops-demo",
                             comment="customer confirmed by phone"), "succeeded"),
]


def _outcome(observer: Observer, command: dict) -> tuple[str, str]:
    if "merchant_order_no" in command:
        event = observer.status.get(payment_id_for(MERCHANT, command["merchant_order_no"]))
        return (event.status, event.reason) if event else ("-", "")
    mandate = next((m for m in observer.mandates.values()
                    if m.mandate_id == command["mandate_id"]), None)
    return (mandate.status, f"{mandate.collections} collections") if mandate else ("-", "")


def run_tour(settings: Settings, timeout_s: float) -> bool:
    """Each step waits for its outcome before the next is sent; prints a table. A step the
    channel declines at random (the shipped profiles decline a few percent) is tried again
    under a new order number, as a payer would."""
    observer = Observer(settings.kafka_bootstrap, settings.partitions, merchant=MERCHANT)
    producer = command_producer(settings.kafka_bootstrap)
    ok, renamed = True, {}
    print("\n  product tour              status        why")
    try:
        for label, command, expected in STEPS:
            command = _renamed(command, renamed)
            for attempt in range(ATTEMPTS_MAX):
                status, reason = _run_step(producer, observer, command, expected, timeout_s)
                if status == expected or "declined" not in reason or attempt + 1 == ATTEMPTS_MAX:
                    break
                print(f"  {label:<25} {status:<13} {reason[:40]}: paying again")
                command = _retry(command, attempt + 1, renamed)
            ok = ok and status == expected
            print(f"  {label:<25} {status:<13} {reason[:60]}")
        ok = _wallets_add_up(settings, observer, timeout_s) and ok
    finally:
        producer.close()
        observer.close()
    return ok


ATTEMPTS_MAX = 4


def _run_step(producer, observer: Observer, command: dict, expected: str, timeout_s: float):
    send_command(producer, command)
    producer.flush()
    observer.wait_until(lambda: _outcome(observer, command)[0] in (expected, "failed"),
                        timeout_s)
    return _outcome(observer, command)


def _retry(command: dict, attempt: int, renamed: dict) -> dict:
    order_no = f"{command['merchant_order_no']}-again{attempt}"
    renamed[command["merchant_order_no"].split("-again")[0]] = order_no
    return {**command, "merchant_order_no": order_no,
            "idempotency_key": f"{command['idempotency_key']}-again{attempt}"}


def _renamed(command: dict, renamed: dict) -> dict:
    order_no = command.get("merchant_order_no")
    return {**command, "merchant_order_no": renamed[order_no]} if order_no in renamed \
        else command


def _wallets_add_up(settings: Settings, observer: Observer, timeout_s: float) -> bool:
    card = next(c for c in load_routing(settings.config_dir).channels
                if c.name == "card_acquirer")
    topup_fee = fee_minor(50_000, card.fee_bps, card.fee_fixed_minor)
    want = {accounts.customer_wallet("alice", "USD"): 50_000 - topup_fee - 12_000 - 5_000,
            accounts.customer_wallet("bob", "USD"): 5_000 - 3_000}
    observer.wait_until(lambda: all(observer.balances().get(a) == v for a, v in want.items()),
                        timeout_s)
    good = True
    for account, expected in want.items():
        got = observer.balances().get(account)
        good = good and got == expected
        print(f"  {account:<25} {got} == expected {expected}: "
              f"{'OK' if got == expected else 'FAILED'}")
    return good
