"""Shared fixtures. The broker: $PAYCORE_KAFKA_BOOTSTRAP if set, else testcontainers' Kafka
when a Docker engine answers, else the embedded broker (Tansu). Whatever it starts, it stops.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paycore.observe import Observer, command_producer  # noqa: E402
from paycore.stack import Stack, pick_ports, wait_until_ready  # noqa: E402
from streams.broker import EmbeddedBroker  # noqa: E402
from streams.settings import Settings  # noqa: E402

PARTITIONS = 4
API_MERCHANTS = 64
"""Merchants with an API key on the shared stack; each test that asks for ``shop`` gets one
of its own (``m-api-00`` ... ``m-api-63``)."""
PREFIX_MERCHANTS = ("m-acme", "m-acme.eu")
"""Two merchants on the shared stack, one's id a prefix of the other's (``prefix_shops``)."""
OPS_KEY = f"ops-test-key-{uuid.uuid4().hex}"
CALLBACK_TIMEOUT_MS = 2_000
STATUS_QUERY_TIMEOUT_MS = 500
"""Two status queries 0.5 s apart after the 2 s callback timeout: timed_out at 3 s."""
WALLET_AUTHORIZATION_TTL_MS = 3_000


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def broker():
    """(bootstrap, embedded?) of the broker every integration test shares."""
    external = os.environ.get("PAYCORE_KAFKA_BOOTSTRAP")
    if external:
        yield external, False
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server(), False
        return
    with EmbeddedBroker() as embedded:
        yield embedded.bootstrap, True


@pytest.fixture(scope="session")
def kafka_bootstrap(broker) -> str:
    return broker[0]


@pytest.fixture(scope="session")
def deterministic_config(tmp_path_factory) -> Path:
    """The shipped rules with random declines off (only magic amounts decline) and
    deadlines short enough to watch: card answers time out after 2 s and late successes
    are refunded; wallet ones are accepted, and wallet authorizations expire after 3 s.
    Risk rules as shipped (test payers stay under them unless a test means otherwise)."""
    shipped = Settings().config_dir
    simulators = yaml.safe_load((shipped / "channels.yaml").read_text())
    for profile in simulators["simulators"]:
        profile["decline_bps"] = 0
    routing = yaml.safe_load((shipped / "routing.yaml").read_text())
    for channel in routing["channels"]:
        channel["callback_timeout_ms"] = CALLBACK_TIMEOUT_MS
        channel["status_query_timeout_ms"] = STATUS_QUERY_TIMEOUT_MS
        if channel["kind"] == "card":
            channel["late_success"] = "refund"
    by_name = {c["name"]: c for c in routing["channels"]}
    by_name["wallet"]["late_success"] = "accept"
    by_name["wallet"]["authorization_ttl_ms"] = WALLET_AUTHORIZATION_TTL_MS
    folder = tmp_path_factory.mktemp("config")
    (folder / "channels.yaml").write_text(yaml.safe_dump(simulators))
    (folder / "routing.yaml").write_text(yaml.safe_dump(routing))
    (folder / "risk.yaml").write_text((shipped / "risk.yaml").read_text())
    (folder / "recon.yaml").write_text((shipped / "recon.yaml").read_text())
    # Shipped account rules as they are: the fee account is split, so tests run through
    # sub-accounts too.
    (folder / "accounts.yaml").write_text((Settings().config_dir / "accounts.yaml").read_text())
    return folder


@pytest.fixture(scope="session")
def stack_settings(broker, deterministic_config, tmp_path_factory) -> Settings:
    run = uuid.uuid4().hex[:6]
    return pick_ports(Settings(
        kafka_bootstrap=broker[0], embedded_broker=broker[1], partitions=PARTITIONS,
        api_port=0, worker_web_port=0, simulator_metrics_port=0, auditor_metrics_port=0,
        webhooks_metrics_port=0,
        data_dir=tmp_path_factory.mktemp("paycore"), app_id=f"paycore-test-{run}",
        config_dir=deterministic_config, ops_key=OPS_KEY,
        api_keys={merchant: key for merchant, key in _api_merchants(run)},
        webhook_allow_private=True, webhook_backoff_ms=200, webhook_backoff_max_ms=1_000,
        webhook_timeout_s=2, webhook_retry_period_s=8))


def _api_merchants(run: str) -> list[tuple[str, str]]:
    pool = [f"m-api-{i:02d}" for i in range(API_MERCHANTS)] + list(PREFIX_MERCHANTS)
    return [(m, f"test-key-{i:02d}-{run}-{uuid.uuid4().hex}") for i, m in enumerate(pool)]


@pytest.fixture
def own_settings(deterministic_config, tmp_path) -> Settings:
    """Settings for a stack of its own (its own embedded broker): for tests that kill
    processes and must not disturb the shared stack."""
    return pick_ports(Settings(
        kafka_bootstrap="", partitions=PARTITIONS, api_port=0, worker_web_port=0,
        simulator_metrics_port=0, auditor_metrics_port=0, webhooks_metrics_port=0,
        data_dir=tmp_path,
        config_dir=deterministic_config))


@pytest.fixture(scope="session")
def stack(stack_settings):
    """One worker (all stages), the API and the simulator: real processes, shared broker."""
    with Stack(stack_settings, workers=1) as running:
        try:
            wait_until_ready(running.settings)
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{_logs(running)}")
        yield running


@pytest.fixture
def observer(stack_settings):
    obs = Observer(stack_settings.kafka_bootstrap, PARTITIONS)
    yield obs
    obs.close()


@pytest.fixture
def producer(stack_settings):
    prod = command_producer(stack_settings.kafka_bootstrap)
    yield prod
    prod.close()


@pytest.fixture
def merchant() -> str:
    """A merchant id of its own per test, so tests on the shared stack never collide."""
    return f"m-{uuid.uuid4().hex[:10]}"


def _logs(stack: Stack) -> str:
    out = []
    for part in stack.parts:
        text = part.log_path.read_text(errors="replace")[-3000:]
        out.append(f"--- {part.name} ---\n{text}")
    return "\n".join(out)


def _client(settings: Settings, key: str | None):
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=f"http://127.0.0.1:{settings.api_port}", timeout=40,
                        headers=headers)


@pytest.fixture(scope="session")
def api_ready(stack, stack_settings) -> None:
    """The stack's API answers /readyz (read model current, a worker in the group)."""
    import time

    import httpx

    with _client(stack_settings, None) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    pytest.fail("the API never became ready")


