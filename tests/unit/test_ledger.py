"""Balances, legs and holds: total = available + frozen, frozen = sum of holds, no overdraft."""

from __future__ import annotations

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import accounts
from domain.events import JournalEntryDecided, Leg
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

P = PostingStatus
CCY = "EUR"
MERCHANT = accounts.merchant_pending("m-1", CCY)
CLEARING = accounts.channel_clearing("acq", CCY)
FEES = accounts.fee_revenue(CCY)
SUSPENSE = f"suspense:{CCY}"


def leg(amount, account=MERCHANT, currency=CCY, hold_id="", hold_final=True) -> Leg:
    return Leg(account_id=account, currency=currency, amount_minor=amount, hold_id=hold_id,
               hold_final=hold_final)


def hold(hold_id="h-1", amount=300) -> Hold:
    return Hold(hold_id=hold_id, payment_id="pay_1", amount_minor=amount)


def funded(amount=1_000, account=MERCHANT) -> AccountBalance:
    balance, status = apply_leg(open_account(account, CCY), leg(amount, account))
    assert status is P.applied
    return balance


def entry(*legs: Leg, entry_id="je_1") -> JournalEntryDecided:
    return JournalEntryDecided(entry_id=entry_id, payment_id="pay_1", reason="test", legs=legs,
                               decided_at_ms=1)


class TestApplyLeg:
    def test_credit_raises_total_and_available(self):
        balance = open_account(MERCHANT, CCY)

        after, status = apply_leg(balance, leg(1_000))

        assert status is P.applied
        assert (after.total_minor, after.frozen_minor, after.available_minor) == (1_000, 0, 1_000)
        assert balance.total_minor == 0

    def test_debit_applied_when_within_funds(self):
        balance = funded(1_000)

        after, status = apply_leg(balance, leg(-400))

        assert status is P.applied
        assert after.total_minor == 600

    def test_debit_applied_when_exactly_available(self):
        balance = funded(1_000)

        after, status = apply_leg(balance, leg(-1_000))

        assert status is P.applied
        assert after.available_minor == 0

    @pytest.mark.parametrize("account", [MERCHANT, "wallet:p-1:EUR", "settled:m-1:EUR"])
    def test_debit_rejected_insufficient_funds_when_beyond_funds(self, account):
        balance = funded(1_000, account)

        after, status = apply_leg(balance, leg(-1_001, account))

        assert status is P.insufficient_funds
        assert after is balance
        assert after.total_minor == 1_000

    def test_debit_rejected_insufficient_funds_when_funds_frozen(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 700))

        after, status = apply_leg(balance, leg(-301))

        assert status is P.insufficient_funds
        assert after is balance

    @pytest.mark.parametrize("account", [CLEARING, SUSPENSE, FEES])
    def test_debit_may_go_negative_when_account_unlimited(self, account):
        balance = open_account(account, CCY)

        after, status = apply_leg(balance, leg(-5_000, account))

        assert status is P.applied
        assert (after.total_minor, after.available_minor) == (-5_000, -5_000)

    def test_rejected_currency_mismatch_when_leg_in_other_currency(self):
        balance = funded(1_000)

        after, status = apply_leg(balance, leg(100, currency="USD"))

        assert status is P.currency_mismatch
        assert after is balance

    def test_rejected_currency_mismatch_before_hold_lookup_when_hold_leg(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 300))

        after, status = apply_leg(balance, leg(-300, currency="USD", hold_id="h-1"))

        assert status is P.currency_mismatch
        assert after is balance

    def test_asserts_when_leg_for_other_account(self):
        balance = funded(1_000)

        with pytest.raises(AssertionError):
            apply_leg(balance, leg(1, CLEARING))


