"""Merchant webhooks, pure: the signature, the retry schedule and the per-payment queue.

The queue is driven the way the stage drives it: ``next_start`` whenever possible, outcomes
through ``attempted``, the clock moved to ``wake_at``. The property at the end runs whole
queues against a simulated clock and a receiver that logs what reached it.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.webhooks import (
    RECENT_KEPT,
    TOLERANCE_S,
    DeliveryState,
    Policy,
    Queue,
    Start,
    WebhookAttempted,
    WebhookDelivery,
    attempted,
    backoff_ms,
    enqueue,
    next_start,
    settle_lost,
    sign,
    verify,
    wake_at,
)

SECRET = "whsec_test_1"
BODY = b'{"id":"evt_1","type":"payment.status_changed","data":{}}'
SIGNED_S = 1_700_000_000
T0 = 1_700_000_000_000
"""A realistic epoch: ``in_flight_ms == 0`` means "nothing running", so the clock never is 0."""
POLICY = Policy(backoff_ms=100, backoff_max_ms=1_000, retry_period_ms=5_000, timeout_ms=200)
LOST_AFTER_MS = 2 * POLICY.timeout_ms
QUEUE_KEY = "pay_1"
MERCHANT = "shop-1"


def queue_of(*event_ids: str, at: int = T0) -> Queue:
    queue = None
    for event_id in event_ids:
        queue = enqueue(queue, MERCHANT, event_id, "payment.status_changed",
                        f'{{"id":"{event_id}"}}', at)
    assert queue is not None
    return queue


def outcome_of(start: Start, ok: bool, at: int) -> WebhookAttempted:
    return WebhookAttempted(queue=QUEUE_KEY, event_id=start.pending.event_id,
                            attempt=start.attempt, ok=ok, http_status=200 if ok else 500,
                            error="" if ok else "HTTP 500", at_ms=at)


def started(queue: Queue, at: int) -> tuple[Queue, Start]:
    queue, start = next_start(queue, at, POLICY)
    assert start is not None
    return queue, start


def undisturbed_ms(attempts: int, policy: Policy) -> int:
    return min(policy.backoff_max_ms, policy.backoff_ms * 2 ** (attempts - 1))


class TestSignature:
    def test_signature_verifies_with_same_secret_body_and_time(self):
        header = sign(SECRET, SIGNED_S, BODY)

        assert verify(SECRET, header, BODY, SIGNED_S)

    def test_signature_is_hmac_sha256_of_timestamp_dot_body(self):
        expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()

        header = sign(SECRET, SIGNED_S, BODY)

        assert header == f"t=1700000000,v1={expected}"

    def test_verify_fails_when_body_changed(self):
        header = sign(SECRET, SIGNED_S, BODY)

        assert not verify(SECRET, header, BODY.replace(b"evt_1", b"evt_2"), SIGNED_S)

    def test_verify_fails_when_timestamp_changed(self):
        header = sign(SECRET, SIGNED_S, BODY)
        forged = header.replace(f"t={SIGNED_S}", f"t={SIGNED_S + 1}")

        assert not verify(SECRET, forged, BODY, SIGNED_S)

    def test_verify_fails_with_wrong_secret(self):
        header = sign(SECRET, SIGNED_S, BODY)

        assert not verify("whsec_other", header, BODY, SIGNED_S)

    def test_verify_fails_when_timestamp_older_than_tolerance(self):
        header = sign(SECRET, SIGNED_S, BODY)

        assert not verify(SECRET, header, BODY, SIGNED_S + TOLERANCE_S + 1)

    def test_verify_fails_when_timestamp_further_ahead_than_tolerance(self):
        header = sign(SECRET, SIGNED_S, BODY)

        assert not verify(SECRET, header, BODY, SIGNED_S - TOLERANCE_S - 1)

    def test_verify_accepts_timestamp_exactly_at_tolerance(self):
        header = sign(SECRET, SIGNED_S, BODY)

        assert verify(SECRET, header, BODY, SIGNED_S + TOLERANCE_S)

    def test_verify_honours_a_custom_tolerance(self):
        header = sign(SECRET, SIGNED_S, BODY)

        assert not verify(SECRET, header, BODY, SIGNED_S + 11, tolerance_s=10)

    @pytest.mark.parametrize("header", [
        "",
        "garbage",
        "t=1700000000",
        "v1={sig}",
        "t=,v1={sig}",
        "t=abc,v1={sig}",
        "t=-1700000000,v1={sig}",
        "t=1700000000,v1=",
        "t=1700000000;v1={sig}",
        "t=1700000000 v1={sig}",
    ])
    def test_verify_fails_for_malformed_header(self, header):
        sig = sign(SECRET, SIGNED_S, BODY).split("v1=")[1]

        assert not verify(SECRET, header.format(sig=sig), BODY, SIGNED_S)

    def test_verify_fails_for_timestamp_of_non_ascii_digits(self):
        sig = sign(SECRET, SIGNED_S, BODY).split("v1=")[1]

        assert not verify(SECRET, f"t=¹⁷,v1={sig}", BODY, SIGNED_S)

    def test_verify_fails_for_non_ascii_signature(self):
        header = f"t={SIGNED_S},v1=é"

        assert not verify(SECRET, header, BODY, SIGNED_S)

    @settings(max_examples=100, deadline=None, database=None)
    @given(secret=st.text(min_size=1, max_size=40), body=st.binary(max_size=200),
           timestamp_s=st.integers(0, 2**40), flipped=st.integers(0, 199))
    def test_signature_verifies_and_any_changed_byte_fails(self, secret, body, timestamp_s,
                                                           flipped):
        header = sign(secret, timestamp_s, body)
        changed = bytearray(body or b"\x00")
        changed[flipped % len(changed)] ^= 0x01

        assert verify(secret, header, body, timestamp_s)
        assert not verify(secret, header, bytes(changed), timestamp_s)


class TestBackoff:
    def test_backoff_starts_at_base(self):
        delay = backoff_ms(1, "evt_1", POLICY)

        assert POLICY.backoff_ms <= delay <= POLICY.backoff_ms * 11 // 10

    @pytest.mark.parametrize("event_id", ["evt_1", "evt_2", "msg_0f3a", ""])
    def test_backoff_doubles_per_attempt_below_cap(self, event_id):
        policy = Policy(backoff_ms=1_000, backoff_max_ms=10**9, retry_period_ms=10**10,
                        timeout_ms=1_000)

        delays = [backoff_ms(n, event_id, policy) for n in range(1, 12)]

        # the jitter is the same fraction for one event id: doubled up to one rounding step
        assert all(abs(later - 2 * earlier) <= 1 for earlier, later in itertools.pairwise(delays))

    def test_backoff_capped_at_max_plus_jitter(self):
        delays = [backoff_ms(n, "evt_1", POLICY) for n in range(5, 80)]

        assert all(POLICY.backoff_max_ms <= d <= POLICY.backoff_max_ms * 11 // 10
                   for d in delays)

    def test_backoff_same_for_same_event_id(self):
        first = [backoff_ms(n, "evt_1", POLICY) for n in range(1, 10)]

        again = [backoff_ms(n, "evt_1", POLICY) for n in range(1, 10)]

        assert first == again

    def test_backoff_jitter_differs_between_event_ids(self):
        policy = Policy(backoff_ms=1_000_000, backoff_max_ms=10**9, retry_period_ms=10**10,
                        timeout_ms=1_000)

        delays = {backoff_ms(1, f"evt_{n}", policy) for n in range(50)}

        assert len(delays) > 1

    @settings(max_examples=300, deadline=None, database=None)
    @given(attempts=st.integers(1, 200), event_id=st.text(max_size=30),
           base_ms=st.integers(10, 100_000), max_ms=st.integers(10, 10**8))
    def test_backoff_within_ten_percent_above_undisturbed(self, attempts, event_id, base_ms,
                                                           max_ms):
        policy = Policy(backoff_ms=base_ms, backoff_max_ms=max_ms, retry_period_ms=10**9,
                        timeout_ms=1_000)
        undisturbed = undisturbed_ms(attempts, policy)

        delay = backoff_ms(attempts, event_id, policy)

        assert isinstance(delay, int)
        assert undisturbed <= delay <= undisturbed + undisturbed // 10


class TestEnqueue:
    def test_enqueue_creates_queue_for_merchant_with_event_due_now(self):
        queue = enqueue(None, MERCHANT, "evt_1", "payment.status_changed", "{}", T0)

        assert queue.merchant_id == MERCHANT
        assert [(p.event_id, p.body, p.first_ms, p.next_ms, p.attempts, p.in_flight_ms)
                for p in queue.pending] == [("evt_1", "{}", T0, T0, 0, 0)]

    def test_enqueue_appends_in_order(self):
        queue = queue_of("evt_1", "evt_2")

        queue = enqueue(queue, MERCHANT, "evt_3", "payment.status_changed", "{}", T0 + 5)

        assert [p.event_id for p in queue.pending] == ["evt_1", "evt_2", "evt_3"]

    def test_enqueue_ignores_event_already_pending(self):
        queue = queue_of("evt_1", "evt_2")

        again = enqueue(queue, MERCHANT, "evt_1", "payment.status_changed", "{}", T0 + 5)

        assert again == queue

    def test_enqueue_ignores_event_pending_and_in_flight(self):
        queue, _ = started(queue_of("evt_1"), T0)

        again = enqueue(queue, MERCHANT, "evt_1", "payment.status_changed", "{}", T0 + 5)

        assert again == queue

    def test_enqueue_ignores_event_recently_delivered(self):
        queue, start = started(queue_of("evt_1"), T0)
        queue, _ = attempted(queue, outcome_of(start, True, T0 + 10), POLICY)

        again = enqueue(queue, MERCHANT, "evt_1", "payment.status_changed", "{}", T0 + 20)

        assert queue.recent == ("evt_1",)
        assert again == queue

    def test_recent_keeps_only_the_latest_event_ids(self):
        queue = None
        for n in range(RECENT_KEPT + 3):
            queue = enqueue(queue, MERCHANT, f"evt_{n}", "payment.status_changed", "{}", T0)
            queue, start = started(queue, T0 + n)
            queue, _ = attempted(queue, outcome_of(start, True, T0 + n), POLICY)

        assert len(queue.recent) == RECENT_KEPT
        assert queue.recent[-1] == f"evt_{RECENT_KEPT + 2}"
        assert "evt_0" not in queue.recent


class TestNextStart:
    def test_empty_queue_starts_nothing_and_needs_no_wake(self):
        queue = Queue(merchant_id=MERCHANT)

        after, start = next_start(queue, T0, POLICY)

        assert (after, start) == (queue, None)
        assert wake_at(queue, POLICY) == 0

    def test_head_starts_as_attempt_one(self):
        queue, start = started(queue_of("evt_1", "evt_2"), T0)

        assert (start.pending.event_id, start.attempt) == ("evt_1", 1)
        assert queue.pending[0].in_flight_ms == T0
        assert queue.pending[0].attempts == 1

    @pytest.mark.parametrize("later_ms", [0, 1, POLICY.timeout_ms, LOST_AFTER_MS])
    def test_head_in_flight_is_not_started_again(self, later_ms):
        queue, _ = started(queue_of("evt_1", "evt_2"), T0)

        after, start = next_start(queue, T0 + later_ms, POLICY)

        assert start is None
        assert after == queue

    def test_wake_at_in_flight_is_first_moment_attempt_counts_as_lost(self):
        queue, _ = started(queue_of("evt_1"), T0)

        wake = wake_at(queue, POLICY)

        assert wake == T0 + LOST_AFTER_MS + 1
        assert next_start(queue, wake - 1, POLICY)[1] is None
        assert next_start(queue, wake, POLICY)[1] is not None

    def test_lost_attempt_is_restarted_with_next_attempt_number(self):
        queue, _ = started(queue_of("evt_1", "evt_2"), T0)
        restart_at = T0 + LOST_AFTER_MS + 1

        queue, start = started(queue, restart_at)

        assert (start.pending.event_id, start.attempt) == ("evt_1", 2)
        assert queue.pending[0].in_flight_ms == restart_at

    def test_event_not_yet_due_is_not_started(self):
        queue = queue_of("evt_1", at=T0 + 50)

        after, start = next_start(queue, T0 + 49, POLICY)

        assert start is None
        assert wake_at(after, POLICY) == T0 + 50


class TestSettleLost:
    def test_a_lost_attempt_counts_as_failed_and_backs_off(self):
        queue, start = started(queue_of("evt_1"), T0)
        lost_at = T0 + LOST_AFTER_MS + 1

        after, delivery = settle_lost(queue, "q", lost_at, POLICY)

        assert delivery is not None and delivery.state is DeliveryState.retrying
        assert "lost" in delivery.error and delivery.attempts == start.attempt
        assert after.pending[0].in_flight_ms == 0
        assert after.pending[0].next_ms == lost_at + backoff_ms(1, "evt_1", POLICY)

    def test_an_attempt_still_within_its_time_is_not_lost(self):
        queue, _ = started(queue_of("evt_1"), T0)

        assert settle_lost(queue, "q", T0 + LOST_AFTER_MS, POLICY) == (queue, None)

    def test_lost_attempts_give_up_at_the_end_of_the_period(self):
        queue, at, delivery = queue_of("evt_1", "evt_2"), T0, None
        while delivery is None or delivery.state is DeliveryState.retrying:
            queue, _ = started(queue, at)
            at += LOST_AFTER_MS + 1
            queue, delivery = settle_lost(queue, "q", at, POLICY)
            at = max(at, queue.pending[0].next_ms) if queue.pending[0].event_id == "evt_1" \
                else at

        assert delivery.state is DeliveryState.failed and delivery.event_id == "evt_1"
        assert at - T0 <= POLICY.retry_period_ms + LOST_AFTER_MS + 1
        assert [p.event_id for p in queue.pending] == ["evt_2"]


class TestAttempted:
    def test_success_pops_head_and_reports_delivered(self):
        queue, start = started(queue_of("evt_1", "evt_2"), T0)

        queue, delivery = attempted(queue, outcome_of(start, True, T0 + 30), POLICY)

        assert [p.event_id for p in queue.pending] == ["evt_2"]
        assert delivery == WebhookDelivery(
            queue=QUEUE_KEY, merchant_id=MERCHANT, event_id="evt_1",
            event_type="payment.status_changed", state=DeliveryState.delivered, attempts=1,
            http_status=200, error="", next_attempt_ms=0, at_ms=T0 + 30)

    def test_after_success_next_event_is_startable_at_once(self):
        queue, start = started(queue_of("evt_1", "evt_2"), T0)
        queue, _ = attempted(queue, outcome_of(start, True, T0 + 30), POLICY)

        queue, start = started(queue, T0 + 30)

        assert (start.pending.event_id, start.attempt) == ("evt_2", 1)

    def test_outcome_for_other_event_changes_nothing(self):
        queue, start = started(queue_of("evt_1", "evt_2"), T0)
        stale = outcome_of(start, True, T0 + 30).model_copy(update={"event_id": "evt_2"})

        after, delivery = attempted(queue, stale, POLICY)

        assert (after, delivery) == (queue, None)

    def test_outcome_of_superseded_attempt_changes_nothing(self):
        queue, first = started(queue_of("evt_1"), T0)
        queue, _ = started(queue, T0 + LOST_AFTER_MS + 1)

        after, delivery = attempted(queue, outcome_of(first, True, T0 + LOST_AFTER_MS + 5),
                                    POLICY)

        assert (after, delivery) == (queue, None)

    def test_outcome_of_current_attempt_after_restart_is_applied(self):
        queue, _ = started(queue_of("evt_1"), T0)
        queue, second = started(queue, T0 + LOST_AFTER_MS + 1)

        queue, delivery = attempted(queue, outcome_of(second, True, T0 + LOST_AFTER_MS + 5),
                                    POLICY)

        assert queue.pending == ()
        assert (delivery.state, delivery.attempts) == (DeliveryState.delivered, 2)

    def test_repeated_outcome_changes_nothing(self):
        queue, start = started(queue_of("evt_1", "evt_2"), T0)
        failure = outcome_of(start, False, T0 + 30)
        queue, _ = attempted(queue, failure, POLICY)

        after, delivery = attempted(queue, failure, POLICY)

        assert (after, delivery) == (queue, None)

    def test_outcome_for_empty_queue_changes_nothing(self):
        queue, start = started(queue_of("evt_1"), T0)
        queue, _ = attempted(queue, outcome_of(start, True, T0 + 30), POLICY)

        after, delivery = attempted(queue, outcome_of(start, True, T0 + 40), POLICY)

        assert (after, delivery) == (queue, None)

    def test_failure_schedules_retry_at_backoff(self):
        queue, start = started(queue_of("evt_1", "evt_2"), T0)
        retry_at = T0 + 30 + backoff_ms(1, "evt_1", POLICY)

        queue, delivery = attempted(queue, outcome_of(start, False, T0 + 30), POLICY)

        assert (delivery.state, delivery.attempts, delivery.next_attempt_ms) == (
            DeliveryState.retrying, 1, retry_at)
        assert (delivery.http_status, delivery.error) == (500, "HTTP 500")
        assert [p.event_id for p in queue.pending] == ["evt_1", "evt_2"]
        assert queue.pending[0].in_flight_ms == 0
        assert wake_at(queue, POLICY) == retry_at

    def test_retry_starts_at_its_time_and_not_before(self):
        queue, start = started(queue_of("evt_1", "evt_2"), T0)
        queue, delivery = attempted(queue, outcome_of(start, False, T0 + 30), POLICY)

        early = next_start(queue, delivery.next_attempt_ms - 1, POLICY)[1]
        queue, retry = started(queue, delivery.next_attempt_ms)

        assert early is None
        assert (retry.pending.event_id, retry.attempt) == ("evt_1", 2)

    def test_head_given_up_after_retry_period_and_queue_moves_on(self):
        queue, now, deliveries = queue_of("evt_1", "evt_2"), T0, []
        while not deliveries or deliveries[-1].state == DeliveryState.retrying:
            queue, start = started(queue, now)
            now += 10
            queue, delivery = attempted(queue, outcome_of(start, False, now), POLICY)
            deliveries.append(delivery)
            now = wake_at(queue, POLICY)

        queue, start = started(queue, now)

        assert deliveries[-1].event_id == "evt_1"
        assert deliveries[-1].state == DeliveryState.failed
        assert deliveries[-1].attempts == len(deliveries)
        assert len(deliveries) > 1
        assert all(d.next_attempt_ms <= T0 + POLICY.retry_period_ms for d in deliveries)
        assert deliveries[-1].at_ms + backoff_ms(len(deliveries), "evt_1", POLICY) \
            > T0 + POLICY.retry_period_ms
        assert queue.recent == ("evt_1",)
        assert (start.pending.event_id, start.attempt) == ("evt_2", 1)


# The property: whole queues against a simulated clock and receiver.

LATENCY_MS = 50
OUTCOMES = st.sampled_from(["ok", "fail", "lost", "late_ok", "late_fail", "twice"])
"""ok/fail: the answer comes back after LATENCY_MS. lost: the request reached the receiver
but its outcome never comes back. late_ok/late_fail: the outcome arrives only after the head
was restarted. twice: a 2xx outcome delivered twice (redelivery)."""


class Simulation:
    """The stage's loop in miniature: a clock, an inbox of events and outcomes, a receiver."""

    def __init__(self, arrivals: list[tuple[int, int, str]], plan: list[str], then: str):
        self.inbox = sorted(arrivals)
        self.results: list[tuple[int, int, WebhookAttempted]] = []
        self.plan, self.then = iter(plan), then
        self.queue: Queue | None = None
        self.now = T0
        self.received: list[str] = []
        self.reports: list[WebhookDelivery] = []
        self.first_ms: dict[str, int] = {}
        self.sequence = itertools.count()

    def run(self, steps_max: int = 20_000) -> None:
        for _ in range(steps_max):
            self.take_arrivals()
            self.take_results()
            if self.start():
                continue
            upcoming = [t for t in (self.inbox[0][0] if self.inbox else 0,
                                    self.results[0][0] if self.results else 0,
                                    wake_at(self.queue, POLICY) if self.queue else 0) if t]
            if not upcoming:
                return
            assert min(upcoming) > self.now, "a wake-up in the past that starts nothing"
            self.now = min(upcoming)
        raise AssertionError("the queue did not settle")

    def take_arrivals(self) -> None:
        while self.inbox and self.inbox[0][0] <= self.now:
            _, _, event_id = self.inbox.pop(0)
            self.first_ms.setdefault(event_id, self.now)
            self.queue = enqueue(self.queue, MERCHANT, event_id, "payment.status_changed",
                                 "{}", self.now)

    def take_results(self) -> None:
        while self.results and self.results[0][0] <= self.now:
            _, _, result = heapq.heappop(self.results)
            before = self.queue
            self.queue, delivery = attempted(self.queue, result, POLICY)
            if delivery is None:
                assert self.queue == before, "a stale outcome changed the queue"
            else:
                assert (delivery.event_id, delivery.attempts) == (result.event_id,
                                                                  result.attempt)
                self.reports.append(delivery)

    def start(self) -> bool:
        if self.queue is None:
            return False
        self.queue, start = next_start(self.queue, self.now, POLICY)
        if start is None:
            return False
        assert next_start(self.queue, self.now, POLICY)[1] is None, "two attempts at once"
        kind = next(self.plan, self.then)
        ok = not kind.endswith("fail")
        if ok:
            self.received.append(start.pending.event_id)
        late = kind.startswith("late")
        answer_at = self.now + (3 * POLICY.timeout_ms if late else LATENCY_MS)
        for _ in range({"lost": 0, "twice": 2}.get(kind, 1)):
            result = outcome_of(start, ok, answer_at)
            heapq.heappush(self.results, (answer_at, next(self.sequence), result))
        return True


