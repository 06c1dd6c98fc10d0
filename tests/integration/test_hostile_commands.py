"""Hostile commands on ``pay.commands``, on the real broker (issue 11).

Hypothesis generates about 300 commands of the kinds below; the whole batch is sent at once,
then a valid command, and the outcome is checked in one round trip:

- malformed ones (not JSON, the wrong shape, fields missing, extra, of the wrong type, bad
  amounts, unknown currencies and methods, unicode tricks in identifiers, a field repeated,
  ~1 MiB messages) reach ``pay.deadletter`` from intake, with a reason naming what is wrong;
- well-formed ones about things that do not exist are refused where the design refuses
  them: a follow-up on an unknown order (or another merchant's) is a ``CommandRejected``
  (``order_not_found``); a transfer from an unknown wallet (an empty one: wallets are not
  registered) fails for its funds;
- replays of a command already processed are duplicates: the same key again is dropped by
  dedup, the same payload under a new key by the order; the same key with another payload is
  a ``conflict_different_payload`` rejection;
- nothing else happens: no payment, event or ledger leg for any of them, the replayed
  payment's history and legs and its merchant's balances unchanged (read through the API),
  and the worker goes on (the valid command sent last succeeds).

Hypothesis only generates here (a collector per kind, seeded): one example is not one round
trip, so there is no shrinking; a failure prints the seed (``PAYCORE_HOSTILE_SEED`` replays
it) and the offending commands. The tally by kind is printed (``pytest -s``) and written to
``.paycore/artifacts/hostile-commands.json``.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from typing import NamedTuple

import httpx
import pytest
from helpers import pay, wait_for_final
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from domain.commands import Method, Payer
from domain.ids import payment_id_for
from domain.intake import COMMAND_BYTES_MAX
from domain.money import AMOUNT_MINOR_MAX, CURRENCY_EXPONENTS
from streams import topics as t
from streams.settings import ROOT

pytestmark = pytest.mark.integration

ARTIFACT = ROOT / ".paycore" / "artifacts" / "hostile-commands.json"
SEED = int(os.environ.get("PAYCORE_HOSTILE_SEED") or random.randrange(2**32))
WAIT_S = 60


class Hostile(NamedTuple):
    kind: str
    value: bytes
    expect: str
    """dead_letter, rejected, failed or duplicate."""
    detail: str
    """What the dead letter's reason must contain; the rejection's code; ''."""
    order_no: str = ""
    """For rejected and failed: the order it is about (merchant: ``merchant``)."""
    merchant: str = ""


# ---------------------------------------------------------------- what is generated

PAY_REQUIRED = ("type", "merchant_id", "idempotency_key", "merchant_order_no", "amount_minor",
                "currency", "method")
PAY_FIELDS = set(PAY_REQUIRED) | {"capture", "payer", "mandate_id", "split"}
IDENTIFIERS = ("merchant_id", "idempotency_key", "merchant_order_no", "payer.customer_id",
               "payer.account_id", "payer.device_id")
TRICKS = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u202e", "\u202d", "\u2066",
          "\u0430", "\u0391", "\u03bf", "\uff21", "\uff11", "\u0301", "\ufb01", "\u0130",
          "\u00a0", "\u3000", "\x00", "\n", "\r", "\t", " ", "\x7f", "\ud800", "\udfff",
          "\U0001f4b3", ":", "#", "~", "/", "\\", "%", "'", '"', "<", "\u2028")
"""Zero-width, bidi overrides, homoglyphs, fullwidth, combining marks, NUL and other
controls, lone surrogates, and the separators account ids are built with."""
VALID_ID = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z")
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)
NOT_A_STRING = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                         st.lists(JSON_SCALARS, max_size=2),
                         st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2))


def _json(doc, ensure_ascii: bool = True) -> bytes:
    return json.dumps(doc, ensure_ascii=ensure_ascii).encode()


def _set(doc: dict, path: str, value) -> dict:
    doc = json.loads(json.dumps(doc))
    *parents, last = path.split(".")
    node = doc
    for name in parents:
        node = node.setdefault(name, {})
    node[last] = value
    return doc


def base(merchant: str, order_no: str) -> dict:
    return pay(merchant, order_no, payer={"customer_id": "c-1", "country": "US"})


def malformed(merchant: str) -> dict[str, st.SearchStrategy]:
    """Kind -> strategy of (value, what the reason must contain)."""
    doc = base(merchant, "h-bad")

    def with_field(path, values, reason=None):
        return st.tuples(st.just(path), values).map(
            lambda pv: (_json(_set(doc, *pv)), reason or pv[0].split(".")[-1]))

    not_json = st.one_of(
        st.binary(min_size=1, max_size=200).filter(_unparsable).map(lambda b: (b, "not JSON")),
        st.integers(1, len(_json(doc)) - 1).map(lambda n: (_json(doc)[:n], "not JSON")),
        st.sampled_from([b"{", b"}", b"{'type': 'pay'}", b"NaN-ish", b'{"type":"pay",}',
                         _json(doc) + b"garbage", _json(doc).replace(b'"USD"', b'"\xff\xfe"'),
                         b"[" * 9_000 + b"]" * 7_000, b"1" * 5_000])
        .map(lambda b: (b, "not JSON")),
        st.just((b"", "empty message")))
    shape = st.one_of(st.lists(JSON_VALUES, max_size=4), st.text(max_size=20), st.integers(),
                      st.floats(), st.booleans(), st.none(), st.just([doc])) \
        .map(lambda v: (_json(v), "not a JSON object"))
    missing = st.sets(st.sampled_from(PAY_REQUIRED), min_size=1).map(
        lambda gone: (_json({k: v for k, v in doc.items() if k not in gone}),
                      next(f for f in PAY_REQUIRED if f in gone)))  # the first is named
    extra = st.one_of(
        st.tuples(st.text(max_size=12).filter(lambda n: n not in PAY_FIELDS), JSON_VALUES)
        .map(lambda nv: (_json({**doc, nv[0]: nv[1]}), "Extra inputs are not permitted")),
        st.tuples(st.text(max_size=12).filter(lambda n: n not in Payer.model_fields),
                  JSON_VALUES).map(lambda nv: (_json(_set(doc, f"payer.{nv[0]}", nv[1])),
                                               "Extra inputs are not permitted")))
    wrong_type = st.one_of(
        *(with_field(f, NOT_A_STRING) for f in ("merchant_id", "idempotency_key",
                                               "merchant_order_no", "currency", "method",
                                               "capture")),
        with_field("amount_minor", st.one_of(st.text(max_size=12), st.booleans(), st.none(),
                                             st.lists(st.integers(), max_size=2))),
        with_field("payer", st.one_of(st.text(), st.integers(), st.none(),
                                      st.lists(JSON_SCALARS, max_size=2))),
        with_field("split", st.one_of(st.text(min_size=1), st.integers(), st.booleans())),
        with_field("type", st.one_of(NOT_A_STRING, st.text(max_size=10).filter(
            lambda s: s not in ("pay", "capture", "void", "refund", "revoke", "transfer",
                                "topup", "withdraw", "review", "sign_mandate",
                                "terminate_mandate", "resolve_exception"))), "type"))
    bad_amount = st.one_of(
        with_field("amount_minor", st.one_of(
            st.integers(max_value=0), st.integers(min_value=AMOUNT_MINOR_MAX + 1),
            st.integers(2**63 - 1, 2**200), st.integers(max_value=-(2**63)),
            st.sampled_from([0, -1, 2**63, 2**64, AMOUNT_MINOR_MAX + 1, -(2**63) - 1,
                             10**4_000]))),
        st.integers(4_301, 6_000).map(
            lambda n: (_json(doc).replace(b'"amount_minor": 1000', b'"amount_minor": '
                                          + b"9" * n), "not JSON")))
    float_amount = with_field("amount_minor", st.one_of(
        st.floats(), st.floats(1, 1e6).map(float.__floor__).map(float),
        st.sampled_from([1000.0, 10.5, 1e3, 0.1, -0.0, float("nan"), float("inf")])))
    currency = with_field("currency", st.one_of(
        st.text(max_size=6), st.sampled_from(["usd", "Usd", "US", "USDD", "XTS", "BTC",
                                              "\uff35\uff33\uff24", "U\u200bSD", "USD\x00",
                                              " USD", ""]))
        .filter(lambda c: c not in CURRENCY_EXPONENTS))
    method = with_field("method", st.one_of(
        st.text(max_size=10), st.sampled_from(["CARD", "Card", "crypto", "cash", "card ",
                                               "c\u0430rd", ""]))
        .filter(lambda m: m not in {x.value for x in Method}))
    return {"not_json": not_json, "wrong_shape": shape, "missing_field": missing,
            "extra_field": extra, "wrong_type": wrong_type, "bad_amount": bad_amount,
            "float_amount": float_amount, "unknown_currency": currency,
            "unknown_method": method, "unicode_identifier": _tricked(doc),
            "repeated_field": _repeated(doc), "huge": _huge(doc)}


def _unparsable(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (ValueError, RecursionError):
        return True
    return False


def _tricked(doc: dict) -> st.SearchStrategy:
    @st.composite
    def build(draw):
        path = draw(st.sampled_from(IDENTIFIERS))
        plain = draw(VALID_ID)
        if draw(st.integers(0, 5)) == 0:  # very long, else one trick somewhere
            ident = draw(st.from_regex(r"\A[A-Za-z0-9]{65,3000}\Z"))
        else:
            trick = draw(st.sampled_from(TRICKS))
            at = draw(st.integers(0, len(plain)))
            ident = plain[:at] + trick + plain[at:]
        surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in ident)
        ascii_only = surrogate or draw(st.booleans())
        return _json(_set(doc, path, ident), ensure_ascii=ascii_only), path.split(".")[-1]
    return build()


def _repeated(doc: dict) -> st.SearchStrategy:
    def twice(args):
        name, value = args
        text = json.dumps(doc)[:-1] + f", {json.dumps(name)}: {json.dumps(value)}}}"
        return text.encode(), "field repeated"
    return st.tuples(st.sampled_from(sorted(doc)), JSON_SCALARS).map(twice)


def _huge(doc: dict) -> st.SearchStrategy:
    def build(args):
        size, fill = args
        if fill == "binary":
            return (bytes(range(256)) * (size // 256 + 1))[:size], "too_large"
        pad = "x" if fill == "ascii" else "\x01"
        raw = _json({**doc, "pad": ""})
        per = 1 if fill == "ascii" else 6
        # rounded up: at least ``size`` bytes (rounded down, a 6-byte escape could leave it
        # a few bytes under the limit, and not too large at all)
        raw = _json({**doc, "pad": pad * max(0, -(-(size - len(raw)) // per))})
        return raw, "too_large"
    return st.tuples(st.one_of(st.just(1_040_000), st.integers(COMMAND_BYTES_MAX + 1,
                                                                 1_040_000)),
                     st.sampled_from(["ascii", "control", "binary"])).map(build)


def well_formed(merchant: str, setup: dict, i: int) -> dict[str, st.SearchStrategy]:
    """Kind -> strategy of ``Hostile`` about things that do not exist, or replays."""
    order_no = f"h-none-{i}"
    follow_up = st.sampled_from([
        {"type": "capture"}, {"type": "void"}, {"type": "revoke"},
        {"type": "refund", "refund_id": f"r-{i}", "amount_minor": 100}])
    unknown_order = follow_up.map(lambda c: Hostile(
        "unknown_order", _json({**c, "merchant_id": merchant, "idempotency_key": f"k-h{i}",
                                "merchant_order_no": order_no}),
        "rejected", "order_not_found", order_no, merchant))
    other_merchant = st.tuples(follow_up, VALID_ID.filter(lambda m: m != merchant)).map(
        lambda cm: Hostile("other_merchant", _json({
            **cm[0], "merchant_id": f"{cm[1][:40]}-{i}", "idempotency_key": f"k-h{i}",
            "merchant_order_no": setup["merchant_order_no"]}), "rejected", "order_not_found",
            setup["merchant_order_no"], f"{cm[1][:40]}-{i}"))
    unknown_account = st.integers(1, 50_000).map(lambda amount: Hostile(
        "unknown_account", _json({
            "type": "transfer", "merchant_id": merchant, "idempotency_key": f"k-h{i}",
            "merchant_order_no": f"h-wallet-{i}", "from_account_id": f"w-{merchant}-{i}",
            "to_account_id": f"w-{merchant}-{i}-to", "amount_minor": amount,
            "currency": "USD"}),
        "failed", "insufficient_funds", f"h-wallet-{i}", merchant))
    replay = st.tuples(st.booleans(), st.randoms()).map(lambda br: Hostile(
        "replay", _json(setup) if br[0] else _reordered(setup, br[1]), "duplicate", ""))
    new_key = st.randoms().map(lambda r: Hostile(
        "replay_new_key", _reordered({**setup, "idempotency_key": f"k-h{i}"}, r),
        "duplicate", ""))
    conflict = st.sampled_from([("amount_minor", setup["amount_minor"] + 1),
                                ("currency", "EUR"), ("method", "bank"),
                                ("merchant_order_no", f"h-other-{i}")]).map(
        lambda fv: Hostile("replay_conflict", _json({**setup, fv[0]: fv[1]}), "rejected",
                           "conflict_different_payload",
                           fv[1] if fv[0] == "merchant_order_no" else setup["merchant_order_no"],
                           merchant))
    return {"unknown_order": unknown_order, "other_merchant": other_merchant,
            "unknown_account": unknown_account, "replay": replay, "replay_new_key": new_key,
            "replay_conflict": conflict}


def _reordered(doc: dict, rng) -> bytes:
    items = list(doc.items())
    rng.shuffle(items)
    return json.dumps(dict(items), indent=rng.choice([None, 1, "\t"]),
                      ensure_ascii=rng.choice([True, False])).encode()


MALFORMED_COUNTS = {"not_json": 25, "wrong_shape": 15, "missing_field": 25, "extra_field": 25,
                    "wrong_type": 30, "bad_amount": 30, "float_amount": 20,
                    "unknown_currency": 20, "unknown_method": 15, "unicode_identifier": 45,
                    "repeated_field": 10, "huge": 3}
WELL_FORMED_COUNTS = {"unknown_order": 10, "other_merchant": 5, "unknown_account": 8,
                      "replay": 10, "replay_new_key": 4, "replay_conflict": 6}


def collected(strategy: st.SearchStrategy, count: int, at_seed: int) -> list:
    """``count`` examples of ``strategy`` (fewer if Hypothesis runs out), seeded."""
    found: list = []

    @seed(at_seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example):
        found.append(example)

    collect()
    return found[:count]


def pinned(merchant: str) -> list[Hostile]:
    """Cases every run has, whatever the seed: each once broke something downstream."""
    doc = base(merchant, "h-bad")
    return [Hostile("not_json", b"[" * 9_000 + b"]" * 7_000, "dead_letter", "not JSON"),
            Hostile("unicode_identifier", _json(_set(doc, "merchant_id", "m-\udfff")),
                    "dead_letter", "merchant_id"),
            Hostile("unicode_identifier", _json(_set(doc, "merchant_order_no", "o-\ud800")),
                    "dead_letter", "merchant_order_no"),
            Hostile("huge", _json({**doc, "pad": "x" * 1_040_000}), "dead_letter",
                    "too_large")]


def hostile_batch(merchant: str, setup: dict) -> list[Hostile]:
    batch: list[Hostile] = pinned(merchant)
    for n, (kind, strategy) in enumerate(malformed(merchant).items()):
        for value, reason in collected(strategy, MALFORMED_COUNTS[kind], SEED + n):
            batch.append(Hostile(kind, value, "dead_letter", reason))
    rng = random.Random(SEED)
    index = 0
    for kind, count in WELL_FORMED_COUNTS.items():
        for _ in range(count):
            index += 1
            strategy = well_formed(merchant, setup, index)[kind]
            batch += collected(strategy, 1, rng.randrange(2**32))
    return batch


# ---------------------------------------------------------------- the test


def test_hostile_commands_change_nothing_and_the_worker_goes_on(
        stack, stack_settings, producer, observer, api, merchant):
    started = time.monotonic()
    setup = base(merchant, "h-setup")
    producer.send(t.COMMANDS, key=merchant.encode(), value=_json(setup))
    producer.flush()
    assert wait_for_final(observer, merchant, "h-setup").status == "succeeded"
    setup_id = payment_id_for(merchant, "h-setup")
    observer.wait_until(lambda: _entries_whole(_legs_of(observer, setup_id)), 10)
    before = _snapshot(observer, api, merchant, setup_id, stack_settings)
    batch = hostile_batch(merchant, setup)
    generated_s = time.monotonic() - started

    keys = [f"{merchant}-h-{n:03d}" for n in range(len(batch))]
    for key, item in zip(keys, batch, strict=True):
        producer.send(t.COMMANDS, key=key.encode(), value=item.value)
    canary = pay(merchant, "h-canary")
    producer.send(t.COMMANDS, key=f"{merchant}-h-canary".encode(), value=_json(canary))
    producer.flush()
    sent_s = time.monotonic() - started

    parked = _wait_for_outcomes(stack, observer, merchant, batch, keys, before)
    exited = {part.name: part.log_path.read_text(errors="replace")[-1500:]
              for part in stack.dead_parts()}
    assert not exited, f"seed {SEED}: exited during the batch: {exited}"
    canary_legs = _legs_of(observer, payment_id_for(merchant, "h-canary"))
    expected = {account: total + sum(leg.amount_minor for leg in canary_legs
                                     if leg.account_id == account)
                for account, total in before["balances"].items()}
    after = _snapshot(observer, api, merchant, setup_id, stack_settings, expected)
    tally = _tally(batch, SEED, time.monotonic() - started, generated_s, sent_s)
    print(_table(tally))

    final = observer.status.get(payment_id_for(merchant, "h-canary"))
    assert final is not None and final.status == "succeeded", (SEED, final)
    wrong = _wrong_dead_letters(batch, keys, parked)
    assert not wrong, _report("not dead-lettered as expected", wrong)
    wrong = _wrong_refusals(observer, batch)
    assert not wrong, _report("not refused as expected", wrong)
    leaked = _leaked(observer, batch, merchant)
    assert not leaked, _report("something happened for", leaked)
    assert after["history"] == before["history"], SEED
    assert (after["legs"], after["payment"]) == (before["legs"], before["payment"]), SEED
    assert before["balances"] and after["balances"] == expected, SEED
    assert after["replays_seen"] - before["replays_seen"] >= _replay_work(batch), SEED
    listed = _console_lists(api, parked, before["console_intake"])
    assert listed == "", (SEED, listed)


def _console_lists(api, parked: dict, before: int) -> str:
    """'' if the API is ready and its ops console lists the batch's dead letters; else what
    is wrong (a hostile record once stopped the console's read model, and the API with it)."""
    want = before + sum(len({d["offset"] for d in letters}) for letters in parked.values())
    deadline = time.monotonic() + 10
    while True:
        ready = api.get("/readyz")
        total = _intake_dead_letters(api)
        if ready.status_code == 200 and total >= want:
            return ""
        if time.monotonic() > deadline:
            return f"readyz {ready.status_code} {ready.text[:300]}; {total} of {want} listed"
        time.sleep(0.2)


def _intake_dead_letters(api) -> int:
    answer = api.get("/v1/ops/deadletters", params={"stage": "intake", "limit": 1})
    return answer.json()["total"] if answer.status_code == 200 else -1


def _legs_of(observer, payment_id: str) -> list:
    return [leg for leg in observer.legs.values() if leg.payment_id == payment_id]


def _pay_commands_counted(settings) -> float:
    """``paycore_commands_total`` for type pay, every result, on the worker: dedup and the
    order stage each count a command they handle."""
    try:
        text = httpx.get(f"http://127.0.0.1:{settings.worker_web_port}/metrics",
                         timeout=10).text
    except httpx.TransportError:  # the worker is gone: the test says so
        return -1.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("paycore_commands_total{") and 'type="pay"' in line)


