"""The ops console's routes over real HTTP on the shared stack: search and timelines, the
summary, resolving reconciliation exceptions (preview, confirmation, once), dead letters
(replay, discard, the first action wins), and the ops key required for all of it."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import pytest
from console_flows import AMOUNT, dead_lettered, duplicate_settlement, poll, sale
from kafka import KafkaConsumer, TopicPartition

from domain.commands import ResolveException
from domain.ids import payment_id_for
from streams import topics as t
from streams.envelope import KEPT_BYTES_MAX

pytestmark = pytest.mark.integration

CONSOLE_PATHS = ("/v1/ops/search", "/v1/ops/summary", "/v1/ops/deadletters",
                 "/v1/ops/recon/exceptions")


def _send(producer, cmd) -> None:
    producer.send(t.COMMANDS, key=cmd.merchant_order_no.encode(),
                  value=cmd.model_dump_json().encode())
    producer.flush()


def keys_of(settings, topic: str, value: bytes, timeout_s: float = 20.0) -> list[bytes]:
    """The keys of every record on ``topic`` carrying exactly ``value``, once one is seen."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                             enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends, found = consumer.end_offsets(tps), []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (
                not found or any(consumer.position(tp) < ends[tp] for tp in tps)):
            for records in consumer.poll(timeout_ms=200, max_records=5000).values():
                found += [r.key for r in records if r.value == value]
            ends = consumer.end_offsets(tps) if not found else ends
        return found
    finally:
        consumer.close()


class TestKeys:
    def test_every_console_route_refuses_without_the_ops_key(self, anon, shop):
        paths = anon.get("/openapi.json").json()["paths"]
        ours = {(method.upper(), path.replace("{payment_id}", "pay_x").replace(
            "{exception_id}", "rx_x").replace("{dead_letter_id}", "dl_x"))
            for path, methods in paths.items() if path.startswith("/v1/ops/")
            for method in methods}

        none = {f"{m} {p}": anon.request(m, p, json={}).status_code for m, p in ours}
        merchant = {f"{m} {p}": shop.client.request(m, p, json={}).json()["code"]
                    for m, p in ours}

        assert len(ours) >= 15 and {p for _, p in ours} >= set(CONSOLE_PATHS)
        assert set(none.values()) == {401}, none
        assert set(merchant.values()) == {"ops_key_required"}, merchant

    def test_the_page_itself_holds_no_data_and_forbids_framing(self, anon):
        page = anon.get("/console")
        script = anon.get("/console/static/console.js")

        assert page.status_code == 200 and "ops-key" not in page.text  # built by the script
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert script.status_code == 200 and "sessionStorage" in script.text


