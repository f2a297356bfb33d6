"""Identity stitching against real PostgreSQL: order independence, re-stitching, unmerge, rebuild.

The property test ingests one generated multi-device story into two fresh workspaces through the
HTTP API, in two different permutations and batchings (the stitcher drained between batches),
and requires both workspaces to end in exactly the same derived state, which must also equal the
pure reference: `resolve` + `assign` over all the events, and `stage_history` / `assign_sessions`
per customer. Customer ids and session ids are content-derived, so the snapshots compare as is.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.aggregates.facts import ATTRIBUTION_MODELS, TOUCH_FIELDS
from app.identity.graph import Identifier, LedgerEntry, assign, resolve
from app.journeys.channels import session_channels
from app.journeys.model import StitchEvent, from_payload
from app.journeys.rebuild import rebuild_workspace
from app.journeys.sessions import assign_sessions
from app.journeys.stages import DEFAULT_MODEL, stage_at, stage_history
from app.workspaces.repository import NewWorkspace
from tests.conftest import ROOT, new_workspace

Stitch = Callable[[], Awaitable[int]]
Payload = dict[str, Any]

T0 = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- helpers


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def ev(message_id: str, minutes: float, type: str = "track", **fields: Any) -> Payload:
    """A Segment event with an explicit messageId and event time."""
    return {"type": type, "messageId": message_id, "timestamp": at(minutes), **fields}


async def send(client: httpx.AsyncClient, ws: NewWorkspace, events: Sequence[Payload]) -> None:
    for start in range(0, len(events), 500):
        r = await client.post(
            "/v1/batch", json={"batch": list(events[start : start + 500])}, auth=(ws.write_key, "")
        )
        assert r.status_code == 200, r.text
        assert "rejected" not in r.json(), r.json()


async def ingest(
    client: httpx.AsyncClient,
    ws: NewWorkspace,
    stitch: Stitch,
    batches: Sequence[Sequence[Payload]],
) -> None:
    """Each batch is sent, then the stitcher drained (as the worker would between polls)."""
    for batch in batches:
        await send(client, ws, batch)
        await stitch()


def read(ws: NewWorkspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {ws.read_key}"}


def server(ws: NewWorkspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {ws.server_key}"}


async def profile(
    client: httpx.AsyncClient, ws: NewWorkspace, ident: str, route: str = ""
) -> httpx.Response:
    return await client.get(f"/v1/profiles/{ident}{route}", headers=read(ws))


def key_of(identifier: str) -> str:
    return "cus_" + hashlib.sha256(identifier.encode()).hexdigest()[:20]


# --------------------------------------------------------------------------- snapshots


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


async def snapshot(conn: asyncpg.Connection, workspace_id: int) -> dict[str, Any]:
    """Every piece of derived state of a workspace, free of arrival-dependent ids
    (cluster ids come from a sequence; received_at from the clock)."""
    idents = await conn.fetch(
        "SELECT kind, value, customer_id, first_seen, shared_device FROM identities "
        "WHERE workspace_id = $1",
        workspace_id,
    )
    identifiers: dict[str, set[str]] = defaultdict(set)
    for r in idents:
        identifiers[r["customer_id"]].add(f"{r['kind']}:{r['value']}")
    customers = {
        r["customer_id"]: {
            "identifiers": sorted(identifiers.get(r["customer_id"], ())),
            "stage": r["stage"],
            "stage_entered_at": r["stage_entered_at"],
            "stage_history": _json(r["stage_history"]),
            "event_count": r["event_count"],
            "traits": _json(r["traits"]),
            "first_seen": r["first_seen"],
            "last_seen": r["last_seen"],
        }
        for r in await conn.fetch("SELECT * FROM customers WHERE workspace_id = $1", workspace_id)
    }
    timeline = {
        r["message_id"]: {
            "customer": r["customer_id"],
            "identifiers": sorted(identifiers.get(r["customer_id"], ())),
            "session_id": r["session_id"],
            "channel": r["channel"],
            "stage": r["stage"],
            "timestamp": r["timestamp"],
        }
        for r in await conn.fetch(
            "SELECT message_id, customer_id, session_id, channel, stage, timestamp "
            "FROM journey_events WHERE workspace_id = $1",
            workspace_id,
        )
    }
    ledger = {
        (
            r["at"],
            r["message_id"],
            r["action"],
            r["rule"],
            tuple(r["identifiers"]),
            r["into"],
            r["reason"],
        )
        for r in await conn.fetch(
            "SELECT * FROM identity_ledger WHERE workspace_id = $1", workspace_id
        )
    }
    return {
        "identities": {
            f"{r['kind']}:{r['value']}": (r["customer_id"], r["first_seen"], r["shared_device"])
            for r in idents
        },
        "customers": customers,
        "timeline": timeline,
        "ledger": ledger,
    }


def _dedupe(entries: Sequence[LedgerEntry]) -> list[LedgerEntry]:
    seen: set[tuple[str, str, tuple[Identifier, ...]]] = set()
    kept = []
    for e in entries:
        if (e.action, e.rule, e.identifiers) not in seen:
            seen.add((e.action, e.rule, e.identifiers))
            kept.append(e)
    return kept


def stitch_events(payloads: Sequence[Payload]) -> list[StitchEvent]:
    """The events as the stitcher reads them back (deduplicated by messageId)."""
    by_id: dict[str, StitchEvent] = {}
    for p in payloads:
        ts = datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00"))
        by_id.setdefault(p["messageId"], from_payload(p, timestamp=ts))
    return list(by_id.values())


def reference(
    payloads: Sequence[Payload], blocked: frozenset[tuple[Identifier, Identifier]] = frozenset()
) -> dict[str, Any]:
    """What the pure modules say the workspace must look like."""
    events = stitch_events(payloads)
    r = resolve(events, blocked=blocked)
    owner = {e.message_id: assign(e, r) for e in events}
    by_customer: dict[str, list[StitchEvent]] = defaultdict(list)
    for e in events:
        customer = owner[e.message_id]
        if customer is not None:
            by_customer[customer].append(e)
    customers: dict[str, Any] = {}
    timeline: dict[str, dict[str, Any]] = {
        e.message_id: {"customer": None, "session_id": None, "stage": None} for e in events
    }
    for customer, items in by_customer.items():
        history = stage_history(items, DEFAULT_MODEL)
        sessions = assign_sessions(items)
        channels = session_channels(items, sessions=sessions)
        customers[customer] = {
            "stage_history": [
                {
                    "stage": h.stage,
                    "entered_at": h.entered_at.isoformat(),
                    "message_id": h.message_id,
                }
                for h in history
            ],
            "event_count": len(items),
        }
        for e in items:
            timeline[e.message_id] = {
                "customer": customer,
                "session_id": sessions[e.message_id],
                "channel": channels[e.message_id],
                "stage": stage_at(history, e.timestamp, message_id=e.message_id),
            }
    ledger = {
        (
            e.at,
            e.message_id,
            e.action,
            e.rule,
            tuple(str(i) for i in e.identifiers),
            e.into,
            e.reason,
        )
        for e in _dedupe(r.ledger)
    }
    identities = {
        str(i): (c, r.first_seen[i], i in r.shared_devices)
        for i, c in r.customer_by_identifier.items()
    }
    return {
        "identities": identities,
        "customers": customers,
        "timeline": timeline,
        "ledger": ledger,
    }


def assert_matches_reference(snap: dict[str, Any], ref: dict[str, Any]) -> None:
    assert snap["identities"] == ref["identities"]
    assert snap["ledger"] == ref["ledger"]
    got_timeline = {
        m: {k: row[k] for k in ("customer", "session_id", "stage")}
        | ({"channel": row["channel"]} if row["customer"] is not None else {})
        for m, row in snap["timeline"].items()
    }
    want_timeline = {
        m: {k: row[k] for k in ("customer", "session_id", "stage")}
        | ({"channel": row["channel"]} if row["customer"] is not None else {})
        for m, row in ref["timeline"].items()
    }
    assert got_timeline == want_timeline
    got_customers = {
        c: {"stage_history": row["stage_history"], "event_count": row["event_count"]}
        for c, row in snap["customers"].items()
    }
    assert got_customers == ref["customers"]


# --------------------------------------------------------------------------- stories

USERS = ("u1", "u2", "u3")
DEVICES = ("d1", "d2", "d3")
PLACEHOLDER_USERS = ("undefined", "0", "null")
PLACEHOLDER_DEVICES = ("undefined", "0", "00000000-0000-0000-0000-000000000000")
EMAIL_SPELLINGS = {
    "ann@example.com": ("ann@example.com", " Ann@Example.com "),
    "bob@example.com": ("bob@example.com", "BOB@example.COM"),
}
BROWSING = (
    "Product Viewed",
    "Products Searched",
    "Product Added",
    "Cart Viewed",
    "Checkout Started",
)
CAMPAIGNS: tuple[dict[str, str], ...] = (
    {},
    {"source": "google", "medium": "cpc", "name": "spring"},
    {"source": "newsletter", "medium": "email", "name": "may"},
)
# Two weeks, with repeated instants so that ties on time are exercised (then message id decides).
MINUTES = st.one_of(st.integers(0, 14 * 24 * 60), st.sampled_from((0, 5, 40, 24 * 60)))
USER_IDS = st.sampled_from(USERS + PLACEHOLDER_USERS[:2])
DEVICE_IDS = st.sampled_from(DEVICES + PLACEHOLDER_DEVICES[:1])


def _email(draw: st.DrawFn) -> str:
    return draw(st.sampled_from(EMAIL_SPELLINGS[draw(st.sampled_from(sorted(EMAIL_SPELLINGS)))]))


def _browse(draw: st.DrawFn) -> Payload:
    campaign = draw(st.sampled_from(CAMPAIGNS))
    context: Payload = {"campaign": campaign} if campaign else {}
    if draw(st.booleans()):
        return {
            "type": "page",
            "anonymousId": draw(DEVICE_IDS),
            "name": "Home",
            "context": {
                **context,
                "page": {"url": "https://shop.example.com/", "referrer": "https://www.google.com/"},
            },
        }
    return {
        "event": draw(st.sampled_from(BROWSING)),
        "anonymousId": draw(DEVICE_IDS),
        "context": context,
    }


def _email_click(draw: st.DrawFn) -> Payload:
    return {
        "event": draw(st.sampled_from(("Email Link Clicked", "Email Opened"))),
        "anonymousId": draw(DEVICE_IDS),
        "context": {
            "traits": {"email": _email(draw)},
            "campaign": {"source": "newsletter", "medium": "email", "name": "may"},
        },
    }


def _identify(draw: st.DrawFn) -> Payload:
    body: Payload = {"type": "identify", "userId": draw(USER_IDS)}
    anon = draw(st.one_of(st.none(), DEVICE_IDS))
    if anon is not None:
        body["anonymousId"] = anon
    if draw(st.booleans()):
        body["traits"] = {"email": _email(draw), "plan": draw(st.sampled_from(("free", "pro")))}
    return body


def _logged_in(draw: st.DrawFn) -> Payload:
    body: Payload = {
        "event": draw(st.sampled_from((*BROWSING, "Order Completed", "Product Reviewed"))),
        "userId": draw(USER_IDS),
    }
    anon = draw(st.one_of(st.none(), DEVICE_IDS))
    if anon is not None:
        body["anonymousId"] = anon
    return body


def _server(draw: st.DrawFn) -> Payload:
    body: Payload = {
        "event": draw(st.sampled_from(("Order Completed", "Survey Responded", "Referral Sent"))),
        "userId": draw(st.sampled_from(USERS)),
        "properties": {"score": draw(st.integers(0, 10)), "revenue": 20},
    }
    crm = draw(st.sampled_from((None, "c1", "c2")))
    if crm is not None:
        body["context"] = {
            "externalIds": [
                {"id": crm, "type": "crm_id", "collection": "users", "encoding": "none"}
            ]
        }
    return body


def _alias(draw: st.DrawFn) -> Payload:
    body: Payload = {
        "type": "alias",
        "userId": draw(st.sampled_from(USERS)),
        "previousId": draw(st.sampled_from((*USERS, *DEVICES, "legacy-7", "null"))),
    }
    anon = draw(st.one_of(st.none(), DEVICE_IDS))
    if anon is not None:
        body["anonymousId"] = anon
    return body


def _shared_device(draw: st.DrawFn) -> Payload:
    """A second person logging in on a device (the story's device pool is small)."""
    return {
        "type": "identify",
        "userId": draw(st.sampled_from(USERS)),
        "anonymousId": draw(st.sampled_from(DEVICES)),
    }


BEATS = (_browse, _email_click, _identify, _logged_in, _server, _alias, _shared_device)


@st.composite
def stories(draw: st.DrawFn, max_events: int = 25) -> list[Payload]:
    count = draw(st.integers(1, max_events))
    events = []
    for i in range(count):
        body = draw(st.sampled_from(BEATS))(draw)
        events.append(ev(f"m{i:02d}", draw(MINUTES), **body))
    return events


@st.composite
def arrivals(draw: st.DrawFn, events: list[Payload]) -> list[list[Payload]]:
    """A permutation of the events cut into 1-4 batches, sometimes with a retried event."""
    order = draw(st.permutations(events))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(order) - 1)), max_size=5))))
    batches = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]
    batches = [b for b in batches if b]
    if draw(st.booleans()):
        # An SDK retry of an already stitched event: stored once, stitched once.
        batches.append([draw(st.sampled_from(order))])
    return batches


