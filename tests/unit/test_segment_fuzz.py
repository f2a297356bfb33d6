"""Property tests of the pure Segment parser (app/ingest/segment.py), from bytes up.

tests/unit/test_segment.py fuzzes `normalise_event` with event-shaped dicts and `parse_batch` with
mutated bytes. This file covers what those leave out:

- any JSON-ish document (NaN, huge integers, lone surrogates, NUL, deep nesting), serialised the
  ways clients do (ASCII escapes, raw UTF-8, CESU-style surrogates), on every route, and planted
  into an otherwise valid event: the parser answers with events or raises its own IngestError
  (a 4xx with a code), never anything else, and what it accepts is storable;
- any Content-Type / Content-Encoding / gzip stream: IngestError 400/413/415 or the exact bytes;
- valid events round-trip their key fields (type, ids, event name, properties, traits, context,
  event time) through `parse_single` and `parse_batch`, gzipped or not;
- the depth limit is exact: a valid event nested to depth d is accepted iff d <= MAX_DEPTH.
"""

from __future__ import annotations

import gzip
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from app.ingest import segment
from app.ingest.segment import (
    MAX_BATCH_BYTES,
    MAX_DEPTH,
    MAX_EVENT_BYTES,
    IngestError,
    NormalisedEvent,
    RequestMeta,
    decode_body,
    parse_batch,
    parse_single,
    write_key_in_body,
)

RECEIVED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
META = RequestMeta(received_at=RECEIVED)
ROUTES = sorted(segment.EVENT_TYPES)
CODE = re.compile(r"^[a-z][a-z_]*$")
FIELDS = (
    "type",
    "userId",
    "anonymousId",
    "previousId",
    "groupId",
    "event",
    "name",
    "messageId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "properties",
    "traits",
    "context",
    "integrations",
    "writeKey",
    "batch",
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- strategies

# Any code point, surrogates and NUL included (hypothesis leaves surrogates out by default).
hostile_text = st.text(
    st.characters(codec=None, exclude_categories=()), max_size=12
) | st.sampled_from(
    ["\x00", "a\x00b", "\ud800", "x\udfff", "undefined", "", " ", "2024-05-01T12:00:00Z", "0"]
)
hostile_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | hostile_text
)
keys = st.sampled_from(FIELDS) | hostile_text
json_ish = st.recursive(
    hostile_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)


def deep(depth: int, leaf: Any = 1, *, lists: bool = False) -> Any:
    """`depth` levels of containers (objects, or alternately lists), the outermost counted."""
    value = leaf
    for level in range(depth):
        value = [value] if lists and level % 2 else {"k": value}
    return value


def serialise(doc: Any, how: str) -> bytes:
    """The ways clients put a document on the wire, hostile ones included."""
    if how == "ascii":  # every non-ASCII character escaped: lone surrogates become \\udXXX
        return json.dumps(doc, ensure_ascii=True, allow_nan=True).encode()
    if how == "utf8-surrogatepass":  # lone surrogates as raw (invalid) UTF-8 bytes
        return json.dumps(doc, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")
    return json.dumps(doc, ensure_ascii=False, allow_nan=True).encode("utf-8", "replace")


serialisations = st.sampled_from(["ascii", "utf8-surrogatepass", "utf8-replace"])

# Valid values: what a well-behaved SDK sends.
clean_text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=20
)
ident = clean_text.filter(lambda s: s.strip() != "")
clean_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | clean_text
)
clean_values = st.recursive(
    clean_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(clean_text, inner, max_size=3),
    max_leaves=10,
)
clean_objects = st.dictionaries(clean_text, clean_values, max_size=4)
moments = st.datetimes(
    min_value=datetime(1971, 1, 1),
    max_value=datetime(2099, 12, 31),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=7))]),
)


@st.composite
def valid_events(draw: st.DrawFn, route: str | None = None) -> dict[str, Any]:
    """A valid event for `route` (None: a batch item, which names its type)."""
    kind = route or draw(st.sampled_from(ROUTES))
    event: dict[str, Any] = {"messageId": draw(ident.map(lambda s: s[:100]))}
    who = draw(st.sampled_from(["user", "anon", "both"]))
    if who in ("user", "both"):
        event["userId"] = draw(ident)
    if who in ("anon", "both"):
        event["anonymousId"] = draw(ident)
    if route is None:
        event["type"] = kind
    if kind == "track":
        event["event"] = draw(ident)
    elif kind == "alias":
        event["previousId"] = draw(ident)
    elif kind == "group":
        event["groupId"] = draw(ident)
    elif kind in ("page", "screen") and draw(st.booleans()):
        event["name"] = draw(clean_text)
    for obj in ("properties", "traits", "context"):
        if draw(st.booleans()):
            event[obj] = {k: v for k, v in draw(clean_objects).items() if k != "ip"}
    if draw(st.booleans()):
        event["timestamp"] = draw(moments).isoformat()
    return event


