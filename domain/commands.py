"""Commands apps send on ``pay.commands``: imperative, frozen, validated field by field.

The wire form is plain JSON with a ``type`` field, so any language (or kcat) can produce it.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal, Union

from pydantic import (
    AfterValidator,
    IPvAnyAddress,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    model_validator,
)

from domain.ids import mandate_key_for, payment_id_for
from domain.money import AMOUNT_MINOR_MAX, is_known_currency
from domain.recon_kinds import ExceptionKind

# ASCII only: no look-alike unicode, no control characters, and none of the separators
# account ids and keys are built with (":" in account ids, "#" in sub-accounts, "~" in
# hold purposes), so no merchant can name itself into another's account or limit rule.
Identifier = Annotated[
    str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
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
    balance = "balance"
    """Paid from the payer's internal wallet account: no channel, funds frozen first."""
    mandate = "mandate"
    """Collected from the payer's bank under a signed mandate (direct debit)."""


CHANNEL_METHODS = frozenset({Method.card, Method.bank, Method.wallet})
"""Methods that go through an outside channel and get its callbacks."""


class CaptureMode(str, Enum):
    auto = "auto"
    manual = "manual"


class FieldError(ValueError):
    """A whole-model check that knows which field is wrong: ``loc`` is its path from the
    model (``("rules", 2, "channels")``), so a config error can name the line."""

    def __init__(self, message: str, loc: tuple) -> None:
        super().__init__(message)
        self.loc = loc


class Message(BaseModel):
    """Marker base: frozen, and unknown fields are an error rather than silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid")


Country = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Z]{2}$")]


class Payer(Message):
    """Who pays. Risk looks at these; none is required except where a method needs it."""

    account_id: Identifier | None = None
    """The payer's internal wallet (required for ``balance``)."""
    country: Country | None = None
    customer_id: Identifier | None = None
    """The merchant's or our id for the payer: velocity is counted per payer."""
    card_fingerprint: Identifier | None = None
    """A token for the card (never the card number)."""
    card_country: Country | None = None
    device_id: Identifier | None = None
    ip: IPvAnyAddress | None = None


class SplitShare(Message):
    """One merchant's part of a split payment."""

    merchant_id: Identifier
    amount_minor: AmountMinor


SPLIT_SHARES_MAX = 10


class Command(Message):
    merchant_id: Identifier
    idempotency_key: Identifier

    def subject_id(self) -> str:
        """The one entity this command acts on; the stage owning it is keyed by this."""
        raise NotImplementedError


class OrderCommand(Command):
    merchant_order_no: Identifier

    def subject_id(self) -> str:
        return payment_id_for(self.merchant_id, self.merchant_order_no)


class Pay(OrderCommand):
    """Sale (capture=auto) or pre-authorization (capture=manual), by any method."""

    type: Literal["pay"] = "pay"
    amount_minor: AmountMinor
    currency: Currency
    method: Method
    capture: CaptureMode = CaptureMode.auto
    payer: Payer = Payer()
    mandate_id: Identifier | None = None
    split: tuple[SplitShare, ...] = Field(default=(), max_length=SPLIT_SHARES_MAX)
    """Empty: all to ``merchant_id``. Else the shares, summing to ``amount_minor``."""

    @model_validator(mode="after")
    def _method_needs(self) -> Pay:
        if self.method is Method.balance and self.payer.account_id is None:
            raise ValueError("payer.account_id: required for method balance")
        if self.method is Method.mandate:
            if self.mandate_id is None:
                raise ValueError("mandate_id: required for method mandate")
            if self.capture is CaptureMode.manual:
                raise ValueError("capture: a mandate collection is always captured (auto)")
        elif self.mandate_id is not None:
            raise ValueError("mandate_id: only allowed with method mandate")
        _check_split(self.split, self.amount_minor)
        return self


def _check_split(split: tuple[SplitShare, ...], amount_minor: int) -> None:
    if not split:
        return
    if len({s.merchant_id for s in split}) != len(split):
        raise ValueError("split: each merchant may appear once")
    total = sum(s.amount_minor for s in split)
    if total != amount_minor:
        raise ValueError(f"split: shares sum to {total}, amount_minor is {amount_minor}")


class Capture(OrderCommand):
    """Capture part or all of an authorization; ``amount_minor`` None means the rest."""

    type: Literal["capture"] = "capture"
    amount_minor: AmountMinor | None = None


class Void(OrderCommand):
    """Release what is left of an authorization."""

    type: Literal["void"] = "void"


class Refund(OrderCommand):
    type: Literal["refund"] = "refund"
    refund_id: Identifier
    amount_minor: AmountMinor


class Revoke(OrderCommand):
    """Cancel a payment that has not settled: void an authorization, reverse a sale."""

    type: Literal["revoke"] = "revoke"


