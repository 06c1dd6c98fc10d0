"""Account naming: a merchant's customers' wallets name their merchant exactly."""

from __future__ import annotations

import pytest

from domain import accounts


class TestCustomerWallets:
    def test_wallet_names_its_merchant_when_the_merchant_id_has_dots(self):
        wallet = accounts.customer_wallet(accounts.merchants_customer("m-acme.eu", "bob"), "USD")

        assert wallet == "wallet:m-acme.eu.bob:USD"
        assert accounts.wallet_merchant(wallet) == "m-acme.eu"

    def test_a_customer_id_with_the_separator_is_a_broken_invariant(self):
        with pytest.raises(AssertionError):
            accounts.merchants_customer("m-acme", "eu.bob")

    @pytest.mark.parametrize("account_id", [
        "wallet:p-1:EUR", "wallet:.bob:EUR", "wallet:m-acme.:EUR", "merchant:m-acme:pending:EUR",
        "wallet:m-acme.bob:EUR:x", "fees:EUR"])
    def test_no_merchant_owns_accounts_it_did_not_name(self, account_id):
        assert accounts.wallet_merchant(account_id) is None