class TestHolds:
    def test_place_hold_freezes_without_moving_total(self):
        balance = funded(1_000)

        after, status = place_hold(balance, hold("h-1", 300))

        assert status is P.applied
        assert (after.total_minor, after.frozen_minor, after.available_minor) == (1_000, 300, 700)
        assert after.holds == (hold("h-1", 300),)

    def test_place_hold_applied_when_exactly_available(self):
        balance = funded(1_000)

        after, status = place_hold(balance, hold("h-1", 1_000))

        assert status is P.applied
        assert after.available_minor == 0

    def test_place_hold_rejected_insufficient_funds_when_over_available(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 600))

        after, status = place_hold(balance, hold("h-2", 401))

        assert status is P.insufficient_funds
        assert after is balance

    def test_place_hold_allowed_when_account_unlimited(self):
        balance = open_account(CLEARING, CCY)

        after, status = place_hold(balance, hold("h-1", 500))

        assert status is P.applied
        assert after.available_minor == -500

    @pytest.mark.parametrize("amount", [0, -1])
    def test_place_hold_rejected_when_amount_not_positive(self, amount):
        balance = funded(1_000)

        after, status = place_hold(balance, hold("h-1", amount))

        assert status is P.amount_must_be_positive
        assert after is balance

    def test_place_hold_rejected_hold_exists_when_open(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 300))

        after, status = place_hold(balance, hold("h-1", 300))

        assert status is P.hold_exists
        assert after is balance
        assert after.frozen_minor == 300

    def test_place_hold_rejected_hold_exists_when_already_resolved(self):
        placed, first = place_hold(funded(1_000), hold("h-1", 300))
        released, _ = release_hold(placed, "h-1")

        after, status = place_hold(released, hold("h-1", 300), earlier=first)

        assert status is P.hold_exists
        assert after is released
        assert after.frozen_minor == 0

    def test_capture_hold_debits_and_releases_remainder(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 300))

        after, status = apply_leg(balance, leg(-200, hold_id="h-1"))

        assert status is P.applied
        assert (after.total_minor, after.frozen_minor, after.available_minor) == (800, 0, 800)
        assert after.holds == ()

    def test_capture_hold_debits_whole_hold_when_exact(self):
        balance, _ = place_hold(funded(300), hold("h-1", 300))

        after, status = apply_leg(balance, leg(-300, hold_id="h-1"))

        assert status is P.applied
        assert (after.total_minor, after.frozen_minor) == (0, 0)

    def test_capture_hold_leaves_other_holds_frozen(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 300))
        balance, _ = place_hold(balance, hold("h-2", 200))

        after, status = apply_leg(balance, leg(-300, hold_id="h-1"))

        assert status is P.applied
        assert after.holds == (hold("h-2", 200),)
        assert (after.total_minor, after.frozen_minor) == (700, 200)

    @pytest.mark.parametrize("amount", [-301, 0, 5])
    def test_capture_hold_rejected_hold_exceeded_when_not_a_debit_within_hold(self, amount):
        balance, _ = place_hold(funded(1_000), hold("h-1", 300))

        after, status = apply_leg(balance, leg(amount, hold_id="h-1"))

        assert status is P.hold_exceeded
        assert after is balance

    def test_capture_hold_rejected_hold_not_found_when_unknown(self):
        balance = funded(1_000)

        after, status = apply_leg(balance, leg(-100, hold_id="h-x"))

        assert status is P.hold_not_found
        assert after is balance

    def test_capture_hold_rejected_hold_not_found_when_captured_twice(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 300))
        once, _ = apply_leg(balance, leg(-300, hold_id="h-1"))

        twice, status = apply_leg(once, leg(-300, hold_id="h-1"))

        assert status is P.hold_not_found
        assert twice is once
        assert twice.total_minor == 700

    def test_release_hold_unfreezes_without_moving_total(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 300))

        after, status = release_hold(balance, "h-1")

        assert status is P.applied
        assert (after.total_minor, after.frozen_minor, after.available_minor) == (1_000, 0, 1_000)

    def test_release_hold_is_noop_when_released_twice(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 300))
        once, _ = release_hold(balance, "h-1")

        twice, status = release_hold(once, "h-1")

        assert status is P.hold_not_found
        assert twice is once

    def test_release_hold_is_noop_when_hold_already_captured(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 300))
        captured, _ = apply_leg(balance, leg(-300, hold_id="h-1"))

        after, status = release_hold(captured, "h-1")

        assert status is P.hold_not_found
        assert after is captured

    def test_place_hold_answers_first_decision_when_redelivered_after_capture(self):
        balance, first = place_hold(funded(10_000), hold("h-old", 500))
        balance, _ = apply_leg(balance, leg(-500, hold_id="h-old"))

        after, status = place_hold(balance, hold("h-old", 500), earlier=first)

        assert status is P.hold_exists
        assert after is balance
        assert after.frozen_minor == 0

    def test_place_hold_stays_refused_when_redelivered_after_funds_arrive(self):
        _, first = place_hold(funded(100), hold("h-1", 500))
        richer = funded(10_000)

        after, status = place_hold(richer, hold("h-1", 500), earlier=first)

        assert first is P.insufficient_funds
        assert status is P.insufficient_funds
        assert after is richer


