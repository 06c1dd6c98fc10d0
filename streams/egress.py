"""Where paycore may send merchants' webhooks: never into its own network (SSRF).

A URL must be https and its host must resolve to public addresses only; loopback, private,
link-local, multicast and reserved addresses are refused. The check runs when a merchant
registers the URL and again before every delivery (a name may re-point). A development
stack (``PAYCORE_WEBHOOK_ALLOW_PRIVATE=true``: ``paycore up``, the demo, the tests, whose
receivers listen on 127.0.0.1) allows http and private addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

RESOLVE_TIMEOUT_S = 2.0


async def refusal(url: str, allow_private: bool) -> str | None:
    """Why ``url`` may not receive webhooks, or None when it may."""
    parts = urlsplit(url)
    if allow_private:
        return None if parts.scheme in ("http", "https") and parts.hostname else \
            "not an http(s) URL"
    if parts.scheme != "https" or not parts.hostname:
        return "webhooks go to https URLs only"
    try:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
            parts.hostname, parts.port or 443, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError):
        return "the host does not resolve"
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            return "the host resolves to a private or reserved address"
    return None
