"""The pure parts of webhooks: signatures, retry timing, the SSRF guard; and their purity."""

from __future__ import annotations

import ast
import asyncio
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.settings import Settings
from app.webhooks import destinations, protocol
from app.webhooks.delivery import WebhookDeliverer
from app.webhooks.destinations import DestinationError, check_address, check_url
from app.webhooks.protocol import Backoff, envelope, signature_header, verify

SECRET = "whsec_test-secret"


def test_the_envelope_and_its_signature_verify() -> None:
    body = envelope(
        event_number=42,
        event_type="stage.changed",
        created_at=datetime(2026, 3, 1, 10, tzinfo=UTC),
        data={"customer_id": "cus_1"},
    )
    assert orjson.loads(body) == {
        "id": "evt_42",
        "type": "stage.changed",
        "created_at": "2026-03-01T10:00:00+00:00",
        "data": {"customer_id": "cus_1"},
    }
    header = signature_header(SECRET, 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=")
    assert verify(SECRET, header, body, now=1_700_000_010)
    assert not verify(SECRET, header, body, now=1_700_000_000 + 301)  # too old: a replay
    assert not verify("whsec_other", header, body, now=1_700_000_010)
    assert not verify(SECRET, header, body + b" ", now=1_700_000_010)
    assert not verify(SECRET, "v1=abc", body, now=1_700_000_010)
    assert not verify(SECRET, "t=soon,v1=abc", body, now=1_700_000_010)
    # During a secret rotation a header may carry several v1 signatures: one must match.
    rotated = header + ",v1=" + "0" * 64
    assert verify(SECRET, rotated, body, now=1_700_000_010)


def test_secrets_are_random_and_prefixed() -> None:
    secrets = {protocol.new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(s.startswith("whsec_") and len(s) >= 48 for s in secrets)


def test_backoff_doubles_from_the_base_up_to_the_cap_with_jitter() -> None:
    backoff = Backoff(base=10, cap=3600)
    nominal = [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
    for attempts, expected in enumerate(nominal, start=1):
        assert backoff.delay(attempts, 0.5) == pytest.approx(expected)
        assert backoff.delay(attempts, 0.0) == pytest.approx(0.8 * expected)
        assert backoff.delay(attempts, 0.999) == pytest.approx(1.2 * expected, rel=1e-3)
    assert backoff.delay(10_000, 0.5) == pytest.approx(3600)


@given(attempts=st.integers(1, 1_000), jitter=st.floats(0, 1, exclude_max=True))
def test_backoff_is_positive_and_bounded(attempts: int, jitter: float) -> None:
    delay = Backoff(base=10, cap=3600).delay(attempts, jitter)
    assert 8 <= delay <= 1.2 * 3600


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/journeys",
        "http://hooks.example.com:8080/x?y=1",
        "https://93.184.216.34/hook",
        "https://[2606:2800:220:1:248:1893:25c8:1946]/hook",
        "https://cafe.bad/hook",
        "https://1password.example/hook",
    ],
)
def test_public_http_urls_are_accepted(url: str) -> None:
    assert check_url(url, allow_private=False) == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/x",
        "gopher://hooks.example.com/x",
        "file:///etc/passwd",
        "hooks.example.com/x",
        "https://",
        "https://hooks.example.com:70000/x",
        "https://hooks.example.com/a b",
        "http://127.0.0.1/x",
        "http://127.9.9.9/x",
        "http://10.0.0.1/x",
        "http://172.16.5.4/x",
        "http://192.168.1.1/x",
        "http://100.64.0.1/x",  # carrier-grade NAT
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/x",
        "http://224.0.0.1/x",
        "http://[::1]/x",
        "http://[fe80::1]/x",
        "http://[fc00::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://[2002:7f00:1::]/x",  # 6to4 of 127.0.0.1
        "http://localhost/x",
        "http://LOCALHOST./x",
        "http://db.internal/x",
        "http://printer.local/x",
        "http://app.localhost/x",
        "http://intranet/x",
        "http://127.1/x",
        "http://0x7f.0.0.1/x",
        "http://2130706433/x",
        "http://017700000001/x",
    ],
)
def test_other_schemes_and_private_destinations_are_refused(url: str) -> None:
    with pytest.raises(DestinationError):
        check_url(url, allow_private=False)


def test_allowing_private_destinations_still_needs_http() -> None:
    assert check_url("http://127.0.0.1:9000/x", allow_private=True)
    assert check_url("http://localhost/x", allow_private=True)
    with pytest.raises(DestinationError):
        check_url("file:///etc/passwd", allow_private=True)
    check_address("10.0.0.1", allow_private=True)


async def test_delivery_checks_the_addresses_a_name_resolves_to_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = {"hooks.example.com": "10.0.0.5", "ok.example.com": "93.184.216.34"}

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    strict = WebhookDeliverer(None, settings=Settings(webhooks_allow_private=False))  # type: ignore[arg-type]
    with pytest.raises(DestinationError, match=r"10\.0\.0\.5"):
        await strict._check_destination("https://hooks.example.com/x")
    await strict._check_destination("https://ok.example.com/x")
    lax = WebhookDeliverer(None, settings=Settings(webhooks_allow_private=True))  # type: ignore[arg-type]
    await lax._check_destination("https://hooks.example.com/x")


@pytest.mark.parametrize("module", [protocol, destinations])
def test_the_pure_modules_import_no_io(module: Any) -> None:
    tree = ast.parse(Path(module.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {
        "__future__",
        "collections",
        "dataclasses",
        "datetime",
        "hashlib",
        "hmac",
        "ipaddress",
        "orjson",
        "re",
        "secrets",
        "typing",
        "urllib",
    }, imported
