"""Collection mandates: signing, terminating, and the check a mandate payment asks for."""

from __future__ import annotations

import pytest

from domain.commands import SignMandate, TerminateMandate
from domain.events import MandateChecked, MandateCheckRequested, MandateStatusChanged
from domain.ids import mandate_key_for, payment_id_for
from domain.mandates import (
    CHECKS_REMEMBERED,
    Mandate,
    MandateCode,
    MandateDecision,
    MandateStatus,
    decide_mandate_check,
    decide_mandate_command,
)

M = MandateCode
NOW = 1_000
MERCHANT, MANDATE_ID, PAYER, CCY = "m-1", "mdt-1", "p-1", "EUR"
KEY = mandate_key_for(MERCHANT, MANDATE_ID)
LIMIT = 5_000


def sign(key="sign-1", **changes) -> SignMandate:
    fields = dict(merchant_id=MERCHANT, idempotency_key=key, mandate_id=MANDATE_ID,
                  payer_account_id=PAYER, currency=CCY, amount_minor_max=LIMIT)
    return SignMandate(**{**fields, **changes})


def terminate(key="end-1") -> TerminateMandate:
    return TerminateMandate(merchant_id=MERCHANT, idempotency_key=key, mandate_id=MANDATE_ID)


def check(order_no="order-1", amount=LIMIT, currency=CCY) -> MandateCheckRequested:
    return MandateCheckRequested(payment_id=payment_id_for(MERCHANT, order_no), mandate_key=KEY,
                                 merchant_id=MERCHANT, mandate_id=MANDATE_ID,
                                 amount_minor=amount, currency=currency)


def active() -> Mandate:
    return decide_mandate_command(None, sign(), NOW).mandate


def terminated() -> Mandate:
    return decide_mandate_command(active(), terminate(), NOW + 1).mandate


def answer_of(decision: MandateDecision) -> MandateChecked:
    assert len(decision.outputs) == 1, decision.outputs
    (answer,) = decision.outputs
    assert isinstance(answer, MandateChecked)
    return answer


class TestSignMandate:
    def test_sign_activates_mandate_and_announces_it(self):
        cmd = sign()

        d = decide_mandate_command(None, cmd, NOW)

        assert d.code is M.accepted
        assert d.mandate.status is MandateStatus.active
        assert (d.mandate.mandate_key, d.mandate.payer_account_id, d.mandate.currency,
                d.mandate.amount_minor_max) == (KEY, PAYER, CCY, LIMIT)
        assert (d.mandate.signed_at_ms, d.mandate.collections) == (NOW, 0)
        (event,) = d.outputs
        assert isinstance(event, MandateStatusChanged)
        assert (event.status, event.previous_status, event.mandate_key) == ("active", "", KEY)

    def test_sign_duplicate_when_same_payload_again(self):
        mandate = active()

        d = decide_mandate_command(mandate, sign(), NOW + 5)

        assert d == MandateDecision(mandate, (), M.duplicate)

    def test_sign_duplicate_when_only_idempotency_key_differs(self):
        mandate = active()

        d = decide_mandate_command(mandate, sign(key="sign-2"), NOW + 5)

        assert d == MandateDecision(mandate, (), M.duplicate)

    @pytest.mark.parametrize("changes", [
        {"amount_minor_max": LIMIT + 1}, {"currency": "USD"}, {"payer_account_id": "p-2"},
    ], ids=["limit", "currency", "payer"])
    def test_sign_conflict_when_same_mandate_other_payload(self, changes):
        mandate = active()

        d = decide_mandate_command(mandate, sign(key="sign-2", **changes), NOW + 5)

        assert d == MandateDecision(mandate, (), M.mandate_exists_with_different_payload)

    def test_sign_conflict_when_mandate_terminated_and_signed_again_differently(self):
        mandate = terminated()

        d = decide_mandate_command(mandate, sign(amount_minor_max=1), NOW + 5)

        assert d.code is M.mandate_exists_with_different_payload
        assert d.mandate.status is MandateStatus.terminated

    def test_mandate_key_scoped_to_merchant(self):
        cmd = sign()

        key = cmd.subject_id()

        assert key == KEY
        assert key != mandate_key_for("m-2", MANDATE_ID)


