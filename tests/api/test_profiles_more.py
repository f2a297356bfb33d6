"""The profile API: every identifier kind on every route, keys, isolation, pagination, unmerge."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest

from app.workspaces.repository import NewWorkspace
from tests.conftest import LiveServer, new_workspace

Stitch = Callable[[], Awaitable[int]]
ROUTES = ("", "/stage", "/timeline", "/identities")


def _ev(message_id: str, ts: str, type: str = "track", **fields: Any) -> dict[str, Any]:
    return {"type": type, "messageId": message_id, "timestamp": ts, **fields}


async def _send(client: httpx.AsyncClient, ws: NewWorkspace, events: list[dict[str, Any]]) -> None:
    r = await client.post("/v1/batch", json={"batch": events}, auth=(ws.write_key, ""))
    assert r.status_code == 200, r.text
    assert "rejected" not in r.json(), r.json()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _url(ident: str, route: str = "") -> str:
    return f"/v1/profiles/{quote(ident, safe=':')}{route}"


# One customer: two devices, an email (sent in two spellings), a CRM id, ten events.
STORY = [
    _ev("t01", "2026-10-01T09:00:00Z", "page", anonymousId="dev-a", name="Home"),
    _ev("t02", "2026-10-01T09:05:00Z", anonymousId="dev-a", event="Product Viewed"),
    _ev(
        "t03",
        "2026-10-01T09:10:00Z",
        "identify",
        userId="ann-1",
        anonymousId="dev-a",
        traits={"email": " Ann.Smith@Example.com ", "name": "Ann"},
    ),
    _ev(
        "t04",
        "2026-10-02T08:00:00Z",
        anonymousId="dev-b",
        event="Email Link Clicked",
        context={"traits": {"email": "ann.smith@example.com"}},
    ),
    _ev("t05", "2026-10-02T08:01:00Z", anonymousId="dev-b", event="Product Added"),
    _ev(
        "t06",
        "2026-10-03T12:00:00Z",
        userId="ann-1",
        event="Order Completed",
        properties={"revenue": 42},
    ),
    # Two events at the same instant: the message id orders them.
    _ev(
        "t07",
        "2026-10-04T12:00:00Z",
        userId="ann-1",
        event="Product Viewed",
        context={"externalIds": [{"id": "CRM-77", "type": "crm_id", "collection": "users"}]},
    ),
    _ev("t08", "2026-10-04T12:00:00Z", userId="ann-1", event="Cart Viewed"),
    _ev("t09", "2026-10-05T12:00:00Z", userId="ann-1", event="Order Completed"),
    _ev(
        "t10",
        "2026-10-06T12:00:00Z",
        userId="ann-1",
        event="Survey Responded",
        properties={"score": 10},
    ),
]
ORDER = [e["messageId"] for e in STORY]


@pytest.fixture
async def ann(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch
) -> tuple[NewWorkspace, str]:
    """The workspace with the story stitched, and the customer's id."""
    await _send(client, workspace, STORY)
    await stitch()
    r = await client.get(_url("user_id:ann-1"), headers=_bearer(workspace.read_key))
    assert r.status_code == 200, r.text
    return workspace, r.json()["customer_id"]


IDENTIFIERS = [
    "user_id:ann-1",
    "anonymous_id:dev-a",
    "anonymous_id:dev-b",
    "email:ann.smith@example.com",
    "email: Ann.Smith@EXAMPLE.com ",
    "crm_id:CRM-77",
]


@pytest.mark.parametrize("route", ROUTES)
async def test_every_identifier_kind_answers_for_the_whole_customer(
    client: httpx.AsyncClient, ann: tuple[NewWorkspace, str], route: str
) -> None:
    ws, customer_id = ann
    bodies = []
    for ident in [*IDENTIFIERS, f"customer_id:{customer_id}"]:
        r = await client.get(_url(ident, route), headers=_bearer(ws.read_key))
        assert r.status_code == 200, (ident, r.text)
        assert r.headers["content-type"] == "application/json"
        assert r.json()["customer_id"] == customer_id
        bodies.append(r.json())
    # Same answer whichever identifier asked.
    assert all(b == bodies[0] for b in bodies)