def _replay_work(batch: list[Hostile]) -> int:
    """Counts the replays add to ``_pay_commands_counted``: dedup counts each one (as a
    duplicate, a new key, a conflict); the order stage none, for it drops their risk verdicts
    by message id (the verdict's id is the payment's and the payload's, not the key's). The
    canary adds two (dedup, order)."""
    kinds = Counter(item.kind for item in batch)
    return kinds["replay"] + kinds["replay_new_key"] + kinds["replay_conflict"] + 2


def _entries_whole(legs: list) -> bool:
    """Every journal entry of these legs has all its legs applied."""
    by_entry = Counter(leg.entry_id for leg in legs)
    return bool(legs) and all(by_entry[leg.entry_id] == leg.entry_legs for leg in legs)


def _snapshot(observer, api, merchant: str, setup_id: str, settings,
              expected: dict | None = None) -> dict:
    """The setup payment and its merchant's balances, through the API (which may lag the
    ledger a moment: ``expected`` balances are waited for, up to 10 s)."""
    observer.poll()
    legs = _legs_of(observer, setup_id)
    accounts = sorted({leg.account_id for leg in legs if merchant in leg.account_id})

    def read() -> dict:
        found = {}
        for account in accounts:
            answer = api.get(f"/v1/accounts/{account}/balance")
            assert answer.status_code == 200, answer.text
            found[account] = answer.json()["total_minor"]
        return found

    balances, deadline = read(), time.monotonic() + 10
    while expected is not None and balances != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        balances = read()
    payment = api.get(f"/v1/payments/{setup_id}").json()
    return {"history": [(e.previous_status, e.status) for e in observer.history[setup_id]],
            "legs": sorted(leg.posting_id for leg in legs), "balances": balances,
            "payment": (payment["status"], payment["amount_minor"]),
            "replays_seen": _pay_commands_counted(settings),
            "console_intake": _intake_dead_letters(api)}


