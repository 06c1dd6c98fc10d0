"""Money: integer minor units with an ISO 4217 currency. No floats anywhere."""

from __future__ import annotations

# ISO 4217 codes we accept, with their minor-unit exponent. A short, explicit list beats
# accepting any three letters: an unknown currency is a validation error, not a new book.
CURRENCY_EXPONENTS: dict[str, int] = {
    "AUD": 2, "BRL": 2, "CAD": 2, "CHF": 2, "CNY": 2, "CZK": 2, "DKK": 2, "EUR": 2,
    "GBP": 2, "HKD": 2, "IDR": 2, "INR": 2, "JPY": 0, "KRW": 0, "KWD": 3, "MXN": 2,
    "NOK": 2, "NZD": 2, "PLN": 2, "SEK": 2, "SGD": 2, "THB": 2, "TRY": 2, "USD": 2,
    "ZAR": 2,
}

AMOUNT_MINOR_MAX = 10**13
"""Largest single amount we accept (10^11 major units at exponent 2): a limit on everything."""


def decimal_text(amount_minor: int, currency: str, grouped: bool = False) -> str:
    """Minor units as the currency's decimal: ``123456`` EUR -> ``"1234.56"`` (``grouped``:
    ``"1,234.56"``); JPY -> ``"1234"``; KWD ``1234`` -> ``"1.234"``. Text for people and
    files only: money is never computed from it."""
    exponent = CURRENCY_EXPONENTS[currency]
    sign = "-" if amount_minor < 0 else ""
    units, minor = divmod(abs(amount_minor), 10**exponent)
    whole = f"{units:,}" if grouped else str(units)
    return sign + whole + (f".{minor:0{exponent}d}" if exponent else "")


def is_known_currency(code: str) -> bool:
    return code in CURRENCY_EXPONENTS


def fee_minor(amount_minor: int, fee_bps: int, fee_fixed_minor: int) -> int:
    """Fee for one charge: basis points rounded half up, plus a fixed part, capped at amount."""
    assert amount_minor >= 0
    assert fee_bps >= 0 and fee_fixed_minor >= 0
    proportional = (amount_minor * fee_bps + 5_000) // 10_000
    return min(amount_minor, proportional + fee_fixed_minor)
