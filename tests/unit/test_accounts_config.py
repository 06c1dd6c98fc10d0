"""``config/accounts.yaml``: overdraft limits per account and hot accounts split in shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain import accounts
from streams.accounts_config import AccountsFile, HotAccount, LimitRule, load_accounts
from streams.config import ConfigError
from streams.settings import Settings

EUR = "EUR"
WALLET = accounts.customer_wallet("p-1", EUR)
MERCHANT = accounts.merchant_pending("m-1", EUR)
CLEARING = accounts.channel_clearing("acq", EUR)
FEES = accounts.fee_revenue(EUR)
SUSPENSE = accounts.suspense(EUR)
HOT = AccountsFile(hot_accounts=(HotAccount(account="fees:*", shards=4),))


def rules(*pairs: tuple[str, int | None]) -> AccountsFile:
    return AccountsFile(limits=tuple(LimitRule(account=glob, overdraft_minor=limit)
                                     for glob, limit in pairs))


class TestLimitOf:
    @pytest.mark.parametrize("account_id,limit", [
        (WALLET, 0), (MERCHANT, 0), (accounts.merchant_pending("m-1", "USD"), 0),
        (CLEARING, None), (FEES, None), (SUSPENSE, None),
    ])
    def test_limit_by_kind_when_no_rule(self, account_id, limit):
        policy = AccountsFile()

        found = policy.limit_of(account_id)

        assert found == limit

    def test_rule_overrides_kind_when_glob_matches(self):
        policy = rules(("merchant:credit-*:pending:*", 500))

        found = policy.limit_of(accounts.merchant_pending("credit-shop", EUR))

        assert found == 500
        assert policy.limit_of(MERCHANT) == 0

    def test_rule_replaces_kind_limit_when_null_or_zero(self):
        policy = rules(("wallet:vip:*", None), ("clearing:*", 0))

        lifted, imposed = policy.limit_of("wallet:vip:EUR"), policy.limit_of(CLEARING)

        assert (lifted, imposed) == (None, 0)

    @pytest.mark.parametrize("order,limit", [("specific_first", 100), ("broad_first", 900)])
    def test_first_matching_rule_wins(self, order, limit):
        specific, broad = ("merchant:m-1:*", 100), ("merchant:*", 900)
        policy = rules(specific, broad) if order == "specific_first" else rules(broad, specific)

        found = policy.limit_of(MERCHANT)

        assert found == limit

    def test_glob_is_case_sensitive(self):
        policy = rules(("merchant:M-1:*", 100))

        found = policy.limit_of(MERCHANT)

        assert found == 0

    @pytest.mark.parametrize("shard", [0, 3])
    def test_sub_account_gets_its_logical_accounts_limit(self, shard):
        policy = rules(("merchant:m-1:*", 700))

        found = policy.limit_of(accounts.sub_account(MERCHANT, shard))

        assert found == 700
        assert policy.limit_of(accounts.sub_account(FEES, shard)) is None
        assert policy.limit_of(accounts.sub_account(WALLET, shard)) == 0


class TestShards:
    def test_shards_of_hot_account_when_glob_matches(self):
        policy = HOT

        found = policy.shards_of(FEES), policy.shards_of("fees:USD")

        assert found == (4, 4)

    def test_shards_of_is_one_when_not_hot(self):
        policy = HOT

        found = policy.shards_of(WALLET)

        assert found == 1

    def test_place_returns_account_itself_when_not_hot(self):
        policy = HOT

        row_id = policy.place(MERCHANT, "pay_1")

        assert row_id == MERCHANT

    def test_place_returns_sub_account_when_hot(self):
        policy = HOT

        row_id = policy.place(FEES, "pay_1")

        logical, shard = row_id.split(accounts.SHARD_SEPARATOR)
        assert logical == FEES
        assert accounts.logical_account(row_id) == FEES
        assert 0 <= int(shard) < 4

    def test_place_same_row_when_same_payment_id(self):
        policy = HOT

        rows = {policy.place(FEES, "pay_42") for _ in range(5)}

        assert len(rows) == 1
        assert rows == {AccountsFile(hot_accounts=HOT.hot_accounts).place(FEES, "pay_42")}

    def test_place_same_row_in_every_process(self):
        """A hash of the payment id's bytes, not ``hash()``: pinned values stay put."""
        policy = HOT

        found = [policy.place(FEES, p) for p in ("pay_1", "pay_2", "pay_3", "pay_abc")]

        assert found == ["fees:EUR#0", "fees:EUR#1", "fees:EUR#0", "fees:EUR#1"]

    def test_place_spreads_payments_over_all_shards(self):
        policy = HOT

        rows = [policy.place(FEES, f"pay_{n}") for n in range(1_000)]

        counts = {row: rows.count(row) for row in set(rows)}
        assert set(counts) == {accounts.sub_account(FEES, k) for k in range(4)}
        assert min(counts.values()) > 150


