"""Money: integer minor units, an explicit currency list, and the fee rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.money import AMOUNT_MINOR_MAX, CURRENCY_EXPONENTS, fee_minor, is_known_currency

_FAST = settings(max_examples=200, deadline=None, database=None)
_amounts = st.integers(min_value=0, max_value=AMOUNT_MINOR_MAX)
_bps = st.integers(min_value=0, max_value=20_000)
_fixed = st.integers(min_value=0, max_value=10_000)


class TestCurrencies:
    @pytest.mark.parametrize("code,exponent", [("EUR", 2), ("USD", 2), ("JPY", 0),
                                               ("KRW", 0), ("KWD", 3)])
    def test_exponent_matches_iso_4217_when_known(self, code, exponent):
        found = CURRENCY_EXPONENTS[code]

        assert found == exponent

    @pytest.mark.parametrize("code", ["XXX", "eur", "EURO", "", "EU", " EUR", "XTS"])
    def test_unknown_when_not_in_list(self, code):
        known = is_known_currency(code)

        assert known is False

    def test_every_listed_code_is_three_uppercase_letters_with_small_exponent(self):
        codes = list(CURRENCY_EXPONENTS)

        assert codes
        for code in codes:
            assert len(code) == 3 and code.isascii() and code.isupper() and code.isalpha()
            assert is_known_currency(code)
            assert type(CURRENCY_EXPONENTS[code]) is int
            assert CURRENCY_EXPONENTS[code] in (0, 2, 3)


class TestFee:
    def test_fee_rounds_half_up_when_exactly_half(self):
        amount, bps = 50, 100  # 0.5 minor units of proportional fee

        fee = fee_minor(amount, bps, 0)

        assert fee == 1

    def test_fee_rounds_down_when_below_half(self):
        amount, bps = 49, 100  # 0.49

        fee = fee_minor(amount, bps, 0)

        assert fee == 0

    def test_fee_adds_fixed_part_when_both_given(self):
        amount = 10_000

        fee = fee_minor(amount, 150, 30)

        assert fee == 150 + 30

    def test_fee_capped_at_amount_when_fixed_exceeds_amount(self):
        amount = 20

        fee = fee_minor(amount, 0, 30)

        assert fee == 20

    def test_fee_zero_when_amount_zero(self):
        fee = fee_minor(0, 250, 30)

        assert fee == 0

    @pytest.mark.parametrize("args", [(-1, 0, 0), (1, -1, 0), (1, 0, -1)],
                             ids=["amount", "bps", "fixed"])
    def test_fee_asserts_when_negative_input(self, args):
        with pytest.raises(AssertionError):
            fee_minor(*args)

    @_FAST
    @given(_amounts, _bps, _fixed)
    def test_fee_is_integer_between_zero_and_amount_when_any_terms(self, amount, bps, fixed):
        fee = fee_minor(amount, bps, fixed)

        assert type(fee) is int
        assert 0 <= fee <= amount

    @_FAST
    @given(_amounts, _bps, _fixed)
    def test_fee_matches_exact_rational_rounding_when_not_capped(self, amount, bps, fixed):
        exact_twice = 2 * amount * bps  # 2 * proportional * 10_000, to compare halves exactly

        fee = fee_minor(amount, bps, fixed)

        proportional = fee - fixed
        if fee < amount:
            assert 2 * 10_000 * proportional - 10_000 <= exact_twice
            assert exact_twice < 2 * 10_000 * proportional + 10_000

    @_FAST
    @given(_amounts, st.integers(min_value=0, max_value=10**6), _bps, _fixed)
    def test_fee_monotone_when_amount_grows(self, amount, extra, bps, fixed):
        larger = amount + extra

        small_fee, large_fee = fee_minor(amount, bps, fixed), fee_minor(larger, bps, fixed)

        assert small_fee <= large_fee

    @_FAST
    @given(_amounts, _bps, _fixed)
    def test_net_never_negative_and_monotone_when_amount_grows(self, amount, bps, fixed):
        # The merchant's net (amount - fee) must not shrink when the amount grows by one
        # unless the bps rate makes each unit cost more than a unit (bps > 10_000).
        net_now = amount - fee_minor(amount, bps, fixed)

        net_next = amount + 1 - fee_minor(amount + 1, bps, fixed)

        assert net_now >= 0
        if bps <= 10_000:
            assert net_next >= net_now


def test_decimal_text_follows_the_currency_exponent_sign_and_grouping():
    from domain.money import decimal_text

    assert [decimal_text(123456, "EUR"), decimal_text(123456, "EUR", grouped=True),
            decimal_text(-5, "USD"), decimal_text(1234, "JPY", grouped=True),
            decimal_text(1234, "KWD"), decimal_text(0, "EUR")] == [
        "1234.56", "1,234.56", "-0.05", "1,234", "1.234", "0.00"]