def _wait_for_outcomes(stack, observer, merchant: str, batch, keys, before) -> dict:
    """Dead letters by key, once every outcome the batch should have is there (or time is
    up, or a process exited): the dead letters, refusals, failed transfers, the canary, the
    replays counted."""
    ours = set(keys)
    letters_due = {key for key, item in zip(keys, batch, strict=True)
                   if item.expect == "dead_letter"}
    parked: dict[str, list[dict]] = {}
    seen = 0
    refused = [item for item in batch if item.expect in ("rejected", "failed")]
    need = before["replays_seen"] + _replay_work(batch)

    def done() -> bool:
        nonlocal seen
        for letter in observer.deadletters[seen:]:
            key = letter["key"].get("text")
            if key in ours:
                parked.setdefault(key, []).append(letter)
        seen = len(observer.deadletters)
        canary = observer.status.get(payment_id_for(merchant, "h-canary"))
        if stack.dead_parts():
            return True
        return (letters_due <= set(parked) and canary is not None and canary.status == "succeeded"
                and all(_refusal(observer, item) for item in refused))

    observer.wait_until(done, WAIT_S)
    deadline = time.monotonic() + 15
    while _pay_commands_counted(stack.settings) < need and time.monotonic() < deadline \
            and not stack.dead_parts():
        observer.poll(100)
    observer.wait_until(lambda: False, 1.0)  # anything late the batch set off
    done()
    return parked