async def test_route_bodies(client: httpx.AsyncClient, ann: tuple[NewWorkspace, str]) -> None:
    ws, customer_id = ann
    read = _bearer(ws.read_key)
    body = (await client.get(_url("email:ann.smith@example.com"), headers=read)).json()
    assert body["customer_id"] == customer_id
    assert set(body) == {
        "customer_id",
        "identifiers",
        "traits",
        "stage",
        "first_seen",
        "last_seen",
        "event_count",
    }
    assert {(i["kind"], i["value"]) for i in body["identifiers"]} == {
        ("user_id", "ann-1"),
        ("anonymous_id", "dev-a"),
        ("anonymous_id", "dev-b"),
        ("email", "ann.smith@example.com"),
        ("crm_id", "CRM-77"),
    }
    assert body["event_count"] == len(STORY)
    assert body["stage"] == "advocacy"
    assert body["traits"]["name"] == "Ann"
    assert body["first_seen"].startswith("2026-10-01T09:00:00")
    assert body["last_seen"].startswith("2026-10-06T12:00:00")

    stage = (await client.get(_url("crm_id:CRM-77", "/stage"), headers=read)).json()
    assert [(h["stage"], h["message_id"]) for h in stage["stage_history"]] == [
        ("awareness", "t01"),
        ("consideration", "t02"),
        ("purchase", "t06"),
        ("retention", "t07"),
        ("loyalty", "t09"),
        ("advocacy", "t10"),
    ]
    assert stage["stage"] == "advocacy" and stage["entered_at"].startswith("2026-10-06T12")

    timeline = (await client.get(_url("anonymous_id:dev-b", "/timeline"), headers=read)).json()
    assert [e["message_id"] for e in timeline["events"]] == ORDER
    assert timeline["next_cursor"] is None
    first = timeline["events"][0]
    assert set(first) == {
        "message_id",
        "type",
        "event",
        "timestamp",
        "received_at",
        "channel",
        "session_id",
        "stage",
        "properties",
    }
    assert [e["stage"] for e in timeline["events"]][5:] == [
        "purchase",
        "retention",
        "retention",
        "loyalty",
        "advocacy",
    ]

    idents = (await client.get(_url("user_id:ann-1", "/identities"), headers=read)).json()
    assert {i["kind"] for i in idents["identifiers"]} == {
        "user_id",
        "anonymous_id",
        "email",
        "crm_id",
    }
    assert all(i["first_seen"] for i in idents["identifiers"])
    rules = {(e["action"], e["rule"], e["message_id"]) for e in idents["ledger"]}
    assert ("linked", "identify", "t03") in rules
    assert ("linked", "email", "t04") in rules or ("merged", "email", "t04") in rules
    assert any(e["rule"] == "external_id" for e in idents["ledger"])


@pytest.mark.parametrize("route", ROUTES)
async def test_keys_of_the_wrong_kind_are_403_and_missing_ones_401(
    client: httpx.AsyncClient, ann: tuple[NewWorkspace, str], route: str
) -> None:
    ws, _ = ann
    url = _url("user_id:ann-1", route)
    for key in (ws.write_key, ws.server_key):
        r = await client.get(url, headers=_bearer(key))
        assert r.status_code == 403, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "wrong_key_kind"
    r = await client.get(url)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    for bad in (
        _bearer("jr_not-a-key"),
        {"Authorization": "Bearer "},
        {"Authorization": "Token " + ws.read_key},
    ):
        assert (await client.get(url, headers=bad)).status_code == 401


