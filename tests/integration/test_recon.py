"""Reconciliation through the real stack: a settlement line that comes before the payment
is matched once the payment succeeds, a repeat of the same line is one line, and a second
line for it is a duplicate settlement."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime, timezone

import pytest
from helpers import pay, read_topic, wait_for_final

from domain import accounts
from domain.events import SettlementReported
from domain.ids import payment_id_for
from simulators import settlement as stl
from streams import topics as t
from streams.envelope import child, encode

pytestmark = pytest.mark.integration

AMOUNT, FEE = 10_000, 200
"""A card sale of 100.00 USD and the card acquirer's fee for it (1.8% + 0.20)."""


def _send(producer, command: dict) -> None:
    producer.send(t.COMMANDS, key=command["merchant_order_no"].encode(),
                  value=json.dumps(command).encode())
    producer.flush()


def _line(payment_id: str, line_id: str, serial: str = "sn-unknown-yet") -> SettlementReported:
    today = datetime.now(timezone.utc).date().isoformat()
    return SettlementReported(line_id=line_id, channel="card_acquirer", payment_id=payment_id,
                              channel_serial=serial, amount_minor=AMOUNT, currency="USD",
                              settled_on=today, period=today, fee_minor=FEE)


def _settle(producer, line: SettlementReported, source: str) -> None:
    producer.send(t.SETTLEMENTS, key=line.payment_id.encode(),
                  value=encode(child(source, line, 0, 0)))
    producer.flush()


def test_line_before_the_payment_is_booked_once_and_a_second_line_is_a_duplicate(
        stack, stack_settings, producer, observer, merchant):
    payment_id = payment_id_for(merchant, "recon-early")
    early = _line(payment_id, f"line-early-{merchant}")
    _settle(producer, early, "channel-file-1")  # the channel's line, before our payment
    _send(producer, pay(merchant, "recon-early", amount_minor=AMOUNT))
    wait_for_final(observer, merchant, "recon-early")
    _settle(producer, early, "channel-file-2")  # the same line in a file sent again
    settled = accounts.merchant_settled(merchant, "USD")
    observer.wait_until(lambda: observer.balances().get(settled) == AMOUNT - FEE, 20)

    second = _line(payment_id, f"line-again-{merchant}")
    _settle(producer, second, "channel-file-3")
    found = read_topic(stack_settings.kafka_bootstrap, t.RECON_EXCEPTIONS,
                       stack_settings.partitions,
                       lambda b: getattr(b, "payment_id", "") == payment_id, timeout_s=20)
    observer.poll(timeout_ms=1_000)

    assert [(e.body.kind.value, e.body.line_id) for _, e in found] == [
        ("duplicate_settlement", second.line_id)]
    assert observer.balances()[settled] == AMOUNT - FEE  # settled once
    assert observer.balances().get(accounts.merchant_pending(merchant, "USD")) == 0
    history = [e.reason for e in observer.history[payment_id] if e.trigger == "settlement"]
    assert len(history) == 1 and history[0].startswith("settled on")


def test_a_channel_file_ingested_settles_its_payment_and_closes_the_day(
        stack, stack_settings, producer, observer, merchant, tmp_path):
    """``paycore recon ingest``: a card bill the channel dropped, with one line naming our
    payment and one naming only the channel's serial, settles both."""
    finals = []
    for order_no in ("file-a", "file-b"):
        _send(producer, pay(merchant, order_no, amount_minor=AMOUNT))
        finals.append(wait_for_final(observer, merchant, order_no))
    day = date.fromisoformat(datetime.now(timezone.utc).date().isoformat())
    settled = [stl.Settled(f.payment_id, f.channel_serial, AMOUNT, "USD", FEE, day)
               for f in finals]
    report = stl.build_report("card_acquirer", "card", day, settled, 7,
                              stl.Drift(serial_only_lines=1))
    path = stl.write_report(report, tmp_path)

    done = subprocess.run(
        [sys.executable, "-m", "paycore", "recon", "ingest", str(path), "--bootstrap",
         stack_settings.kafka_bootstrap, "--partitions", str(stack_settings.partitions)],
        capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 lines of card_acquirer" in done.stdout and "(1 by the channel's serial)" in \
        done.stdout and "closed" in done.stdout
    settled_account = accounts.merchant_settled(merchant, "USD")
    assert observer.wait_until(
        lambda: observer.balances().get(settled_account) == 2 * (AMOUNT - FEE), 30)