def assert_books(balance: AccountBalance) -> None:
    """DESIGN.md §3.3, checked from the outside: total = available + frozen = holds + rest."""
    assert balance.total_minor == balance.available_minor + balance.frozen_minor
    assert balance.frozen_minor == sum(h.amount_minor for h in balance.holds)


class TestPartialHoldCapture:
    def test_partial_capture_keeps_rest_frozen_when_hold_not_final(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 600))

        after, status = apply_leg(balance, leg(-250, hold_id="h-1", hold_final=False))

        assert status is P.applied
        assert (after.total_minor, after.frozen_minor, after.available_minor) == (750, 350, 400)
        assert after.holds == (hold("h-1", 350),)
        assert_books(after)

    def test_final_capture_closes_hold_when_after_partial_ones(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 600))
        balance, _ = apply_leg(balance, leg(-250, hold_id="h-1", hold_final=False))

        after, status = apply_leg(balance, leg(-350, hold_id="h-1", hold_final=True))

        assert status is P.applied
        assert (after.total_minor, after.frozen_minor, after.available_minor) == (400, 0, 400)
        assert after.holds == ()
        assert_books(after)

    def test_final_capture_releases_rest_when_below_what_is_left(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 600))
        balance, _ = apply_leg(balance, leg(-250, hold_id="h-1", hold_final=False))

        after, status = apply_leg(balance, leg(-100, hold_id="h-1", hold_final=True))

        assert status is P.applied
        assert (after.total_minor, after.frozen_minor, after.available_minor) == (650, 0, 650)
        assert after.holds == ()

    def test_non_final_capture_closes_hold_when_it_takes_everything(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 600))

        after, status = apply_leg(balance, leg(-600, hold_id="h-1", hold_final=False))

        assert status is P.applied
        assert (after.total_minor, after.frozen_minor) == (400, 0)
        assert after.holds == ()

    def test_partial_capture_leaves_other_holds_alone(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 600))
        balance, _ = place_hold(balance, hold("h-2", 100))

        after, _ = apply_leg(balance, leg(-200, hold_id="h-1", hold_final=False))

        assert after.holds == (hold("h-1", 400), hold("h-2", 100))
        assert (after.total_minor, after.frozen_minor, after.available_minor) == (800, 500, 300)
        assert_books(after)

    def test_partial_capture_rejected_hold_exceeded_when_over_what_is_left(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 600))
        balance, _ = apply_leg(balance, leg(-250, hold_id="h-1", hold_final=False))

        after, status = apply_leg(balance, leg(-351, hold_id="h-1", hold_final=False))

        assert status is P.hold_exceeded
        assert after is balance

    def test_release_unfreezes_rest_when_after_partial_capture(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 600))
        balance, _ = apply_leg(balance, leg(-250, hold_id="h-1", hold_final=False))

        after, status = release_hold(balance, "h-1")

        assert status is P.applied
        assert (after.total_minor, after.frozen_minor, after.available_minor) == (750, 0, 750)
        assert_books(after)

    def test_capture_rejected_hold_not_found_when_final_capture_closed_it(self):
        balance, _ = place_hold(funded(1_000), hold("h-1", 600))
        balance, _ = apply_leg(balance, leg(-250, hold_id="h-1", hold_final=True))

        after, status = apply_leg(balance, leg(-100, hold_id="h-1", hold_final=False))

        assert status is P.hold_not_found
        assert after is balance

    @settings(max_examples=200, deadline=None, database=None)
    @given(hold_minor=st.integers(min_value=1, max_value=10_000),
           other_minor=st.integers(min_value=0, max_value=10_000),
           cuts=st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=8),
           close=st.sampled_from(["final", "release"]))
    def test_books_hold_when_captured_in_parts(self, hold_minor, other_minor, cuts, close):
        balance, _ = place_hold(funded(hold_minor + other_minor), hold("h-1", hold_minor))
        taken = 0

        for cut in cuts:
            rest = hold_minor - taken
            if rest == 0:
                break
            amount = min(cut, rest)
            balance, status = apply_leg(balance, leg(-amount, hold_id="h-1", hold_final=False))
            taken += amount
            assert status is P.applied
            assert balance.frozen_minor == hold_minor - taken
            assert_books(balance)
        if balance.holds and close == "final":
            balance, _ = apply_leg(balance, leg(-1, hold_id="h-1"))
            taken += 1
        elif balance.holds:
            balance, _ = release_hold(balance, "h-1")

        assert balance.holds == ()
        assert balance.frozen_minor == 0
        assert balance.total_minor == hold_minor + other_minor - taken
        assert_books(balance)