@pytest.mark.parametrize("route", ROUTES)
async def test_another_workspace_never_sees_the_customer(
    client: httpx.AsyncClient, database_url: str, ann: tuple[NewWorkspace, str], route: str
) -> None:
    _, customer_id = ann
    other = await new_workspace(database_url, "other")
    for ident in [*IDENTIFIERS, f"customer_id:{customer_id}"]:
        r = await client.get(_url(ident, route), headers=_bearer(other.read_key))
        assert r.status_code == 404, (ident, r.text)
        assert r.json()["code"] == "profile_not_found"
    r = await client.post(
        _url("user_id:ann-1", "/unmerge"),
        headers=_bearer(other.server_key),
        json={"identifiers": ["user_id:ann-1", "anonymous_id:dev-a"]},
    )
    assert r.status_code == 404


async def test_unknown_identifiers_and_kinds_are_404(
    client: httpx.AsyncClient, ann: tuple[NewWorkspace, str]
) -> None:
    ws, _ = ann
    for ident in (
        "user_id:nobody",
        "customer_id:cus_0000",
        "crm_id:CRM-78",
        "shoe_size:42",
        "email:someone@example.com",
    ):
        for route in ROUTES:
            r = await client.get(_url(ident, route), headers=_bearer(ws.read_key))
            assert r.status_code == 404, (ident, route, r.text)
    for bad in ("no-kind", ":value", "user_id:"):
        r = await client.get(_url(bad), headers=_bearer(ws.read_key))
        assert r.status_code == 400, (bad, r.text)


async def _pages(
    client: httpx.AsyncClient, ws: NewWorkspace, params: dict[str, Any]
) -> tuple[list[str], int]:
    """Follow next_cursor to the end; returns the message ids and the number of pages."""
    ids: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = await client.get(
            _url("user_id:ann-1", "/timeline"), params=query, headers=_bearer(ws.read_key)
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["events"]) <= params.get("limit", 100)
        ids += [e["message_id"] for e in body["events"]]
        pages += 1
        assert pages <= 20
        cursor = body["next_cursor"]
        if cursor is None:
            return ids, pages


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"limit": 3}, ORDER),
        ({"limit": 3, "order": "asc"}, ORDER),
        ({"limit": 3, "order": "desc"}, ORDER[::-1]),
        ({"limit": 1, "order": "desc"}, ORDER[::-1]),
        ({"limit": 2, "since": "2026-10-02T08:01:00Z"}, ORDER[4:]),
        ({"limit": 2, "until": "2026-10-04T12:00:00Z"}, ORDER[:6]),
        (
            {
                "limit": 2,
                "since": "2026-10-02T08:01:00Z",
                "until": "2026-10-05T12:00:00Z",
                "order": "desc",
            },
            ORDER[4:8][::-1],
        ),
        (
            {"limit": 1, "since": "2026-10-04T12:00:00+00:00", "until": "2026-10-04T12:00:01Z"},
            ["t07", "t08"],
        ),
        ({"limit": 1000, "order": "desc", "since": "2026-10-04T14:00:00+02:00"}, ORDER[:5:-1]),
        ({"since": "2026-10-07T00:00:00Z"}, []),
    ],
)
async def test_timeline_pages_in_both_orders_within_since_and_until(
    client: httpx.AsyncClient,
    ann: tuple[NewWorkspace, str],
    params: dict[str, Any],
    expected: list[str],
) -> None:
    ws, _ = ann
    ids, pages = await _pages(client, ws, params)
    assert ids == expected
    limit = params.get("limit", 100)
    assert pages == max(1, -(-len(expected) // limit))


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "ten"])
async def test_timeline_limit_out_of_bounds_is_400(
    client: httpx.AsyncClient, ann: tuple[NewWorkspace, str], limit: str
) -> None:
    ws, _ = ann
    r = await client.get(
        _url("user_id:ann-1", "/timeline"), params={"limit": limit}, headers=_bearer(ws.read_key)
    )
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert "limit" in r.json()["detail"]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor!",
        "%%%",
        _b64(b"[1]"),
        _b64(b'{"a": 1}'),
        _b64(b"[1, 2]"),
        _b64(b'["yesterday", "t01"]'),
        _b64(b"\xff\xfe"),
    ],
)
async def test_bad_cursor_is_400(
    client: httpx.AsyncClient, ann: tuple[NewWorkspace, str], cursor: str
) -> None:
    ws, _ = ann
    r = await client.get(
        _url("user_id:ann-1", "/timeline"), params={"cursor": cursor}, headers=_bearer(ws.read_key)
    )
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_cursor"


