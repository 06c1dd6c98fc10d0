"""The scripted demo: sales over two channels, some declines, a manual capture, a refund,
then a tour of the other products (paycore/tour.py).

It checks the outcome independently of the core (an auditor's view): every payment final,
the journal zero-sum per currency, each account's reported balance equal to a rebuild from
its legs, and the merchant's balance equal to what the demo expects from the outcomes.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import urllib.request
from collections import Counter, defaultdict

import httpx

from domain import accounts
from domain.money import fee_minor
from paycore.hooks import Receiver
from paycore.observe import Observer, command_producer, send_command
from paycore.stack import Stack, wait_until_ready
from paycore.tour import run_tour
from streams.rules_config import load_routing
from streams.settings import Settings

MERCHANT = "demo-shop"
FINAL = {"succeeded", "failed", "canceled", "refunded", "partially_refunded",
         "amount_mismatch"}


def sale(i: int, method: str, amount_minor: int, capture: str = "auto") -> dict:
    return {"type": "pay", "merchant_id": MERCHANT, "idempotency_key": f"pay-{i}",
            "merchant_order_no": f"order-{i}", "amount_minor": amount_minor,
            "currency": "USD", "method": method, "capture": capture}


def demo_commands(payments: int) -> list[dict]:
    """Alternate card and wallet; every 20th amount ends in 013, a guaranteed decline; no
    other simulator magic (late, silent, repeated, short answers) is used."""
    commands = []
    for i in range(payments):
        amount = 1_000 + (i * 7_919) % 90_000
        if amount % 1000 in (207, 408, 409, 411, 422, 503):
            amount += 2
        if i % 20 == 7:
            amount = amount - amount % 1000 + 13
        commands.append(sale(i, "card" if i % 2 == 0 else "wallet", amount))
    return commands


def run_demo(settings: Settings, payments: int = 200, timeout_s: float = 120.0) -> int:
    settings = settings.model_copy(update={
        "data_dir": settings.data_dir / "demo", "api_port": 0, "worker_web_port": 0,
        "simulator_metrics_port": 0, "auditor_metrics_port": 0, "webhooks_metrics_port": 0,
        "prometheus_port": 0})
    started = time.monotonic()
    print(f"paycore demo: {payments} sales, one manual capture, one refund, a product tour",
          flush=True)
    with Stack(settings, with_prometheus=None) as stack:
        for name, where in stack.describe():
            print(f"  {name:<10} {where}")
        warmup_s = wait_until_ready(stack.settings)
        print(f"  ready after {time.monotonic() - started:.1f}s "
              f"(warm-up payment took {warmup_s:.1f}s)", flush=True)
        observer = Observer(stack.settings.kafka_bootstrap, stack.settings.partitions,
                            merchant=MERCHANT)
        hooks = Receiver(fail_first=1, fail_every=10)
        try:
            secret = _register_webhook(stack.settings, hooks)
            ok = _script(stack, observer, payments, timeout_s)
            ok = run_tour(stack.settings, timeout_s=30) and ok
            summary_ok = _summarize(stack.settings, observer, started, ok, hooks, secret)
            _dashboards(stack, started)
        finally:
            observer.close()
            hooks.close()
    print(f"elapsed {time.monotonic() - started:.1f}s")
    return 0 if ok and summary_ok else 1


def _script(stack: Stack, observer: Observer, payments: int, timeout_s: float) -> bool:
    producer = command_producer(stack.settings.kafka_bootstrap)
    sent_at = {}
    for cmd in demo_commands(payments) + [sale(payments, "card", 42_000, capture="manual")]:
        send_command(producer, cmd)
        sent_at[cmd["merchant_order_no"]] = time.time()
    producer.flush()
    manual = f"order-{payments}"
    total = payments + 1

    def by_order(order_no: str):
        return next((s for s in observer.status.values() if s.merchant_order_no == order_no),
                    None)

    def settled_count() -> int:
        return sum(1 for s in observer.status.values()
                   if s.status in FINAL or s.status == "authorized")

    _progress("payments final", observer, settled_count, total, timeout_s)
    auth = by_order(manual)
    if auth is None or auth.status != "authorized":
        print(f"manual-capture payment did not authorize: {auth}")
        return False
    first_ok = next(s for s in observer.status.values() if s.status == "succeeded"
                    and s.merchant_order_no != manual)
    send_command(producer, {"type": "capture", "merchant_id": MERCHANT,
                            "idempotency_key": "capture-1", "merchant_order_no": manual})
    send_command(producer, {"type": "refund", "merchant_id": MERCHANT,
                            "idempotency_key": "refund-1", "refund_id": "r1",
                            "merchant_order_no": first_ok.merchant_order_no,
                            "amount_minor": first_ok.amount_minor // 2})
    producer.flush()
    producer.close()
    done = observer.wait_until(
        lambda: by_order(manual).status == "succeeded"
        and by_order(first_ok.merchant_order_no).status == "partially_refunded", timeout_s)
    print(f"  manual capture: {by_order(manual).status}; "
          f"refund on {first_ok.merchant_order_no}: {by_order(first_ok.merchant_order_no).status}")
    latencies = [(s.at_ms / 1000 - sent_at[s.merchant_order_no]) * 1000
                 for s in observer.status.values() if s.merchant_order_no in sent_at
                 and s.status in ("succeeded", "failed")]
    if latencies:
        q = statistics.quantiles(latencies, n=100)
        print(f"  accepted -> final ms, all sent at once (queueing included): p50 {q[49]:.0f}  "
              f"p95 {q[94]:.0f}  "
              f"max {max(latencies):.0f}")
    stuck = [s for s in observer.status.values() if s.status not in FINAL]
    if stuck or settled_count() < total or not done:
        print(f"STUCK: {len(stuck)} payments not final, {total - settled_count()} never seen")
        return False
    return True


def _progress(label: str, observer: Observer, count, total: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    shown = -1
    while time.monotonic() < deadline and count() < total:
        observer.poll()
        if count() != shown and (count() - shown >= 25 or count() == total):
            shown = count()
            print(f"  {label}: {shown}/{total}", flush=True)


def _expected_merchant_balance(settings: Settings, observer: Observer) -> int:
    """The auditor's own figure: net of fees for captures, minus refunds."""
    terms = {c.name: c for c in load_routing(settings.config_dir).channels}
    expected = 0
    for history in observer.history.values():
        for event in history:
            channel = terms[event.channel]
            if event.trigger in ("sale", "capture") and event.status in ("succeeded",):
                captured = event.captured_minor
                expected += captured - fee_minor(captured, channel.fee_bps,
                                                 channel.fee_fixed_minor)
        last = history[-1]
        expected -= last.refunded_minor
    return expected