@pytest.fixture
def api(api_ready, stack_settings):
    """An HTTP client with the ops key: reads every merchant's records, and /v1/ops/*."""
    with _client(stack_settings, stack_settings.ops_key.get_secret_value()) as client:
        yield client


@pytest.fixture
def anon(api_ready, stack_settings):
    """An HTTP client without a key."""
    with _client(stack_settings, None) as client:
        yield client


class Shop:
    """A merchant with its own API key and an HTTP client that uses it."""

    def __init__(self, merchant_id: str, key: str, client) -> None:
        self.id, self.key, self.client = merchant_id, key, client


_shops_taken: list[str] = []


def _pool(settings: Settings) -> list[str]:
    """The merchants ``shop`` hands out, one per test (not the prefix pair)."""
    return sorted(m for m in settings.api_keys if m not in PREFIX_MERCHANTS)


@pytest.fixture
def shop(api_ready, stack_settings):
    """A merchant of the shared stack's key pool no other test in this session uses."""
    free = [m for m in _pool(stack_settings) if m not in _shops_taken]
    assert free, f"all {API_MERCHANTS} API merchants used: raise API_MERCHANTS"
    _shops_taken.append(free[0])
    key = stack_settings.api_keys[free[0]].get_secret_value()
    with _client(stack_settings, key) as client:
        yield Shop(free[0], key, client)


@pytest.fixture
def other_shop(shop, api_ready, stack_settings):
    """A second merchant, for cross-merchant attempts."""
    free = [m for m in _pool(stack_settings) if m not in _shops_taken]
    _shops_taken.append(free[0])
    key = stack_settings.api_keys[free[0]].get_secret_value()
    with _client(stack_settings, key) as client:
        yield Shop(free[0], key, client)


@pytest.fixture
def prefix_shops(api_ready, stack_settings):
    """Merchants ``m-acme`` and ``m-acme.eu``, one's id a prefix of the other's: shared by
    the tests that ask, so each names its own records (orders, customers) uniquely."""
    keys = [stack_settings.api_keys[m].get_secret_value() for m in PREFIX_MERCHANTS]
    with _client(stack_settings, keys[0]) as short, _client(stack_settings, keys[1]) as long:
        yield (Shop(PREFIX_MERCHANTS[0], keys[0], short),
               Shop(PREFIX_MERCHANTS[1], keys[1], long))
