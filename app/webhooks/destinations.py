"""Where webhooks may be sent (pure): the SSRF guard.

A webhook URL is chosen by whoever holds a server key; without a guard it would make the
server call its own network (databases, cloud metadata at 169.254.169.254, admin ports).
URLs are checked when registered, and the addresses a host name resolves to are checked again
before every delivery (DNS can change after registration).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final
from urllib.parse import urlsplit

MAX_URL_LENGTH: Final = 2048

# Host names that always mean "this machine or its network", whatever DNS says.
_LOCAL_NAMES: Final = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
_LOCAL_SUFFIXES: Final = (".localhost", ".local", ".internal", ".home.arpa")
_NUMERIC_PART: Final = re.compile(r"0x[0-9a-f]*|[0-9]+")


class DestinationError(ValueError):
    """A webhook URL that must not be called."""


def check_url(url: str, *, allow_private: bool) -> str:
    """The URL if it may be registered: http(s), a host, and unless `allow_private`, not a
    private, loopback, link-local or otherwise non-global address or local name. Host names
    are checked again, resolved, before every delivery (`check_address`)."""
    if len(url) > MAX_URL_LENGTH:
        raise DestinationError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise DestinationError("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise DestinationError(f"not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise DestinationError("only http and https URLs can receive webhooks")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise DestinationError("the URL has no host")
    if allow_private:
        return url
    literal = _ip(host)
    if literal is not None:
        check_address(literal, allow_private=False)
    elif all(_NUMERIC_PART.fullmatch(part) for part in host.split(".")):
        # 127.1, 0x7f.0.0.1, 2130706433: resolvers read these as IPv4 addresses.
        raise DestinationError(f"{host} is an address in a non-standard form; write a.b.c.d")
    elif host in _LOCAL_NAMES or host.endswith(_LOCAL_SUFFIXES) or "." not in host:
        raise DestinationError(
            f"{host} names a local host; set JOURNEYS_WEBHOOKS_ALLOW_PRIVATE=true to allow it"
        )
    return url


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_address(
    address: str | ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool
) -> None:
    """Refuse an address that is not globally routable (private, loopback, link-local, shared,
    reserved, multicast, unspecified), unless `allow_private`."""
    if allow_private:
        return
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
    if not ip.is_global or ip.is_multicast:
        raise DestinationError(
            f"{ip} is a private or reserved address; "
            "set JOURNEYS_WEBHOOKS_ALLOW_PRIVATE=true to allow it"
        )
