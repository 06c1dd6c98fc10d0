"""API keys: the key ring, its config file, and the FastAPI dependencies that guard routes.

The HTTP tests mount ``authenticator(ring)`` on a tiny app with the problem handlers, so
they see what a client sees: status, ``WWW-Authenticate``, the problem ``code``.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from api import problems
from api.auth import (
    KEY_LENGTH_MAX,
    KEY_LENGTH_MIN,
    KeyRing,
    Principal,
    authenticator,
    digest_of,
    from_file,
    new_key,
)
from streams.config import ConfigError
from streams.settings import Settings

SHOP_1_KEY = "pk_shop1_aaaaaaaaaaaaaaaaaaaaaaaa"
SHOP_1_NEXT_KEY = "pk_shop1_bbbbbbbbbbbbbbbbbbbbbbbb"
SHOP_2_KEY = "pk_shop2_cccccccccccccccccccccccc"
OPS_KEY = "ops_dddddddddddddddddddddddddddd"
UNKNOWN_KEY = "pk_nobody_eeeeeeeeeeeeeeeeeeeeeee"
SHOP_1 = Principal(merchant_id="shop-1")
SHOP_2 = Principal(merchant_id="shop-2")
OPS = Principal(ops=True)


def ring_of(*entries: tuple[str, Principal]) -> KeyRing:
    return KeyRing([(digest_of(key), principal) for key, principal in entries])


STANDARD_RING = [(SHOP_1_KEY, SHOP_1), (SHOP_2_KEY, SHOP_2), (OPS_KEY, OPS)]


def keys_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "api_keys.yaml"
    path.write_text(text)
    return path


class TestKeyRing:
    def test_find_returns_principal_of_known_key(self):
        ring = ring_of(*STANDARD_RING)

        assert ring.find(SHOP_2_KEY) == SHOP_2

    def test_find_returns_ops_principal_for_ops_key(self):
        ring = ring_of(*STANDARD_RING)

        assert ring.find(OPS_KEY) == OPS

    def test_find_returns_none_for_unknown_key(self):
        ring = ring_of(*STANDARD_RING)

        assert ring.find(UNKNOWN_KEY) is None

    def test_find_returns_none_for_digest_presented_as_key(self):
        ring = ring_of(*STANDARD_RING)

        assert ring.find(digest_of(SHOP_1_KEY)) is None

    def test_find_returns_none_on_empty_ring(self):
        ring = KeyRing([])

        assert ring.find(SHOP_1_KEY) is None

    @pytest.mark.parametrize("presented", [SHOP_1_KEY, OPS_KEY, UNKNOWN_KEY],
                             ids=["first", "last", "none"])
    def test_find_compares_every_digest(self, monkeypatch, presented):
        ring = ring_of(*STANDARD_RING)
        real_compare = hmac.compare_digest
        calls = []

        def counting(a, b):
            calls.append((a, b))
            return real_compare(a, b)

        monkeypatch.setattr("api.auth.hmac.compare_digest", counting)

        ring.find(presented)

        assert len(calls) == len(STANDARD_RING)

    def test_key_configured_twice_is_refused(self):
        with pytest.raises(ValueError, match="twice"):
            ring_of((SHOP_1_KEY, SHOP_1), (SHOP_1_KEY, SHOP_2))

    def test_merchant_key_reused_as_ops_key_is_refused(self):
        with pytest.raises(ValueError, match="twice"):
            ring_of((SHOP_1_KEY, SHOP_1), (SHOP_1_KEY, OPS))

    def test_ring_holds_no_key_text(self):
        ring = ring_of(*STANDARD_RING)

        assert all(SHOP_1_KEY.encode() not in digest for digest, _ in ring.entries)

    def test_new_key_is_fresh_and_of_acceptable_length(self):
        keys = {new_key() for _ in range(20)}

        assert len(keys) == 20
        assert all(KEY_LENGTH_MIN <= len(k) <= KEY_LENGTH_MAX and k.isascii() for k in keys)


class TestPrincipalOwns:
    @pytest.mark.parametrize("principal, merchant_id, owns", [
        (OPS, "shop-1", True),
        (OPS, "shop-2", True),
        (SHOP_1, "shop-1", True),
        (SHOP_1, "shop-2", False),
        (SHOP_1, "", False),
        (Principal(), "", False),
        (Principal(), "shop-1", False),
    ])
    def test_owns(self, principal, merchant_id, owns):
        assert principal.owns(merchant_id) is owns


class TestFromFile:
    def test_from_file_reads_merchant_and_ops_digests(self, tmp_path):
        path = keys_file(tmp_path, (
            "merchants:\n"
            "  - merchant: shop-1\n"
            "    key_sha256:\n"
            f"      - {digest_of(SHOP_1_KEY)}\n"
            f"      - {digest_of(SHOP_1_NEXT_KEY)}\n"
            "  - merchant: shop-2\n"
            f"    key_sha256: [{digest_of(SHOP_2_KEY)}]\n"
            f"ops_key_sha256: [{digest_of(OPS_KEY)}]\n"))

        entries = from_file(path)

        assert entries == [(digest_of(SHOP_1_KEY), SHOP_1), (digest_of(SHOP_1_NEXT_KEY), SHOP_1),
                           (digest_of(SHOP_2_KEY), SHOP_2), (digest_of(OPS_KEY), OPS)]

    def test_both_keys_of_a_rotation_find_the_merchant(self, tmp_path):
        path = keys_file(tmp_path, (
            "merchants:\n"
            "  - merchant: shop-1\n"
            f"    key_sha256: [{digest_of(SHOP_1_KEY)}, {digest_of(SHOP_1_NEXT_KEY)}]\n"))

        ring = KeyRing(from_file(path))

        assert (ring.find(SHOP_1_KEY), ring.find(SHOP_1_NEXT_KEY)) == (SHOP_1, SHOP_1)

    def test_empty_file_has_no_keys(self, tmp_path):
        path = keys_file(tmp_path, "")

        assert from_file(path) == []

    @pytest.mark.parametrize("bad_digest", [
        digest_of(SHOP_1_KEY).upper(),
        digest_of(SHOP_1_KEY)[:-1],
        digest_of(SHOP_1_KEY) + "0",
        SHOP_1_KEY,
    ], ids=["uppercase", "63-digits", "65-digits", "raw-key"])
    def test_bad_merchant_digest_names_file_and_line(self, tmp_path, bad_digest):
        path = keys_file(tmp_path, (
            "merchants:\n"
            "  - merchant: shop-1\n"
            "    key_sha256:\n"
            f"      - {digest_of(SHOP_1_NEXT_KEY)}\n"
            f"      - {bad_digest}\n"))

        with pytest.raises(ConfigError) as raised:
            from_file(path)

        assert f"{path}:5: merchants.0.key_sha256.1:" in str(raised.value)

    @pytest.mark.parametrize("text, where", [
        ("merchants:\n  - merchant: shop-1\n"
         f"    key_sha256: [{digest_of(SHOP_1_KEY)}]\n"
         "ops_key_sha256:\n  - not-a-digest\n", "5: ops_key_sha256.0"),
        ("merchants:\n  - merchant: shop-1\n"
         f"    key_sha256: [{digest_of(SHOP_1_KEY)}]\n"
         f"    key: {SHOP_1_KEY}\n", "4: merchants.0.key"),
        ("merchants:\n  - merchant: shop-1\n    key_sha256: []\n",
         "3: merchants.0.key_sha256"),
    ], ids=["bad-ops-digest", "key-in-clear", "merchant-without-digests"])
    def test_a_bad_line_is_refused_with_file_and_line(self, tmp_path, text, where):
        path = keys_file(tmp_path, text)

        with pytest.raises(ConfigError) as raised:
            from_file(path)

        assert f"{path}:{where}:" in str(raised.value)


def settings_for(tmp_path: Path, api_keys: dict[str, str] | None = None, ops_key: str = ""
                 ) -> Settings:
    return Settings(kafka_bootstrap="x:1", config_dir=tmp_path, api_keys=api_keys or {},
                    ops_key=ops_key)


class TestFromSettings:
    def test_combines_file_environment_keys_and_ops_key(self, tmp_path):
        keys_file(tmp_path, (
            "merchants:\n"
            "  - merchant: shop-1\n"
            f"    key_sha256: [{digest_of(SHOP_1_KEY)}]\n"))
        settings = settings_for(tmp_path, {"shop-2": SHOP_2_KEY}, OPS_KEY)

        ring = KeyRing.from_settings(settings)

        assert [ring.find(k) for k in (SHOP_1_KEY, SHOP_2_KEY, OPS_KEY, UNKNOWN_KEY)] == [
            SHOP_1, SHOP_2, OPS, None]
        assert len(ring.entries) == 3

    @pytest.mark.parametrize("merchant_key, ops_key, named", [
        ("short", OPS_KEY, "PAYCORE_API_KEYS[shop-2]"),
        (SHOP_2_KEY, "x" * 201, "PAYCORE_OPS_KEY"),
        ("ключ-ключ-ключ-ключ", OPS_KEY, "PAYCORE_API_KEYS[shop-2]"),
    ])
    def test_a_key_no_request_could_present_is_refused_at_start(self, tmp_path, merchant_key,
                                                                 ops_key, named):
        settings = settings_for(tmp_path, {"shop-2": merchant_key}, ops_key)

        with pytest.raises(ValueError, match=named.replace("[", r"\[")):
            KeyRing.from_settings(settings)

    def test_without_file_uses_environment_only(self, tmp_path):
        settings = settings_for(tmp_path, {"shop-2": SHOP_2_KEY})

        ring = KeyRing.from_settings(settings)

        assert ring.find(SHOP_2_KEY) == SHOP_2
        assert len(ring.entries) == 1

    def test_empty_ops_key_adds_no_ops_principal(self, tmp_path):
        settings = settings_for(tmp_path, {"shop-1": SHOP_1_KEY})

        ring = KeyRing.from_settings(settings)

        assert all(not principal.ops for _, principal in ring.entries)

    def test_same_key_in_file_and_environment_is_refused(self, tmp_path):
        keys_file(tmp_path, (
            "merchants:\n"
            "  - merchant: shop-1\n"
            f"    key_sha256: [{digest_of(SHOP_1_KEY)}]\n"))
        settings = settings_for(tmp_path, {"shop-1": SHOP_1_KEY})

        with pytest.raises(ValueError, match="twice"):
            KeyRing.from_settings(settings)

    def test_bad_file_is_refused_with_its_path(self, tmp_path):
        path = keys_file(tmp_path, "merchants:\n  - merchant: shop-1\n    key_sha256: [x]\n")
        settings = settings_for(tmp_path, {"shop-2": SHOP_2_KEY})

        with pytest.raises(ConfigError, match=f"{path}:3:"):
            KeyRing.from_settings(settings)


# The dependencies, through HTTP.

SHORT_KEY = "k" * (KEY_LENGTH_MIN - 1)
LONG_KEY = "k" * (KEY_LENGTH_MAX + 1)
SHORTEST_KEY = "s" * KEY_LENGTH_MIN
LONGEST_KEY = "l" * KEY_LENGTH_MAX


def app_for(ring: KeyRing) -> FastAPI:
    app = FastAPI()
    problems.install(app)
    caller, merchant, ops = authenticator(ring)

    def answer(principal: Principal) -> dict:
        return {"merchant_id": principal.merchant_id, "ops": principal.ops}

    @app.get("/any")
    async def any_route(principal: Principal = Depends(caller)):
        return answer(principal)

    @app.get("/merchant")
    async def merchant_route(principal: Principal = Depends(merchant)):
        return answer(principal)

    @app.get("/ops")
    async def ops_route(principal: Principal = Depends(ops)):
        return answer(principal)

    return app


@pytest.fixture
def client() -> TestClient:
    ring = ring_of(*STANDARD_RING, (SHORT_KEY, Principal(merchant_id="shop-short")),
                   (LONG_KEY, Principal(merchant_id="shop-long")),
                   (SHORTEST_KEY, Principal(merchant_id="shop-shortest")),
                   (LONGEST_KEY, Principal(merchant_id="shop-longest")))
    return TestClient(app_for(ring))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_key_not_revealed(response, key: str) -> None:
    assert key not in response.text
    assert all(key not in value for value in response.headers.values())


class TestAuthenticator:
    def test_merchant_key_acts_as_its_merchant(self, client):
        response = client.get("/merchant", headers=bearer(SHOP_1_KEY))

        assert response.status_code == 200
        assert response.json() == {"merchant_id": "shop-1", "ops": False}

    def test_ops_key_acts_as_ops(self, client):
        response = client.get("/ops", headers=bearer(OPS_KEY))

        assert response.status_code == 200
        assert response.json() == {"merchant_id": "", "ops": True}

    @pytest.mark.parametrize("path", ["/any", "/merchant", "/ops"])
    def test_missing_header_is_401_with_bearer_challenge(self, client, path):
        response = client.get(path)

        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.headers["Content-Type"] == problems.MEDIA_TYPE
        assert response.json()["code"] == "unauthorized"
        assert response.json()["instance"] == path

    def test_other_scheme_is_401(self, client):
        response = client.get("/any", headers={"Authorization": f"Basic {SHOP_1_KEY}"})

        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"

    def test_bearer_without_key_is_401(self, client):
        response = client.get("/any", headers={"Authorization": "Bearer"})

        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"

    def test_unknown_key_is_401(self, client):
        response = client.get("/any", headers=bearer(UNKNOWN_KEY))

        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["code"] == "unauthorized"
        assert_key_not_revealed(response, UNKNOWN_KEY)

    @pytest.mark.parametrize("key", [SHORT_KEY, LONG_KEY], ids=["too-short", "too-long"])
    def test_key_outside_length_limits_is_401_even_if_configured(self, client, key):
        response = client.get("/any", headers=bearer(key))

        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"
        assert_key_not_revealed(response, key)

    @pytest.mark.parametrize("key, merchant_id", [(SHORTEST_KEY, "shop-shortest"),
                                                  (LONGEST_KEY, "shop-longest")],
                             ids=["shortest", "longest"])
    def test_key_at_length_limits_is_accepted(self, client, key, merchant_id):
        response = client.get("/any", headers=bearer(key))

        assert response.status_code == 200
        assert response.json()["merchant_id"] == merchant_id

    def test_scheme_is_case_insensitive(self, client):
        response = client.get("/any", headers={"Authorization": f"bearer {SHOP_1_KEY}"})

        assert response.status_code == 200

    def test_merchant_key_on_ops_route_is_403(self, client):
        response = client.get("/ops", headers=bearer(SHOP_1_KEY))

        assert response.status_code == 403
        assert response.json()["code"] == "ops_key_required"
        assert "WWW-Authenticate" not in response.headers
        assert_key_not_revealed(response, SHOP_1_KEY)

    def test_ops_key_on_merchant_route_is_403(self, client):
        response = client.get("/merchant", headers=bearer(OPS_KEY))

        assert response.status_code == 403
        assert response.json()["code"] == "merchant_key_required"
        assert_key_not_revealed(response, OPS_KEY)

    def test_any_route_accepts_both_kinds_of_key(self, client):
        merchant = client.get("/any", headers=bearer(SHOP_2_KEY))
        ops = client.get("/any", headers=bearer(OPS_KEY))

        assert (merchant.status_code, ops.status_code) == (200, 200)
        assert (merchant.json()["merchant_id"], ops.json()["ops"]) == ("shop-2", True)
