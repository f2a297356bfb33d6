"""Signed email links: signing round trip, the pixel, the click redirect and their events."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from pydantic import ValidationError

from app.core.settings import Settings
from app.links import events, secret, signing
from app.links import service as link_service
from app.links.routes import PIXEL
from app.workspaces.repository import NewWorkspace
from tests.conftest import ROOT, new_workspace

Stitch = Callable[[], Awaitable[int]]

SECRET = "test-link-secret-" + "x" * 32
BROWSER = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Safari/605.1.15"
)
TARGET = "https://shop.example/spring?utm_source=newsletter&utm_medium=email#top"


@pytest.fixture(autouse=True)
def _read_an_hour_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """People read their email a while after it is sent; clicks seconds after signing are a
    mail scanner's (tested on its own below)."""
    monkeypatch.setattr(link_service, "now", lambda: time.time() + 3600)


@pytest.fixture(autouse=True)
def _link_secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(secret.ENV_VAR, SECRET)
    yield


def _server(ws: NewWorkspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {ws.server_key}"}


def _read(ws: NewWorkspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {ws.read_key}"}


async def _links(
    client: httpx.AsyncClient, ws: NewWorkspace, recipient: str, url: str = TARGET
) -> dict[str, Any]:
    r = await client.post(
        "/v1/links",
        headers=_server(ws),
        json={
            "campaign": "spring-sale",
            "message": "welcome-1",
            "recipient": recipient,
            "url": url,
        },
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _path(url: str) -> str:
    return urlsplit(url).path


def _token(url: str) -> str:
    return _path(url).rsplit("/", 1)[1].removesuffix(".gif")


def _reencode(token: str, change: Callable[[list[Any]], None]) -> str:
    """The token with its payload changed and its original signature kept."""
    encoded, signature = token.split(".")
    fields = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    change(fields)
    raw = json.dumps(fields, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + signature


async def _stored(db: asyncpg.Connection, ws: NewWorkspace) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT message_id, type, event, user_id, anonymous_id, flags, payload FROM events"
        " WHERE workspace_id = $1 ORDER BY received_at, message_id",
        ws.workspace_id,
    )
    return [{**dict(row), "payload": json.loads(row["payload"])} for row in rows]


# --------------------------------------------------------------------------- pure signing


def test_signing_round_trip_and_every_tampering_is_refused() -> None:
    server = b"s" * 32
    claims = signing.make_claims(
        kind=signing.CLICK,
        workspace_id=7,
        campaign=" spring ",
        message="m-1",
        recipient=" Ann@Example.COM ",
        url="https://shop.example/a?b=ü",
    )
    assert claims.recipient == "ann@example.com" and claims.campaign == "spring"
    token = signing.sign(claims, signing.workspace_secret(server, 7))

    def secret_for(workspace_id: int) -> bytes:
        return signing.workspace_secret(server, workspace_id)

    assert signing.verify(token, secret_for) == claims
    for index, value in [
        (1, "o"),
        (2, 8),
        (3, "other"),
        (4, "m-2"),
        (5, "bob@example.com"),
        (6, "https://evil.example/"),
    ]:

        def change(fields: list[Any], index: int = index, value: Any = value) -> None:
            fields[index] = value

        assert signing.verify(_reencode(token, change), secret_for) is None, index
    # Another server's secret, a truncated or flipped signature, garbage.
    assert signing.verify(token, lambda ws: signing.workspace_secret(b"t" * 32, ws)) is None
    encoded, sig = token.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    for bad in [
        f"{encoded}.{flipped}",
        f"{encoded}.{sig[:-4]}",
        encoded,
        "",
        "a.b",
        "..",
        "x" * 9000,
    ]:
        assert signing.verify(bad, secret_for) is None, bad
    # Secrets differ per workspace.
    assert signing.workspace_secret(server, 1) != signing.workspace_secret(server, 2)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("url", "javascript:alert(1)"),
        ("url", "//evil.example/"),
        ("url", "https://shop.example/a b"),
        ("url", "https:///nohost"),
        ("recipient", "not-an-email"),
        ("campaign", "  "),
        ("message", "m" * 300),
    ],
)
def test_invalid_links_are_refused(field: str, value: str) -> None:
    fields: dict[str, Any] = {
        "campaign": "c",
        "message": "m",
        "recipient": "ann@example.com",
        "url": "https://shop.example/",
        field: value,
    }
    with pytest.raises(signing.LinkError) as caught:
        signing.make_claims(kind=signing.CLICK, workspace_id=1, **fields)
    assert caught.value.field == field


def test_machine_opens_are_recognised() -> None:
    reason = events.machine_reason
    assert reason("o", user_agent="Mozilla/5.0", ip="203.0.113.9") == events.APPLE_PRIVACY_PROXY
    assert reason("o", user_agent=BROWSER, ip="17.58.100.1") == events.APPLE_PRIVACY_PROXY
    assert reason("o", user_agent=BROWSER, ip="::ffff:17.1.2.3") == events.APPLE_PRIVACY_PROXY
    assert reason("o", user_agent=BROWSER, ip="203.0.113.9") is None
    assert reason("c", user_agent=BROWSER, ip="17.58.100.1") is None  # a person on iCloud
    assert reason("c", user_agent="Barracuda Sentinel (EE)", ip=None) == events.LINK_SCANNER
    assert reason("c", user_agent=None, ip=None) == events.LINK_SCANNER


def test_generated_secret_is_persisted_once_per_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(secret.ENV_VAR)
    first = secret.link_secret(Settings(data_dir=tmp_path / "a"))
    again = secret.link_secret(Settings(data_dir=tmp_path / "a"))
    other = secret.link_secret(Settings(data_dir=tmp_path / "b"))
    assert first == again != other and len(first) >= 64
    path = tmp_path / "a" / secret.FILE_NAME
    assert path.read_text().strip().encode() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "a").iterdir()] == [secret.FILE_NAME]
    # A short configured secret is refused when the settings load (the server won't start).
    monkeypatch.setenv(secret.ENV_VAR, "short")
    with pytest.raises(ValidationError, match="link_secret"):
        Settings(data_dir=tmp_path / "a")
    monkeypatch.setenv(secret.ENV_VAR, "s" * 40)
    assert secret.link_secret(Settings(data_dir=tmp_path / "a")) == b"s" * 40