class Transfer(OrderCommand):
    """Move money between two internal wallets (funds frozen on the source first)."""

    type: Literal["transfer"] = "transfer"
    from_account_id: Identifier
    to_account_id: Identifier
    amount_minor: AmountMinor
    currency: Currency

    @model_validator(mode="after")
    def _different_accounts(self) -> Transfer:
        if self.from_account_id == self.to_account_id:
            raise ValueError("to_account_id: must differ from from_account_id")
        return self


class _WalletThroughChannel(OrderCommand):
    """Money between a wallet and an outside channel (a top-up or a withdrawal)."""

    account_id: Identifier
    amount_minor: AmountMinor
    currency: Currency
    method: Method

    @model_validator(mode="after")
    def _channel_method(self) -> _WalletThroughChannel:
        if self.method not in CHANNEL_METHODS:
            raise ValueError(f"method: a {self.type} goes through a channel "
                             "(card, bank or wallet)")
        return self


class TopUp(_WalletThroughChannel):
    """Recharge a wallet from an outside channel."""

    type: Literal["topup"] = "topup"


class Withdraw(_WalletThroughChannel):
    """Pay out from a wallet to an outside channel: frozen first, debited on success."""

    type: Literal["withdraw"] = "withdraw"
    method: Method = Method.bank


class ReviewDecision(str, Enum):
    approve = "approve"
    reject = "reject"


class Review(OrderCommand):
    """An ops decision on a payment held in ``risk_review`` (ops only, not merchants)."""

    type: Literal["review"] = "review"
    decision: ReviewDecision
    reviewer: Identifier
    comment: Annotated[str, StringConstraints(max_length=500)] = ""


class ResolutionAction(str, Enum):
    """What ops may do about a reconciliation exception (which kind allows which:
    ``domain.resolutions.ALLOWED``)."""

    accept_channel_result = "accept_channel_result"
    """The channel's word stands: the order takes what the channel says happened."""
    refund = "refund"
    """Money the order must not keep goes to suspense and back to the payer through the
    channel."""
    write_off = "write_off"
    """The difference is booked to ``suspense:<CCY>`` and investigated there."""


Comment = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=500)]


class ResolveException(OrderCommand):
    """An ops resolution of one reconciliation exception of this payment (ops only, like
    ``review``). The exception's facts (kind, channel, amounts, line) travel with it, copied
    from the exception by the API; the order stage checks them against the order.
    ``preview_digest`` binds the command to the entries ops were shown."""

    type: Literal["resolve_exception"] = "resolve_exception"
    exception_id: Identifier
    kind: ExceptionKind
    action: ResolutionAction
    resolver: Identifier
    comment: Comment
    channel: Identifier
    currency: Currency
    amount_minor: Annotated[StrictInt, Field(ge=0, le=AMOUNT_MINOR_MAX)] = 0
    """The money the exception is about: the channel's amount for a status or amount
    mismatch, the line's gross for a duplicate settlement, ours for a missing line."""
    fee_minor: Annotated[StrictInt, Field(ge=0, le=AMOUNT_MINOR_MAX)] = 0
    """The line's fee (a duplicate settlement: the channel kept it)."""
    line_id: Annotated[str, StringConstraints(strict=True, max_length=128)] = ""
    preview_digest: Annotated[str, StringConstraints(strict=True, max_length=64)] = ""
    """``domain.resolutions.digest_of`` the previewed entries ('' : not previewed)."""


class MandateCommand(Command):
    mandate_id: Identifier

    def subject_id(self) -> str:
        return mandate_key_for(self.merchant_id, self.mandate_id)


class SignMandate(MandateCommand):
    """The payer signed a collection mandate for this merchant."""

    type: Literal["sign_mandate"] = "sign_mandate"
    payer_account_id: Identifier
    currency: Currency
    amount_minor_max: AmountMinor
    """The most one collection under this mandate may take."""


class TerminateMandate(MandateCommand):
    type: Literal["terminate_mandate"] = "terminate_mandate"


PaymentCommand = Annotated[
    Union[Pay, Capture, Void, Refund, Revoke, Transfer, TopUp, Withdraw, Review, SignMandate,
          TerminateMandate, ResolveException],
    Field(discriminator="type"),
]
COMMAND_TYPES = ("pay", "capture", "void", "refund", "revoke", "transfer", "topup", "withdraw",
                 "review", "sign_mandate", "terminate_mandate", "resolve_exception")
OPS_COMMAND_TYPES = frozenset({"review", "resolve_exception"})
"""Ops' commands: their refusals are ops' business, not the merchant's events."""
SCREENED = (Pay, Transfer, TopUp, Withdraw)
"""Commands that move new money: risk screens them before their order exists."""
