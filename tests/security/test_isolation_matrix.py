"""Every route, every kind of key, own and other workspace, from one table.

The routes come from `app.routes` itself: a route added later that this table does not classify
fails the test, so nobody can add an endpoint without deciding who may call it.

Classes of route and what each kind of key gets there:

| class   | write      | read       | server     | missing | garbage | other workspace's key   |
|---------|------------|------------|------------|---------|---------|-------------------------|
| ingest  | 200        | 403        | 403        | 401     | 401     | 200, stored in *its* ws |
| metrics | 200        | 200        | 200        | 200     | 200     | 200 (stores nothing)    |
| read    | 403        | 200        | 403        | 401     | 401     | 404 (read key)          |
| server  | 403        | 403        | 2xx        | 401     | 401     | 404 / acts on its own ws|
| public  | any key is ignored: the same answer for all (a forged email-link token: 404)      |

CORS: only ingest (and client-metrics) routes answer with Access-Control-Allow-Origin; read,
server, operations and documentation routes never do, not even to a preflight. The one exception
is public static code (the tracker script): `*`, which browsers never combine with credentials.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.workspaces.repository import NewWorkspace
from tests.conftest import new_workspace

Stitch = Callable[[], Awaitable[int]]

INGEST, METRICS, READ, SERVER, PUBLIC = "ingest", "metrics", "read", "server", "public"
KEY_KINDS = ("write", "read", "server", "missing", "garbage")
ORIGIN = "https://shop.example"

# The customer of the own workspace that read and server routes are asked about.
USER = "iso-user"
DEVICE = "iso-device"
# Customers only the deletion routes touch (one deleted by the matrix, one before it).
DOOMED = "iso-doomed"
DELETED = "iso-deleted"


@dataclass(frozen=True)
class Ctx:
    """What a request needs to know: whose key it carries and a unique message id."""

    workspace: NewWorkspace
    message_id: str
    tag: str  # "own" or "other"


Body = Callable[[Ctx], Any]


@dataclass(frozen=True)
class Route:
    kind: str
    body: Body | None = None
    # The path with its parameters filled in (None: the path has none).
    path: str | None = None
    # Server routes whose resource is named by the path answer 404 to another workspace; those
    # that act on "the workspace of the key" (settings) act on the caller's own workspace.
    scoped_by_path: bool = True
    # What a public route answers whatever key comes with the request.
    public_status: int = 200
    # A public static asset may be readable by any page ("*", so never with credentials).
    cors_any_origin: bool = False


def event(**fields: Any) -> Body:
    def make(ctx: Ctx) -> dict[str, Any]:
        return {"userId": "iso-ingest", **fields, "messageId": ctx.message_id}

    return make


def batch(ctx: Ctx) -> dict[str, Any]:
    item = {"type": "track", "userId": "iso-ingest", "event": "E", "messageId": ctx.message_id}
    return {"batch": [item]}


def journey_model(ctx: Ctx) -> dict[str, Any]:
    # The stage name tells afterwards whose PUT a workspace's model came from.
    return {
        "stages": [
            {"name": "seen", "rules": [{}]},
            {"name": f"bought_{ctx.tag}", "rules": [{"events": ["B"]}]},
        ]
    }


def links(ctx: Ctx) -> dict[str, Any]:
    return {
        "campaign": "spring",
        "message": ctx.message_id,
        "recipient": "ann@example.com",
        "url": "https://shop.example/spring",
    }


def unmerge(_: Ctx) -> dict[str, Any]:
    return {"identifiers": [f"user_id:{USER}", f"anonymous_id:{DEVICE}"]}


TRACK = event(event="Product Viewed")
IDENTIFY = event(traits={"plan": "pro"})
PAGE = event(name="Home")
SCREEN = event(name="Cart")
GROUP = event(groupId="g1")
ALIAS = event(previousId="iso-old")

PROFILE = f"/v1/profiles/{quote('user_id:' + USER, safe=':')}"
DOOMED_PROFILE = f"/v1/profiles/{quote('user_id:' + DOOMED, safe=':')}"
# Filled in by the test: the deletion job of DELETED (`{job_id}` of GET /v1/deletions).
JOB_PATH = "/v1/deletions/{job}"
# Filled in by the test: a webhook of the own workspace, and one that its DELETE removes.
HOOK_PATH = "/v1/webhooks/{hook}"
DOOMED_HOOK_PATH = "/v1/webhooks/{doomed_hook}"


def webhook(_: Ctx) -> dict[str, Any]:
    return {"url": "https://hooks.example.com/iso", "events": ["stage.changed"]}


# (method, path template as routed) → how it is protected. Every route of the app must be here.
TABLE: dict[tuple[str, str], Route] = {
    ("POST", "/v1/track"): Route(INGEST, TRACK),
    ("POST", "/v1/identify"): Route(INGEST, IDENTIFY),
    ("POST", "/v1/page"): Route(INGEST, PAGE),
    ("POST", "/v1/screen"): Route(INGEST, SCREEN),
    ("POST", "/v1/group"): Route(INGEST, GROUP),
    ("POST", "/v1/alias"): Route(INGEST, ALIAS),
    ("POST", "/v1/batch"): Route(INGEST, batch),
    ("POST", "/v1/t"): Route(INGEST, TRACK),
    ("POST", "/v1/i"): Route(INGEST, IDENTIFY),
    ("POST", "/v1/p"): Route(INGEST, PAGE),
    ("POST", "/v1/s"): Route(INGEST, SCREEN),
    ("POST", "/v1/g"): Route(INGEST, GROUP),
    ("POST", "/v1/a"): Route(INGEST, ALIAS),
    ("POST", "/v1/b"): Route(INGEST, batch),
    ("POST", "/v1/m"): Route(METRICS, lambda _: {"series": []}),
    ("GET", "/v1/profiles/{id}"): Route(READ, path=PROFILE),
    ("GET", "/v1/profiles/{id:path}/stage"): Route(READ, path=PROFILE + "/stage"),
    ("GET", "/v1/profiles/{id:path}/timeline"): Route(READ, path=PROFILE + "/timeline"),
    ("GET", "/v1/profiles/{id:path}/identities"): Route(READ, path=PROFILE + "/identities"),
    # Aggregates answer for "the workspace of the key": another workspace sees its own numbers.
    ("GET", "/v1/aggregates/stages"): Route(READ, scoped_by_path=False),
    ("GET", "/v1/aggregates/funnel"): Route(
        READ,
        path="/v1/aggregates/funnel?steps=Product%20Viewed,Order%20Completed",
        scoped_by_path=False,
    ),
    ("GET", "/v1/aggregates/channels"): Route(READ, scoped_by_path=False),
    ("GET", "/v1/aggregates/attribution"): Route(READ, scoped_by_path=False),
    ("GET", "/v1/aggregates/journey-map"): Route(READ, scoped_by_path=False),
    ("GET", "/v1/aggregates/dropoff"): Route(READ, scoped_by_path=False),
    ("POST", "/v1/profiles/{id:path}/unmerge"): Route(SERVER, unmerge, path=PROFILE + "/unmerge"),
    # Privacy: server key only; a customer or job of another workspace does not exist.
    ("DELETE", "/v1/profiles/{id}"): Route(SERVER, path=DOOMED_PROFILE),
    ("GET", "/v1/profiles/{id}/export"): Route(SERVER, path=PROFILE + "/export"),
    ("GET", "/v1/deletions/{job_id}"): Route(SERVER, path=JOB_PATH),
    ("GET", "/v1/settings/privacy"): Route(SERVER, scoped_by_path=False),
    ("PUT", "/v1/settings/privacy"): Route(
        SERVER, lambda _: {"require_consent_category": None}, scoped_by_path=False
    ),
    ("GET", "/v1/settings/journey-model"): Route(SERVER, scoped_by_path=False),
    ("PUT", "/v1/settings/journey-model"): Route(SERVER, journey_model, scoped_by_path=False),
    ("POST", "/v1/links"): Route(SERVER, links, scoped_by_path=False),
    # Webhooks: server key only; a webhook of another workspace does not exist.
    ("POST", "/v1/webhooks"): Route(SERVER, webhook, scoped_by_path=False),
    ("GET", "/v1/webhooks"): Route(SERVER, scoped_by_path=False),
    ("DELETE", "/v1/webhooks/{webhook_id}"): Route(SERVER, path=DOOMED_HOOK_PATH),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): Route(SERVER, path=HOOK_PATH + "/deliveries"),
    # Email links authenticate by their signed token, never by a key: a forged token is a
    # pixel all the same (it tells nothing) or a 404 (never a redirect).
    ("GET", "/l/o/{token}.gif"): Route(PUBLIC, path="/l/o/forged.token.gif"),
    ("GET", "/v1/o/{token}.gif"): Route(PUBLIC, path="/v1/o/forged.token.gif"),
    ("GET", "/l/c/{token}"): Route(PUBLIC, path="/l/c/forged.token", public_status=404),
    ("GET", "/v1/c/{token}"): Route(PUBLIC, path="/v1/c/forged.token", public_status=404),
    # The tracker script is public code, loaded cross-origin with SRI: `*`, no credentials.
    ("GET", "/js/journeys.js"): Route(PUBLIC, cors_any_origin=True),
    ("GET", "/healthz"): Route(PUBLIC),
    ("GET", "/readyz"): Route(PUBLIC),
    ("GET", "/metrics"): Route(PUBLIC),
    ("GET", "/openapi.json"): Route(PUBLIC),
    ("GET", "/docs"): Route(PUBLIC),
    ("GET", "/docs/oauth2-redirect"): Route(PUBLIC),
    ("GET", "/redoc"): Route(PUBLIC),
    # The dashboard authenticates by its session cookie only (tests/api/test_dashboard.py): a key
    # in a header is ignored. Without a session `/` is the login form and the other pages send
    # the browser there; its POSTs refuse a request that is not from its own pages (no Origin).
    ("GET", "/"): Route(PUBLIC),
    ("GET", "/dashboard/funnel"): Route(PUBLIC, public_status=303),
    ("GET", "/dashboard/trends"): Route(PUBLIC, public_status=303),
    ("GET", "/dashboard/channels"): Route(PUBLIC, public_status=303),
    ("GET", "/dashboard/attribution"): Route(PUBLIC, public_status=303),
    ("GET", "/dashboard/profiles"): Route(PUBLIC, public_status=303),
    ("POST", "/dashboard/login"): Route(PUBLIC, public_status=403),
    ("POST", "/dashboard/logout"): Route(PUBLIC, public_status=403),
    ("GET", "/dashboard/static/{name:path}"): Route(PUBLIC, path="/dashboard/static/dashboard.css"),
}

# The native way each class presents its key: SDKs send Basic, query and admin tools Bearer.
SCHEME = {INGEST: "basic", METRICS: "basic", READ: "bearer", SERVER: "bearer", PUBLIC: "bearer"}
# Which kind of key a class wants (None: no key at all).
WANTS = {INGEST: "write", METRICS: None, READ: "read", SERVER: "server", PUBLIC: None}
SUCCESS = {
    ("GET", SERVER): 200,
    ("PUT", SERVER): 200,
    ("POST", SERVER): 200,
    ("DELETE", SERVER): 202,
}
# Where a route's success is not the default of its method and class.
SUCCESS_OF = {
    ("PUT", "/v1/settings/journey-model"): 202,
    ("POST", "/v1/webhooks"): 201,
    ("DELETE", "/v1/webhooks/{webhook_id}"): 204,
}


def app_routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """Every (method, path) the application routes, whatever the FastAPI version nests."""
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI ≥ 0.130: lazy includes
    except ImportError:  # pragma: no cover - older FastAPI lists flat routes
        contexts: Any = app.routes
    else:
        contexts = iter_route_contexts(app.routes)
    for route in contexts:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        assert path and methods, f"a route without path or methods: {route!r}"
        for method in sorted(set(methods) - {"HEAD"}):  # HEAD is GET without a body
            yield method, path


def headers_for(key: str | None, scheme: str, garbage: str | None = None) -> dict[str, str]:
    value = garbage if garbage is not None else key
    if value is None:
        return {}
    if scheme == "basic":
        return {"authorization": "Basic " + base64.b64encode(f"{value}:".encode()).decode()}
    return {"authorization": f"Bearer {value}"}


def expected(route: Route, method: str, key_kind: str, own: bool, template: str = "") -> int:
    """The status the contract promises for this key on this route."""
    if route.kind in (PUBLIC, METRICS):
        return route.public_status
    if key_kind in ("missing", "garbage"):
        return 401
    if key_kind != WANTS[route.kind]:
        return 403
    if route.kind == INGEST:
        return 200  # any workspace's write key writes, into its own workspace only
    if not own and route.scoped_by_path:
        return 404  # another workspace's customer does not exist for this key
    return SUCCESS_OF.get((method, template), SUCCESS.get((method, route.kind), 200))


@dataclass
class Ledger:
    """What each workspace's write key stored, to compare with the database afterwards."""

    stored: dict[int, set[str]] = field(default_factory=dict)
    sent: set[str] = field(default_factory=set)


