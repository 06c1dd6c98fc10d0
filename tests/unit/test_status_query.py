"""A silent channel is asked before the order gives up: status queries, then failover or
timed_out; the answer to a query is applied like the callback it stands for."""

from __future__ import annotations

from decisions import of_type, only

from domain.commands import Method, Pay
from domain.events import (
    ChannelOperation,
    ChannelOutcome,
    ChannelRequested,
    ChannelResponded,
    DeadlineReached,
)
from domain.orders import CommandStatus, decide_channel_response, decide_command, decide_deadline
from domain.risk import RiskDecision, Verdict
from domain.routing import Payment, RoutingRules, plan_route

T0 = 1_000_000
RULES = RoutingRules.model_validate({"max_attempts": 2, "channels": [
    {"name": "acq", "methods": ["card"], "currencies": ["EUR"], "priority": 1,
     "callback_timeout_ms": 2_000, "status_query": True, "status_queries_max": 2,
     "status_query_timeout_ms": 500},
    {"name": "backup", "methods": ["card"], "currencies": ["EUR"], "priority": 2},
]})


def _paid(rules: RoutingRules = RULES):
    cmd = Pay(merchant_id="m", merchant_order_no="o", idempotency_key="k", amount_minor=1_000,
              currency="EUR", method=Method.card)
    plan = plan_route(rules, Payment(cmd.subject_id(), "m", Method.card, "EUR", 1_000))
    decided = decide_command(None, cmd, plan, T0)
    return decided.order, only(decided, ChannelRequested)


def _not_found(sale: ChannelRequested) -> ChannelResponded:
    """A status query's answer: the channel never received the attempt."""
    return ChannelResponded(request_id=sale.request_id, payment_id=sale.payment_id,
                            channel="acq", operation=ChannelOperation.sale,
                            outcome=ChannelOutcome.declined, amount_minor=1_000,
                            currency="EUR", channel_serial="", decline_code="not_found",
                            via_query=True)


def _deadline(order, at_ms: int):
    return decide_deadline(order, DeadlineReached(payment_id=order.payment_id,
                                                  deadline_ms=order.deadline_ms), at_ms)


def test_queries_then_times_out():
    order, sale = _paid()

    first = _deadline(order, T0 + 2_000)
    second = _deadline(first.order, T0 + 2_500)
    third = _deadline(second.order, T0 + 3_000)

    queries = [only(d, ChannelRequested) for d in (first, second)]
    assert [(q.operation, q.channel, q.reference) for q in queries] == [
        (ChannelOperation.query, "acq", f"{sale.request_id}/sale/1"),
        (ChannelOperation.query, "acq", f"{sale.request_id}/sale/2")]
    assert (first.order.status.value, first.order.deadline_ms) == ("processing", T0 + 2_500)
    assert of_type(first, object) == [queries[0]]  # a note in the order, no status event
    assert third.order.status.value == "timed_out"
    assert of_type(third, ChannelRequested) == []


def test_query_answer_applied_like_the_callback_and_the_callback_then_a_replay():
    order, sale = _paid()
    asked = _deadline(order, T0 + 2_000).order
    found = ChannelResponded(request_id=sale.request_id, payment_id=sale.payment_id,
                             channel="acq", operation=ChannelOperation.sale,
                             outcome=ChannelOutcome.succeeded, amount_minor=1_000,
                             currency="EUR", channel_serial="s1", via_query=True)

    applied = decide_channel_response(asked, found, T0 + 2_100)
    callback = decide_channel_response(applied.order, found.model_copy(
        update={"via_query": False}), T0 + 9_000)

    assert applied.order.status.value == "succeeded"
    assert applied.order.history[-1].reason == "by status query: captured"
    assert callback.status is CommandStatus.callback_replayed
    assert callback.order.status.value == "succeeded"


def test_not_found_by_query_fails_the_order_safely():
    order, sale = _paid(RULES.model_copy(update={"max_attempts": 1}))
    asked = _deadline(order, T0 + 2_000).order
    not_found = _not_found(sale)

    failed = decide_channel_response(asked, not_found, T0 + 2_100)

    assert failed.order.status.value == "failed"
    assert failed.order.history[-1].reason == "declined: not_found (by status query)"