# --------------------------------------------------------------------------- checks


def assert_storable(events: list[NormalisedEvent]) -> None:
    """What the parser accepts can be stored as it is: valid UTF-8 JSON, no NUL, bounded id."""
    for event in events:
        payload = orjson.loads(event.payload)  # valid JSON
        event.payload.encode("utf-8")  # no lone surrogate survives
        assert "\\u0000" not in event.payload and "\x00" not in event.payload
        assert "\n" not in event.payload  # the writer sends payloads one per line
        assert payload["type"] == event.type in segment.EVENT_TYPES
        assert payload["messageId"] == event.message_id and 0 < len(event.message_id) <= 100
        assert event.user_id or event.anonymous_id
        assert event.timestamp - event.received_at <= timedelta(hours=24)
        assert event.timestamp > datetime.min.replace(tzinfo=UTC)
        assert "writeKey" not in payload


def assert_own_error(exc: IngestError) -> None:
    assert 400 <= exc.status < 500, exc.status
    assert CODE.match(exc.code), exc.code
    assert isinstance(exc.detail, str) and exc.detail
    assert exc.field is None or isinstance(exc.field, str)
    # The detail and field go back to the client in a JSON answer: they must be encodable.
    orjson.dumps({"detail": exc.detail, "field": exc.field})


def parse_route(body: bytes, route: str) -> list[NormalisedEvent]:
    if route == "batch":
        events, rejected, _ = parse_batch(body, meta=META)
        for r in rejected:
            assert CODE.match(r.code) and r.detail
            orjson.dumps({"detail": r.detail, "field": r.field})
        return events
    event, _ = parse_single(body, type_hint=route, meta=META)
    return [event]


# --------------------------------------------------------------------------- never a crash


@FUZZ
@given(doc=json_ish, route=st.sampled_from([*ROUTES, "batch"]), how=serialisations)
def test_any_document_on_any_route_is_events_or_an_ingest_error(
    doc: Any, route: str, how: str
) -> None:
    try:
        events = parse_route(serialise(doc, how), route)
    except IngestError as exc:
        assert_own_error(exc)
        return
    assert_storable(events)
    write_key_in_body(doc)  # never raises either


@FUZZ
@given(
    base=valid_events("track"),
    field=keys,
    value=json_ish,
    inside=st.sampled_from([None, "properties", "traits", "context", "integrations"]),
    route=st.sampled_from([*ROUTES, "batch"]),
    how=serialisations,
)
def test_a_hostile_value_anywhere_in_a_valid_event_is_never_a_crash(
    base: dict[str, Any], field: str, value: Any, inside: str | None, route: str, how: str
) -> None:
    event = dict(base)
    if inside is None:
        event[field] = value
    else:
        event[inside] = {**(event.get(inside) or {}), field: value}
    doc: Any = {"batch": [{**event, "type": "track"}]} if route == "batch" else event
    try:
        events = parse_route(serialise(doc, how), route)
    except IngestError as exc:
        assert_own_error(exc)
        return
    assert_storable(events)


content_types = st.sampled_from(
    ["application/json", "text/plain", "application/json; charset=utf-8", "", None]
) | st.text(max_size=30)
encodings = st.sampled_from(["gzip", "x-gzip", "identity", "", None, "br", "gzip, br"]) | st.text(
    max_size=12
)


@FUZZ
@given(
    payload=st.binary(max_size=300),
    mangle=st.sampled_from(["none", "gzip", "truncate", "flip", "garbage"]),
    content_type=content_types,
    encoding=encodings,
    limit=st.sampled_from([16, 256, MAX_EVENT_BYTES, MAX_BATCH_BYTES]),
    data=st.data(),
)
def test_decode_body_answers_the_bytes_or_400_413_415(
    payload: bytes,
    mangle: str,
    content_type: str | None,
    encoding: str | None,
    limit: int,
    data: st.DataObject,
) -> None:
    raw = payload
    if mangle != "none":
        raw = gzip.compress(payload)
        if mangle == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        elif mangle == "flip":
            at = data.draw(st.integers(0, len(raw) - 1))
            raw = raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]
        elif mangle == "garbage":
            raw = raw + data.draw(st.binary(min_size=1, max_size=8))
    try:
        body = decode_body(raw, content_type=content_type, content_encoding=encoding, limit=limit)
    except IngestError as exc:
        assert_own_error(exc)
        assert exc.status in (400, 413, 415)
        return
    assert len(body) <= limit
    gzipped = (encoding or "").strip().lower() in ("gzip", "x-gzip")
    if not gzipped:
        assert body == raw
    elif mangle == "gzip":
        assert body == payload  # an intact stream inflates to exactly what was compressed


