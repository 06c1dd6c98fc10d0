"""Where webhooks may go: https to public addresses, unless a development stack allows
private ones (``streams.egress``)."""

from __future__ import annotations

import asyncio

import pytest

from streams.egress import refusal


def _refusal(url: str, allow_private: bool = False) -> str | None:
    return asyncio.run(refusal(url, allow_private))


@pytest.mark.parametrize("url", ["https://93.184.216.34/hooks", "https://[2606:4700::1111]/"])
def test_https_to_a_public_address_is_allowed(url):
    assert _refusal(url) is None


@pytest.mark.parametrize("url, why", [
    ("http://93.184.216.34/hooks", "https URLs only"),
    ("https://127.0.0.1:9092/", "private or reserved"),
    ("https://10.1.2.3/", "private or reserved"),
    ("https://192.168.0.10/", "private or reserved"),
    ("https://169.254.169.254/latest/meta-data", "private or reserved"),
    ("https://[::1]/", "private or reserved"),
    ("https://[fd00::1]/", "private or reserved"),
    ("https://0.0.0.0/", "private or reserved"),
    ("https://224.0.0.1/", "private or reserved"),
    ("https://localhost/", "private or reserved"),
    ("ftp://93.184.216.34/", "https URLs only"),
    ("https:///no-host", "https URLs only"),
])
def test_a_url_into_our_own_network_is_refused(url, why):
    assert why in (_refusal(url) or ""), url


def test_a_host_that_does_not_resolve_is_refused():
    assert _refusal("https://no-such-host.invalid/") == "the host does not resolve"


@pytest.mark.parametrize("url", ["http://127.0.0.1:9555/hooks", "https://10.0.0.1/"])
def test_a_development_stack_may_allow_private_receivers(url):
    assert _refusal(url, allow_private=True) is None


def test_even_a_development_stack_sends_only_over_http():
    assert _refusal("file:///etc/passwd", allow_private=True) == "not an http(s) URL"