class TestInvariants:
    def test_check_invariants_fails_when_frozen_differs_from_holds(self):
        broken = AccountBalance(account_id=MERCHANT, currency=CCY, total_minor=100,
                                frozen_minor=50)

        with pytest.raises(AssertionError):
            check_invariants(broken, BY_KIND)

    def test_check_invariants_fails_when_available_negative_on_limited_account(self):
        broken = AccountBalance(account_id=MERCHANT, currency=CCY, total_minor=-1)

        with pytest.raises(AssertionError):
            check_invariants(broken, BY_KIND)

    def test_check_invariants_passes_when_clearing_negative(self):
        fine = AccountBalance(account_id=CLEARING, currency=CCY, total_minor=-1)

        check_invariants(fine)

        assert fine.available_minor == -1

    def test_balance_is_frozen_model(self):
        balance = funded(1_000)

        with pytest.raises(pydantic.ValidationError):
            balance.total_minor = 5

        assert balance.total_minor == 1_000


class TestEntries:
    def test_entry_balances_when_legs_sum_to_zero(self):
        e = entry(leg(-100, CLEARING), leg(90), leg(10, FEES))

        ok = entry_balances(e)

        assert ok is True

    def test_entry_unbalanced_when_legs_do_not_sum_to_zero(self):
        e = entry(leg(-100, CLEARING), leg(99))

        ok = entry_balances(e)

        assert ok is False

    def test_entry_refused_when_two_legs_share_an_account(self):
        e = entry(leg(-100, CLEARING), leg(60), leg(40))

        ok = entry_balances(e)

        assert ok is False

    def test_entry_unbalanced_when_single_leg(self):
        e = entry(leg(0))

        ok = entry_balances(e)

        assert ok is False

    def test_entry_unbalanced_when_zero_only_across_currencies(self):
        e = entry(leg(-100, CLEARING, "EUR"), leg(100, "merchant:m-1:pending:USD", "USD"))

        ok = entry_balances(e)

        assert ok is False

    def test_entry_balances_per_currency_when_several_currencies(self):
        e = entry(leg(-100, CLEARING, "EUR"), leg(100, MERCHANT, "EUR"),
                  leg(-7, "clearing:acq:USD", "USD"), leg(7, "merchant:m-1:pending:USD", "USD"))

        ok = entry_balances(e)

        assert ok is True

    def test_posting_id_is_entry_and_account(self):
        e = entry(leg(-1, CLEARING), leg(1), entry_id="je_9")

        posting = posting_id_for(e, MERCHANT)

        assert posting == f"je_9:{MERCHANT}"
        assert posting != posting_id_for(e, CLEARING)


