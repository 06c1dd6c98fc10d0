"""An in-memory ledger for domain tests: legs applied once by posting id, holds placed and
released, and every account checked after each step (DESIGN.md §3)."""

from __future__ import annotations

from domain.events import HoldReleaseRequested, HoldRequested, JournalEntryDecided, Leg
from domain.ledger import (
    BY_KIND,
    AccountBalance,
    Hold,
    PostingStatus,
    apply_leg,
    check_invariants,
    entry_balances,
    open_account,
    place_hold,
    posting_id_for,
    release_hold,
)


class Books:
    def __init__(self, currency: str, seed_account: str) -> None:
        self.currency = currency
        self.seed_account = seed_account
        """Where funding comes from (an unlimited account)."""
        self.balances: dict[str, AccountBalance] = {}
        self.posted: set[str] = set()

    def balance(self, account_id: str) -> AccountBalance:
        return self.balances.get(account_id) or open_account(account_id, self.currency)

    def fund(self, account_id: str, amount_minor: int) -> None:
        ccy = self.currency
        self.post(JournalEntryDecided(
            entry_id=f"je_seed_{account_id}_{len(self.posted)}", payment_id="seed",
            reason="seed", decided_at_ms=0,
            legs=(Leg(account_id=self.seed_account, currency=ccy, amount_minor=-amount_minor),
                  Leg(account_id=account_id, currency=ccy, amount_minor=amount_minor))))

    def post(self, entry: JournalEntryDecided) -> None:
        assert entry_balances(entry), entry
        for leg in entry.legs:
            posting_id = posting_id_for(entry, leg.account_id)
            if posting_id in self.posted:
                continue
            self.balances[leg.account_id], status = apply_leg(self.balance(leg.account_id),
                                                              leg)
            assert status is PostingStatus.applied, (status, leg)
            self.posted.add(posting_id)

    def place(self, held: HoldRequested) -> PostingStatus:
        hold = Hold(hold_id=held.hold_id, payment_id=held.payment_id,
                    amount_minor=held.amount_minor)
        self.balances[held.account_id], status = place_hold(self.balance(held.account_id), hold)
        return status

    def release(self, message: HoldReleaseRequested, strict: bool = True) -> None:
        self.balances[message.account_id], status = release_hold(
            self.balance(message.account_id), message.hold_id)
        assert status is PostingStatus.applied or not strict, (status, message)

    def take(self, outputs) -> None:
        """Apply a decision's entries and releases, then check every account."""
        for message in outputs:
            if isinstance(message, JournalEntryDecided):
                self.post(message)
            elif isinstance(message, HoldReleaseRequested):
                self.release(message, strict=False)
        self.check()

    def check(self) -> None:
        for balance in self.balances.values():
            check_invariants(balance, BY_KIND)
            assert balance.total_minor == balance.available_minor + balance.frozen_minor
        assert sum(b.total_minor for b in self.balances.values()) == 0

    def total(self, account_id: str) -> int:
        return self.balance(account_id).total_minor

    def frozen(self, account_id: str) -> int:
        return self.balance(account_id).frozen_minor
