"""The kinds of discrepancy reconciliation reports, on their own so that commands naming one
(ops' ``resolve_exception``) and reconciliation itself share them without a cycle."""

from __future__ import annotations

from enum import Enum


class ExceptionKind(str, Enum):
    """What reconciliation can find wrong. Values never change (ops tooling keys on them)."""

    missing_at_channel = "missing_at_channel"
    """We captured it; the channel's reports up to T+N do not settle it."""
    missing_in_ours = "missing_in_ours"
    """The channel settled (or reported success for) a payment we have no record of."""
    amount_mismatch = "amount_mismatch"
    """Two sides name different amounts (a line's gross, a callback, the ledger)."""
    fee_mismatch = "fee_mismatch"
    """The line's fee differs from ours by more than the channel's tolerance."""
    status_mismatch = "status_mismatch"
    """The channel says succeeded and the order says failed or unknown, or the reverse."""
    duplicate_settlement = "duplicate_settlement"
    """A second line settles a payment already settled."""
    currency_mismatch = "currency_mismatch"
    """A line or a callback in another currency than the order."""
    date_out_of_window = "date_out_of_window"
    """A line dated outside its report's period or outside T..T+N(+window)."""
