"""Analysts change routing.yaml and risk.yaml while the stack runs: the next payments are
decided by the new version (recorded with each decision); a bad file is refused with its
line and the rules in force stay. Its own stack and its own copy of the config folder, so
the shared stack's rules never change under other tests.
"""

from __future__ import annotations

import shutil
import time

import pytest
import yaml
from helpers import pay, wait_for_final

from domain.ids import payment_id_for
from paycore.observe import Observer, command_producer, send_command
from paycore.stack import Stack, wait_until_ready
from streams.rules_config import load_risk, load_routing, version_of

pytestmark = pytest.mark.e2e
MERCHANT = "reload"


@pytest.fixture
def config_copy(deterministic_config, tmp_path):
    folder = tmp_path / "config"
    shutil.copytree(deterministic_config, folder)
    return folder


@pytest.fixture
def reload_stack(own_settings, config_copy):
    settings = own_settings.model_copy(update={"config_dir": config_copy})
    with Stack(settings, with_api=False) as stack:
        wait_until_ready(stack.settings)
        yield stack


def _rewrite(path, change) -> str:
    doc = yaml.safe_load(path.read_text())
    change(doc)
    text = yaml.safe_dump(doc, sort_keys=False)
    path.write_text(text)
    return version_of(text.encode())


def _wait_for_log(stack, part: str, needle: str, timeout_s: float = 10) -> str:
    log_path = next(p.log_path for p in stack.parts if p.name == part)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if needle in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not in {part} log:\n{text[-2000:]}")


def test_rule_files_reload_without_restart(reload_stack, config_copy):
    settings = reload_stack.settings
    producer = command_producer(settings.kafka_bootstrap)
    observer = Observer(settings.kafka_bootstrap, settings.partitions, merchant=MERCHANT)
    routing_v1 = load_routing(config_copy).version
    risk_v1 = load_risk(config_copy).version

    def first_reason(order_no: str) -> str:
        return observer.history[payment_id_for(MERCHANT, order_no)][0].reason

    def routed_reason(order_no: str) -> str:
        return next(e.reason for e in observer.history[payment_id_for(MERCHANT, order_no)]
                    if e.reason.startswith("routed"))

    # 1. As shipped: a card acquirer silent to callback and status queries times the order
    #    out (no failover on timeout).
    send_command(producer, pay(MERCHANT, "silent-1", amount_minor=2_411))
    assert wait_for_final(observer, MERCHANT, "silent-1").status == "timed_out"
    assert f"[routing {routing_v1}]" in routed_reason("silent-1")
    assert f"[rules {risk_v1}]" in first_reason("silent-1")

    # 2. Turn on failover on timeout for the card acquirer: the next silent payment moves
    #    to the backup acquirer and succeeds there.
    def failover_on_timeout(doc):
        card = next(c for c in doc["channels"] if c["name"] == "card_acquirer")
        card["failover_on_timeout"] = True

    routing_v2 = _rewrite(config_copy / "routing.yaml", failover_on_timeout)
    _wait_for_log(reload_stack, "worker-0", f"rules {routing_v2} in force")
    send_command(producer, pay(MERCHANT, "silent-2", amount_minor=3_411))
    final = wait_for_final(observer, MERCHANT, "silent-2",
                           statuses={"succeeded", "failed", "timed_out"})
    reasons = [e.reason for e in observer.history[payment_id_for(MERCHANT, "silent-2")]]
    assert (final.status, final.channel) == ("succeeded", "card_backup"), reasons
    assert any("failover from card_acquirer to card_backup after no answer in time" in r
               for r in reasons), reasons
    assert f"[routing {routing_v2}]" in routed_reason("silent-2")

    # 3. A bad risk file (a velocity window below its minimum) is refused with its line;
    #    payments go on under the rules in force.
    risk_path = config_copy / "risk.yaml"
    good_risk = risk_path.read_text()
    lines = good_risk.splitlines()
    bad = next(i for i, line in enumerate(lines) if "window_ms: 60000" in line)
    lines[bad] = lines[bad].replace("60000", "5")
    risk_path.write_text("\n".join(lines) + "\n")
    log = _wait_for_log(reload_stack, "worker-0", f"risk.yaml:{bad + 1}:")
    assert "window_ms" in log and f"rules {risk_v1} stay in force" in log
    send_command(producer, pay(MERCHANT, "under-v1", amount_minor=1_000))
    assert wait_for_final(observer, MERCHANT, "under-v1").status == "succeeded"
    assert f"[rules {risk_v1}]" in first_reason("under-v1")

    # 4. A valid new risk file: every card payment over 5.00 goes to review, and a review
    #    nobody decides expires after 2 s.
    def strict(doc):
        doc["review_ttl_ms"] = 2_000
        doc["rules"].append({"id": "card-over-5", "kind": "amount_limit", "methods": ["card"],
                             "max_minor": 500, "score": 60})

    risk_path.write_text(good_risk)
    risk_v2 = _rewrite(risk_path, strict)
    _wait_for_log(reload_stack, "worker-0", f"rules {risk_v2} in force")
    send_command(producer, pay(MERCHANT, "held", amount_minor=1_000))
    held = wait_for_final(observer, MERCHANT, "held", statuses={"risk_review"})
    assert held is not None and "card-over-5 +60" in held.reason
    assert f"[rules {risk_v2}]" in held.reason
    final = wait_for_final(observer, MERCHANT, "held", statuses={"failed"}, timeout_s=15)
    assert final is not None and final.reason == "risk review expired: nobody decided in time"

    producer.close()
    observer.close()