class TestLoad:
    def test_defaults_when_accounts_yaml_missing(self, tmp_path):
        folder = tmp_path

        policy = load_accounts(folder)

        assert policy == AccountsFile()
        assert (policy.limit_of(WALLET), policy.limit_of(CLEARING)) == (0, None)
        assert policy.shards_of(FEES) == 1

    def test_defaults_when_accounts_yaml_empty(self, tmp_path):
        (tmp_path / "accounts.yaml").write_text("# nothing yet\n")

        policy = load_accounts(tmp_path)

        assert policy == AccountsFile()

    def test_shipped_accounts_yaml_loads(self):
        folder = Settings().config_dir

        policy = load_accounts(Path(folder))

        assert policy.limit_of(accounts.merchant_pending("demo-credit-shop", EUR)) == 500_000
        assert policy.shards_of(FEES) == 4

    def test_yaml_rules_apply_in_file_order(self, tmp_path):
        (tmp_path / "accounts.yaml").write_text(
            "limits:\n"
            "  - account: \"merchant:m-1:*\"\n"
            "    overdraft_minor: 100\n"
            "  - account: \"merchant:*\"\n"
            "    overdraft_minor: null\n"
            "hot_accounts:\n"
            "  - account: \"fees:*\"\n"
            "    shards: 8\n")

        policy = load_accounts(tmp_path)

        assert policy.limit_of(MERCHANT) == 100
        assert policy.limit_of("merchant:m-2:pending:EUR") is None
        assert policy.shards_of(FEES) == 8

    @pytest.mark.parametrize("line,bad,where", [
        (3, "    overdraft_minor: -1", "limits.0.overdraft_minor"),
        (3, "    overdraft: 100", "limits.0.overdraft"),
        (6, "    shards: 1", "hot_accounts.0.shards"),
        (6, "    shards: 65", "hot_accounts.0.shards"),
        (6, "    shards: many", "hot_accounts.0.shards"),
        (3, "    overdraft_minor: 5000.00", "limits.0.overdraft_minor"),
        (3, "    overdraft_minor: \"500\"", "limits.0.overdraft_minor"),
        (6, "    shards: 4.0", "hot_accounts.0.shards"),
    ])
    def test_bad_field_rejected_with_file_and_line(self, tmp_path, line, bad, where):
        lines = ["limits:", "  - account: \"merchant:m-1:*\"", "    overdraft_minor: 100",
                 "hot_accounts:", "  - account: \"fees:*\"", "    shards: 4"]
        lines[line - 1] = bad
        path = tmp_path / "accounts.yaml"
        path.write_text("\n".join(lines) + "\n")

        with pytest.raises(ConfigError) as caught:
            load_accounts(tmp_path)

        assert f"{path}:{line}: {where}" in str(caught.value)

    def test_unknown_section_rejected_with_file_and_line(self, tmp_path):
        path = tmp_path / "accounts.yaml"
        path.write_text("limits: []\nhot_acounts: []\n")

        with pytest.raises(ConfigError, match=r"accounts.yaml:2: hot_acounts"):
            load_accounts(tmp_path)

    def test_missing_overdraft_rejected_with_rules_line(self, tmp_path):
        path = tmp_path / "accounts.yaml"
        path.write_text("limits:\n  - account: \"wallet:*\"\n")

        with pytest.raises(ConfigError, match=r"accounts.yaml:2: limits.0.overdraft_minor"):
            load_accounts(tmp_path)