async def test_bad_order_and_dates_are_400(
    client: httpx.AsyncClient, ann: tuple[NewWorkspace, str]
) -> None:
    ws, _ = ann
    for params in ({"order": "sideways"}, {"since": "last tuesday"}, {"until": "2026-13-01"}):
        r = await client.get(
            _url("user_id:ann-1", "/timeline"), params=params, headers=_bearer(ws.read_key)
        )
        assert r.status_code == 400, (params, r.text)


async def test_unmerge_needs_the_server_key(
    client: httpx.AsyncClient, ann: tuple[NewWorkspace, str]
) -> None:
    ws, customer_id = ann
    body = {"identifiers": ["user_id:ann-1", "anonymous_id:dev-a"]}
    url = _url("user_id:ann-1", "/unmerge")
    for key in (ws.read_key, ws.write_key):
        r = await client.post(url, headers=_bearer(key), json=body)
        assert r.status_code == 403, r.text
    assert (await client.post(url, json=body)).status_code == 401
    # Nothing was undone by the refused calls.
    r = await client.get(_url("anonymous_id:dev-a"), headers=_bearer(ws.read_key))
    assert r.json()["customer_id"] == customer_id

    r = await client.post(url, headers=_bearer(ws.server_key), json=body)
    assert r.status_code == 200, r.text
    assert r.json()["unmerged"] == [["user_id:ann-1", "anonymous_id:dev-a"]]
    assert r.json()["customer_id"] == customer_id
    device = (await client.get(_url("anonymous_id:dev-a"), headers=_bearer(ws.read_key))).json()
    user = (await client.get(_url("user_id:ann-1"), headers=_bearer(ws.read_key))).json()
    assert device["customer_id"] != user["customer_id"]
    # dev-a's anonymous events left; the identify itself carries ann-1 and stays with ann.
    assert device["event_count"] == 2
    assert user["event_count"] == len(STORY) - 2
    assert sorted(r.json()["customers"]) == sorted({device["customer_id"], user["customer_id"]})
    ledger = (
        await client.get(_url("anonymous_id:dev-a", "/identities"), headers=_bearer(ws.read_key))
    ).json()["ledger"]
    assert [
        e["action"] for e in ledger if e["message_id"] == "t03" and e["rule"] == "unmerged"
    ] == ["unmerged"]


async def test_unmerge_of_a_link_that_does_not_exist_is_404(
    client: httpx.AsyncClient, ann: tuple[NewWorkspace, str]
) -> None:
    ws, _ = ann
    server = _bearer(ws.server_key)
    url = _url("user_id:ann-1", "/unmerge")
    for body in (
        {"identifiers": ["user_id:ann-1", "anonymous_id:dev-zz"]},
        {"identifiers": ["anonymous_id:dev-a", "anonymous_id:dev-b"]},  # same customer, no link
        {"message_id": "t06"},  # an event, but it linked nothing
        {"message_id": "never-sent"},
    ):
        r = await client.post(url, headers=server, json=body)
        assert r.status_code == 404, (body, r.text)
        assert r.json()["code"] == "merge_not_found"
    r = await client.post(
        _url("user_id:nobody", "/unmerge"), headers=server, json={"message_id": "t03"}
    )
    assert r.status_code == 404
    assert r.json()["code"] == "profile_not_found"
    for body in (
        {},
        {"identifiers": ["user_id:ann-1"]},
        {"identifiers": ["user_id:ann-1", "anonymous_id:dev-a", "email:x@y.z"]},
    ):
        r = await client.post(url, headers=server, json=body)
        assert r.status_code == 400, (body, r.text)
    # Nothing changed.
    r = await client.get(_url("anonymous_id:dev-a"), headers=_bearer(ws.read_key))
    assert r.json()["event_count"] == len(STORY)


