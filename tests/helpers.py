"""Small helpers the integration and e2e tests share."""

from __future__ import annotations

from domain.ids import payment_id_for
from paycore.observe import Observer

FINAL = {"succeeded", "failed", "canceled", "refunded", "partially_refunded", "amount_mismatch",
         "authorized", "timed_out"}


def pay(merchant: str, order_no: str, amount_minor: int = 1_000, method: str = "card",
        **extra) -> dict:
    command = {"type": "pay", "merchant_id": merchant, "idempotency_key": f"k-{order_no}",
               "merchant_order_no": order_no, "amount_minor": amount_minor,
               "currency": "USD", "method": method}
    command.update(extra)
    return command


def wait_for_final(observer: Observer, merchant: str, order_no: str, timeout_s: float = 30,
                   statuses: set[str] = FINAL):
    """The payment's latest status event once it is in ``statuses``, else None."""
    payment_id = payment_id_for(merchant, order_no)
    ok = observer.wait_until(
        lambda: payment_id in observer.status
        and observer.status[payment_id].status in statuses, timeout_s)
    return observer.status.get(payment_id) if ok else None


def read_topic(bootstrap: str, topic: str, partitions: int, match, timeout_s: float = 20,
               want: int = 1) -> list:
    """Decoded envelopes on ``topic`` (from the beginning) whose body satisfies ``match``."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    from streams.envelope import decode

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             group_id=None)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    found, deadline = [], time.monotonic() + timeout_s
    try:
        while len(found) < want and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    env = decode(record.value)
                    if match(env.body):
                        found.append((record.key, env))
        return found
    finally:
        consumer.close()


def poll_status(get, want_status: int, timeout_s: float = 20,
                until=lambda _body: True) -> dict:
    """``get()`` until it answers ``want_status`` with a body ``until`` accepts; that body."""
    import time

    deadline = time.monotonic() + timeout_s
    response = get()
    while not (response.status_code == want_status and until(response.json())) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
        response = get()
    assert response.status_code == want_status, response.text
    return response.json()