def _summarize(settings: Settings, observer: Observer, started: float, ok: bool,
               hooks: Receiver, secret: str) -> bool:
    merchant = accounts.merchant_pending(MERCHANT, "USD")
    want = _expected_merchant_balance(settings, observer)
    observer.wait_until(lambda: observer.balances().get(merchant) == want, 15)
    table: Counter = Counter()
    for s in observer.status.values():
        table[(s.channel, s.status)] += 1
    print("\n  channel          status               count")
    for (channel, status), n in sorted(table.items()):
        print(f"  {channel:<16} {status:<20} {n:>5}")
    balances = observer.balances()
    per_currency: dict[str, int] = defaultdict(int)
    for leg in observer.legs.values():
        per_currency[leg.currency] += leg.amount_minor
    rebuilt_ok = observer.reported_equals_rebuilt()
    zero_sum = all(v == 0 for v in per_currency.values())
    print(f"\n  ledger legs applied: {len(observer.legs)}; accounts: {len(balances)}")
    for account, total in sorted(balances.items()):
        print(f"    {account:<36} {total:>12}")
    print(f"  zero-sum per currency: {dict(per_currency)} -> {'OK' if zero_sum else 'FAILED'}")
    print(f"  merchant balance {balances.get(merchant, 0)} == expected {want}: "
          f"{'OK' if balances.get(merchant, 0) == want else 'FAILED'}")
    print(f"  reported balances equal rebuild from journal: {'OK' if rebuilt_ok else 'FAILED'}")
    print(f"  dead letters: {len(observer.deadletters)}")
    print(_reconciliation_line(settings))
    hooks_ok = _webhooks_line(observer, hooks, secret)
    good = ok and zero_sum and rebuilt_ok and balances.get(merchant, 0) == want and hooks_ok
    print(f"\nRESULT: {'OK' if good else 'FAILED'}", file=sys.stdout, flush=True)
    return good