@pytest.fixture
async def other(database_url: str) -> NewWorkspace:
    return await new_workspace(database_url, "other")


async def seed_customers(client: httpx.AsyncClient, ws: NewWorkspace, stitch: Stitch) -> str:
    """USER linked to DEVICE (so unmerge has a link to undo), DOOMED, and DELETED with its
    deletion requested; returns the path of that deletion job."""
    batch = [
        {"type": "identify", "userId": USER, "anonymousId": DEVICE},
        {"type": "track", "userId": DOOMED, "event": "E"},
        {"type": "track", "userId": DELETED, "event": "E"},
    ]
    for item in batch:
        item["messageId"] = f"seed-{uuid.uuid4().hex}"
    r = await client.post("/v1/batch", json={"batch": batch}, auth=(ws.write_key, ""))
    assert r.status_code == 200, r.text
    await stitch()
    r = await client.get(PROFILE, headers={"authorization": f"Bearer {ws.read_key}"})
    assert r.status_code == 200, r.text
    r = await client.delete(
        f"/v1/profiles/user_id:{DELETED}", headers={"authorization": f"Bearer {ws.server_key}"}
    )
    assert r.status_code == 202, r.text
    return JOB_PATH.format(job=r.json()["job_id"])


GARBAGE = (
    "jr_" + "x" * 32,  # a well-formed key nobody has
    "js_" + "y" * 32,
    "jw_" + "z" * 32,
    "not-a-key-at-all",
)


