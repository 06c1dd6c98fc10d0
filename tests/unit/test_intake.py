"""parse_command: raw bytes in, exactly one of (command, reason) out; the reason names the field."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.commands import (
    COMMAND_TYPES,
    Capture,
    CaptureMode,
    Method,
    Pay,
    Refund,
    Revoke,
    SignMandate,
    TerminateMandate,
    TopUp,
    Transfer,
    Void,
    Withdraw,
)
from domain.intake import COMMAND_BYTES_MAX, parse_command
from domain.money import AMOUNT_MINOR_MAX

_MISSING = object()


def _pay_doc(**changes) -> dict:
    doc = {
        "type": "pay", "merchant_id": "m-1", "idempotency_key": "key-1",
        "merchant_order_no": "order-1", "amount_minor": 1_000, "currency": "EUR",
        "method": "card",
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not _MISSING}


def _raw(doc) -> bytes:
    return json.dumps(doc).encode()


def _assert_rejected(result, *words: str) -> str:
    cmd, reason = result
    assert cmd is None
    assert isinstance(reason, str) and reason
    for word in words:
        assert word in reason, (word, reason)
    return reason


class TestParseValid:
    def test_pay_parses_with_defaults_when_minimal(self):
        raw = _raw(_pay_doc())

        cmd, reason = parse_command(raw)

        assert reason is None
        assert isinstance(cmd, Pay)
        assert cmd.amount_minor == 1_000
        assert type(cmd.amount_minor) is int
        assert cmd.currency == "EUR"
        assert cmd.method is Method.card
        assert cmd.capture is CaptureMode.auto

    def test_pay_parses_manual_capture_and_payer_when_given(self):
        raw = _raw(_pay_doc(capture="manual", payer={"account_id": "p-1", "country": "DE"}))

        cmd, reason = parse_command(raw)

        assert reason is None
        assert cmd.capture is CaptureMode.manual
        assert cmd.payer.country == "DE"

    def test_pay_accepts_amount_when_exactly_max(self):
        raw = _raw(_pay_doc(amount_minor=AMOUNT_MINOR_MAX))

        cmd, reason = parse_command(raw)

        assert reason is None
        assert cmd.amount_minor == AMOUNT_MINOR_MAX

    def test_capture_parses_with_and_without_amount(self):
        base = {"type": "capture", "merchant_id": "m-1", "idempotency_key": "c-1",
                "merchant_order_no": "order-1"}

        full, full_reason = parse_command(_raw(base))
        part, part_reason = parse_command(_raw({**base, "amount_minor": 250}))

        assert full_reason is None and part_reason is None
        assert isinstance(full, Capture) and full.amount_minor is None
        assert isinstance(part, Capture) and part.amount_minor == 250

    def test_void_parses_when_ids_given(self):
        raw = _raw({"type": "void", "merchant_id": "m-1", "idempotency_key": "v-1",
                    "merchant_order_no": "order-1"})

        cmd, reason = parse_command(raw)

        assert reason is None
        assert isinstance(cmd, Void)

    def test_refund_parses_when_refund_id_and_amount_given(self):
        raw = _raw({"type": "refund", "merchant_id": "m-1", "idempotency_key": "r-1",
                    "merchant_order_no": "order-1", "refund_id": "rf-1", "amount_minor": 5})

        cmd, reason = parse_command(raw)

        assert reason is None
        assert isinstance(cmd, Refund)
        assert (cmd.refund_id, cmd.amount_minor) == ("rf-1", 5)


class TestParseRejected:
    def test_rejected_when_empty_bytes(self):
        raw = b""

        result = parse_command(raw)

        _assert_rejected(result, "empty")

    def test_rejected_when_none(self):
        result = parse_command(None)

        _assert_rejected(result, "empty")

    def test_rejected_when_not_json(self):
        raw = b"{not json"

        result = parse_command(raw)

        _assert_rejected(result, "not JSON")

    def test_rejected_when_not_utf8(self):
        raw = b"\xff\xfe\xfa"

        result = parse_command(raw)

        _assert_rejected(result, "not JSON")

    def test_rejected_when_json_array(self):
        raw = _raw([_pay_doc()])

        result = parse_command(raw)

        _assert_rejected(result, "JSON object", "list")

    def test_rejected_when_type_missing(self):
        raw = _raw(_pay_doc(type=_MISSING))

        result = parse_command(raw)

        _assert_rejected(result, "type")

    def test_rejected_when_type_unknown(self):
        raw = _raw(_pay_doc(type="charge"))

        result = parse_command(raw)

        _assert_rejected(result, "type", "charge")

    def test_rejected_when_amount_missing(self):
        raw = _raw(_pay_doc(amount_minor=_MISSING))

        result = parse_command(raw)

        _assert_rejected(result, "amount_minor", "required")

    @pytest.mark.parametrize("amount", [-1, 0], ids=["negative", "zero"])
    def test_rejected_when_amount_not_positive(self, amount):
        raw = _raw(_pay_doc(amount_minor=amount))

        result = parse_command(raw)

        _assert_rejected(result, "amount_minor")

    def test_rejected_when_amount_above_max(self):
        raw = _raw(_pay_doc(amount_minor=AMOUNT_MINOR_MAX + 1))

        result = parse_command(raw)

        _assert_rejected(result, "amount_minor")

    @pytest.mark.parametrize("amount", ["100", 100.0, True], ids=["string", "float", "bool"])
    def test_rejected_when_amount_not_an_integer(self, amount):
        raw = _raw(_pay_doc(amount_minor=amount))

        result = parse_command(raw)

        _assert_rejected(result, "amount_minor")

    def test_capture_rejected_when_amount_is_float(self):
        raw = _raw({"type": "capture", "merchant_id": "m-1", "idempotency_key": "c-1",
                    "merchant_order_no": "order-1", "amount_minor": 2.0})

        result = parse_command(raw)

        _assert_rejected(result, "amount_minor")

    def test_rejected_when_currency_unknown(self):
        raw = _raw(_pay_doc(currency="XXX"))

        result = parse_command(raw)

        _assert_rejected(result, "currency", "XXX")

    def test_rejected_when_currency_lowercase(self):
        raw = _raw(_pay_doc(currency="eur"))

        result = parse_command(raw)

        _assert_rejected(result, "currency")

    def test_rejected_when_method_unknown(self):
        raw = _raw(_pay_doc(method="cash"))

        result = parse_command(raw)

        _assert_rejected(result, "method")

    def test_rejected_when_unknown_field(self):
        raw = _raw(_pay_doc(tip_minor=5))

        result = parse_command(raw)

        _assert_rejected(result, "tip_minor")

    @pytest.mark.parametrize("merchant_id", [
        "m\u0430",        # Cyrillic a, looks like Latin a
        "\uff4d-1",       # fullwidth m
        "m-1\n",          # trailing newline ($ must not match before it)
        "m\x00-1",        # NUL
        "m\x1f1",         # our key separator
        "m 1",            # space
        "",               # empty
        "-m1",            # must start alphanumeric
        "m" * 65,         # too long
    ], ids=["cyrillic", "fullwidth", "newline", "nul", "unit-sep", "space", "empty",
            "leading-dash", "too-long"])
    def test_rejected_when_merchant_id_not_plain_ascii(self, merchant_id):
        raw = _raw(_pay_doc(merchant_id=merchant_id))

        result = parse_command(raw)

        _assert_rejected(result, "merchant_id")

    def test_rejected_when_merchant_id_not_a_string(self):
        raw = _raw(_pay_doc(merchant_id=123))

        result = parse_command(raw)

        _assert_rejected(result, "merchant_id")

    def test_rejected_when_message_over_max_bytes(self):
        doc = _pay_doc(merchant_order_no="o-1")
        padding = COMMAND_BYTES_MAX - len(_raw(doc)) + 1
        raw = _raw(doc)[:-1] + b" " * padding + b"}"

        result = parse_command(raw)

        assert len(raw) == COMMAND_BYTES_MAX + 1
        _assert_rejected(result, "too large", str(COMMAND_BYTES_MAX))

    def test_accepted_when_message_exactly_max_bytes(self):
        doc = _pay_doc()
        padding = COMMAND_BYTES_MAX - len(_raw(doc))
        raw = _raw(doc)[:-1] + b" " * padding + b"}"

        cmd, reason = parse_command(raw)

        assert len(raw) == COMMAND_BYTES_MAX
        assert reason is None
        assert isinstance(cmd, Pay)

    def test_reason_names_each_field_when_several_bad(self):
        raw = _raw(_pay_doc(currency="XXX", method="cash"))

        result = parse_command(raw)

        _assert_rejected(result, "currency", "method")

    def test_rejected_when_field_repeated(self):
        raw = _raw(_pay_doc(amount_minor=1))[:-1] + b', "amount_minor": 1000000}'

        result = parse_command(raw)

        _assert_rejected(result, "amount_minor")

    def test_rejected_without_raising_when_deeply_nested(self):
        raw = b"[" * 5_000 + b"]" * 5_000

        result = parse_command(raw)

        _assert_rejected(result)

    def test_rejected_without_raising_when_integer_has_too_many_digits(self):
        raw = b'{"type":"pay","amount_minor":' + b"9" * 5_000 + b"}"

        result = parse_command(raw)

        _assert_rejected(result)


class TestNewCommands:
    @pytest.mark.parametrize("doc", [
        {"type": "revoke", "merchant_id": "m", "idempotency_key": "k", "merchant_order_no": "o"},
        {"type": "transfer", "merchant_id": "m", "idempotency_key": "k",
         "merchant_order_no": "o", "from_account_id": "a", "to_account_id": "b",
         "amount_minor": 5, "currency": "EUR"},
        {"type": "topup", "merchant_id": "m", "idempotency_key": "k", "merchant_order_no": "o",
         "account_id": "a", "amount_minor": 5, "currency": "EUR", "method": "card"},
        {"type": "withdraw", "merchant_id": "m", "idempotency_key": "k",
         "merchant_order_no": "o", "account_id": "a", "amount_minor": 5, "currency": "EUR"},
        {"type": "sign_mandate", "merchant_id": "m", "idempotency_key": "k", "mandate_id": "d",
         "payer_account_id": "iban-1", "currency": "EUR", "amount_minor_max": 100},
        {"type": "terminate_mandate", "merchant_id": "m", "idempotency_key": "k",
         "mandate_id": "d"},
    ], ids=lambda d: d["type"])
    def test_parses_when_well_formed(self, doc):
        cmd, reason = parse_command(_raw(doc))

        assert reason is None
        assert cmd.type == doc["type"]

    @pytest.mark.parametrize("changes,field", [
        ({"method": "balance"}, "payer.account_id"),
        ({"method": "mandate"}, "mandate_id"),
        ({"mandate_id": "d"}, "mandate_id"),
        ({"method": "mandate", "mandate_id": "d", "capture": "manual"}, "capture"),
        ({"split": [{"merchant_id": "a", "amount_minor": 400}]}, "split"),
        ({"split": [{"merchant_id": "a", "amount_minor": 500},
                    {"merchant_id": "a", "amount_minor": 500}]}, "split"),
        ({"split": [{"merchant_id": "a", "amount_minor": 0},
                    {"merchant_id": "b", "amount_minor": 1_000}]}, "split.0.amount_minor"),
    ])
    def test_pay_rejected_naming_field_when_fields_disagree(self, changes, field):
        result = parse_command(_raw(_pay_doc(**changes)))

        reason = _assert_rejected(result, field)
        assert not reason.startswith("Value error")

    def test_transfer_rejected_naming_field_when_accounts_equal(self):
        doc = {"type": "transfer", "merchant_id": "m", "idempotency_key": "k",
               "merchant_order_no": "o", "from_account_id": "a", "to_account_id": "a",
               "amount_minor": 5, "currency": "EUR"}

        _assert_rejected(parse_command(_raw(doc)), "to_account_id")

    @pytest.mark.parametrize("kind", ["topup", "withdraw"])
    def test_rejected_naming_method_when_not_a_channel(self, kind):
        doc = {"type": kind, "merchant_id": "m", "idempotency_key": "k",
               "merchant_order_no": "o", "account_id": "a", "amount_minor": 5,
               "currency": "EUR", "method": "balance"}

        _assert_rejected(parse_command(_raw(doc)), "method")


# ---------------------------------------------------------------- never raises

_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
_json_value = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)
_field_names = st.sampled_from([
    "type", "merchant_id", "idempotency_key", "merchant_order_no", "amount_minor", "currency",
    "method", "capture", "payer", "refund_id", "extra", "split", "mandate_id",
    "from_account_id", "to_account_id", "account_id", "payer_account_id", "amount_minor_max",
])
_type_values = st.sampled_from([*COMMAND_TYPES, "PAY", "", "x"])


def _assert_exactly_one(result) -> None:
    assert isinstance(result, tuple) and len(result) == 2
    cmd, reason = result
    assert (cmd is None) != (reason is None), result
    if reason is not None:
        assert isinstance(reason, str) and reason


@settings(max_examples=150, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_parse_never_raises_when_arbitrary_bytes(raw):
    result = parse_command(raw)

    _assert_exactly_one(result)


@settings(max_examples=150, deadline=None, database=None)
@given(_json_value)
def test_parse_never_raises_when_arbitrary_json(doc):
    raw = json.dumps(doc).encode()

    result = parse_command(raw)

    _assert_exactly_one(result)


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(COMMAND_TYPES),
       st.dictionaries(_field_names, _json_value, max_size=6), _type_values, st.booleans())
def test_parse_never_raises_when_command_fields_mutated(kind, changes, type_value, keep_type):
    doc = {**_pay_doc(type=kind), **changes}
    if keep_type:
        doc["type"] = type_value
    raw = json.dumps(doc).encode()

    result = parse_command(raw)

    _assert_exactly_one(result)
    cmd, _ = result
    if cmd is not None:
        assert isinstance(cmd, (Pay, Capture, Void, Refund, Revoke, Transfer, TopUp, Withdraw,
                                SignMandate, TerminateMandate))
        assert cmd.type == doc["type"]