async def test_write_key_sent_as_basic_on_a_read_route_is_403(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    r = await client.get("/v1/profiles/user_id:u1", auth=(workspace.write_key, ""))
    assert r.status_code == 403
    assert r.json()["code"] == "wrong_key_kind"


async def test_timeline_answers_the_identifier_before_the_cursor(
    client: httpx.AsyncClient, ann: tuple[NewWorkspace, str]
) -> None:
    ws, customer_id = ann
    read = _bearer(ws.read_key)
    first = await client.get(_url("user_id:ann-1", "/timeline"), params={"limit": 2}, headers=read)
    cursor = first.json()["next_cursor"]
    for bad in (cursor, "not-a-cursor"):
        r = await client.get(
            _url("user_id:nobody", "/timeline"), params={"cursor": bad}, headers=read
        )
        assert r.status_code == 404, r.text
    pages = [
        (
            await client.get(
                _url(ident, "/timeline"), params={"limit": 2, "cursor": cursor}, headers=read
            )
        ).json()
        for ident in ("user_id:ann-1", "email:ann.smith@example.com", f"customer_id:{customer_id}")
    ]
    assert [e["message_id"] for e in pages[0]["events"]] == ORDER[2:4]
    assert all(p == pages[0] for p in pages)


async def test_a_shared_device_is_409_on_stage_and_timeline(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch
) -> None:
    await _send(
        client,
        workspace,
        [
            _ev("k1", "2026-10-01T09:00:00Z", "identify", userId="ann", anonymousId="kiosk"),
            _ev("k2", "2026-10-01T09:05:00Z", anonymousId="kiosk", event="Product Viewed"),
            _ev("k3", "2026-10-01T10:00:00Z", "identify", userId="bob", anonymousId="kiosk"),
            _ev("k4", "2026-10-01T10:05:00Z", anonymousId="kiosk", event="Product Viewed"),
        ],
    )
    await stitch()
    read = _bearer(workspace.read_key)
    owners = {
        (await client.get(_url(f"user_id:{user}"), headers=read)).json()["customer_id"]
        for user in ("ann", "bob")
    }
    assert len(owners) == 2
    cursor = base64.urlsafe_b64encode(b'["2026-10-01T09:00:00+00:00","k1"]').decode()
    for route, params in (("/stage", {}), ("/timeline", {}), ("/timeline", {"cursor": cursor})):
        r = await client.get(_url("anonymous_id:kiosk", route), params=params, headers=read)
        assert r.status_code == 409, (route, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert set(r.json()["customer_ids"]) == owners


def _scope(path: str, query: str) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "query_string": query.encode()}


@pytest.mark.parametrize(
    ("query", "fast"),
    [
        ("", True),
        ("limit=3", True),
        ("limit=0003&order=desc", True),
        ("cursor=&limit=1000", True),
        ("unknown=1", True),
        ("limit=1001", False),
        ("limit=%C2%B2", False),  # a unicode digit: pydantic's answer, not ours
        ("limit=3&limit=4", False),
        ("order=ASC", False),
        ("since=2026-10-01T00:00:00Z", False),
        ("until=2026-10-01T00:00:00Z", False),
    ],
)
def test_timeline_fast_path_takes_only_what_it_parses_itself(query: str, fast: bool) -> None:
    from app.profiles.routes import fast_answer

    assert (fast_answer(_scope("/v1/profiles/user_id:a/timeline", query)) is not None) is fast
    assert fast_answer(_scope("/v1/profiles/user_id:a/stage", query)) is not None
    assert fast_answer(_scope("/v1/profiles/a/b/timeline", query)) is None
    assert fast_answer(_scope("/v1/profiles/user_id:a", query)) is None


@pytest.mark.parametrize(
    "query", ["", "limit=3", "limit=2&order=desc", "limit=4&order=asc&cursor=", "limit=1"]
)
async def test_timeline_fast_path_answers_as_the_route_does(
    client: httpx.AsyncClient, ann: tuple[NewWorkspace, str], query: str
) -> None:
    ws, customer = ann
    # `since` before every event changes nothing but sends the request through FastAPI.
    slow_query = f"{query}&since=2000-01-01T00:00:00Z".lstrip("&")
    for ident in ("user_id:ann-1", f"customer_id:{customer}", "anonymous_id:dev-b"):
        fast = await client.get(f"{_url(ident, '/timeline')}?{query}", headers=_bearer(ws.read_key))
        slow = await client.get(
            f"{_url(ident, '/timeline')}?{slow_query}", headers=_bearer(ws.read_key)
        )
        assert fast.status_code == slow.status_code == 200, (fast.text, slow.text)
        assert fast.content == slow.content
        assert fast.headers["content-type"] == slow.headers["content-type"]
        cursor = fast.json()["next_cursor"]
        if cursor:  # the next page too, through each path
            page2 = await client.get(
                f"{_url(ident, '/timeline')}?{query}&cursor={cursor}".replace("&cursor=&", "&"),
                headers=_bearer(ws.read_key),
            )
            assert page2.status_code == 200, page2.text
            assert page2.json()["events"][0]["message_id"] not in {
                e["message_id"] for e in fast.json()["events"]
            }


async def test_an_identifier_an_unmerge_left_without_events_is_404_on_every_route(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch
) -> None:
    # Every event carries u1, so once the link is undone the device has no events: its
    # identity points at a customer without a profile, which is no customer at all.
    await _send(
        client,
        workspace,
        [
            _ev("e1", "2026-10-01T09:00:00Z", "identify", userId="u1", anonymousId="dev"),
            _ev("e2", "2026-10-01T09:05:00Z", userId="u1", anonymousId="dev", event="Viewed"),
        ],
    )
    await stitch()
    read = _bearer(workspace.read_key)
    r = await client.post(
        _url("user_id:u1", "/unmerge"),
        headers=_bearer(workspace.server_key),
        json={"identifiers": ["user_id:u1", "anonymous_id:dev"]},
    )
    assert r.status_code == 200, r.text
    cursor = base64.urlsafe_b64encode(b'["2026-10-01T09:00:00+00:00","e1"]').decode()
    for route, params in (
        *((route, {}) for route in ROUTES),
        ("/timeline", {"since": "2026-10-01T00:00:00Z"}),
        ("/timeline", {"cursor": cursor}),
    ):
        r = await client.get(_url("anonymous_id:dev", route), params=params, headers=read)
        assert r.status_code == 404, (route, params, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "profile_not_found"
    # The user keeps both events; an empty page of a real customer is still a 200.
    r = await client.get(_url("user_id:u1"), headers=read)
    assert r.status_code == 200 and r.json()["event_count"] == 2
    end = base64.urlsafe_b64encode(b'["2027-01-01T00:00:00+00:00","zz"]').decode()
    for params in ({"cursor": end}, {"since": "2027-01-01T00:00:00Z"}):
        r = await client.get(_url("user_id:u1", "/timeline"), params=params, headers=read)
        assert r.status_code == 200, r.text
        assert r.json()["events"] == [] and r.json()["next_cursor"] is None


async def test_identifiers_holding_a_slash_answer_on_every_route(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch
) -> None:
    await _send(
        client,
        workspace,
        [
            _ev("g1", "2026-10-01T09:00:00Z", userId="google/123", event="Product Viewed"),
            _ev(
                "g2",
                "2026-10-01T09:05:00Z",
                userId="google/123",
                event="Product Added",
                context={"externalIds": [{"id": "a/b/c", "type": "crm_id"}]},
            ),
            # A value ending in a route's name, next to the customer that name would hit.
            _ev("s1", "2026-10-01T10:00:00Z", userId="team/stage", event="Product Viewed"),
            _ev("s2", "2026-10-01T10:00:00Z", userId="team", event="Order Completed"),
        ],
    )
    await stitch()
    read = _bearer(workspace.read_key)
    google = {"user_id:google/123", "crm_id:a/b/c"}
    customers: dict[str, set[str]] = {}
    for ident in (*google, "user_id:team/stage", "user_id:team"):
        for route, params in (
            *((route, {}) for route in ROUTES),
            ("/timeline", {"since": "2026-10-01T00:00:00Z", "limit": "1"}),
        ):
            r = await client.get(_url(ident, route), params=params, headers=read)
            assert r.status_code == 200, (ident, route, r.text)
            assert r.headers["content-type"] == "application/json"
            customers.setdefault(ident, set()).add(r.json()["customer_id"])
        # The plain route answered with the profile (not the stage of `user_id:team`).
        body = (await client.get(_url(ident), headers=read)).json()
        assert {f"{i['kind']}:{i['value']}" for i in body["identifiers"]} == (
            google if ident in google else {ident}
        )
    assert all(len(ids) == 1 for ids in customers.values()), customers
    assert len({next(iter(ids)) for ids in customers.values()}) == 3
    timeline = (await client.get(_url("crm_id:a/b/c", "/timeline"), headers=read)).json()
    assert [e["message_id"] for e in timeline["events"]] == ["g1", "g2"]
    stage = (await client.get(_url("user_id:team/stage", "/stage"), headers=read)).json()
    assert stage["stage"] != "purchase"  # team's order is not team/stage's
    # Unmerge reaches it too (no such link: its own 404, not an unrouted path's).
    r = await client.post(
        _url("user_id:google/123", "/unmerge"),
        headers=_bearer(workspace.server_key),
        json={"identifiers": ["user_id:google/123", "anonymous_id:nope"]},
    )
    assert r.status_code == 404 and r.json()["code"] == "merge_not_found", r.text


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        # `{id}` is one path segment: a `/` the client left unencoded is a path separator.
        ("GET", "/v1/profiles/user_id:google/123", "not_found"),
        ("GET", "/v1/profiles/user_id:google/123/stage", "not_found"),
        ("GET", "/v1/profiles/user_id:google/123/timeline", "not_found"),
        ("GET", "/v1/profiles/user_id:google/123/identities", "not_found"),
        ("GET", "/v1/profiles//stage", "not_found"),
        ("GET", "/v1/profiles//timeline?since=2026-10-01T00:00:00Z", "not_found"),
        ("GET", "/v1/profiles//identities", "not_found"),
        ("GET", "/v1/profiles/%2F", "invalid_identifier"),
        ("GET", "/v1/profiles/%2F/stage", "invalid_identifier"),
        ("GET", "/v1/profiles/%2F%2F/timeline", "invalid_identifier"),
        ("GET", "/v1/profiles/user_id%2F:x/identities", "profile_not_found"),
        ("GET", "/v1/profiles/%2Fuser_id:%2F", "profile_not_found"),
        ("GET", "/v1/profiles/user_id:%2F%2F%2F/timeline?cursor=%2F", "profile_not_found"),
        ("GET", "/v1/profiles/user_id:%25%2F%25/stage", "profile_not_found"),
        ("GET", "/v1/profiles/user_id:%FF%2F/stage", "profile_not_found"),
        ("GET", "/v1/profiles/user_id:u1%2Funmerge", "profile_not_found"),
        # Not an unmerge of user_id:u1: the `/` before `unmerge` is part of the identifier.
        ("POST", "/v1/profiles/user_id:u1%2Funmerge", "not_found"),
        ("POST", "/v1/profiles/user_id:u1/x/unmerge", "not_found"),
        ("GET", "/v1/profiles/user_id:u1/unmerge", "method_not_allowed"),
    ],
)
async def test_paths_with_slashes_that_name_no_customer_are_clean_errors(
    client: httpx.AsyncClient, workspace: NewWorkspace, method: str, path: str, code: str
) -> None:
    await _send(client, workspace, [_ev("u1", "2026-10-01T09:00:00Z", userId="u1", event="X")])
    headers = _bearer(workspace.server_key if method == "POST" else workspace.read_key)
    body = {"identifiers": ["user_id:u1", "anonymous_id:a"]} if method == "POST" else None
    r = await client.request(method, path, headers=headers, json=body)
    assert r.headers["content-type"] == "application/problem+json", r.text
    assert r.json()["code"] == code, r.text
    status = {"invalid_identifier": 400, "method_not_allowed": 405}.get(code, 404)
    assert r.status_code == status