@settings(max_examples=200, deadline=None, database=None)
@given(offsets_ms=st.lists(st.integers(0, 3_000), min_size=1, max_size=15),
       redelivered=st.lists(st.tuples(st.integers(0, 14), st.integers(0, 20_000)), max_size=5),
       plan=st.lists(OUTCOMES, max_size=60), then=st.sampled_from(["ok", "fail"]))
def test_every_event_delivered_or_given_up_once_in_enqueue_order(offsets_ms, redelivered,
                                                                 plan, then):
    event_ids = [f"evt_{n:02}" for n in range(len(offsets_ms))]
    arrivals = [(T0 + at, n, event_id)
                for n, (at, event_id) in enumerate(zip(sorted(offsets_ms), event_ids, strict=True))]
    arrivals += [(arrivals[n][0] + 1 + later, 100 + k, event_ids[n])
                 for k, (n, later) in enumerate(redelivered) if n < len(event_ids)]
    simulation = Simulation(arrivals, plan, then)

    simulation.run()

    final = [r for r in simulation.reports if r.state != DeliveryState.retrying]
    delivered = [r.event_id for r in final if r.state == DeliveryState.delivered]
    order = [event_ids.index(event_id) for event_id in simulation.received]
    assert [r.event_id for r in final] == event_ids
    assert Counter(delivered) == Counter(set(delivered))
    assert set(delivered) <= set(simulation.received)
    assert order == sorted(order), simulation.received
    assert all(r.next_attempt_ms <= simulation.first_ms[r.event_id] + POLICY.retry_period_ms
               for r in simulation.reports)
    assert all(r.at_ms + backoff_ms(r.attempts, r.event_id, POLICY)
               > simulation.first_ms[r.event_id] + POLICY.retry_period_ms
               for r in final if r.state == DeliveryState.failed), "given up too early"
    assert simulation.queue.pending == ()


class TestEndpointBookIsCurrent:
    """An event created right after its merchant registered an endpoint must find it: the
    stage waits until the book has read everything registered before the event."""

    def test_waits_for_a_poll_started_after_the_event(self):
        from agents.webhooks import EndpointBook

        async def run():
            book = EndpointBook()
            book.idle(1_000)
            waiting = asyncio.create_task(book.current_at(2_000))
            await asyncio.sleep(0.05)
            assert not waiting.done()  # the book's last empty poll began before the event
            book.idle(2_500)
            return await waiting

        assert asyncio.run(run()) is True

    def test_an_event_older_than_the_last_empty_poll_does_not_wait(self):
        from agents.webhooks import EndpointBook

        async def run():
            book = EndpointBook()
            book.idle(5_000)
            return await asyncio.wait_for(book.current_at(4_000), 0.01)

        assert asyncio.run(run()) is True

    def test_gives_up_when_the_book_does_not_move(self):
        from agents.webhooks import EndpointBook

        async def run():
            return await EndpointBook().current_at(1_000, timeout_s=0.05)

        assert asyncio.run(run()) is False