class TestTimeline:
    def test_search_finds_a_payment_by_each_of_its_identifiers(self, shop, api):
        paid = sale(shop, "con-search")
        payment = paid["payment"]

        found = {q: api.get("/v1/ops/search", params={"q": q}).json()["matches"]
                 for q in (paid["payment_id"], "con-search", payment["channel_serial"])}

        assert {q: [(m["payment_id"], m["matched_by"]) for m in matches]
                for q, matches in found.items()} == {
            paid["payment_id"]: [(paid["payment_id"], "payment_id")],
            "con-search": [(paid["payment_id"], "merchant_order_no")],
            payment["channel_serial"]: [(paid["payment_id"], "channel_serial")]}
        assert api.get("/v1/ops/search", params={"q": "no-such-thing"}).json()["matches"] == []

    def test_a_timeline_has_every_step_in_order_and_the_ignored_copy(self, shop, api):
        paid = sale(shop, "con-twice", amount=10_207)  # the channel answers twice

        def posted_and_copied(r):  # the copy can come after the ledger posts
            items = r.json()["items"]
            return (any(i["kind"] == "ledger" and "3 of 3" in i["detail"] for i in items)
                    and any(i["kind"] == "callback" and i["count"] >= 2 for i in items))

        timeline = poll(lambda: api.get(f"/v1/ops/payments/{paid['payment_id']}/timeline"),
                        posted_and_copied).json()

        items = timeline["items"]
        kinds = [i["kind"] for i in items]
        assert [k for k in ("risk", "routing", "channel", "callback", "status", "ledger")
                if k in kinds] == ["risk", "routing", "channel", "callback", "status", "ledger"]
        assert [i["at_ms"] for i in items] == sorted(i["at_ms"] for i in items)
        assert kinds.index("routing") < kinds.index("channel") < kinds.index("callback")
        answered = [i for i in items if i["kind"] == "callback"]
        copies = answered[0]["count"] - 1  # it answers, notifies, and (207) answers again
        assert len(answered) == 1 and copies >= 1
        assert answered[0]["note"] == (f"{copies} {'copy' if copies == 1 else 'copies'} of the "
                                       "same answer again: ignored")
        assert timeline["payment"]["status"] == "succeeded"
        assert "risk approve" in items[0]["detail"]

    def test_an_unknown_payment_has_no_timeline(self, api):
        answer = api.get("/v1/ops/payments/pay_nothing_here/timeline")

        assert (answer.status_code, answer.json()["code"]) == (404, "payment_not_found")

    def test_the_summary_counts_what_waits_for_ops(self, shop, api):
        sale(shop, "con-summary")

        summary = api.get("/v1/ops/summary").json()

        assert summary["finals"] >= 1 and summary["throughput_per_s"] > 0
        assert 0 < summary["success_rate"] <= 1
        assert summary["open_reviews"] == len(api.get("/v1/ops/reviews").json()["reviews"])
        assert summary["payments"] >= 1 and summary["audit_violations"] == 0


class TestResolutions:
    def test_a_write_off_needs_the_previews_digest_and_then_applies_once(
            self, shop, api, producer):
        paid, exception = duplicate_settlement(shop, api, producer, "con-dup")
        path = f"/v1/ops/recon/exceptions/{exception['exception_id']}"
        ask = {"action": "write_off", "resolver": "ana", "comment": "paid twice by the bank"}

        unconfirmed = api.post(f"{path}/resolve", json=ask, headers={"Idempotency-Key": "w-0"})
        shown = api.post(f"{path}/preview", json={"action": "write_off"}).json()
        answers = [api.post(f"{path}/resolve", json={**ask, "confirm": shown["digest"]},
                            headers={"Idempotency-Key": "w-1"}) for _ in range(2)]
        done = poll(lambda: api.get(path), lambda r: r.json()["state"]["state"] == "resolved")
        _send(producer, ResolveException(  # the same resolution again, past the API's check
            merchant_id=shop.id, merchant_order_no="con-dup", idempotency_key="ops-w-9",
            exception_id=exception["exception_id"], kind="duplicate_settlement",
            action="write_off", resolver="eve", comment="once more", channel="card_acquirer",
            currency="USD", amount_minor=AMOUNT, fee_minor=200, line_id=exception["line_id"]))
        time.sleep(1.0)  # had it been applied again, its entry would be in by now

        assert (unconfirmed.status_code, unconfirmed.json()["code"]) == (
            422, "confirmation_required")
        assert exception["actions"] == ["write_off"]
        assert [{leg["account_id"]: leg["amount_minor"] for leg in e["legs"]}
                for e in shown["entries"]] == [{"cash:card_acquirer:USD": -(AMOUNT - 200),
                                                "chfees:card_acquirer:USD": -200,
                                                "suspense:USD": AMOUNT}]
        assert {a.status_code for a in answers} == {202}
        state = done.json()["state"]
        assert (state["action"], state["resolver"], state["comment"], state["item_state"]) == (
            "write_off", "ana", "paid twice by the bank", "closed")
        suspense = poll(lambda: api.get("/v1/accounts/suspense:USD/entries"),
                        lambda r: any(e["payment_id"] == paid["payment_id"]
                                      for e in r.json()["entries"]))
        assert [e["amount_minor"] for e in suspense.json()["entries"]
                if e["payment_id"] == paid["payment_id"]] == [AMOUNT]  # once, of three asks
        timeline = api.get(f"/v1/ops/payments/{paid['payment_id']}/timeline").json()["items"]
        assert [i["title"] for i in timeline if i["kind"] == "resolution"] == [
            "duplicate_settlement resolved by ana: write_off"]
        again = api.post(f"{path}/resolve", json={**ask, "confirm": shown["digest"]},
                         headers={"Idempotency-Key": "w-3"})
        assert (again.status_code, again.json()["code"]) == (409, "exception_not_open")

    def test_an_action_the_kind_does_not_allow_is_refused_precisely(self, shop, api, producer):
        _, exception = duplicate_settlement(shop, api, producer, "con-dup-2")
        path = f"/v1/ops/recon/exceptions/{exception['exception_id']}"

        refund = api.post(f"{path}/preview", json={"action": "refund"})
        nonsense = api.post(f"{path}/resolve", json={"action": "pay_me", "resolver": "ana",
                                                     "comment": "x"},
                            headers={"Idempotency-Key": "n-1"})
        no_comment = api.post(f"{path}/resolve", json={"action": "write_off",
                                                       "resolver": "ana", "comment": ""},
                              headers={"Idempotency-Key": "n-2"})
        missing = api.post("/v1/ops/recon/exceptions/rx_none/preview",
                           json={"action": "write_off"})

        assert (refund.status_code, refund.json()["code"]) == (409, "action_not_allowed")
        assert "allowed: write_off" in refund.json()["detail"]
        assert [e["field"] for e in nonsense.json()["errors"]] == ["body.action"]
        assert [e["field"] for e in no_comment.json()["errors"]] == ["body.comment"]
        assert (missing.status_code, missing.json()["code"]) == (404, "exception_not_found")