class TestAccounts:
    @pytest.mark.parametrize("account_id,unlimited", [
        (CLEARING, True), (SUSPENSE, True), (FEES, True), (MERCHANT, False),
        ("wallet:p-1:EUR", False), ("settled:m-1:EUR", False),
    ])
    def test_overdraft_only_for_clearing_suspense_and_fees(self, account_id, unlimited):
        found = accounts.overdraft_unlimited(account_id)

        assert found is unlimited

    def test_merchant_account_kind_when_merchant_id_has_colons(self):
        account_id = accounts.merchant_pending("clearing:x", CCY)

        kind = accounts.kind_of(account_id)

        assert kind is accounts.AccountKind.merchant_pending
        assert not accounts.overdraft_unlimited(account_id)


WALLET = accounts.customer_wallet("p-1", CCY)
OVERDRAFT_MINOR = 500


class TestLimits:
    """``limit_minor``: how far below zero available may go (None: no limit)."""

    @pytest.mark.parametrize("funds_minor", [0, 1_000])
    def test_debit_applied_when_down_to_minus_limit(self, funds_minor):
        balance = funded(funds_minor, WALLET) if funds_minor else open_account(WALLET, CCY)

        after, status = apply_leg(balance, leg(-(funds_minor + OVERDRAFT_MINOR), WALLET),
                                  OVERDRAFT_MINOR)

        assert status is P.applied
        assert after.available_minor == -OVERDRAFT_MINOR

    @pytest.mark.parametrize("funds_minor", [0, 1_000])
    def test_debit_rejected_insufficient_funds_when_beyond_minus_limit(self, funds_minor):
        balance = funded(funds_minor, WALLET) if funds_minor else open_account(WALLET, CCY)

        after, status = apply_leg(balance, leg(-(funds_minor + OVERDRAFT_MINOR + 1), WALLET),
                                  OVERDRAFT_MINOR)

        assert status is P.insufficient_funds
        assert after is balance
        assert (after.total_minor, after.version) == (funds_minor, balance.version)

    def test_debit_counts_frozen_funds_against_limit(self):
        balance, _ = place_hold(funded(1_000, WALLET), hold("h-1", 300), None, OVERDRAFT_MINOR)

        refused, status = apply_leg(balance, leg(-1_201, WALLET), OVERDRAFT_MINOR)
        applied, ok = apply_leg(balance, leg(-1_200, WALLET), OVERDRAFT_MINOR)

        assert status is P.insufficient_funds
        assert refused is balance
        assert ok is P.applied
        assert (applied.total_minor, applied.available_minor) == (-200, -500)

    def test_debit_unlimited_when_limit_none_on_limited_kind(self):
        balance = open_account(WALLET, CCY)

        after, status = apply_leg(balance, leg(-10**9, WALLET), None)

        assert status is P.applied
        assert after.available_minor == -10**9

    def test_debit_limited_when_limit_zero_on_unlimited_kind(self):
        balance = open_account(CLEARING, CCY)

        after, status = apply_leg(balance, leg(-1, CLEARING), 0)

        assert status is P.insufficient_funds
        assert after is balance

    def test_hold_placed_when_down_to_minus_limit(self):
        balance = funded(1_000, WALLET)

        after, status = place_hold(balance, hold("h-1", 1_500), None, OVERDRAFT_MINOR)

        assert status is P.applied
        assert (after.total_minor, after.frozen_minor, after.available_minor) == (
            1_000, 1_500, -OVERDRAFT_MINOR)

    def test_hold_rejected_insufficient_funds_when_beyond_minus_limit(self):
        balance, _ = place_hold(funded(1_000, WALLET), hold("h-1", 700), None, OVERDRAFT_MINOR)

        after, status = place_hold(balance, hold("h-2", 801), None, OVERDRAFT_MINOR)

        assert status is P.insufficient_funds
        assert after is balance
        assert (after.frozen_minor, after.version) == (700, balance.version)

    def test_hold_rejected_insufficient_funds_by_kind_when_no_limit_given(self):
        balance = funded(1_000, WALLET)

        after, status = place_hold(balance, hold("h-1", 1_001))

        assert status is P.insufficient_funds
        assert after is balance

    @pytest.mark.parametrize("limit_minor", [0, OVERDRAFT_MINOR, BY_KIND])
    def test_credit_applied_when_available_below_limit(self, limit_minor):
        below = AccountBalance(account_id=WALLET, currency=CCY, total_minor=-900)

        after, status = apply_leg(below, leg(100, WALLET), limit_minor)

        assert status is P.applied
        assert after.available_minor == -800

    def test_debit_rejected_when_available_already_below_limit(self):
        below = AccountBalance(account_id=WALLET, currency=CCY, total_minor=-900)

        after, status = apply_leg(below, leg(-1, WALLET), OVERDRAFT_MINOR)

        assert status is P.insufficient_funds
        assert after is below