async def test_every_route_every_key_every_workspace(
    app: FastAPI,
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    other: NewWorkspace,
    db: asyncpg.Connection,
    stitch: Stitch,
) -> None:
    routes = set(app_routes(app))
    unclassified = sorted(routes - set(TABLE))
    assert not unclassified, (
        f"classify these new routes in TABLE (who may call them?): {unclassified}"
    )
    assert not set(TABLE) - routes, (
        f"TABLE lists routes the app no longer has: {set(TABLE) - routes}"
    )

    job_path = await seed_customers(client, workspace, stitch)
    hooks = []
    for _ in range(2):
        r = await client.post(
            "/v1/webhooks",
            json=webhook(Ctx(workspace, "", "own")),
            headers={"authorization": f"Bearer {workspace.server_key}"},
        )
        assert r.status_code == 201, r.text
        hooks.append(r.json()["id"])
    keys = {"write": "write_key", "read": "read_key", "server": "server_key"}
    cases: list[tuple[str, str, Route, str, NewWorkspace | None, str | None]] = []
    for (method, template), route in sorted(TABLE.items()):
        for key_kind in KEY_KINDS:
            if key_kind == "garbage":
                cases += [(method, template, route, key_kind, None, g) for g in GARBAGE]
            elif key_kind == "missing":
                cases.append((method, template, route, key_kind, None, None))
            else:
                cases += [
                    (method, template, route, key_kind, ws, None) for ws in (workspace, other)
                ]

    # State-changing successes (an unmerge, a new model) last, so no refusal depends on them.
    def order(case: tuple[str, str, Route, str, NewWorkspace | None, str | None]) -> int:
        method, _, route, key_kind, ws, _ = case
        return int(expected(route, method, key_kind, ws is not other, template) < 400)

    ledger = Ledger(stored={workspace.workspace_id: set(), other.workspace_id: set()})
    mismatches: list[str] = []
    for n, (method, template, route, key_kind, ws, garbage) in enumerate(sorted(cases, key=order)):
        own = ws is not other
        key = getattr(ws, keys[key_kind]) if ws is not None else None
        ctx = Ctx(workspace=ws or workspace, message_id=f"iso-{n}", tag="own" if own else "other")
        body = route.body(ctx) if route.body else None
        if route.kind == INGEST:
            ledger.sent.add(ctx.message_id)
        path = (
            (route.path or template)
            .replace(JOB_PATH, job_path)
            .replace(HOOK_PATH, HOOK_PATH.format(hook=hooks[0]))
            .replace(DOOMED_HOOK_PATH, DOOMED_HOOK_PATH.format(doomed_hook=hooks[1]))
        )
        r = await client.request(
            method, path, json=body, headers=headers_for(key, SCHEME[route.kind], garbage)
        )
        want = expected(route, method, key_kind, own, template)
        label = f"{method} {template} key={key_kind}{'' if own else ' (other ws)'} {garbage or ''}"
        if r.status_code != want:
            mismatches.append(f"{label}: {r.status_code} != {want}: {r.text[:160]}")
            continue
        if want >= 400 and route.kind != PUBLIC:
            problem = r.json()
            if r.headers["content-type"] != "application/problem+json" or problem["status"] != want:
                mismatches.append(f"{label}: not a problem+json {want}: {r.text[:160]}")
            # A refusal never echoes the key it was given.
            if (key and key in r.text) or (garbage and garbage in r.text):
                mismatches.append(f"{label}: the answer repeats the key")
        elif route.kind == INGEST and ws is not None:
            ledger.stored[ws.workspace_id].add(ctx.message_id)
    assert not mismatches, "\n".join(mismatches)

    # Each workspace holds exactly what its own write key sent: nothing refused was stored, and
    # nothing crossed into the other workspace.
    rows = await db.fetch(
        "SELECT workspace_id, message_id FROM events WHERE workspace_id = ANY($1::bigint[])"
        " AND message_id = ANY($2::text[])",
        [workspace.workspace_id, other.workspace_id],
        sorted(ledger.sent),
    )
    stored: dict[int, set[str]] = {workspace.workspace_id: set(), other.workspace_id: set()}
    for row in rows:
        stored[row["workspace_id"]].add(row["message_id"])
    assert stored == ledger.stored
    assert all(ledger.stored.values())

    # Settings act on the key's own workspace: each model is the one its own server key put.
    for ws, tag in ((workspace, "own"), (other, "other")):
        r = await client.get(
            "/v1/settings/journey-model", headers={"authorization": f"Bearer {ws.server_key}"}
        )
        names = [stage["name"] for stage in r.json()["model"]["stages"]]
        assert names == ["seen", f"bought_{tag}"], (tag, names)
    # The own server key's unmerge really happened: the ledger says so, in that workspace only.
    r = await client.get(
        PROFILE + "/identities", headers={"authorization": f"Bearer {workspace.read_key}"}
    )
    assert "unmerged" in {entry["action"] for entry in r.json()["ledger"]}


