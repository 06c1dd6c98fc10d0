"""Commands apps send on ``pay.commands``: imperative, frozen, validated field by field.

The wire form is plain JSON with a ``type`` field, so any language (or kcat) can produce it.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from domain.money import AMOUNT_MINOR_MAX, is_known_currency

# ASCII only: no look-alike unicode, no control characters, no separators we use in keys.
Identifier = Annotated[
    str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
]


def _known_currency(code: str) -> str:
    if not is_known_currency(code):
        raise ValueError(f"unknown ISO 4217 currency {code!r}")
    return code


Currency = Annotated[str, StringConstraints(strict=True), AfterValidator(_known_currency)]
AmountMinor = Annotated[StrictInt, Field(gt=0, le=AMOUNT_MINOR_MAX)]


class Method(str, Enum):
    card = "card"
    bank = "bank"
    wallet = "wallet"


class CaptureMode(str, Enum):
    auto = "auto"
    manual = "manual"


class Message(BaseModel):
    """Marker base: frozen, and unknown fields are an error rather than silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Payer(Message):
    account_id: Identifier | None = None
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = None


class Command(Message):
    merchant_id: Identifier
    idempotency_key: Identifier
    merchant_order_no: Identifier


class Pay(Command):
    """Sale (capture=auto) or pre-authorization (capture=manual)."""

    type: Literal["pay"] = "pay"
    amount_minor: AmountMinor
    currency: Currency
    method: Method
    capture: CaptureMode = CaptureMode.auto
    payer: Payer = Payer()


class Capture(Command):
    """Capture part or all of an authorization; ``amount_minor`` None means the rest."""

    type: Literal["capture"] = "capture"
    amount_minor: AmountMinor | None = None


class Void(Command):
    """Release what is left of an authorization."""

    type: Literal["void"] = "void"


class Refund(Command):
    type: Literal["refund"] = "refund"
    refund_id: Identifier
    amount_minor: AmountMinor


PaymentCommand = Annotated[Union[Pay, Capture, Void, Refund], Field(discriminator="type")]