def test_the_fast_path_reads_the_identifier_from_the_path_the_client_sent() -> None:
    from app.profiles.routes import fast_answer

    def scope(raw: bytes) -> dict[str, Any]:
        path = unquote(raw.decode())
        return {**_scope(path, ""), "raw_path": raw}

    for raw in (
        b"/v1/profiles/user_id:google%2F123/stage",
        b"/v1/profiles/user_id:google%2F123/timeline",
        b"/v1/profiles/user_id:google%2F123",
        b"/v1/profiles/user_id:a%2Fstage",
        b"/v1/profiles/user_id:a/st%61ge",
    ):
        assert fast_answer(scope(raw)) is not None, raw
    for raw in (
        b"/v1/profiles/user_id:a",  # the FastAPI route answers ids without a slash
        b"/v1/profiles/user_id:google/123/stage",
        b"/v1/profiles/user_id:a%2Fb/identities",
        b"/v1/profiles//stage",
    ):
        assert fast_answer(scope(raw)) is None, raw


async def test_an_external_id_of_type_customer_id_answers_on_every_route(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch
) -> None:
    await _send(
        client,
        workspace,
        [
            _ev(
                "x1",
                "2026-10-01T09:00:00Z",
                userId="u1",
                event="Order Completed",
                context={"externalIds": [{"id": "C-1", "type": "customer_id"}]},
            ),
        ],
    )
    await stitch()
    read = _bearer(workspace.read_key)
    customer_id = (await client.get(_url("user_id:u1"), headers=read)).json()["customer_id"]
    for route in ROUTES:
        bodies = []
        # The external id, and the Journeys customer id too: both are `customer_id:…`.
        for ident in ("user_id:u1", "customer_id:C-1", f"customer_id:{customer_id}"):
            r = await client.get(_url(ident, route), headers=read)
            assert r.status_code == 200, (ident, route, r.text)
            bodies.append(r.json())
        assert all(b == bodies[0] for b in bodies), route
        assert bodies[0]["customer_id"] == customer_id
    idents = (await client.get(_url("customer_id:C-1", "/identities"), headers=read)).json()
    assert ("customer_id", "C-1") in {(i["kind"], i["value"]) for i in idents["identifiers"]}
    r = await client.get(_url("customer_id:C-2", "/stage"), headers=read)
    assert r.status_code == 404 and r.json()["code"] == "profile_not_found"