def cors_headers(response: httpx.Response) -> list[str]:
    return [h for h in response.headers if h.lower().startswith("access-control-")]


async def test_cors_headers_only_on_ingest_routes(
    app: FastAPI, client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    routes = set(app_routes(app))
    assert routes <= set(TABLE), f"classify new routes in TABLE: {sorted(routes - set(TABLE))}"
    problems: list[str] = []
    for (method, template), route in sorted(TABLE.items()):
        browser = route.kind in (INGEST, METRICS)
        path = route.path or template
        ctx = Ctx(workspace=workspace, message_id=f"cors-{uuid.uuid4().hex}", tag="own")
        key = {INGEST: workspace.write_key, READ: workspace.read_key}.get(
            route.kind, workspace.server_key
        )
        # Answers with and without a valid key: errors must be readable cross-origin too.
        for headers in (headers_for(key, SCHEME[route.kind]), {}):
            r = await client.request(
                method,
                path,
                json=route.body(ctx) if route.body else None,
                headers={**headers, "origin": ORIGIN},
            )
            if browser:
                if r.headers.get("access-control-allow-origin") != ORIGIN:
                    problems.append(f"{method} {template} ({r.status_code}): no CORS for {ORIGIN}")
                if "origin" not in r.headers.get("vary", "").lower():
                    problems.append(f"{method} {template}: CORS answer without Vary: Origin")
            elif route.cors_any_origin:
                if r.headers.get("access-control-allow-origin") != "*" or r.headers.get(
                    "access-control-allow-credentials"
                ):
                    problems.append(f"{method} {template}: public asset CORS is not `*` alone")
            elif cors_headers(r):
                problems.append(f"{method} {template} ({r.status_code}): {cors_headers(r)}")
        preflight = await client.options(
            path,
            headers={
                "origin": ORIGIN,
                "access-control-request-method": method,
                "access-control-request-headers": "authorization,content-type",
            },
        )
        allowed = preflight.headers.get("access-control-allow-origin")
        if browser and (preflight.status_code not in (200, 204) or allowed != ORIGIN):
            problems.append(f"preflight {template}: {preflight.status_code} {allowed!r}")
        if not browser and cors_headers(preflight):
            problems.append(f"preflight {template}: {cors_headers(preflight)}")
    assert not problems, "\n".join(problems)
