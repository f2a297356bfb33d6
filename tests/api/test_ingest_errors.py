"""A catalogue of hostile and bad input: exact status, problem+json, code, field; never a 5xx."""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from app.workspaces.repository import NewWorkspace

PROBLEM = "application/problem+json"
TRACK = b'{"userId": "u1", "event": "E", "messageId": "bad-1", '


def nested(depth: int) -> Any:
    """`depth` levels of objects, counting the outermost one."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def track_with(**fields: Any) -> bytes:
    return orjson.dumps({"userId": "u1", "event": "E", "messageId": "bad-1", **fields})


def props(raw: bytes) -> bytes:
    """A track event whose `properties.x` is the raw JSON text `raw`."""
    return TRACK + b'"properties": {"x": ' + raw + b"}}"


@dataclass(frozen=True)
class Case:
    id: str
    body: bytes
    status: int
    code: str
    field: str | None = None
    path: str = "/v1/track"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


CASES = [
    # JSON itself
    Case("bad-json", b'{"userId": "u1", "event": ', 400, "invalid_json"),
    Case("empty-body", b"", 400, "invalid_json"),
    Case("trailing-garbage", b'{"userId": "u1", "event": "E"} x', 400, "invalid_json"),
    Case("raw-nul-byte", b'{"userId": "u1", "event": "E\x00"}', 400, "invalid_json"),
    Case("nul-escape", props(b'"a\\u0000b"'), 400, "nul_byte", "event.properties.x"),
    Case("nul-in-event-name", track_with(event="E\x00"), 400, "nul_byte", "event.event"),
    Case(
        "nul-in-key",
        TRACK + b'"properties": {"k\\u0000": 1}}',
        400,
        "nul_byte",
        "event.properties.k\\x00",
    ),
    Case("lone-surrogate", props(b'"\\ud800"'), 400, "invalid_unicode", "event.properties.x"),
    Case(
        "lone-low-surrogate-user-id",
        b'{"userId": "\\udc00", "event": "E"}',
        400,
        "invalid_unicode",
        "event.userId",
    ),
    Case(
        "lone-surrogate-key",
        TRACK + b'"properties": {"\\ud800": 1}}',
        400,
        "invalid_unicode",
        "event.properties.\\ud800",
    ),
    Case("invalid-utf8", props(b'"\xff\xfe"'), 400, "invalid_unicode", "event.properties.x"),
    Case("overlong-utf8", props(b'"\xc0\xaf"'), 400, "invalid_unicode", "event.properties.x"),
    Case("nan", props(b"NaN"), 400, "invalid_number", "event.properties.x"),
    Case("infinity", props(b"Infinity"), 400, "invalid_number", "event.properties.x"),
    Case("minus-infinity", props(b"-Infinity"), 400, "invalid_number", "event.properties.x"),
    Case("1e400", props(b"1e400"), 400, "invalid_number", "event.properties.x"),
    Case("nan-in-list", props(b"[1, 2, NaN]"), 400, "invalid_number", "event.properties.x[2]"),
    Case("depth-33", track_with(properties=nested(32)), 400, "too_deep"),
    Case("depth-5000", b"[" * 5000 + b"]" * 5000, 400, "too_deep"),
    # wrong types for every field
    Case("user-id-bool", track_with(userId=True), 400, "invalid_field", "userId"),
    Case("user-id-object", track_with(userId={"id": 1}), 400, "invalid_field", "userId"),
    Case("anonymous-id-list", track_with(anonymousId=["a"]), 400, "invalid_field", "anonymousId"),
    Case("user-id-too-long", track_with(userId="u" * 1025), 400, "invalid_field", "userId"),
    Case(
        "no-identity",
        orjson.dumps({"event": "E", "userId": None, "anonymousId": ""}),
        400,
        "missing_identity",
        "userId",
    ),
    Case("event-number", track_with(event=5), 400, "missing_event", "event"),
    Case("event-missing", orjson.dumps({"userId": "u"}), 400, "missing_event", "event"),
    Case("event-too-long", track_with(event="E" * 513), 400, "invalid_field", "event"),
    Case("properties-string", track_with(properties="x"), 400, "invalid_field", "properties"),
    Case(
        "traits-list",
        orjson.dumps({"userId": "u", "traits": []}),
        400,
        "invalid_field",
        "traits",
        "/v1/identify",
    ),
    Case("context-string", track_with(context="x"), 400, "invalid_field", "context"),
    Case("integrations-number", track_with(integrations=1), 400, "invalid_field", "integrations"),
    Case("message-id-list", track_with(messageId=["m"]), 400, "invalid_field", "messageId"),
    Case("message-id-bool", track_with(messageId=False), 400, "invalid_field", "messageId"),
    Case("message-id-101", track_with(messageId="m" * 101), 400, "invalid_field", "messageId"),
    Case(
        "page-name-number",
        orjson.dumps({"userId": "u", "name": 1}),
        400,
        "invalid_field",
        "name",
        "/v1/page",
    ),
    Case(
        "screen-name-object",
        orjson.dumps({"userId": "u", "name": {}}),
        400,
        "invalid_field",
        "name",
        "/v1/screen",
    ),
    Case(
        "alias-previous-id-missing",
        orjson.dumps({"userId": "u", "previousId": None}),
        400,
        "missing_previous_id",
        "previousId",
        "/v1/alias",
    ),
    Case(
        "alias-previous-id-bool",
        orjson.dumps({"userId": "u", "previousId": True}),
        400,
        "invalid_field",
        "previousId",
        "/v1/alias",
    ),
    Case(
        "group-id-missing",
        orjson.dumps({"userId": "u"}),
        400,
        "missing_group_id",
        "groupId",
        "/v1/group",
    ),
    Case(
        "group-id-list",
        orjson.dumps({"userId": "u", "groupId": [1]}),
        400,
        "invalid_field",
        "groupId",
        "/v1/g",
    ),
    # timestamps
    Case(
        "timestamp-word", track_with(timestamp="yesterday"), 400, "invalid_timestamp", "timestamp"
    ),
    Case(
        "timestamp-epoch", track_with(timestamp=1714561200), 400, "invalid_timestamp", "timestamp"
    ),
    Case(
        "timestamp-month-13",
        track_with(timestamp="2024-13-01T00:00:00Z"),
        400,
        "invalid_timestamp",
        "timestamp",
    ),
    Case(
        "timestamp-out-of-range",
        track_with(timestamp="0001-01-01T00:00:00+05:00"),
        400,
        "invalid_timestamp",
        "timestamp",
    ),
    Case(
        "original-timestamp-empty",
        track_with(originalTimestamp=""),
        400,
        "invalid_timestamp",
        "originalTimestamp",
    ),
    Case("sent-at-object", track_with(sentAt={}), 400, "invalid_timestamp", "sentAt"),
    Case(
        "skew-overflow",
        track_with(sentAt="9999-12-31T00:00:00Z", originalTimestamp="0001-01-01T00:00:00Z"),
        400,
        "invalid_timestamp",
    ),
    Case("timestamp-huge", track_with(timestamp="2" * 5000), 400, "invalid_timestamp", "timestamp"),
    # body shape
    Case("body-array", orjson.dumps([{"userId": "u", "event": "E"}]), 400, "invalid_event"),
    Case("body-string", b'"track"', 400, "invalid_event"),
    Case("body-null", b"null", 400, "invalid_event"),
    Case("batch-array", orjson.dumps([{"type": "track"}]), 400, "invalid_batch", None, "/v1/batch"),
    Case("batch-string", b'"x"', 400, "invalid_batch", None, "/v1/b"),
    Case(
        "batch-not-list",
        b'{"batch": {"type": "track"}}',
        400,
        "invalid_batch",
        "batch",
        "/v1/batch",
    ),
    Case(
        "batch-context-list",
        b'{"batch": [], "context": [1]}',
        400,
        "invalid_field",
        "context",
        "/v1/batch",
    ),
    Case(
        "batch-sent-at-garbage",
        b'{"batch": [], "sentAt": "soon"}',
        400,
        "invalid_timestamp",
        "sentAt",
        "/v1/batch",
    ),
    Case(
        "batch-envelope-nan",
        b'{"batch": [], "extra": NaN}',
        400,
        "invalid_number",
        "body.extra",
        "/v1/batch",
    ),
    Case(
        "batch-envelope-deep",
        b'{"batch": [], "context": ' + b'{"a":' * 900 + b"1" + b"}" * 900 + b"}",
        400,
        "too_deep",
        None,
        "/v1/batch",
    ),
    # sizes
    Case("event-over-32kb", track_with(properties={"blob": "x" * 33_000}), 413, "body_too_large"),
    Case(
        "event-over-32kb-gzip",
        gzip.compress(track_with(properties={"blob": "x" * 33_000})),
        413,
        "body_too_large",
        None,
        "/v1/track",
        {"content-encoding": "gzip"},
    ),
    Case(
        "batch-over-500kb",
        orjson.dumps(
            {
                "batch": [
                    {
                        "type": "track",
                        "userId": "u",
                        "event": "E",
                        "properties": {"blob": "x" * 20_000},
                    }
                ]
                * 26
            }
        ),
        413,
        "body_too_large",
        None,
        "/v1/batch",
    ),
    Case(
        "batch-over-2500-items",
        orjson.dumps({"batch": [{"type": "track", "userId": "u", "event": "E"}] * 2501}),
        413,
        "too_many_events",
        "batch",
        "/v1/batch",
    ),
    Case(
        "gzip-bomb",
        gzip.compress(b" " * (8 * 1024 * 1024), compresslevel=9),
        413,
        "body_too_large",
        None,
        "/v1/batch",
        {"content-encoding": "gzip"},
    ),
    Case(
        "bad-gzip",
        b"\x1f\x8b\x08\x00 definitely not deflate",
        400,
        "invalid_gzip",
        None,
        "/v1/track",
        {"content-encoding": "gzip"},
    ),
    Case(
        "gzip-claimed-plain-sent",
        track_with(),
        400,
        "invalid_gzip",
        None,
        "/v1/track",
        {"content-encoding": "gzip"},
    ),
    # media types
    Case(
        "form-urlencoded",
        b"userId=u&event=E",
        415,
        "unsupported_media_type",
        None,
        "/v1/track",
        {"content-type": "application/x-www-form-urlencoded"},
    ),
    Case(
        "multipart",
        track_with(),
        415,
        "unsupported_media_type",
        None,
        "/v1/batch",
        {"content-type": "multipart/form-data; boundary=xyz"},
    ),
    Case(
        "xml",
        b"<track/>",
        415,
        "unsupported_media_type",
        None,
        "/v1/t",
        {"content-type": "application/xml"},
    ),
    Case(
        "brotli",
        track_with(),
        415,
        "unsupported_content_encoding",
        None,
        "/v1/track",
        {"content-encoding": "br"},
    ),
    Case(
        "deflate",
        track_with(),
        415,
        "unsupported_content_encoding",
        None,
        "/v1/b",
        {"content-encoding": "deflate"},
    ),
]


def assert_problem(r: httpx.Response, status: int, code: str, field: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].split(";")[0] == PROBLEM
    body = r.json()
    assert isinstance(body, dict)
    assert body["status"] == status
    assert body["code"] == code
    assert body["message"] == body["detail"] and body["detail"]
    assert body["title"] and body["type"].endswith(code)
    if field is not None:
        assert body["field"] == field
    return body


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bad_input_catalogue(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection, case: Case
) -> None:
    headers = {"content-type": "application/json", **case.headers}
    r = await client.post(
        case.path, content=case.body, headers=headers, auth=(workspace.write_key, "")
    )
    assert_problem(r, case.status, case.code, case.field)
    # A refused request stores nothing.
    assert (
        await db.fetchval(
            "SELECT count(*) FROM events WHERE workspace_id = $1", workspace.workspace_id
        )
        == 0
    )


async def test_depth_32_is_accepted_and_33_is_not(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    ok = await client.post(
        "/v1/track",
        content=track_with(properties=nested(31)),
        headers={"content-type": "application/json"},
        auth=(workspace.write_key, ""),
    )
    assert ok.status_code == 200, ok.text
    payload = json.loads(
        await db.fetchval(
            "SELECT payload FROM events WHERE workspace_id = $1", workspace.workspace_id
        )
    )
    assert payload["properties"] == nested(31)
    too_deep = await client.post(
        "/v1/track",
        content=track_with(properties=nested(32)),
        headers={"content-type": "application/json"},
        auth=(workspace.write_key, ""),
    )
    assert_problem(too_deep, 400, "too_deep", None)


BATCH_POISONS = [
    (
        "nul",
        b'{"type":"track","userId":"u","event":"E","properties":{"x":"\\u0000"}}',
        "nul_byte",
        "batch[1].properties.x",
    ),
    (
        "surrogate",
        b'{"type":"track","userId":"u","event":"E","properties":{"x":"\\ud800"}}',
        "invalid_unicode",
        "batch[1].properties.x",
    ),
    (
        "invalid-utf8",
        b'{"type":"track","userId":"u","event":"\xff"}',
        "invalid_unicode",
        "batch[1].event",
    ),
    (
        "nan",
        b'{"type":"track","userId":"u","event":"E","properties":{"x":NaN}}',
        "invalid_number",
        "batch[1].properties.x",
    ),
    (
        "1e400",
        b'{"type":"track","userId":"u","event":"E","properties":{"x":-1e400}}',
        "invalid_number",
        "batch[1].properties.x",
    ),
    (
        "depth-33",
        orjson.dumps({"type": "track", "userId": "u", "event": "E", "properties": nested(32)}),
        "too_deep",
        "batch[1]",
    ),
    ("depth-900", b'{"a":' * 900 + b"1" + b"}" * 900, "too_deep", "batch[1]"),
    (
        "oversized",
        orjson.dumps(
            {"type": "track", "userId": "u", "event": "E", "properties": {"blob": "x" * 33_000}}
        ),
        "event_too_large",
        "batch[1]",
    ),
    ("no-type", b'{"userId":"u","event":"E"}', "invalid_type", "batch[1].type"),
    ("bad-type", b'{"type":"purchase","userId":"u","event":"E"}', "invalid_type", "batch[1].type"),
    ("no-identity", b'{"type":"track","event":"E"}', "missing_identity", "batch[1].userId"),
    (
        "bool-user",
        b'{"type":"track","userId":true,"event":"E"}',
        "invalid_field",
        "batch[1].userId",
    ),
    (
        "long-message-id",
        orjson.dumps({"type": "track", "userId": "u", "event": "E", "messageId": "m" * 101}),
        "invalid_field",
        "batch[1].messageId",
    ),
    (
        "bad-timestamp",
        b'{"type":"track","userId":"u","event":"E","timestamp":"x"}',
        "invalid_timestamp",
        "batch[1].timestamp",
    ),
    ("not-object", b'"track"', "invalid_event", "batch[1]"),
    ("null-item", b"null", "invalid_event", "batch[1]"),
]


@pytest.mark.parametrize(
    ("name", "poison", "code", "field"), BATCH_POISONS, ids=[p[0] for p in BATCH_POISONS]
)
async def test_a_bad_item_never_costs_the_valid_ones(
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    db: asyncpg.Connection,
    name: str,
    poison: bytes,
    code: str,
    field: str,
) -> None:
    good = [
        orjson.dumps({"type": "track", "userId": "u", "event": "Good", "messageId": m})
        for m in ("good-0", "good-2")
    ]
    body = b'{"batch":[' + b",".join([good[0], poison, good[1]]) + b"]}"
    assert len(body) < 500 * 1024
    r = await client.post(
        "/v1/batch",
        content=body,
        auth=(workspace.write_key, ""),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    answer = r.json()
    assert answer["success"] is True
    [rejected] = answer["rejected"]
    assert (rejected["index"], rejected["code"], rejected["field"]) == (1, code, field)
    assert rejected["detail"]
    ids = await db.fetch(
        "SELECT message_id FROM events WHERE workspace_id = $1 ORDER BY message_id",
        workspace.workspace_id,
    )
    assert [row["message_id"] for row in ids] == ["good-0", "good-2"]


async def test_a_batch_of_only_bad_items_stores_nothing_and_says_so(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    r = await client.post(
        "/v1/batch", json={"batch": [{"type": "track"}, {}, 1]}, auth=(workspace.write_key, "")
    )
    assert r.status_code == 200
    assert [x["index"] for x in r.json()["rejected"]] == [0, 1, 2]
    assert (
        await db.fetchval(
            "SELECT count(*) FROM events WHERE workspace_id = $1", workspace.workspace_id
        )
        == 0
    )


async def test_batch_exactly_at_the_limits_is_accepted(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    items = [
        {"type": "track", "userId": "u", "event": "E", "messageId": f"m{i}"} for i in range(2500)
    ]
    r = await client.post("/v1/batch", json={"batch": items}, auth=(workspace.write_key, ""))
    assert r.status_code == 200, r.text
    assert (
        await db.fetchval(
            "SELECT count(*) FROM events WHERE workspace_id = $1", workspace.workspace_id
        )
        == 2500
    )


SQL = "'); DROP TABLE events; --"
HTML = '<script>alert("x")</script><img src=x onerror=alert(1)>'


async def test_sql_and_html_are_stored_verbatim(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    body = {
        "userId": SQL,
        "event": HTML,
        "messageId": SQL[:40],
        "properties": {SQL: HTML, "html": HTML},
    }
    r = await client.post("/v1/track", json=body, auth=(workspace.write_key, ""))
    assert r.status_code == 200, r.text
    row = await db.fetchrow(
        "SELECT message_id, event, user_id, payload FROM events WHERE workspace_id = $1",
        workspace.workspace_id,
    )
    assert row is not None
    assert (row["message_id"], row["event"], row["user_id"]) == (SQL[:40], HTML, SQL)
    assert json.loads(row["payload"])["properties"] == {SQL: HTML, "html": HTML}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/track", track_with(timestamp=HTML)),
        ("/v1/track", TRACK + b'"properties": {"<script>": "\\u0000"}}'),
        ("/v1/track", TRACK + b'"properties": {"<b>\\ud800": 1}}'),
        (
            "/v1/batch",
            orjson.dumps(
                {"batch": [{"type": "track", "userId": "u", "event": "E", "timestamp": HTML}]}
            ),
        ),
        ("/v1/batch", orjson.dumps({"batch": [], "sentAt": HTML})),
        ("/v1/track", b'{"userId": "<script>", "event": <script>}'),
    ],
)
async def test_hostile_strings_are_not_reflected_unescaped(
    client: httpx.AsyncClient, workspace: NewWorkspace, path: str, body: bytes
) -> None:
    r = await client.post(
        path,
        content=body,
        auth=(workspace.write_key, ""),
        headers={"content-type": "application/json"},
    )
    assert 400 <= r.status_code < 500 or (path == "/v1/batch" and r.status_code == 200)
    assert b"<script" not in r.content.lower() and b"<img" not in r.content.lower()
    assert b"<b>" not in r.content
    # Still valid JSON, and it still names the problem.
    r.json()


async def test_an_invalid_event_with_the_key_in_the_body_is_a_400_not_a_401(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    """analytics.js-style clients put the write key in the body; an invalid event from them is
    still an invalid event (400), not a missing key."""
    body = orjson.dumps({"userId": "u", "writeKey": workspace.write_key})
    r = await client.post("/v1/track", content=body, headers={"content-type": "text/plain"})
    assert_problem(r, 400, "missing_event", "event")
    r = await client.post("/v1/track", content=b'{"writeKey": "nope", "userId": "u"}')
    assert_problem(r, 401, "invalid_key", None)


async def test_a_400_on_a_single_route_stores_nothing(
    client: httpx.AsyncClient, workspace: NewWorkspace, db: asyncpg.Connection
) -> None:
    for kind, body in (
        ("track", {"userId": "u", "messageId": "x1"}),
        ("identify", {"messageId": "x2", "traits": {"a": 1}}),
        ("alias", {"userId": "u", "messageId": "x3"}),
    ):
        r = await client.post(f"/v1/{kind}", json=body, auth=(workspace.write_key, ""))
        assert r.status_code == 400
    assert (
        await db.fetchval(
            "SELECT count(*) FROM events WHERE workspace_id = $1", workspace.workspace_id
        )
        == 0
    )


def _mutations(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    base = orjson.dumps(
        {
            "batch": [
                {
                    "type": "track",
                    "userId": "u",
                    "event": "E",
                    "properties": {"n": [1, 2.5, "x"]},
                    "timestamp": "2024-05-01T12:00:00Z",
                    "context": {"ip": "1.2.3.4"},
                },
                {"type": "alias", "previousId": "p", "userId": "u"},
            ],
            "sentAt": "2024-05-01T12:00:00Z",
        }
    )
    tokens = [
        b"{",
        b"}",
        b"[",
        b"]",
        b'"',
        b",",
        b":",
        b"\\",
        b"NaN",
        b"1e400",
        b"\\ud800",
        b"\\u0000",
        b"\xff",
        b"\x00",
        b"null",
        b"-",
        b"9" * 30,
        b'{"a":' * 40,
    ]
    bodies = []
    for _ in range(count):
        body = bytearray(base)
        for _ in range(rng.randint(1, 5)):
            pos = rng.randrange(len(body))
            if rng.random() < 0.5:
                body[pos:pos] = rng.choice(tokens)
            else:
                del body[pos : pos + rng.randint(1, 4)]
        bodies.append(bytes(body))
    return bodies


async def test_mangled_bodies_never_cause_a_5xx(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    for body in _mutations(20240501, 150):
        for path in ("/v1/batch", "/v1/track"):
            r = await client.post(
                path,
                content=body,
                auth=(workspace.write_key, ""),
                headers={"content-type": "application/json"},
            )
            assert r.status_code < 500, (body, r.text)
            if r.status_code >= 400:
                assert r.headers["content-type"] == PROBLEM
