"""A webhook receiver: an HTTP endpoint on 127.0.0.1 that records what paycore POSTs and
answers by a rule. The demo shows deliveries with it; the tests hold the webhooks to it."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from domain.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, verify


class Receiver:
    """An HTTP endpoint that records every request and answers by a rule:
    ``fail_first`` attempts of each event (of every ``fail_every``-th event seen) get a 500,
    then 200; ``always_fail`` never 2xx."""

    def __init__(self, fail_first: int = 0, always_fail: bool = False,
                 fail_every: int = 1) -> None:
        self.fail_first, self.always_fail, self.fail_every = fail_first, always_fail, fail_every
        self.seen: dict[str, int] = {}
        self.requests: list[dict] = []
        self.tries: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    event_id = self.headers.get(EVENT_ID_HEADER, "")
                    index = receiver.seen.setdefault(event_id, len(receiver.seen))
                    failing = index % receiver.fail_every == 0
                    ok = not receiver.always_fail and (
                        not failing or receiver.tries[event_id] >= receiver.fail_first)
                    receiver.tries[event_id] += 1
                    receiver.requests.append({
                        "event_id": event_id, "body": body, "at": time.time(),
                        "signature": self.headers.get(SIGNATURE_HEADER, ""), "ok": ok})
                self.send_response(200 if ok else 500)
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[dict]:
        """The first 2xx-answered request of each event, in the order they were answered."""
        seen, out = set(), []
        with self.lock:
            for r in self.requests:
                if r["ok"] and r["event_id"] not in seen:
                    seen.add(r["event_id"])
                    out.append({**r, "event": json.loads(r["body"])})
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def verified(self, secret: str) -> tuple[int, int]:
        """(requests whose signature verifies with ``secret``, requests)."""
        now = int(time.time())
        with self.lock:
            requests = list(self.requests)
        return sum(verify(secret, r["signature"], r["body"], now) for r in requests), \
            len(requests)

    def in_order(self) -> bool:
        """No request for a payment's event before its previous event was answered 2xx."""
        with self.lock:
            requests = list(self.requests)
        order: dict[str, list[str]] = defaultdict(list)
        done_at: dict[str, float] = {}
        first_at: dict[str, float] = {}
        for r in requests:
            key = _subject(json.loads(r["body"]))
            if r["event_id"] not in order[key]:
                order[key].append(r["event_id"])
            first_at.setdefault(r["event_id"], r["at"])
            if r["ok"]:
                done_at.setdefault(r["event_id"], r["at"])
        return all(before in done_at and done_at[before] <= first_at[after]
                   for queue in order.values()
                   for before, after in zip(queue, queue[1:], strict=False))


def _subject(event: dict) -> str:
    data = event["data"]
    return data.get("payment_id") or data.get("mandate_key", "")