# --------------------------------------------------------------------------- the property


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_any_permutation_and_batching_gives_the_same_state(
    data: st.DataObject,
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    events = data.draw(stories(), label="story")
    first = data.draw(arrivals(events), label="arrival 1")
    second = data.draw(arrivals(events), label="arrival 2")

    ws1 = await new_workspace(database_url, "perm")
    ws2 = await new_workspace(database_url, "perm")
    await ingest(client, ws1, stitch, first)
    await ingest(client, ws2, stitch, second)

    one = await snapshot(conn, ws1.workspace_id)
    two = await snapshot(conn, ws2.workspace_id)
    assert len(one["timeline"]) == len({e["messageId"] for e in events})
    assert one == two
    assert_matches_reference(one, reference(events))

    # Undo one applied link in both: the same split, which a replay without it also gives.
    joins = sorted(entry for entry in one["ledger"] if entry[2] in ("linked", "merged"))
    if joins:
        pair = data.draw(st.sampled_from(joins), label="unmerged link")[4]
        for ws in (ws1, ws2):
            await unmerge(client, ws, list(pair))
        one = await snapshot(conn, ws1.workspace_id)
        assert one == await snapshot(conn, ws2.workspace_id)
        blocked = frozenset({(Identifier.parse(pair[0]), Identifier.parse(pair[1]))})
        assert_matches_reference(one, reference(events, blocked))

    # All derived state is a function of the raw events (and the unmerges).
    await rebuild_workspace(conn, ws2.workspace_id)
    assert await snapshot(conn, ws2.workspace_id) == one


async def _rollups(conn: asyncpg.Connection, workspace_id: int) -> dict[str, list[Any]]:
    """Every rollup row and stage entry of a workspace; rollup rows whose figures are all zero
    are left out (deltas that cancel leave them behind, a rebuild never writes them)."""
    values = {
        "agg_stage_days": ("entered", "converted"),
        "agg_stage_durations": ("n",),
        "agg_touch_days": TOUCH_FIELDS,
        "agg_attribution_days": ATTRIBUTION_MODELS,
        "stage_entries": (),
    }
    found: dict[str, list[Any]] = {}
    for table, figures in values.items():
        rows = await conn.fetch(f"SELECT * FROM {table} WHERE workspace_id = $1", workspace_id)
        found[table] = sorted(
            tuple(round(v, 9) if isinstance(v, float) else v for v in r.values())
            for r in rows
            if not figures or any(abs(r[f]) > 1e-9 for f in figures)
        )
    return found


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_in_order_appends_resume_the_walk_and_equal_a_rebuild(
    data: st.DataObject,
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    """Events arriving in event-time order, a few per batch: most customers are then derived
    by resuming their saved walk (`app.journeys.fold`) instead of replaying their events. The
    result, rollups included, is the reference's and a rebuild's."""
    events = data.draw(stories(), label="story")
    ordered = sorted(events, key=lambda e: (e["timestamp"], e["messageId"]))
    size = data.draw(st.integers(1, 3), label="batch size")
    ws = await new_workspace(database_url, "append")
    await ingest(client, ws, stitch, [ordered[i : i + size] for i in range(0, len(ordered), size)])

    appended = await snapshot(conn, ws.workspace_id)
    assert_matches_reference(appended, reference(events))
    rollups = await _rollups(conn, ws.workspace_id)
    walks = await conn.fetchval(
        "SELECT count(*) FROM customers WHERE workspace_id = $1 "
        "AND convert_from(facts, 'UTF8')::jsonb ? 'k'",
        ws.workspace_id,
    )
    assert walks == len(appended["customers"])  # every customer keeps a walk to resume

    await rebuild_workspace(conn, ws.workspace_id)
    assert await snapshot(conn, ws.workspace_id) == appended
    assert await _rollups(conn, ws.workspace_id) == rollups


async def unmerge(client: httpx.AsyncClient, ws: NewWorkspace, pair: list[str]) -> None:
    """Unmerge the link between two identifiers, asking by either (a shared device is 409)."""
    answers = []
    for ident in pair:
        r = await client.post(
            f"/v1/profiles/{ident}/unmerge", headers=server(ws), json={"identifiers": pair}
        )
        if r.status_code == 200:
            return
        answers.append((r.status_code, r.text))
    raise AssertionError(f"unmerge of {pair} failed: {answers}")


# --------------------------------------------------------------------------- scenarios


async def test_late_anonymous_event_days_old_joins_the_customer(
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    ws = await new_workspace(database_url)
    day = 24 * 60
    await ingest(
        client,
        ws,
        stitch,
        [
            [
                ev("id", 10 * day, "identify", userId="u1", anonymousId="a1"),
                ev("buy", 10 * day + 5, userId="u1", event="Order Completed"),
            ],
            [
                # Sent from an offline queue five days late, with its original time: 8 days earlier.
                ev("late", 2 * day, anonymousId="a1", event="Product Viewed"),
                ev("later", 3 * day, anonymousId="a1", event="Email Opened"),
            ],
        ],
    )
    body = (await profile(client, ws, "anonymous_id:a1")).json()
    assert body["customer_id"] == key_of("anonymous_id:a1")  # the oldest identifier names it
    assert body["event_count"] == 4
    assert body["first_seen"].startswith("2026-10-03")
    stage = (await profile(client, ws, "user_id:u1", "/stage")).json()
    assert [(h["stage"], h["message_id"]) for h in stage["stage_history"]] == [
        ("consideration", "late"),
        ("purchase", "buy"),
    ]
    timeline = (await profile(client, ws, "user_id:u1", "/timeline")).json()["events"]
    assert [(e["message_id"], e["stage"]) for e in timeline] == [
        ("late", "consideration"),
        ("later", "consideration"),
        ("id", "consideration"),
        ("buy", "purchase"),
    ]
    # The customer named after u1 before the late event arrived is gone.
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM customers WHERE workspace_id = $1", ws.workspace_id
        )
        == 1
    )


async def test_alias_merges_two_user_ids_into_the_oldest_customer(
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    ws = await new_workspace(database_url)
    await ingest(
        client,
        ws,
        stitch,
        [
            [
                ev("old1", 0, userId="legacy-1", event="Order Completed"),
                ev("new1", 60, userId="u9", event="Product Viewed", anonymousId="a9"),
            ],
            [
                ev("al", 120, "alias", previousId="legacy-1", userId="u9"),
            ],
            [
                ev("new2", 180, userId="u9", event="Order Completed"),
            ],
        ],
    )
    one = (await profile(client, ws, "user_id:legacy-1")).json()
    two = (await profile(client, ws, "user_id:u9")).json()
    assert one["customer_id"] == two["customer_id"] == key_of("user_id:legacy-1")
    assert two["stage"] == "loyalty"  # second Order Completed, across the merged ids
    assert two["event_count"] == 4
    ledger = (await profile(client, ws, "user_id:u9", "/identities")).json()["ledger"]
    merged = [e for e in ledger if e["rule"] == "alias"]
    assert len(merged) == 1 and merged[0]["action"] == "merged", ledger
    assert merged[0]["into"] == key_of("user_id:legacy-1")
    assert merged[0]["message_id"] == "al"


async def test_alias_from_an_already_stitched_anonymous_id_links_that_device(
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    ws = await new_workspace(database_url)
    events = [
        ev("browse", 0, anonymousId="dev-7", event="Product Viewed"),
        ev("al", 30, "alias", previousId="dev-7", userId="u7"),
    ]
    await ingest(client, ws, stitch, [events[:1], events[1:]])
    body = (await profile(client, ws, "anonymous_id:dev-7")).json()
    assert body["customer_id"] == (await profile(client, ws, "user_id:u7")).json()["customer_id"]
    assert body["event_count"] == 2
    # previousId named a known anonymous id: no phantom user id "dev-7" is minted.
    assert (await profile(client, ws, "user_id:dev-7")).status_code == 404
    assert_matches_reference(await snapshot(conn, ws.workspace_id), reference(events))


async def test_alias_before_its_anonymous_id_is_first_seen(
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    ws = await new_workspace(database_url)
    events = [
        ev("al", 30, "alias", previousId="dev-8", userId="u8"),
        ev("browse", 0, anonymousId="dev-8", event="Product Viewed"),
    ]
    await ingest(client, ws, stitch, [events[:1], events[1:]])
    assert (await profile(client, ws, "anonymous_id:dev-8")).json()["customer_id"] == (
        await profile(client, ws, "user_id:u8")
    ).json()["customer_id"]
    assert (await profile(client, ws, "user_id:dev-8")).status_code == 404
    assert_matches_reference(await snapshot(conn, ws.workspace_id), reference(events))


async def test_email_links_two_devices(
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    ws = await new_workspace(database_url)
    events = [
        ev(
            "phone",
            0,
            anonymousId="phone",
            event="Email Link Clicked",
            context={"traits": {"email": " Cy@Example.com "}},
        ),
        ev("laptop", 60, "identify", anonymousId="laptop", traits={"email": "cy@example.COM"}),
        ev("laptop2", 70, anonymousId="laptop", event="Product Added"),
        ev(
            "crm",
            80,
            userId="u5",
            event="Signed Up",
            context={
                "externalIds": [{"id": "CRM-5", "type": "crm_id"}],
                "traits": {"email": "cy@example.com"},
            },
        ),
    ]
    await ingest(client, ws, stitch, [[events[1]], [events[3]], [events[0], events[2]]])
    phone = (await profile(client, ws, "anonymous_id:phone")).json()
    for ident in ("anonymous_id:laptop", "email:CY@example.com", "user_id:u5", "crm_id:CRM-5"):
        assert (await profile(client, ws, ident)).json()["customer_id"] == phone["customer_id"]
    assert phone["customer_id"] == key_of("anonymous_id:phone")
    assert phone["event_count"] == 4
    assert {(i["kind"], i["value"]) for i in phone["identifiers"]} == {
        ("anonymous_id", "phone"),
        ("anonymous_id", "laptop"),
        ("email", "cy@example.com"),
        ("user_id", "u5"),
        ("crm_id", "CRM-5"),
    }
    assert_matches_reference(await snapshot(conn, ws.workspace_id), reference(events))


@pytest.mark.parametrize(
    "placeholder", ["undefined", "0", "null", "-1", "00000000-0000-0000-0000-000000000000"]
)
async def test_placeholder_ids_never_link(
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
    placeholder: str,
) -> None:
    ws = await new_workspace(database_url)
    events = [
        ev("p1", 0, "identify", userId="u1", anonymousId=placeholder),
        ev("p2", 10, "identify", userId="u2", anonymousId=placeholder),
        ev("p3", 20, "identify", userId=placeholder, anonymousId="d1"),
        ev("p4", 30, "identify", userId=placeholder, anonymousId="d2"),
        ev("p5", 40, userId=placeholder, anonymousId=placeholder, event="Product Viewed"),
    ]
    await ingest(client, ws, stitch, [events[:2], events[2:]])
    customers = {
        (await profile(client, ws, i)).json()["customer_id"]
        for i in ("user_id:u1", "user_id:u2", "anonymous_id:d1", "anonymous_id:d2")
    }
    assert len(customers) == 4
    for kind in ("user_id", "anonymous_id"):
        assert (await profile(client, ws, f"{kind}:{placeholder}")).status_code == 404
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM identities WHERE workspace_id = $1 AND value = $2",
            ws.workspace_id,
            placeholder,
        )
        == 0
    )
    # An event with nothing but placeholders is kept on no customer.
    assert (
        await conn.fetchval(
            "SELECT customer_id FROM journey_events WHERE workspace_id = $1 AND message_id = 'p5'",
            ws.workspace_id,
        )
        is None
    )
    assert_matches_reference(await snapshot(conn, ws.workspace_id), reference(events))


async def test_shared_device_events_follow_the_last_identify(
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    events = [
        ev("s0", 0, anonymousId="kiosk", event="Product Viewed"),
        ev("s1", 10, "identify", userId="ann", anonymousId="kiosk"),
        ev("s2", 20, anonymousId="kiosk", event="Product Added"),
        ev("s3", 30, "identify", userId="bob", anonymousId="kiosk"),
        ev("s4", 40, anonymousId="kiosk", event="Order Completed"),
        ev("s5", 50, "identify", userId="ann", anonymousId="kiosk"),
        ev("s6", 60, anonymousId="kiosk", event="Cart Viewed"),
    ]
    snaps = []
    for batches in (
        [events],
        [[e] for e in events],
        [[e] for e in reversed(events)],
        [events[4:], events[:2], events[2:4]],
        # ann's second login arrives last: s6, stitched to bob, moves to ann.
        [events[:5] + events[6:], events[5:6]],
    ):
        ws = await new_workspace(database_url)
        await ingest(client, ws, stitch, batches)
        ann = (await profile(client, ws, "user_id:ann")).json()["customer_id"]
        bob = (await profile(client, ws, "user_id:bob")).json()["customer_id"]
        assert ann != bob
        owners = dict(
            await conn.fetch(
                "SELECT message_id, customer_id FROM journey_events WHERE workspace_id = $1",
                ws.workspace_id,
            )
        )
        assert owners == {
            "s0": ann,
            "s1": ann,
            "s2": ann,
            "s3": bob,
            "s4": bob,
            "s5": ann,
            "s6": ann,
        }
        assert (await profile(client, ws, "user_id:bob", "/stage")).json()["stage"] == "purchase"
        assert (await profile(client, ws, "user_id:ann", "/stage")).json()["stage"] == (
            "consideration"
        )
        for route in ("", "/stage", "/timeline", "/identities"):
            r = await profile(client, ws, "anonymous_id:kiosk", route)
            assert r.status_code == 409, (route, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert sorted(r.json()["customer_ids"]) == sorted({ann, bob})
        ledger = (await profile(client, ws, "user_id:bob", "/identities")).json()["ledger"]
        refused = [e for e in ledger if e["action"] == "refused"]
        assert [e["rule"] for e in refused] == ["shared_device"]
        assert "shared device" in refused[0]["reason"]
        snap = await snapshot(conn, ws.workspace_id)
        assert_matches_reference(snap, reference(events))
        snaps.append(snap)
    assert all(s == snaps[0] for s in snaps)


async def test_refused_links_are_in_the_ledger_with_reasons(
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    ws = await new_workspace(database_url)
    events = [
        ev("r1", 0, "identify", userId="ann", traits={"email": "family@example.com"}),
        ev("r2", 10, "identify", userId="bob", traits={"email": "family@example.com"}),
        ev(
            "r3",
            20,
            userId="bob",
            event="Signed Up",
            context={"externalIds": [{"id": "9", "type": "crm_id"}]},
        ),
        ev(
            "r4",
            30,
            userId="ann",
            event="Signed Up",
            context={"externalIds": [{"id": "9", "type": "crm_id"}]},
        ),
    ]
    await ingest(client, ws, stitch, [events[2:], events[:2]])
    ann = (await profile(client, ws, "user_id:ann")).json()
    bob = (await profile(client, ws, "user_id:bob")).json()
    assert ann["customer_id"] != bob["customer_id"]
    assert (await profile(client, ws, "email:family@example.com")).json()["customer_id"] == (
        ann["customer_id"]
    )
    assert (await profile(client, ws, "crm_id:9")).json()["customer_id"] == bob["customer_id"]
    ledger = (await profile(client, ws, "user_id:bob", "/identities")).json()["ledger"]
    refused = {(e["message_id"], e["rule"]): e for e in ledger if e["action"] == "refused"}
    assert set(refused) == {("r2", "email"), ("r4", "external_id")}
    for entry in refused.values():
        assert entry["into"] is None
        assert "automatic links never join two user ids" in entry["reason"]
        assert "user_id:ann" in entry["reason"] and "user_id:bob" in entry["reason"]
    assert_matches_reference(await snapshot(conn, ws.workspace_id), reference(events))


async def test_unmerge_splits_and_blocks_the_link_from_forming_again(
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    ws = await new_workspace(database_url)
    await ingest(
        client,
        ws,
        stitch,
        [
            [
                ev("b0", 0, anonymousId="a1", event="Product Viewed"),
                ev("b1", 10, "identify", userId="u1", anonymousId="a1"),
                ev("b2", 20, userId="u1", event="Order Completed"),
            ]
        ],
    )
    merged = (await profile(client, ws, "user_id:u1")).json()
    assert merged["event_count"] == 3 and merged["stage"] == "purchase"

    r = await client.post(
        "/v1/profiles/user_id:u1/unmerge",
        headers=server(ws),
        json={"identifiers": ["anonymous_id:a1", "user_id:u1"]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["unmerged"] == [["user_id:u1", "anonymous_id:a1"]]
    user = (await profile(client, ws, "user_id:u1")).json()
    anon = (await profile(client, ws, "anonymous_id:a1")).json()
    assert user["customer_id"] != anon["customer_id"]
    assert (user["event_count"], anon["event_count"]) == (2, 1)
    assert (user["stage"], anon["stage"]) == ("purchase", "consideration")
    ledger = (await profile(client, ws, "user_id:u1", "/identities")).json()["ledger"]
    assert [e["action"] for e in ledger if e["message_id"] == "b1"] == ["unmerged"]
    before = await snapshot(conn, ws.workspace_id)

    # The same evidence again (a new identify, an event carrying both): still apart.
    await ingest(
        client,
        ws,
        stitch,
        [
            [
                ev("b3", 30, "identify", userId="u1", anonymousId="a1"),
                ev("b4", 5, userId="u1", anonymousId="a1", event="Product Added"),
            ]
        ],
    )
    user = (await profile(client, ws, "user_id:u1")).json()
    anon = (await profile(client, ws, "anonymous_id:a1")).json()
    assert user["customer_id"] != anon["customer_id"]
    assert (user["event_count"], anon["event_count"]) == (4, 1)
    assert before["timeline"]["b0"] == (await snapshot(conn, ws.workspace_id))["timeline"]["b0"]
    # Unmerging it again: the link is no longer in any join of the ledger.
    r = await client.post(
        "/v1/profiles/user_id:u1/unmerge",
        headers=server(ws),
        json={"identifiers": ["anonymous_id:a1", "user_id:u1"]},
    )
    assert r.status_code == 404, r.text

    # A rebuild keeps the unmerge (it is an instruction, not derived state).
    after = await snapshot(conn, ws.workspace_id)
    await rebuild_workspace(conn, ws.workspace_id)
    assert await snapshot(conn, ws.workspace_id) == after


async def test_unmerge_by_message_id_of_an_alias(
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    ws = await new_workspace(database_url)
    await ingest(
        client,
        ws,
        stitch,
        [
            [
                ev("x1", 0, userId="old", event="Order Completed"),
                ev("x2", 10, userId="new", event="Order Completed"),
                ev("x3", 20, "alias", previousId="old", userId="new"),
            ]
        ],
    )
    assert (await profile(client, ws, "user_id:new")).json()["stage"] == "loyalty"
    r = await client.post(
        "/v1/profiles/user_id:new/unmerge", headers=server(ws), json={"message_id": "x3"}
    )
    assert r.status_code == 200, r.text
    old = (await profile(client, ws, "user_id:old")).json()
    new = (await profile(client, ws, "user_id:new")).json()
    assert old["customer_id"] == key_of("user_id:old")
    assert new["customer_id"] == key_of("user_id:new")
    # The alias itself stays with `new`: an event after its first order.
    assert (old["stage"], new["stage"]) == ("purchase", "retention")
    assert sorted(r.json()["customers"]) == sorted({old["customer_id"], new["customer_id"]})
    # The alias is sent again by a retrying SDK with a new messageId: still apart.
    await ingest(client, ws, stitch, [[ev("x4", 25, "alias", previousId="old", userId="new")]])
    assert (await profile(client, ws, "user_id:old")).json()["customer_id"] != (
        await profile(client, ws, "user_id:new")
    ).json()["customer_id"]


async def test_rebuild_replays_to_an_identical_state_and_never_touches_raw_events(
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    ws = await new_workspace(database_url)
    events = [
        ev("k0", 0, anonymousId="kiosk", event="Product Viewed"),
        ev(
            "k1",
            10,
            "identify",
            userId="ann",
            anonymousId="kiosk",
            traits={"email": "Ann@example.com"},
        ),
        ev("k2", 20, anonymousId="kiosk", event="Product Added"),
        ev("k3", 30, "identify", userId="bob", anonymousId="kiosk"),
        ev("k4", 40, anonymousId="kiosk", event="Order Completed"),
        ev("k5", 50, "alias", previousId="legacy", userId="bob"),
        ev(
            "k6",
            3000,
            anonymousId="phone",
            event="Email Link Clicked",
            context={
                "traits": {"email": "ann@example.com"},
                "campaign": {"source": "newsletter", "medium": "email", "name": "x"},
            },
        ),
        ev("k7", 3010, userId="ann", event="Survey Responded", properties={"score": 10}),
    ]
    await ingest(client, ws, stitch, [events[4:], events[:4]])
    raw = "SELECT message_id, tx, seq, payload::text FROM events WHERE workspace_id = $1 ORDER BY 1"
    raw_before = await conn.fetch(raw, ws.workspace_id)
    before = await snapshot(conn, ws.workspace_id)
    assert_matches_reference(before, reference(events))
    assert before["customers"][key_of("anonymous_id:kiosk")]["stage"] == "advocacy"

    # Derived state damaged: a rebuild restores it from the raw events alone.
    await conn.execute(
        "UPDATE customers SET stage = 'loyalty', event_count = 0 WHERE workspace_id = $1",
        ws.workspace_id,
    )
    await conn.execute("DELETE FROM identity_links WHERE workspace_id = $1", ws.workspace_id)
    assert await rebuild_workspace(conn, ws.workspace_id) == len(events)
    assert await snapshot(conn, ws.workspace_id) == before
    assert await conn.fetch(raw, ws.workspace_id) == raw_before

    # The same through the CLI (`journeys rebuild --workspace NAME`), in its own process.
    await conn.execute("DELETE FROM journey_events WHERE workspace_id = $1", ws.workspace_id)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "rebuild", "--workspace", ws.name],
        cwd=ROOT,
        env={**os.environ, "JOURNEYS_DATABASE_URL": database_url, "JOURNEYS_LOG_LEVEL": "warning"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rebuilt 1 workspace" in done.stdout + done.stderr
    assert await snapshot(conn, ws.workspace_id) == before
    assert await conn.fetch(raw, ws.workspace_id) == raw_before
    # And the stitcher carries on from there.
    await ingest(client, ws, stitch, [[ev("k8", 3020, userId="bob", event="Order Completed")]])
    assert (await profile(client, ws, "user_id:bob")).json()["stage"] == "loyalty"


async def test_placeholder_user_on_a_shared_device_follows_the_last_identify(
    client: httpx.AsyncClient,
    stitch: Stitch,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    ws = await new_workspace(database_url)
    events = [
        ev("q1", 10, "identify", userId="ann", anonymousId="kiosk"),
        ev("q2", 30, "identify", userId="bob", anonymousId="kiosk"),
        # An SDK that sends "0" for a logged-out user: the device's history decides.
        ev("q3", 40, userId="0", anonymousId="kiosk", event="Order Completed"),
        ev("q4", 20, userId="undefined", anonymousId="kiosk", event="Product Viewed"),
    ]
    await ingest(client, ws, stitch, [events[:2], events[2:]])
    bob = (await profile(client, ws, "user_id:bob")).json()
    ann = (await profile(client, ws, "user_id:ann")).json()
    assert (bob["event_count"], bob["stage"]) == (2, "purchase")
    assert (ann["event_count"], ann["stage"]) == (2, "consideration")
    assert_matches_reference(await snapshot(conn, ws.workspace_id), reference(events))
