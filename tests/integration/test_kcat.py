"""The wire format is plain JSON: a command published by kcat (librdkafka, not Python) is
processed like any other."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import pay, wait_for_final

from streams import topics as t

pytestmark = pytest.mark.integration


def _librdkafka_dir(tmp_path: Path) -> dict[str, str]:
    """Debian bookworm's kcat links librdkafka 2.0.2, which misreads the embedded broker's
    ApiVersion v3 answer ("Read underflow"). The same kcat binary works with the ABI-compatible
    librdkafka that the confluent-kafka wheel bundles, so we point the loader there."""
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    bundled = sorted(libs.glob("librdkafka-*.so.1"))
    assert bundled, f"no bundled librdkafka under {libs}"
    (tmp_path / "librdkafka.so.1").symlink_to(bundled[0])
    return {**os.environ, "LD_LIBRARY_PATH": str(tmp_path)}


def test_command_published_with_kcat_is_processed(stack, stack_settings, observer, merchant,
                                                   tmp_path):
    kcat = shutil.which("kcat")
    assert kcat, "kcat missing: `make test` installs it (scripts/install-system-deps.sh)"
    command = json.dumps(pay(merchant, "from-kcat", amount_minor=2_500, method="wallet"))

    subprocess.run([kcat, "-b", stack_settings.kafka_bootstrap, "-t", t.COMMANDS, "-P",
                    "-K", "|"], input=f"{merchant}|{command}\n".encode(), check=True,
                   timeout=30, env=_librdkafka_dir(tmp_path))
    final = wait_for_final(observer, merchant, "from-kcat")

    assert final is not None, "command sent by kcat never reached a final status"
    assert (final.status, final.channel, final.amount_minor) == ("succeeded", "wallet", 2_500)