class TestDeadLetters:
    def test_a_corrected_copy_is_replayed_and_the_payment_goes_through(
            self, shop, api, producer):
        dead = dead_lettered(producer, api, shop.id, "con-dl-1")
        path = f"/v1/ops/deadletters/{dead['dead_letter_id']}"
        raw = api.get(path).json()["value_text"]
        fixed = json.dumps({**json.loads(raw), "amount_minor": 1_050})

        still_bad = api.post(f"{path}/replay", json={"value": raw, "operator": "ana"},
                             headers={"Idempotency-Key": "r-0"})
        replayed = api.post(f"{path}/replay", json={"value": fixed, "operator": "ana",
                                                    "comment": "amount in minor units"},
                            headers={"Idempotency-Key": "r-1"})
        after = poll(lambda: api.get(path), lambda r: r.json()["state"] != "open").json()
        payment = poll(lambda: api.get(f"/v1/payments/{dead['payment_id']}"),
                       lambda r: r.status_code == 200 and r.json()["status"] == "succeeded")
        discard = api.post(f"{path}/discard", json={"operator": "bo", "reason": "late"},
                           headers={"Idempotency-Key": "d-1"})

        assert (still_bad.status_code, still_bad.json()["code"]) == (422, "replay_invalid")
        assert "amount_minor" in still_bad.json()["errors"][0]["message"]
        assert replayed.status_code == 202
        assert (after["state"], after["resolved"]["operator"], after["resolved"]["note"]) == (
            "replayed", "ana", "amount in minor units")
        assert [(a["action"], a["status"]) for a in after["actions"]] == [
            ("replay", "accepted")]
        assert payment.json()["amount_minor"] == 1_050
        assert dead["payment_id"] == payment_id_for(shop.id, "con-dl-1")
        assert (discard.status_code, discard.json()["code"]) == (
            409, "dead_letter_already_replayed")

    def test_a_key_that_is_not_utf8_is_replayed_as_its_bytes(
            self, shop, api, producer, stack_settings):
        key = b"\xff\x00con-dl-bin"
        dead = dead_lettered(producer, api, shop.id, "con-dl-bin", key=key)
        path = f"/v1/ops/deadletters/{dead['dead_letter_id']}"
        shown = api.get(path).json()
        fixed = json.dumps({**json.loads(shown["value_text"]), "amount_minor": 1_070})

        replayed = api.post(f"{path}/replay", json={"value": fixed, "operator": "ana"},
                            headers={"Idempotency-Key": "r-bin"})
        payment = poll(lambda: api.get(f"/v1/payments/{dead['payment_id']}"),
                       lambda r: r.status_code == 200 and r.json()["status"] == "succeeded")

        assert (shown["key_text"], base64.b64decode(shown["key_base64"])) == (None, key)
        assert replayed.status_code == 202
        assert payment.json()["amount_minor"] == 1_070
        assert keys_of(stack_settings, t.COMMANDS, fixed.encode()) == [key]

    def test_a_discard_needs_a_reason_and_is_recorded(self, shop, api, producer):
        dead = dead_lettered(producer, api, shop.id, "con-dl-2")
        path = f"/v1/ops/deadletters/{dead['dead_letter_id']}"

        no_reason = api.post(f"{path}/discard", json={"operator": "bo", "reason": ""},
                             headers={"Idempotency-Key": "d-0"})
        api.post(f"{path}/discard", json={"operator": "bo", "reason": "test traffic"},
                 headers={"Idempotency-Key": "d-1"})
        after = poll(lambda: api.get(path), lambda r: r.json()["state"] != "open").json()
        listed = api.get("/v1/ops/deadletters", params={"state": "discarded",
                                                         "limit": 1000}).json()

        assert [e["field"] for e in no_reason.json()["errors"]] == ["body.reason"]
        assert (after["state"], after["resolved"]["operator"], after["resolved"]["note"]) == (
            "discarded", "bo", "test traffic")
        assert dead["dead_letter_id"] in [d["dead_letter_id"] for d in listed["dead_letters"]]
        assert listed["stages"]["intake"] >= 1 and listed["reasons"]["invalid command"] >= 1

    def test_a_huge_command_is_parked_cut_short_and_can_only_be_discarded(
            self, shop, api, producer):
        command = {"type": "pay", "merchant_id": shop.id, "idempotency_key": "k-con-dl-huge",
                   "merchant_order_no": "con-dl-huge", "amount_minor": 1_000,
                   "currency": "USD", "method": "card", "pad": "x" * 1_000_000}
        value = json.dumps(command).encode()
        key = f"{shop.id}:con-dl-huge".encode()
        producer.send(t.COMMANDS, key=key, value=value)
        producer.flush()

        def ours(answer) -> list[dict]:
            details = (api.get(f"/v1/ops/deadletters/{d['dead_letter_id']}").json()
                       for d in answer.json()["dead_letters"])
            return [d for d in details if d["key_text"] == key.decode()]

        found = ours(poll(lambda: api.get("/v1/ops/deadletters",
                                          params={"reason": "too_large", "limit": 1000}),
                          lambda r: bool(ours(r)), timeout_s=40))
        assert found, "the huge command was never dead-lettered"
        dead = found[0]
        path = f"/v1/ops/deadletters/{dead['dead_letter_id']}"
        replay = api.post(f"{path}/replay", json={"value": value[:1000].decode(),
                                                  "operator": "ana"},
                          headers={"Idempotency-Key": "r-huge"})
        api.post(f"{path}/discard", json={"operator": "bo", "reason": "a client bug"},
                 headers={"Idempotency-Key": "d-huge"})
        after = poll(lambda: api.get(path), lambda r: r.json()["state"] != "open").json()

        assert (dead["stage"], dead["truncated"], dead["replayable"]) == ("intake", True, False)
        assert dead["reason"].startswith("too_large: ")
        assert value.decode().startswith(dead["value_text"])
        assert len(dead["value_text"]) == KEPT_BYTES_MAX
        assert (dead["value_size_bytes"], dead["value_sha256"]) == (
            len(value), hashlib.sha256(value).hexdigest())
        assert (replay.status_code, replay.json()["code"]) == (409, "dead_letter_truncated")
        assert after["state"] == "discarded"
        assert sale(shop, "con-dl-after-huge")["payment"]["status"] == "succeeded"

    def test_an_unknown_dead_letter_is_404(self, api):
        answer = api.get("/v1/ops/deadletters/dl_nothing")

        assert (answer.status_code, answer.json()["code"]) == (404, "dead_letter_not_found")