def _refusal(observer, item: Hostile) -> str:
    """The code it was refused with ('' : not yet)."""
    payment_id = payment_id_for(item.merchant, item.order_no)
    if item.expect == "failed":
        status = observer.status.get(payment_id)
        return status.reason if status is not None and status.status == "failed" else ""
    idem = json.loads(item.value)["idempotency_key"]
    codes = [r.code for r in observer.rejections
             if r.payment_id == payment_id and r.idempotency_key == idem]
    return codes[-1] if codes else ""


def _wrong_dead_letters(batch, keys, parked) -> list:
    wrong = []
    for key, item in zip(keys, batch, strict=True):
        letters = parked.get(key, [])
        if item.expect != "dead_letter":
            if letters:
                wrong.append((item, letters[0]["reason"]))
            continue
        reasons = {d["reason"] for d in letters}
        if len(reasons) != 1 or item.detail not in next(iter(reasons)) \
                or letters[0]["stage"] != "intake":
            wrong.append((item, sorted(reasons)))
    return wrong


def _wrong_refusals(observer, batch) -> list:
    return [(item, _refusal(observer, item)) for item in batch
            if item.expect in ("rejected", "failed")
            and item.detail not in _refusal(observer, item)]


def _leaked(observer, batch, merchant: str) -> list:
    """Anything on pay.events or the ledger for a payment the batch names, beyond the
    refusals expected; and no payment of our merchant but the setup and the canary."""
    expected_ids = {payment_id_for(i.merchant, i.order_no) for i in batch
                    if i.expect in ("rejected", "failed")}
    leaked = []
    for item in batch:
        for payment_id in _payments_named(item.value):
            if payment_id in expected_ids or item.expect == "duplicate":
                continue
            if payment_id in observer.status or _legs_of(observer, payment_id):
                leaked.append((item, payment_id))
    ours = {p for p, e in observer.status.items() if e.merchant_id == merchant}
    allowed = {payment_id_for(merchant, o) for o in ("h-setup", "h-canary")} | expected_ids
    leaked += [("payment", p) for p in ours - allowed]
    for payment_id in expected_ids - allowed:
        leaked += [("leg", leg.posting_id) for leg in _legs_of(observer, payment_id)]
    return leaked