def _dashboards(stack: Stack, started: float) -> None:
    """Every Grafana panel's query on the stack's own Prometheus, and the dashboards drawn
    to PNG from what it scraped (when Prometheus is installed)."""
    from paycore import dashboards

    if not any(p.name == "prometheus" and p.process.poll() is None for p in stack.parts):
        print("  dashboards: no Prometheus here (apt-get install prometheus to see them)")
        return
    url, end = stack.prometheus_url(), time.time()
    try:
        answers = dashboards.evaluate(url, dashboards.panel_queries(), window_s=30)
        pngs = dashboards.render(url, dashboards.OUT_DIR, stack.settings.data_dir / "dashboards",
                                 end - (time.monotonic() - started), end, window_s=30)
    except Exception as exc:  # the demo's payments are done: report, do not fail
        print(f"  dashboards: Prometheus at {url} did not answer ({exc!r})")
        return
    empty = [a.query.panel for a in answers if not a.series]
    print(f"  dashboards: {len(answers) - len(empty)}/{len(answers)} panel queries return "
          f"data on Prometheus {url}; PNGs: {pngs[0].parent}"
          + (f"\n    no data (nothing of the kind happened): {', '.join(sorted(set(empty)))}"
             if empty else ""))


def _register_webhook(settings: Settings, hooks: Receiver) -> str:
    """The demo merchant's webhook endpoint, registered over the API with its key."""
    print(f"  webhooks of {MERCHANT} go to {hooks.url} (it refuses one event in ten once, "
          "to show the retries)", flush=True)
    key = settings.api_keys[MERCHANT].get_secret_value()
    answer = httpx.put(f"http://{settings.api_host}:{settings.api_port}/v1/webhooks/endpoint",
                       json={"url": hooks.url}, timeout=15,
                       headers={"Authorization": f"Bearer {key}"})
    answer.raise_for_status()
    return answer.json()["secret"]


def _webhooks_line(observer: Observer, hooks: Receiver, secret: str,
                   timeout_s: float = 60) -> bool:
    """Every status change of the demo's payments delivered, signed, in order per payment."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        observer.poll(200)
        events = sum(len(h) for h in observer.history.values())
        if sum(e["event"]["type"] == "payment.status_changed"
               for e in hooks.delivered()) >= events:
            break
    delivered = [e for e in hooks.delivered() if e["event"]["type"] == "payment.status_changed"]
    good, requests = hooks.verified(secret)
    ok = len(delivered) == events and good == requests and hooks.in_order()
    print(f"  webhooks: {len(delivered)}/{events} status changes delivered to {MERCHANT}'s "
          f"endpoint in {requests} requests; signatures verified {good}/{requests}; "
          f"order per payment {'kept' if hooks.in_order() else 'BROKEN'} -> "
          f"{'OK' if ok else 'FAILED'}", flush=True)
    waits = [e["at"] * 1000 - e["event"]["created_ms"] for e in delivered]
    if len(waits) > 1:
        q = statistics.quantiles(waits, n=100)
        print(f"  webhook event -> delivered ms (one in ten refused once, then the backoff): "
              f"p50 {q[49]:.0f}  p95 {q[94]:.0f}  max {max(waits):.0f}", flush=True)
    return ok


def _reconciliation_line(settings: Settings) -> str:
    """What reconciliation made of the demo (no settlement reports here: the paid ones wait
    for their lines), from the API's ``GET /v1/ops/recon/report``."""
    url = f"http://{settings.api_host}:{settings.api_port}/v1/ops/recon/report"
    request = urllib.request.Request(url, headers={
        "Authorization": f"Bearer {settings.ops_key.get_secret_value()}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            report = json.load(answer)
    except OSError as exc:
        return f"  reconciliation: report not read ({exc})"
    raised = {k: v["raised"] for k, v in report["exceptions_by_kind"].items() if v["raised"]}
    waiting = sum(sum(buckets.values()) for states in report["open_by_age"].values()
                  for state, buckets in states.items() if state == "awaiting_line")
    agreed = sum(c["nothing_to_settle"] for c in report["matched"].values())
    return (f"  reconciliation: {waiting} paid, awaiting their settlement lines; {agreed} "
            f"closed with nothing to settle; exceptions {raised or 'none'} "
            f"(GET /v1/ops/recon/report, `paycore recon report`)")