class TestVersion:
    """``version`` counts every change to the account: exactly one per applied change."""

    def test_version_rises_by_one_per_applied_change(self):
        changes = [
            lambda b: apply_leg(b, leg(1_000, WALLET)),
            lambda b: place_hold(b, hold("h-1", 600)),
            lambda b: apply_leg(b, leg(-100, WALLET, hold_id="h-1", hold_final=False)),
            lambda b: apply_leg(b, leg(-200, WALLET, hold_id="h-1")),
            lambda b: place_hold(b, hold("h-2", 300)),
            lambda b: release_hold(b, "h-2"),
            lambda b: apply_leg(b, leg(-50, WALLET)),
        ]
        balance = open_account(WALLET, CCY)
        versions = []

        for change in changes:
            balance, status = change(balance)
            assert status is P.applied
            versions.append(balance.version)

        assert versions == [1, 2, 3, 4, 5, 6, 7]
        assert balance.legs_applied == 4

    def test_version_unchanged_when_refused(self):
        balance, _ = place_hold(funded(1_000, WALLET), hold("h-1", 300))
        refusals = [
            (apply_leg(balance, leg(-701, WALLET)), P.insufficient_funds),
            (apply_leg(balance, leg(5, WALLET, currency="USD")), P.currency_mismatch),
            (apply_leg(balance, leg(-1, WALLET, hold_id="h-x")), P.hold_not_found),
            (apply_leg(balance, leg(-301, WALLET, hold_id="h-1")), P.hold_exceeded),
            (place_hold(balance, hold("h-1", 10)), P.hold_exists),
            (place_hold(balance, hold("h-2", 0)), P.amount_must_be_positive),
            (place_hold(balance, hold("h-2", 701)), P.insufficient_funds),
            (place_hold(balance, hold("h-9", 1), earlier=P.insufficient_funds),
             P.insufficient_funds),
            (release_hold(balance, "h-x"), P.hold_not_found),
        ]

        for (after, status), expected in refusals:
            assert status is expected
            assert after is balance

        assert balance.version == 2

    @settings(max_examples=100, deadline=None, database=None)
    @given(ops=st.lists(st.tuples(st.sampled_from(["credit", "debit", "hold", "capture",
                                                   "partial", "release"]),
                                  st.integers(min_value=1, max_value=2_000),
                                  st.integers(min_value=0, max_value=3)),
                        max_size=30))
    def test_version_counts_applied_changes_only(self, ops):
        balance = open_account(WALLET, CCY)
        applied = 0

        for kind, amount, which in ops:
            hold_id = f"h-{which}"
            if kind == "credit":
                balance, status = apply_leg(balance, leg(amount, WALLET), OVERDRAFT_MINOR)
            elif kind == "debit":
                balance, status = apply_leg(balance, leg(-amount, WALLET), OVERDRAFT_MINOR)
            elif kind == "hold":
                balance, status = place_hold(balance, hold(hold_id, amount), None,
                                             OVERDRAFT_MINOR)
            elif kind == "release":
                balance, status = release_hold(balance, hold_id)
            else:
                balance, status = apply_leg(balance, leg(-amount, WALLET, hold_id=hold_id,
                                                         hold_final=kind == "capture"))
            applied += status is P.applied
            assert balance.version == applied
            assert balance.available_minor >= -OVERDRAFT_MINOR
            assert_books(balance)