# --------------------------------------------------------------------------- round trips


def expected_time(event: dict[str, Any]) -> datetime:
    if "timestamp" not in event:
        return RECEIVED
    when = datetime.fromisoformat(event["timestamp"]).astimezone(UTC)
    return RECEIVED if when - RECEIVED > timedelta(hours=24) else when


def assert_round_trip(sent: dict[str, Any], got: NormalisedEvent, kind: str) -> None:
    payload = orjson.loads(got.payload)
    assert got.type == payload["type"] == kind
    assert got.message_id == payload["messageId"] == sent["messageId"]
    assert got.user_id == (sent["userId"].strip() if "userId" in sent else None)
    assert got.anonymous_id == (sent["anonymousId"].strip() if "anonymousId" in sent else None)
    assert got.event == (sent["event"] if kind == "track" else None)
    for obj in ("properties", "traits"):
        assert payload.get(obj) == sent.get(obj)
    assert got.timestamp == expected_time(sent)
    assert payload["timestamp"] == got.timestamp.isoformat().replace("+00:00", "Z")
    assert payload["receivedAt"] == "2024-05-01T12:00:00Z"
    for name in ("previousId", "groupId"):
        if name in sent:
            assert payload[name] == sent[name].strip()


@FUZZ
@given(data=st.data(), route=st.sampled_from(ROUTES), zipped=st.booleans())
def test_a_valid_event_round_trips_its_key_fields(
    data: st.DataObject, route: str, zipped: bool
) -> None:
    sent = data.draw(valid_events(route))
    raw = orjson.dumps(sent)
    assume(len(raw) <= MAX_EVENT_BYTES)
    if zipped:
        raw = decode_body(
            gzip.compress(raw), content_type="text/plain", content_encoding="gzip", limit=len(raw)
        )
    got, doc = parse_single(raw, type_hint=route, meta=META)
    assert doc == sent
    assert_round_trip(sent, got, route)
    assert orjson.loads(got.payload).get("context") == sent.get("context")


@FUZZ
@given(
    items=st.lists(valid_events(None), min_size=1, max_size=8),
    envelope_context=st.none() | clean_objects,
)
def test_a_valid_batch_round_trips_every_item_in_order(
    items: list[dict[str, Any]], envelope_context: dict[str, Any] | None
) -> None:
    for n, item in enumerate(items):
        item["messageId"] = f"{n}-{item['messageId']}"[:100]  # distinct, so order is visible
    envelope_context = {k: v for k, v in (envelope_context or {}).items() if k != "ip"}
    body = orjson.dumps({"batch": items, "context": envelope_context or None})
    events, rejected, _ = parse_batch(body, meta=META)
    assert rejected == []
    assert [e.message_id for e in events] == [i["messageId"] for i in items]
    for sent, got in zip(items, events, strict=True):
        assert_round_trip(sent, got, sent["type"])
        merged = {**envelope_context, **(sent.get("context") or {})}
        assert orjson.loads(got.payload).get("context") == (merged or sent.get("context"))


@FUZZ
@given(
    depth=st.integers(MAX_DEPTH - 4, MAX_DEPTH + 4),
    lists=st.booleans(),
    where=st.sampled_from(["properties", "traits", "context"]),
    route=st.sampled_from(["track", "batch"]),
)
def test_the_depth_limit_is_exact(depth: int, lists: bool, where: str, route: str) -> None:
    """The event object is level 1, so its `where` field may hold MAX_DEPTH - 1 levels."""
    event: dict[str, Any] = {"userId": "u", "event": "E", "messageId": "m"}
    event[where] = {"k": deep(depth - 2, lists=lists)} if depth >= 2 else {}
    if route == "batch":
        body = orjson.dumps({"batch": [{**event, "type": "track"}]})
        events, rejected, _ = parse_batch(body, meta=META)
        assert (len(events), [r.code for r in rejected]) == (
            (1, []) if depth <= MAX_DEPTH else (0, ["too_deep"])
        )
        return
    try:
        parse_single(orjson.dumps(event), type_hint="track", meta=META)
    except IngestError as exc:
        assert (exc.code, depth > MAX_DEPTH) == ("too_deep", True)
    else:
        assert depth <= MAX_DEPTH