def _payments_named(value: bytes) -> list[str]:
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError):
        return []
    if not isinstance(doc, dict):
        return []
    merchant, order_no = doc.get("merchant_id"), doc.get("merchant_order_no")
    if isinstance(merchant, str) and isinstance(order_no, str):
        try:
            return [payment_id_for(merchant, order_no)]
        except UnicodeEncodeError:  # a lone surrogate: no payment can have it
            return []
    return []


def _tally(batch: list[Hostile], at_seed: int, wall_s: float, generated_s: float,
           sent_s: float) -> dict:
    kinds = Counter(item.kind for item in batch)
    tally = {"seed": at_seed, "commands": len(batch), "wall_s": round(wall_s, 1),
             "generated_s": round(generated_s, 1), "sent_s": round(sent_s, 1),
             "by_kind": dict(sorted(kinds.items())),
             "bytes_max": max(len(item.value) for item in batch)}
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(tally, indent=2) + "\n")
    return tally


def _table(tally: dict) -> str:
    rows = [f"{kind:<20} {count:>5}" for kind, count in tally["by_kind"].items()]
    return "\n".join([f"\nhostile commands, seed {tally['seed']} "
                      f"({tally['wall_s']} s; PAYCORE_HOSTILE_SEED replays it)",
                      f"{'kind':<20} {'tried':>5}", *rows,
                      f"{'total':<20} {tally['commands']:>5}"])


def _report(what: str, wrong: list) -> str:
    shown = [f"  {item.kind if isinstance(item, Hostile) else item}: "
             f"{(item.value[:300] if isinstance(item, Hostile) else '')!r} -> {got!r}"[:600]
             for item, got in wrong[:10]]
    return f"seed {SEED}: {len(wrong)} {what}:\n" + "\n".join(shown)