def test_failover_after_the_queries_when_the_channel_allows_it():
    rules = RULES.model_copy(update={"channels": (
        RULES.channels[0].model_copy(update={"failover_on_timeout": True}),
        RULES.channels[1])})
    order, sale = _paid(rules)

    after_queries = _deadline(_deadline(order, T0 + 2_000).order, T0 + 2_500).order
    moved = _deadline(after_queries, T0 + 3_000)

    retry = only(moved, ChannelRequested)
    assert (retry.channel, retry.operation, retry.reference) == (
        "backup", ChannelOperation.sale, "failover-1")
    assert moved.order.status.value == "processing"


def test_channel_without_queries_times_out_at_once():
    rules = RULES.model_copy(update={"channels": (
        RULES.channels[0].model_copy(update={"status_query": False}), RULES.channels[1])})
    order, _ = _paid(rules)

    assert _deadline(order, T0 + 2_000).order.status.value == "timed_out"


def test_timed_out_order_keeps_asking_ever_less_often_then_leaves_it_to_reconciliation():
    order, sale = _paid()
    at = T0 + 2_000
    for _ in range(2):  # the two queries before the timeout
        order = _deadline(order, at).order
        at = order.deadline_ms
    timed_out = _deadline(order, at).order
    assert timed_out.status.value == "timed_out" and timed_out.deadline_ms == at + 1_000

    gaps, order, at = [], timed_out, timed_out.deadline_ms
    while order.deadline_ms:
        asked = _deadline(order, at)
        if not of_type(asked, ChannelRequested):
            break
        gaps.append(asked.order.deadline_ms - at)
        order, at = asked.order, asked.order.deadline_ms

    assert gaps == [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000]
    assert order.status.value == "timed_out"
    assert _deadline(order, at).order.deadline_ms == 0  # reconciliation's now


def test_query_answer_after_the_timeout_resolves_the_order():
    order, sale = _paid(RULES.model_copy(update={"max_attempts": 1}))
    at = T0 + 2_000
    for _ in range(3):
        order = _deadline(order, at).order
        at = order.deadline_ms or at
    assert order.status.value == "timed_out"
    not_found = _not_found(sale)

    failed = decide_channel_response(_deadline(order, at).order, not_found, at + 10)

    assert failed.order.status.value == "failed"
    assert failed.order.deadline_ms == 0


def test_not_found_fails_over_when_another_candidate_remains():
    order, sale = _paid()
    asked = _deadline(order, T0 + 2_000).order
    not_found = _not_found(sale)

    moved = decide_channel_response(asked, not_found, T0 + 2_100)

    retry = only(moved, ChannelRequested)
    assert (retry.channel, retry.reference) == ("backup", "failover-1")
    assert moved.order.status.value == "processing"


def test_bank_redirect_is_noted_once_and_the_notification_decides():
    order, sale = _paid()
    pending = ChannelResponded(request_id=sale.request_id, payment_id=sale.payment_id,
                               channel="acq", operation=ChannelOperation.sale,
                               outcome=ChannelOutcome.pending, amount_minor=1_000,
                               currency="EUR", channel_serial="")
    paid = pending.model_copy(update={"outcome": ChannelOutcome.succeeded,
                                      "channel_serial": "s1"})

    redirected = decide_channel_response(order, pending, T0 + 10)
    again = decide_channel_response(redirected.order, pending, T0 + 20)
    final = decide_channel_response(again.order, paid, T0 + 900)

    assert redirected.status is CommandStatus.accepted and redirected.outputs == ()
    assert redirected.order.status.value == "processing" and redirected.order.applied == ()
    assert "waiting for the payer" in redirected.order.history[-1].reason
    assert again.status is CommandStatus.callback_replayed
    assert final.order.status.value == "succeeded"


def test_payer_retry_while_held_for_review_is_refused_as_such():
    cmd = Pay(merchant_id="m", merchant_order_no="o", idempotency_key="k", amount_minor=1_000,
              currency="EUR", method=Method.card)
    plan = plan_route(RULES, Payment(cmd.subject_id(), "m", Method.card, "EUR", 1_000))
    review = Verdict(decision=RiskDecision.review, score=60, review_ttl_ms=60_000)
    held = decide_command(None, cmd, plan, T0, verdict=review).order
    retry = Pay.model_validate({**cmd.model_dump(), "method": "card",
                                "idempotency_key": "k2", "payer": {"country": "DE"}})

    again = decide_command(held, retry, plan, T0 + 10, verdict=Verdict(
        decision=RiskDecision.approve, score=0))

    assert held.status.value == "risk_review"
    assert again.status is CommandStatus.order_held_for_review and again.outputs == ()