@pytest.mark.slow
async def test_a_slash_in_an_identifier_survives_a_real_uvicorn(
    live_server: LiveServer, workspace: NewWorkspace
) -> None:
    # uvicorn decodes the path and keeps the bytes in `raw_path`, as httpx's transport does.
    ident = "user_id:google/123"
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        await _send(
            http, workspace, [_ev("r1", "2026-10-01T09:00:00Z", userId="google/123", event="X")]
        )
        read = _bearer(workspace.read_key)
        deadline = time.monotonic() + 30
        while (r := await http.get(_url(ident), headers=read)).status_code == 404:
            assert r.json()["code"] == "profile_not_found", r.text  # routed, not yet stitched
            assert time.monotonic() < deadline, "never stitched"
            await asyncio.sleep(0.1)
        customer_id = r.json()["customer_id"]
        for route, params in (
            *((route, {}) for route in ROUTES),
            ("/timeline", {"since": "2026-10-01T00:00:00Z"}),
        ):
            r = await http.get(_url(ident, route), params=params, headers=read)
            assert r.status_code == 200, (route, r.text)
            assert r.json()["customer_id"] == customer_id
        r = await http.get("/v1/profiles/user_id:google/123/stage", headers=read)
        assert r.status_code == 404 and r.json()["code"] == "not_found"