class TestTerminateMandate:
    def test_terminate_ends_active_mandate_and_announces_it(self):
        mandate = active()

        d = decide_mandate_command(mandate, terminate(), NOW + 7)

        assert d.code is M.accepted
        assert (d.mandate.status, d.mandate.terminated_at_ms) == (MandateStatus.terminated,
                                                                 NOW + 7)
        (event,) = d.outputs
        assert (event.status, event.previous_status) == ("terminated", "active")

    def test_terminate_duplicate_when_already_terminated(self):
        mandate = terminated()

        d = decide_mandate_command(mandate, terminate("end-2"), NOW + 9)

        assert d == MandateDecision(mandate, (), M.duplicate)

    def test_terminate_rejected_when_mandate_unknown(self):
        cmd = terminate()

        d = decide_mandate_command(None, cmd, NOW)

        assert d == MandateDecision(None, (), M.mandate_not_found)


class TestCheckMandate:
    def test_check_allowed_and_counted_when_active_and_within_limit(self):
        mandate = active()

        d = decide_mandate_check(mandate, check(amount=LIMIT), NOW + 5)

        assert d.code is M.accepted
        answer = answer_of(d)
        assert (answer.allowed, answer.code, answer.payer_account_id) == (True, "accepted",
                                                                          PAYER)
        assert (answer.payment_id, answer.mandate_key) == (check().payment_id, KEY)
        assert d.mandate.collections == 1
        assert d.mandate.last_checked == (check().payment_id,)

    @pytest.mark.parametrize("make,cmd,code", [
        (lambda: None, check(), M.mandate_not_found),
        (terminated, check(), M.mandate_terminated),
        (active, check(amount=LIMIT + 1), M.mandate_exceeds_limit),
        (active, check(currency="USD"), M.mandate_currency_mismatch),
    ], ids=["unknown", "terminated", "over-limit", "other-currency"])
    def test_check_refused_and_not_counted_when_not_allowed(self, make, cmd, code):
        mandate = make()

        d = decide_mandate_check(mandate, cmd, NOW + 5)

        assert d.code is code
        answer = answer_of(d)
        assert (answer.allowed, answer.code, answer.payer_account_id) == (False, code.name, "")
        assert d.mandate == mandate

    def test_check_refused_terminated_before_limits_when_both_break(self):
        mandate = terminated()

        d = decide_mandate_check(mandate, check(amount=LIMIT + 1, currency="USD"), NOW + 5)

        assert d.code is M.mandate_terminated

    def test_check_refused_currency_before_limit_when_both_break(self):
        mandate = active()

        d = decide_mandate_check(mandate, check(amount=LIMIT + 1, currency="USD"), NOW + 5)

        assert d.code is M.mandate_currency_mismatch

    def test_check_counted_once_when_repeated_for_same_payment(self):
        first = decide_mandate_check(active(), check("order-1"), NOW + 5)

        again = decide_mandate_check(first.mandate, check("order-1"), NOW + 6)

        assert again.mandate == first.mandate
        assert again.mandate.collections == 1
        assert answer_of(again) == answer_of(first)

    def test_check_counted_again_when_other_payment(self):
        first = decide_mandate_check(active(), check("order-1"), NOW + 5)

        second = decide_mandate_check(first.mandate, check("order-2"), NOW + 6)

        assert second.code is M.accepted
        assert second.mandate.collections == 2

    def test_check_refused_after_termination_when_allowed_before(self):
        first = decide_mandate_check(active(), check("order-1"), NOW + 5)
        ended = decide_mandate_command(first.mandate, terminate(), NOW + 6).mandate

        again = decide_mandate_check(ended, check("order-2"), NOW + 7)

        assert again.code is M.mandate_terminated
        assert again.mandate.collections == 1

    def test_check_remembers_a_bounded_number_of_payments(self):
        mandate = active()

        for i in range(CHECKS_REMEMBERED + 5):
            mandate = decide_mandate_check(mandate, check(f"order-{i}"), NOW + i).mandate

        assert mandate.collections == CHECKS_REMEMBERED + 5
        assert len(mandate.last_checked) == CHECKS_REMEMBERED
        assert mandate.last_checked[-1] == check(f"order-{CHECKS_REMEMBERED + 4}").payment_id

    def test_check_asserts_when_sent_to_other_mandate(self):
        other = check().model_copy(update={"mandate_key": mandate_key_for("m-2", MANDATE_ID)})

        with pytest.raises(AssertionError):
            decide_mandate_check(active(), other, NOW + 5)