# --------------------------------------------------------------------------- the API


async def test_creating_links_needs_the_server_key(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    body = {"campaign": "c", "message": "m", "recipient": "a@example.com", "url": TARGET}
    assert (await client.post("/v1/links", json=body)).status_code == 401
    for key in (workspace.write_key, workspace.read_key):
        r = await client.post("/v1/links", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 403, r.text
    bad = await client.post(
        "/v1/links", json={**body, "url": "javascript:alert(1)"}, headers=_server(workspace)
    )
    assert bad.status_code == 400
    assert bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["field"] == "url"
    missing = await client.post("/v1/links", json={"campaign": "c"}, headers=_server(workspace))
    assert missing.status_code == 400 and missing.json()["code"] == "invalid_field"


async def test_click_redirects_to_the_signed_url_and_records_the_click(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    links = await _links(client, workspace, " Ann@Example.com ")
    assert links["recipient"] == "ann@example.com"
    assert links["open_url"].startswith("http://testserver/l/o/")
    assert links["open_url"].endswith(".gif")
    assert links["click_url"].startswith("http://testserver/l/c/")

    r = await client.get(_path(links["click_url"]), headers={"User-Agent": BROWSER})
    assert r.status_code == 302
    assert r.headers["location"] == TARGET
    assert r.headers["cache-control"] == "no-store"

    [row] = await _stored(db, workspace)
    assert (row["type"], row["event"], row["user_id"]) == ("track", "Email Link Clicked", None)
    assert row["anonymous_id"].startswith("eml-")
    payload = row["payload"]
    assert payload["properties"] == {
        "campaign_id": "spring-sale",
        "campaign_name": "spring-sale",
        "email_id": "welcome-1",
        "link_url": TARGET,
    }
    context = payload["context"]
    assert context["traits"] == {"email": "ann@example.com"}
    assert context["campaign"] == {
        "source": "email",
        "medium": "email",
        "name": "spring-sale",
        "content": "welcome-1",
    }
    assert context["journeys"] == {"link": "click", "bot": False}
    assert context["userAgent"] == BROWSER
    assert context["library"]["name"] == "journeys-email-links"
    assert context["ip"] == "127.0.0.0"  # truncated by ingest, like any event

    # The contract's /v1 spelling is the same route.
    token = _token(links["click_url"])
    again = await client.get(f"/v1/c/{token}", headers={"User-Agent": BROWSER})
    assert again.status_code == 302 and again.headers["location"] == TARGET
    # HEAD (link checkers) redirects but records nothing.
    head = await client.head(_path(links["click_url"]))
    assert head.status_code == 302
    assert len(await _stored(db, workspace)) == 2


async def test_tampered_click_token_never_redirects_and_records_nothing(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection, database_url: str
) -> None:
    links = await _links(client, workspace, "ann@example.com")
    token = _token(links["click_url"])
    other = await new_workspace(database_url, "links-other")
    other_links = await _links(client, other, "ann@example.com", url="https://evil.example/")

    def to_evil(fields: list[Any]) -> None:
        fields[6] = "https://evil.example/"

    def to_other_workspace(fields: list[Any]) -> None:
        fields[2] = other.workspace_id

    encoded, sig = token.split(".")
    candidates = [
        _reencode(token, to_evil),
        _reencode(token, to_other_workspace),
        f"{encoded}.{_token(other_links['click_url']).split('.')[1]}",
        f"{encoded}.{sig[:-3]}AAA",
        _token(links["open_url"]),  # an open token is not a click token
        "not-a-token",
    ]
    for bad in candidates:
        for path in (f"/l/c/{bad}", f"/v1/c/{bad}"):
            r = await client.get(path, headers={"User-Agent": BROWSER})
            assert r.status_code == 404, (path, r.status_code)
            assert "location" not in r.headers
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "link_not_found"
    assert await _stored(db, workspace) == []
    assert await _stored(db, other) == []


async def test_pixel_is_always_a_gif_and_only_genuine_opens_are_recorded(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    links = await _links(client, workspace, "ann@example.com")
    token = _token(links["open_url"])

    def to_bob(fields: list[Any]) -> None:
        fields[5] = "bob@example.com"

    paths = [
        f"/l/o/{_reencode(token, to_bob)}.gif",
        f"/l/o/{_token(links['click_url'])}.gif",
        "/l/o/garbage.gif",
        f"/l/o/{'x' * 9000}.gif",
        f"/l/o/{token}.gif",  # genuine: recorded
        f"/v1/o/{token}.gif",  # genuine, the contract's spelling: recorded
    ]
    for path in paths:
        r = await client.get(path, headers={"User-Agent": BROWSER})
        assert r.status_code == 200, path
        assert r.headers["content-type"] == "image/gif"
        assert r.content == PIXEL
        assert "no-store" in r.headers["cache-control"]
        assert r.headers["pragma"] == "no-cache"
    head = await client.head(f"/l/o/{token}.gif")
    assert head.status_code == 200 and head.headers["content-type"] == "image/gif"

    assert PIXEL[:6] == b"GIF89a" and PIXEL[6:10] == b"\x01\x00\x01\x00"  # 1x1
    stored = await _stored(db, workspace)
    assert [row["event"] for row in stored] == ["Email Opened", "Email Opened"]
    assert all(row["payload"]["context"]["journeys"]["bot"] is False for row in stored)
    assert all("link_url" not in row["payload"]["properties"] for row in stored)


async def test_apple_privacy_proxy_open_is_marked(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    links = await _links(client, workspace, "ann@example.com")
    r = await client.get(_path(links["open_url"]), headers={"User-Agent": "Mozilla/5.0"})
    assert r.status_code == 200 and r.content == PIXEL
    [row] = await _stored(db, workspace)
    assert row["payload"]["context"]["journeys"] == {
        "link": "open",
        "bot": True,
        "botReason": "apple_mail_privacy_proxy",
    }


async def test_opens_and_clicks_join_the_recipients_journey(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch
) -> None:
    run = uuid.uuid4().hex[:8]
    user, email = f"user-{run}", f"{run}@example.com"
    r = await client.post(
        "/v1/identify",
        auth=(workspace.write_key, ""),
        json={"userId": user, "traits": {"email": email}, "timestamp": "2026-01-01T10:00:00Z"},
    )
    assert r.status_code == 200, r.text
    links = await _links(client, workspace, email.upper())
    assert (await client.get(_path(links["open_url"]), headers={"User-Agent": BROWSER})).content
    click = await client.get(_path(links["click_url"]), headers={"User-Agent": BROWSER})
    assert click.status_code == 302
    await stitch()

    timeline = await client.get(f"/v1/profiles/user_id:{user}/timeline", headers=_read(workspace))
    assert timeline.status_code == 200, timeline.text
    names = [e["event"] for e in timeline.json()["events"]]
    assert names == [None, "Email Opened", "Email Link Clicked"]
    channels = [e["channel"] for e in timeline.json()["events"]][1:]
    assert channels == ["Email", "Email"]
    profile = (await client.get(f"/v1/profiles/email:{email}", headers=_read(workspace))).json()
    assert profile["event_count"] == 3
    # The open moves no stage; the click is a consideration touch.
    stage = (
        await client.get(f"/v1/profiles/user_id:{user}/stage", headers=_read(workspace))
    ).json()
    assert [h["stage"] for h in stage["stage_history"]] == ["awareness", "consideration"]


# --------------------------------------------------------------------------- the CLI


async def test_cli_signs_links_the_server_accepts(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection, database_url: str
) -> None:
    env = {
        **os.environ,
        "JOURNEYS_DATABASE_URL": database_url,
        "JOURNEYS_LOG_LEVEL": "warning",
        secret.ENV_VAR: SECRET,
    }
    args = [
        sys.executable, "-m", "app.cli", "links", "sign",
        "--workspace", workspace.name, "--campaign", "cli-campaign", "--message", "m-9",
        "--recipient", "Cli@Example.com", "--url", TARGET,
        "--base-url", "https://links.example/t", "--json",
    ]  # fmt: skip
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    body = json.loads(done.stdout)
    assert body["workspace_id"] == workspace.workspace_id
    assert body["recipient"] == "cli@example.com"
    assert body["click_url"].startswith("https://links.example/t/l/c/")
    assert body["open_url"].startswith("https://links.example/t/l/o/")

    r = await client.get(f"/l/c/{_token(body['click_url'])}", headers={"User-Agent": BROWSER})
    assert r.status_code == 302 and r.headers["location"] == TARGET
    [row] = await _stored(db, workspace)
    assert row["payload"]["properties"]["campaign_name"] == "cli-campaign"

    unknown = subprocess.run(
        [*args[:6], "no-such-workspace", *args[7:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert unknown.returncode == 1
    assert b"no workspace" in unknown.stderr


async def test_a_click_seconds_after_sending_is_a_scanner_and_moves_no_stage(
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(link_service, "now", time.time)  # clicked as the email is delivered
    links = await _links(client, workspace, "scanned@example.com")
    r = await client.get(_path(links["click_url"]), headers={"User-Agent": BROWSER})
    assert r.status_code == 302 and r.headers["location"] == TARGET
    [row] = await _stored(db, workspace)
    marker = row["payload"]["context"]["journeys"]
    assert marker == {"link": "click", "bot": True, "botReason": events.CLICKED_ON_DELIVERY}
    assert row["flags"] & 2  # flagged at ingest: never moves a stage or counts as a touch


def test_tokens_carry_when_they_were_signed_and_older_tokens_still_verify() -> None:
    key = signing.workspace_secret(b"s" * 32, 7)
    claims = signing.make_claims(
        kind=signing.CLICK,
        workspace_id=7,
        campaign="c",
        message="m",
        recipient="a@example.com",
        url=TARGET,
        issued=1_700_000_000,
    )
    assert signing.verify(signing.sign(claims, key), lambda _: key) == claims
    legacy = signing.make_claims(
        kind=signing.CLICK,
        workspace_id=7,
        campaign="c",
        message="m",
        recipient="a@example.com",
        url=TARGET,
    )
    assert signing.verify(signing.sign(legacy, key), lambda _: key) == legacy
