"""Every process exposes /metrics over HTTP with paycore's own series."""

from __future__ import annotations

import httpx
import pytest
from helpers import pay, wait_for_final

from streams import topics as t

pytestmark = pytest.mark.integration


def _scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def test_worker_and_simulator_export_stage_and_channel_series(stack, stack_settings,
                                                             producer, observer, merchant):
    import json

    producer.send(t.COMMANDS, value=json.dumps(pay(merchant, "metered")).encode())
    producer.flush()
    wait_for_final(observer, merchant, "metered")

    worker = _scrape(stack_settings.worker_web_port)
    simulator = _scrape(stack_settings.simulator_metrics_port)

    for stage in ("intake", "dedup", "risk", "orders", "ledger"):
        assert f'paycore_stage_events_total{{stage="{stage}"}}' in worker
    assert 'paycore_payments_final_total{channel="card_acquirer",method="card",' \
        'status="succeeded"}' in worker
    assert 'paycore_channel_requests_total{channel="card_acquirer",operation="sale",' \
        'outcome="succeeded"}' in simulator
    assert "pay_" not in worker  # no payment ids in labels
