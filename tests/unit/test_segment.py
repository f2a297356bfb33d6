"""The pure Segment parser: bytes in, normalised events (or IngestError) out. No database."""

from __future__ import annotations

import gzip
import json
import re
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.ingest import segment
from app.ingest.segment import (
    FLAG_BOT,
    FLAG_FUTURE_CLAMPED,
    MAX_BATCH_ITEMS,
    MAX_DEPTH,
    MAX_EVENT_BYTES,
    IngestError,
    NormalisedEvent,
    RequestMeta,
    decode_body,
    normalise_event,
    parse_batch,
    parse_json,
    parse_single,
    parse_timestamp,
    truncate_ip,
    write_key_in_body,
)

RECEIVED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
META = RequestMeta(received_at=RECEIVED)


def track(**fields: Any) -> dict[str, Any]:
    """A minimal valid track event, overridden by `fields`."""
    return {"userId": "u1", "event": "Product Viewed", **fields}


def norm(
    item: Any,
    *,
    type_hint: str | None = "track",
    meta: RequestMeta = META,
    defaults: dict[str, Any] | None = None,
) -> NormalisedEvent:
    return normalise_event(item, type_hint=type_hint, meta=meta, defaults=defaults)


def stored(event: NormalisedEvent) -> dict[str, Any]:
    """The payload as it will be stored."""
    payload = orjson.loads(event.payload)
    assert isinstance(payload, dict)
    return payload


def refused(item: Any, *, type_hint: str | None = "track", **kw: Any) -> IngestError:
    with pytest.raises(IngestError) as info:
        norm(item, type_hint=type_hint, **kw)
    return info.value


def nested(depth: int, leaf: Any = 1) -> Any:
    """`depth` levels of objects, counting the outermost one."""
    value: Any = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


# --------------------------------------------------------------------------- decode_body


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "text/plain;charset=UTF-8",
        "TEXT/PLAIN",
        "application/x-json",
    ],
)
def test_decode_body_accepts_json_and_text_media_types(content_type: str | None) -> None:
    body = b'{"userId":"u"}'
    assert decode_body(body, content_type=content_type, content_encoding=None, limit=1024) == body


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/html",
        "application/xml",
        "image/gif",
    ],
)
def test_decode_body_refuses_other_media_types(content_type: str) -> None:
    with pytest.raises(IngestError) as info:
        decode_body(b"{}", content_type=content_type, content_encoding=None, limit=1024)
    assert (info.value.status, info.value.code) == (415, "unsupported_media_type")


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "GZIP", " gzip "])
def test_decode_body_inflates_gzip(encoding: str) -> None:
    body = orjson.dumps({"batch": [track()] * 20})
    assert (
        decode_body(
            gzip.compress(body),
            content_type="application/json",
            content_encoding=encoding,
            limit=len(body),
        )
        == body
    )


@pytest.mark.parametrize("encoding", [None, "", "identity"])
def test_decode_body_identity(encoding: str | None) -> None:
    assert decode_body(b"{}", content_type=None, content_encoding=encoding, limit=2) == b"{}"


@pytest.mark.parametrize("encoding", ["br", "deflate", "compress", "zstd", "gzip, br"])
def test_decode_body_refuses_unknown_encodings(encoding: str) -> None:
    with pytest.raises(IngestError) as info:
        decode_body(gzip.compress(b"{}"), content_type=None, content_encoding=encoding, limit=1024)
    assert (info.value.status, info.value.code) == (415, "unsupported_content_encoding")


def test_decode_body_refuses_plain_body_over_limit() -> None:
    with pytest.raises(IngestError) as info:
        decode_body(b"x" * 1025, content_type=None, content_encoding=None, limit=1024)
    assert (info.value.status, info.value.code) == (413, "body_too_large")
    # Exactly at the limit is fine.
    assert decode_body(b"x" * 1024, content_type=None, content_encoding=None, limit=1024)


def test_decode_body_gzip_exactly_at_limit_is_accepted() -> None:
    body = b"x" * 4096
    assert (
        decode_body(gzip.compress(body), content_type=None, content_encoding="gzip", limit=4096)
        == body
    )
    with pytest.raises(IngestError) as info:
        decode_body(
            gzip.compress(body + b"x"), content_type=None, content_encoding="gzip", limit=4096
        )
    assert info.value.status == 413


def test_gzip_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"\0" * (16 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 128 * 1024
    limit = 32 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(IngestError) as info:
            decode_body(bomb, content_type="application/json", content_encoding="gzip", limit=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (info.value.status, info.value.code) == (413, "body_too_large")
    # The inflater stops right after the limit: nowhere near the 16 MB the bomb holds.
    assert peak < 1024 * 1024, peak


@pytest.mark.parametrize(
    "raw",
    [b"not gzip at all", b"\x1f\x8b\x08\x00garbage", gzip.compress(b'{"a":1}')[:-12], b""],
    ids=["plain", "bad-header-body", "truncated", "empty"],
)
def test_bad_gzip_is_a_400(raw: bytes) -> None:
    with pytest.raises(IngestError) as info:
        decode_body(raw, content_type=None, content_encoding="gzip", limit=1024)
    assert (info.value.status, info.value.code) == (400, "invalid_gzip")


# --------------------------------------------------------------------------- parse_json


def test_parse_json_strict_path() -> None:
    assert parse_json(b'{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}


@pytest.mark.parametrize("text", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"])
def test_parse_json_keeps_non_finite_numbers_as_markers(text: bytes) -> None:
    doc = parse_json(b'{"x": ' + text + b', "ok": 1.5}')
    assert doc["ok"] == 1.5
    assert isinstance(doc["x"], segment._BadNumber)
    assert doc["x"].text == text.decode()


def test_parse_json_turns_invalid_utf8_into_lone_surrogates() -> None:
    doc = parse_json(b'{"x": "a\xffb"}')
    with pytest.raises(UnicodeEncodeError):
        doc["x"].encode("utf-8")


def test_parse_json_accepts_lone_surrogate_escapes_for_later_blame() -> None:
    assert parse_json(b'{"x": "\\ud800"}') == {"x": "\ud800"}


@pytest.mark.parametrize(
    "body", [b"", b"{", b"{'a': 1}", b"[1,]", b"\xef\xbb\xbf{}", b"tru", b'{"a": "\x01"}']
)
def test_parse_json_invalid(body: bytes) -> None:
    with pytest.raises(IngestError) as info:
        parse_json(body)
    assert (info.value.status, info.value.code) == (400, "invalid_json")
    assert info.value.detail.startswith("body is not valid JSON")


def test_parse_json_absurd_depth_is_too_deep_not_a_crash() -> None:
    with pytest.raises(IngestError) as info:
        parse_json(b"[" * 5000 + b"]" * 5000)
    assert (info.value.status, info.value.code) == (400, "too_deep")


# --------------------------------------------------------------------------- normalise_event


def test_minimal_track() -> None:
    event = norm(track(messageId="m-1", properties={"sku": "A-1"}))
    assert (event.message_id, event.type, event.event, event.user_id, event.anonymous_id) == (
        "m-1",
        "track",
        "Product Viewed",
        "u1",
        None,
    )
    assert event.timestamp == RECEIVED and event.received_at == RECEIVED and event.flags == 0
    payload = stored(event)
    assert payload["properties"] == {"sku": "A-1"}
    assert payload["type"] == "track"
    assert payload["timestamp"] == payload["receivedAt"] == "2024-05-01T12:00:00Z"


def test_explicit_nulls_mean_absent() -> None:
    event = norm(
        {
            "userId": "u1",
            "anonymousId": None,
            "category": None,
            "name": None,
            "properties": None,
            "context": None,
            "timestamp": None,
            "messageId": None,
            "sentAt": None,
            "originalTimestamp": None,
            "integrations": None,
        },
        type_hint="page",
    )
    payload = stored(event)
    for key in (
        "anonymousId",
        "category",
        "name",
        "properties",
        "integrations",
        "sentAt",
        "originalTimestamp",
    ):
        assert key not in payload
    assert event.anonymous_id is None
    assert event.message_id.startswith("journeys-")
    assert event.timestamp == RECEIVED


def test_alias_with_null_anonymous_id() -> None:
    event = norm({"previousId": "a1", "userId": "u1", "anonymousId": None}, type_hint="alias")
    assert (event.user_id, event.anonymous_id) == ("u1", None)
    assert stored(event)["previousId"] == "a1"


def test_server_owned_fields_are_stripped() -> None:
    event = norm(
        track(
            receivedAt="1999-01-01T00:00:00Z",
            writeKey="jw_secret",
            workspaceId=99,
            projectId="p",
            _metadata={"bundled": []},
            channel="server",
        )
    )
    payload = stored(event)
    assert "writeKey" not in payload and "workspaceId" not in payload
    assert "projectId" not in payload
    assert payload["receivedAt"] == "2024-05-01T12:00:00Z"
    # Unknown fields are kept.
    assert payload["_metadata"] == {"bundled": []} and payload["channel"] == "server"


@pytest.mark.parametrize("route", sorted(segment.EVENT_TYPES))
def test_route_type_wins_over_body_type(route: str) -> None:
    item = {"userId": "u", "type": "nonsense", "event": "E", "previousId": "p", "groupId": "g"}
    assert norm(item, type_hint=route).type == route


def test_batch_item_needs_a_valid_type() -> None:
    assert norm(track(type="track"), type_hint=None).type == "track"
    for bad in (None, "Track", "purchase", 1, ["track"]):
        err = refused(track(type=bad), type_hint=None)
        assert (err.status, err.code, err.field) == (400, "invalid_type", "type")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, "42"),
        (0, "0"),
        (-7, "-7"),
        (42.0, "42"),
        (1.5, "1.5"),
        ("  u1  ", "u1"),
        (12345678901234567890, "12345678901234567890"),
    ],
)
def test_numeric_ids_are_coerced_to_strings(value: Any, expected: str) -> None:
    event = norm({"userId": value, "anonymousId": value, "event": "E"})
    assert (event.user_id, event.anonymous_id) == (expected, expected)
    payload = stored(event)
    assert (payload["userId"], payload["anonymousId"]) == (expected, expected)


@pytest.mark.parametrize("field", ["userId", "anonymousId"])
@pytest.mark.parametrize("value", [True, False, {"id": 1}, [1], "x" * 1025])
def test_bad_ids_are_refused(field: str, value: Any) -> None:
    other = "anonymousId" if field == "userId" else "userId"
    err = refused({field: value, other: "ok", "event": "E"})
    assert (err.status, err.code, err.field) == (400, "invalid_field", field)


@pytest.mark.parametrize(
    "ids",
    [
        {},
        {"userId": ""},
        {"userId": "  ", "anonymousId": None},
        {"userId": None, "anonymousId": ""},
    ],
)
def test_at_least_one_identity_is_needed(ids: dict[str, Any]) -> None:
    err = refused({"event": "E", **ids})
    assert (err.status, err.code, err.field) == (400, "missing_identity", "userId")


def test_anonymous_only_is_enough() -> None:
    event = norm({"anonymousId": "a1", "event": "E"})
    assert (event.user_id, event.anonymous_id) == (None, "a1")
    assert "userId" not in stored(event)


@pytest.mark.parametrize("name", [None, "", "   ", 5, {"x": 1}])
def test_track_needs_an_event_name(name: Any) -> None:
    err = refused({"userId": "u", "event": name})
    assert (err.status, err.code, err.field) == (400, "missing_event", "event")


def test_track_event_name_length() -> None:
    assert norm(track(event="E" * 512)).event == "E" * 512
    err = refused(track(event="E" * 513))
    assert (err.code, err.field) == ("invalid_field", "event")


@pytest.mark.parametrize("previous", [None, "", "  "])
def test_alias_needs_previous_id(previous: Any) -> None:
    err = refused({"userId": "u", "previousId": previous}, type_hint="alias")
    assert (err.status, err.code, err.field) == (400, "missing_previous_id", "previousId")


def test_alias_previous_id_is_coerced() -> None:
    assert stored(norm({"userId": "u", "previousId": 17}, type_hint="alias"))["previousId"] == "17"
    err = refused({"userId": "u", "previousId": True}, type_hint="alias")
    assert (err.code, err.field) == ("invalid_field", "previousId")


@pytest.mark.parametrize("group", [None, "", {"id": 1}])
def test_group_needs_group_id(group: Any) -> None:
    err = refused({"userId": "u", "groupId": group}, type_hint="group")
    assert err.status == 400 and err.field == "groupId"
    assert err.code in ("missing_group_id", "invalid_field")
    assert stored(norm({"userId": "u", "groupId": 5}, type_hint="group"))["groupId"] == "5"


@pytest.mark.parametrize("kind", ["page", "screen"])
def test_page_and_screen_name_must_be_a_string(kind: str) -> None:
    assert stored(norm({"userId": "u", "name": "Home"}, type_hint=kind))["name"] == "Home"
    err = refused({"userId": "u", "name": 3}, type_hint=kind)
    assert (err.code, err.field) == ("invalid_field", "name")


@pytest.mark.parametrize("field", ["properties", "traits", "context", "integrations"])
@pytest.mark.parametrize("value", ["x", 1, [1], True])
def test_object_fields_must_be_objects(field: str, value: Any) -> None:
    err = refused(track(**{field: value}))
    assert (err.status, err.code, err.field) == (400, "invalid_field", field)


def test_message_id_generated_when_missing() -> None:
    a, b = norm(track()), norm(track(messageId=""))
    assert a.message_id.startswith("journeys-") and b.message_id.startswith("journeys-")
    assert a.message_id != b.message_id
    assert stored(a)["messageId"] == a.message_id


def test_message_id_kept_and_numbers_coerced() -> None:
    assert norm(track(messageId="ajs-next-1")).message_id == "ajs-next-1"
    assert norm(track(messageId=123)).message_id == "123"


def test_message_id_length_limit() -> None:
    assert norm(track(messageId="m" * 100)).message_id == "m" * 100
    err = refused(track(messageId="m" * 101))
    assert (err.status, err.code, err.field) == (400, "invalid_field", "messageId")


@pytest.mark.parametrize("value", [True, ["m"], {"id": "m"}])
def test_message_id_must_be_a_string(value: Any) -> None:
    err = refused(track(messageId=value))
    assert (err.code, err.field) == ("invalid_field", "messageId")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-04-30T10:11:12.123456+00:00", datetime(2024, 4, 30, 10, 11, 12, 123456, UTC)),
        ("2024-04-30T10:11:12.123Z", datetime(2024, 4, 30, 10, 11, 12, 123000, UTC)),
        ("2024-04-30T10:11:12Z", datetime(2024, 4, 30, 10, 11, 12, tzinfo=UTC)),
        ("2024-04-30T10:11:12z", datetime(2024, 4, 30, 10, 11, 12, tzinfo=UTC)),
        ("2024-04-30T10:11:12", datetime(2024, 4, 30, 10, 11, 12, tzinfo=UTC)),
        ("2024-04-30T12:11:12+02:00", datetime(2024, 4, 30, 10, 11, 12, tzinfo=UTC)),
        ("2024-04-30 10:11:12.5-01:30", datetime(2024, 4, 30, 11, 41, 12, 500000, UTC)),
    ],
)
def test_timestamp_formats(text: str, expected: datetime) -> None:
    assert parse_timestamp(text, "timestamp") == expected
    event = norm(track(timestamp=text))
    assert event.timestamp == expected
    assert stored(event)["timestamp"] == expected.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "yesterday",
        "2024-13-01T00:00:00Z",
        "2024-02-30",
        "12:00",
        "2024-01-01T25:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "9" * 65,
        1714561200,
        True,
        {"t": 1},
        ["2024-01-01"],
    ],
)
@pytest.mark.parametrize("field", ["timestamp", "originalTimestamp", "sentAt"])
def test_garbage_timestamps_are_refused(field: str, value: Any) -> None:
    err = refused(track(**{field: value}))
    assert (err.status, err.code, err.field) == (400, "invalid_timestamp", field)


def test_the_first_instant_of_year_1_is_refused_not_stored_as_minus_infinity() -> None:
    # Go's zero time; asyncpg would store it as -infinity, which nothing downstream expects.
    for text in ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00", "0001-01-01"):
        err = refused(track(timestamp=text))
        assert (err.code, err.field) == ("invalid_timestamp", "timestamp")
    # A skew correction landing exactly there is refused too.
    err = refused(
        track(
            sentAt=(
                RECEIVED - datetime(1, 1, 1, tzinfo=UTC) + datetime(2000, 1, 1, tzinfo=UTC)
            ).isoformat(),
            originalTimestamp="2000-01-01T00:00:00Z",
        )
    )
    assert (err.code, err.field) == ("invalid_timestamp", "originalTimestamp")
    assert norm(track(timestamp="0001-01-01T00:00:01Z")).timestamp == datetime(
        1, 1, 1, 0, 0, 1, tzinfo=UTC
    )


def test_timestamp_wins_over_clock_skew_correction() -> None:
    event = norm(
        track(
            timestamp="2024-05-01T08:00:00Z",
            sentAt="2030-01-01T00:00:00Z",
            originalTimestamp="2029-12-31T23:00:00Z",
        )
    )
    assert event.timestamp == datetime(2024, 5, 1, 8, tzinfo=UTC)


def test_clock_skew_correction() -> None:
    # The device clock runs one hour fast; the event happened 5 s before it was sent.
    event = norm(
        track(sentAt="2024-05-01T13:00:05.000Z", originalTimestamp="2024-05-01T13:00:00.000Z")
    )
    assert event.timestamp == RECEIVED - timedelta(seconds=5)
    assert stored(event)["timestamp"] == "2024-05-01T11:59:55Z"
    # A device clock far in the past is corrected the same way.
    event = norm(
        track(sentAt="2001-01-01T00:10:00+00:00", originalTimestamp="2001-01-01T00:00:00+00:00")
    )
    assert event.timestamp == RECEIVED - timedelta(minutes=10)


def test_original_timestamp_alone_or_nothing() -> None:
    assert norm(track(originalTimestamp="2024-05-01T11:00:00Z")).timestamp == datetime(
        2024, 5, 1, 11, tzinfo=UTC
    )
    assert norm(track(sentAt="2024-05-01T11:00:00Z")).timestamp == RECEIVED


def test_clock_skew_at_the_edges_of_time_is_a_400_not_a_crash() -> None:
    for sent, original in (
        ("9999-12-31T00:00:00Z", "0001-01-01T00:00:00Z"),
        ("0001-01-01T00:00:00Z", "9999-12-31T00:00:00Z"),
    ):
        err = refused(track(sentAt=sent, originalTimestamp=original))
        assert err.status == 400 and err.code == "invalid_timestamp"
        assert err.field in ("sentAt", "originalTimestamp")


def test_future_events_are_clamped_and_flagged() -> None:
    late = norm(track(timestamp=(RECEIVED + timedelta(hours=25)).isoformat()))
    assert late.timestamp == RECEIVED and late.flags & FLAG_FUTURE_CLAMPED
    assert stored(late)["timestamp"] == "2024-05-01T12:00:00Z"
    # Up to 24 h ahead is believed.
    for ahead in (timedelta(hours=23), timedelta(hours=24)):
        soon = norm(track(timestamp=(RECEIVED + ahead).isoformat()))
        assert soon.timestamp == RECEIVED + ahead and soon.flags == 0
    # Skew correction that lands in the future is clamped too.
    corrected = norm(track(sentAt="2024-05-01T00:00:00Z", originalTimestamp="2024-05-03T00:00:00Z"))
    assert corrected.timestamp == RECEIVED and corrected.flags & FLAG_FUTURE_CLAMPED


@pytest.mark.parametrize(
    "agent",
    [
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "GOOGLEBOT",
        "Mozilla/5.0 (compatible; AhrefsBot/7.0)",
        "Mozilla/5.0 (compatible; Yahoo! Slurp)",
        "facebookexternalhit/1.1",
        "Mozilla/5.0 (X11) Chrome/112 Safari/537.36 Chrome-Lighthouse",
        "Pingdom.com_bot_version_1.4",
        "UptimeRobot/2.0",
        "Some-Web-CRAWLER 1.0",
        "Spider",
    ],
)
def test_crawler_user_agents_are_flagged_in_any_case(agent: str) -> None:
    event = norm(track(context={"userAgent": agent}))
    assert event.flags & FLAG_BOT
    # Same answer the second time (the verdict per user agent is remembered).
    assert norm(track(context={"userAgent": agent})).flags & FLAG_BOT


@pytest.mark.parametrize(
    "agent",
    [
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/124.0 Safari/537.36",
        "CUBOT_X30 Build/QP1A",  # a phone brand, not a bot
        "Robotics-Shop-App/1.0",
        "",
    ],
)
def test_browsers_and_headless_browsers_are_not_flagged(agent: str) -> None:
    assert norm(track(context={"userAgent": agent})).flags & FLAG_BOT == 0


def test_stored_payload_is_one_line_whatever_the_strings_hold() -> None:
    """The writer sends a commit's payloads as one newline-separated text."""
    event = norm(
        track(
            properties={"multi\nline": "a\nb\r\nc\u2028d\u2029e", "list": ["\n", "\r"]},
            context={"page": {"title": "x\ny"}},
        )
    )
    assert "\n" not in event.payload and "\r" not in event.payload
    assert stored(event)["properties"]["multi\nline"] == "a\nb\r\nc\u2028d\u2029e"


def test_server_marked_machine_traffic_is_flagged() -> None:
    assert norm(track(context={"journeys": {"bot": True}})).flags & FLAG_BOT
    assert norm(track(context={"journeys": {"bot": "yes"}})).flags & FLAG_BOT == 0


_CASE_INSENSITIVE_BOT_AGENT = re.compile(segment._BOT_AGENT.pattern, re.IGNORECASE)


@given(
    agent=st.text(
        alphabet=st.sampled_from("botBOTcrawlerSPIDERslurp/ _-.;()xyz0123456789"), max_size=40
    )
)
def test_bot_verdict_is_the_case_insensitive_pattern(agent: str) -> None:
    """Matching the lowered text gives the answer the case-insensitive pattern gave."""
    expected = _CASE_INSENSITIVE_BOT_AGENT.search(agent) is not None
    assert bool(norm(track(context={"userAgent": agent})).flags & FLAG_BOT) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("10.1.2.255", "10.1.2.0"),
        ("2001:db8:abcd:1234:5678::1", "2001:db8:abcd::"),
        ("::1", "::"),
        ("::ffff:203.0.113.77", "203.0.113.0"),
        (" 198.51.100.9 ", "198.51.100.0"),
    ],
)
def test_ip_truncation(raw: str, expected: str) -> None:
    assert truncate_ip(raw) == expected
    event = norm(track(context={"ip": raw, "locale": "en"}))
    assert stored(event)["context"] == {"ip": expected, "locale": "en"}
    assert raw.strip() not in event.payload or raw.strip() == expected


def test_ip_falls_back_to_the_client_address_truncated() -> None:
    meta = RequestMeta(received_at=RECEIVED, client_ip="198.51.100.23")
    assert stored(norm(track(), meta=meta))["context"] == {"ip": "198.51.100.0"}
    garbage = norm(track(context={"ip": "not-an-ip"}), meta=meta)
    assert stored(garbage)["context"] == {"ip": "198.51.100.0"}
    # Without a usable address there is no ip at all.
    assert stored(norm(track(context={"ip": "nope", "x": 1})))["context"] == {"x": 1}
    assert "context" not in stored(norm(track()))
    assert truncate_ip("999.1.1.1") is None


def test_batch_defaults_merge_with_the_item_winning() -> None:
    defaults = {
        "context": {"library": {"name": "batch"}, "locale": "en"},
        "integrations": {"All": True, "Mixpanel": False},
    }
    event = norm(
        track(type="track", context={"locale": "fr"}, integrations={"Mixpanel": True}),
        type_hint=None,
        defaults=defaults,
    )
    payload = stored(event)
    assert payload["context"] == {"library": {"name": "batch"}, "locale": "fr"}
    assert payload["integrations"] == {"All": True, "Mixpanel": True}
    # An item without its own context takes the batch's.
    payload = stored(norm(track(type="track"), type_hint=None, defaults=defaults))
    assert payload["context"] == defaults["context"]


def test_batch_sent_at_is_used_for_skew_correction() -> None:
    body = orjson.dumps(
        {
            "sentAt": "2024-05-01T13:00:10Z",
            "batch": [
                track(type="track", originalTimestamp="2024-05-01T13:00:00Z"),
                track(
                    type="track",
                    originalTimestamp="2024-05-01T13:00:00Z",
                    sentAt="2024-05-01T13:00:01Z",
                ),
            ],
        }
    )
    events, rejected, _ = parse_batch(body, meta=META)
    assert rejected == []
    assert [e.timestamp for e in events] == [
        RECEIVED - timedelta(seconds=10),
        RECEIVED - timedelta(seconds=1),
    ]


@pytest.mark.parametrize(
    ("value", "code", "path"),
    [
        ('"a\\u0000b"', "nul_byte", "properties.x"),
        ('"\\ud800"', "invalid_unicode", "properties.x"),
        ('"\\udfff tail"', "invalid_unicode", "properties.x"),
        ('"a\xffb"', "invalid_unicode", "properties.x"),
        ("NaN", "invalid_number", "properties.x"),
        ("Infinity", "invalid_number", "properties.x"),
        ("-Infinity", "invalid_number", "properties.x"),
        ("1e400", "invalid_number", "properties.x"),
        ('[1, {"y": NaN}]', "invalid_number", "properties.x[1].y"),
        ('{"deep": {"s": "\\u0000"}}', "nul_byte", "properties.x.deep.s"),
    ],
)
def test_poison_values_name_their_path(value: str, code: str, path: str) -> None:
    # latin-1 so that "\xff" stays the single (invalid UTF-8) byte 0xff.
    raw = ('{"userId": "u", "event": "E", "properties": {"x": ' + value + "}}").encode("latin-1")
    with pytest.raises(IngestError) as info:
        parse_single(raw, type_hint="track", meta=META)
    err = info.value
    assert (err.status, err.code) == (400, code)
    assert err.field is not None and err.field.endswith(path), err.field
    assert path in err.detail


@pytest.mark.parametrize(
    "raw",
    [
        b'{"userId": "u", "event": "E", "properties": {"\\ud800": 1}}',
        b'{"userId": "u", "event": "E", "properties": {"\xff\xfe": 1}}',
        b'{"userId": "u", "event": "E", "properties": {"a\\u0000": 1}}',
    ],
)
def test_poison_keys_are_named_in_a_field_that_can_be_sent_back(raw: bytes) -> None:
    with pytest.raises(IngestError) as info:
        parse_single(raw, type_hint="track", meta=META)
    err = info.value
    assert err.status == 400 and err.code in ("invalid_unicode", "nul_byte")
    assert err.field is not None and err.field.startswith("event.properties.")
    # The problem body must be encodable: no lone surrogate and no NUL inside it.
    assert "\x00" not in err.field and "\x00" not in err.detail
    err.field.encode("utf-8")
    err.detail.encode("utf-8")


def test_depth_limit() -> None:
    ok = track(properties=nested(MAX_DEPTH - 1))
    assert norm(ok).type == "track"
    err = refused(track(properties=nested(MAX_DEPTH)))
    assert (err.status, err.code) == (400, "too_deep")
    lists: Any = 1
    for _ in range(MAX_DEPTH):
        lists = [lists]
    assert refused(track(properties={"l": lists})).code == "too_deep"


def test_many_containers_but_shallow_is_not_too_deep() -> None:
    wide = {f"k{i}": {"v": [i]} for i in range(40)}  # 81 containers, depth 3 in properties
    assert stored(norm(track(properties=wide)))["properties"] == wide
    brackets = "{[" * 100  # brackets inside strings are not nesting
    assert stored(norm(track(properties={"s": brackets})))["properties"]["s"] == brackets
    body = orjson.dumps({"batch": [{"type": "track", **track(properties=wide)}] * 3})
    events, rejected, _ = parse_batch(body, meta=META)
    assert len(events) == 3 and rejected == []


def test_deep_but_narrow_is_too_deep_in_both_routes() -> None:
    item = track(properties=nested(MAX_DEPTH))  # the event itself is one more level
    assert refused(item).code == "too_deep"
    with pytest.raises(IngestError) as info:
        parse_single(orjson.dumps(item), type_hint="track", meta=META)
    assert info.value.code == "too_deep"
    events, rejected, _ = parse_batch(
        orjson.dumps({"batch": [{"type": "track", **item}]}), meta=META
    )
    assert events == [] and [(r.index, r.code) for r in rejected] == [(0, "too_deep")]


@pytest.mark.parametrize("route", ["single", "batch"])
def test_an_escaped_backslash_before_u0000_is_not_a_nul(route: str) -> None:
    """The body-level shortcut (no `\\u0000` in the body: no NUL anywhere) must not be fooled
    either way: a literal backslash followed by `u0000` is ordinary text."""
    item = b'{"type":"track","userId":"u1","event":"E","properties":{"p":"a\\\\u0000b"}}'
    if route == "single":
        event, _ = parse_single(item, type_hint="track", meta=META)
    else:
        events, rejected, _ = parse_batch(b'{"batch":[' + item + b"]}", meta=META)
        assert rejected == []
        (event,) = events
    assert stored(event)["properties"]["p"] == "a\\u0000b"


@pytest.mark.parametrize("route", ["single", "batch"])
def test_a_nul_escape_is_found_whatever_else_the_body_holds(route: str) -> None:
    item = b'{"type":"track","userId":"u1","event":"E","properties":{"p":"a\\\\\\u0000b"}}'
    if route == "single":
        with pytest.raises(IngestError) as info:
            parse_single(item, type_hint="track", meta=META)
        assert (info.value.code, info.value.field) == ("nul_byte", "event.properties.p")
    else:
        _, rejected, _ = parse_batch(b'{"batch":[' + item + b"]}", meta=META)
        assert [(r.code, r.field) for r in rejected] == [("nul_byte", "batch[0].properties.p")]


@pytest.mark.parametrize("item", ["str", 1, None, [track()], True])
def test_event_must_be_an_object(item: Any) -> None:
    err = refused(item)
    assert (err.status, err.code) == (400, "invalid_event")


def test_unencodable_number_is_a_400() -> None:
    with pytest.raises(IngestError) as info:
        parse_single(
            b'{"userId":"u","event":"E","properties":{"n":1' + b"0" * 400 + b"}}",
            type_hint="track",
            meta=META,
        )
    assert info.value.status == 400


# --------------------------------------------------------------------------- parse_single / batch


def test_parse_single_returns_event_and_document() -> None:
    event, doc = parse_single(orjson.dumps(track(writeKey="jw_x")), type_hint="track", meta=META)
    assert event.event == "Product Viewed"
    assert write_key_in_body(doc) == "jw_x"
    assert "jw_x" not in event.payload


def test_parse_single_size_limit() -> None:
    with pytest.raises(IngestError) as info:
        parse_single(b" " * (MAX_EVENT_BYTES + 1), type_hint="track", meta=META)
    assert info.value.status == 413


@pytest.mark.parametrize("doc", [None, "x", 1, [], {"writeKey": ""}, {"writeKey": 5}])
def test_write_key_in_body_absent(doc: Any) -> None:
    assert write_key_in_body(doc) is None


def test_batch_rejects_items_individually() -> None:
    body = orjson.dumps(
        {
            "writeKey": "k",
            "batch": [
                track(type="track", messageId="m0"),
                {"type": "track", "userId": "u", "messageId": "m1"},
                {"type": "identify", "anonymousId": "a", "messageId": "m2"},
                {"type": "alias", "userId": "u", "messageId": "m3"},
                {"type": "bogus", "userId": "u"},
                "not an object",
                {"type": "page", "userId": "u", "timestamp": "soon"},
            ],
        }
    )
    events, rejected, doc = parse_batch(body, meta=META)
    assert [e.message_id for e in events] == ["m0", "m2"]
    assert [(r.index, r.code, r.field) for r in rejected] == [
        (1, "missing_event", "batch[1].event"),
        (3, "missing_previous_id", "batch[3].previousId"),
        (4, "invalid_type", "batch[4].type"),
        (5, "invalid_event", "batch[5]"),
        (6, "invalid_timestamp", "batch[6].timestamp"),
    ]
    assert all(r.detail for r in rejected)
    assert write_key_in_body(doc) == "k"


@pytest.mark.parametrize(
    ("poison", "code", "field"),
    [
        (
            '{"type":"track","userId":"u","event":"E","properties":{"x":"\\u0000"}}',
            "nul_byte",
            "batch[1].properties.x",
        ),
        (
            '{"type":"track","userId":"u","event":"E","properties":{"x":"\\ud800"}}',
            "invalid_unicode",
            "batch[1].properties.x",
        ),
        (
            '{"type":"track","userId":"u","event":"E","properties":{"x":NaN}}',
            "invalid_number",
            "batch[1].properties.x",
        ),
        (
            '{"type":"track","userId":"u","event":"E","properties":{"x":Infinity}}',
            "invalid_number",
            "batch[1].properties.x",
        ),
        (
            '{"type":"track","userId":"u","event":"E","properties":{"x":1e400}}',
            "invalid_number",
            "batch[1].properties.x",
        ),
        (
            '{"type":"track","userId":"u","event":"E","properties":' + json.dumps(nested(32)) + "}",
            "too_deep",
            "batch[1]",
        ),
    ],
)
def test_poison_in_a_batch_costs_only_its_item(poison: str, code: str, field: str) -> None:
    good_g = orjson.dumps(track(type="track", messageId="g")).decode()
    good_h = orjson.dumps(track(type="track", messageId="h")).decode()
    body = ('{"batch":[' + ",".join([good_g, poison, good_h]) + "]}").encode()
    events, rejected, _ = parse_batch(body, meta=META)
    assert [e.message_id for e in events] == ["g", "h"]
    assert [(r.index, r.code) for r in rejected] == [(1, code)]
    assert rejected[0].field is not None and rejected[0].field.startswith(field)


def test_invalid_utf8_in_a_batch_costs_only_its_item() -> None:
    body = (
        b'{"batch":[{"type":"track","userId":"u","event":"E","messageId":"a"},'
        b'{"type":"track","userId":"u","event":"E\xff"},'
        b'{"type":"track","userId":"u","event":"E","messageId":"c"}]}'
    )
    events, rejected, _ = parse_batch(body, meta=META)
    assert [e.message_id for e in events] == ["a", "c"]
    assert [(r.index, r.code, r.field) for r in rejected] == [
        (1, "invalid_unicode", "batch[1].event")
    ]


def test_oversized_item_in_a_batch_is_a_rejection() -> None:
    big = track(type="track", properties={"blob": "x" * MAX_EVENT_BYTES})
    body = orjson.dumps({"batch": [track(type="track", messageId="ok"), big]})
    events, rejected, _ = parse_batch(body, meta=META)
    assert [e.message_id for e in events] == ["ok"]
    assert [(r.index, r.code, r.field) for r in rejected] == [(1, "event_too_large", "batch[1]")]


def test_absurdly_deep_batch_item_is_a_rejection_not_a_crash() -> None:
    deep = b'{"a":' * 1000 + b"1" + b"}" * 1000
    body = b'{"batch":[{"type":"track","userId":"u","event":"E","messageId":"ok"},' + deep + b"]}"
    events, rejected, _ = parse_batch(body, meta=META)
    assert [e.message_id for e in events] == ["ok"]
    assert [(r.index, r.code) for r in rejected] == [(1, "too_deep")]


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (b"[]", 400, "invalid_batch", None),
        (b'"batch"', 400, "invalid_batch", None),
        (b"{}", 400, "invalid_batch", "batch"),
        (b'{"batch": {"0": {}}}', 400, "invalid_batch", "batch"),
        (b'{"batch": null}', 400, "invalid_batch", "batch"),
        (b'{"batch": [], "context": []}', 400, "invalid_field", "context"),
        (b'{"batch": [], "integrations": "All"}', 400, "invalid_field", "integrations"),
        (b'{"batch": [], "sentAt": "later"}', 400, "invalid_timestamp", "sentAt"),
        (b'{"batch": [], "sentAt": 5}', 400, "invalid_timestamp", "sentAt"),
        (b'{"batch": [], "extra": NaN}', 400, "invalid_number", "body.extra"),
        (b'{"batch": [], "context": {"x": "\\u0000"}}', 400, "nul_byte", "body.context.x"),
        (b'{"batch": [], "writeKey": "\\ud800"}', 400, "invalid_unicode", "body.writeKey"),
        (
            b'{"batch": [], "context": ' + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}",
            400,
            "too_deep",
            None,
        ),
        (b"{", 400, "invalid_json", None),
    ],
)
def test_batch_envelope_errors(body: bytes, status: int, code: str, field: str | None) -> None:
    with pytest.raises(IngestError) as info:
        parse_batch(body, meta=META)
    err = info.value
    assert (err.status, err.code) == (status, code)
    if field is not None:
        assert err.field == field


def test_batch_item_count_limit() -> None:
    item = {"type": "track", "userId": "u", "event": "E"}
    events, rejected, _ = parse_batch(orjson.dumps({"batch": [item] * MAX_BATCH_ITEMS}), meta=META)
    assert len(events) == MAX_BATCH_ITEMS and not rejected
    with pytest.raises(IngestError) as info:
        parse_batch(orjson.dumps({"batch": [item] * (MAX_BATCH_ITEMS + 1)}), meta=META)
    assert (info.value.status, info.value.code, info.value.field) == (
        413,
        "too_many_events",
        "batch",
    )


# --------------------------------------------------------------------------- properties

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
iso_times = st.datetimes(timezones=st.none() | st.just(UTC)).map(lambda d: d.isoformat()) | (
    st.sampled_from(
        [
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
        ]
    )
)
id_values = (
    st.text(max_size=30)
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
)
event_fields = st.fixed_dictionaries(
    {"userId": id_values},
    optional={
        "anonymousId": id_values | st.none(),
        "type": st.sampled_from([*segment.EVENT_TYPES, "bogus"]) | json_values,
        "event": st.text(max_size=20) | json_values,
        "previousId": id_values | st.none(),
        "groupId": id_values | st.none(),
        "name": st.text(max_size=10) | json_values,
        "messageId": st.text(max_size=120) | json_values,
        "timestamp": iso_times | json_values,
        "originalTimestamp": iso_times | json_values,
        "sentAt": iso_times | json_values,
        "receivedAt": iso_times,
        "properties": json_values,
        "traits": json_values,
        "context": st.fixed_dictionaries(
            {}, optional={"ip": st.ip_addresses().map(str) | json_values}
        )
        | json_values,
        "integrations": json_values,
    },
).flatmap(
    lambda d: st.dictionaries(st.text(max_size=10), json_values, max_size=3).map(
        lambda extra: {**extra, **d}
    )
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    item=event_fields,
    type_hint=st.sampled_from([*sorted(segment.EVENT_TYPES), None]),
    batch_defaults=st.none()
    | st.fixed_dictionaries(
        {},
        optional={
            "context": st.dictionaries(st.text(max_size=5), json_values, max_size=2),
            "sentAt": iso_times,
        },
    ),
)
def test_any_event_normalises_or_is_a_4xx(
    item: dict[str, Any], type_hint: str | None, batch_defaults: dict[str, Any] | None
) -> None:
    try:
        event = normalise_event(item, type_hint=type_hint, meta=META, defaults=batch_defaults)
    except IngestError as exc:
        assert 400 <= exc.status < 500
        assert exc.code and exc.detail
        return
    payload = orjson.loads(event.payload)
    assert payload["messageId"] == event.message_id and len(event.message_id) <= 100
    assert event.user_id or event.anonymous_id
    assert event.timestamp - event.received_at <= timedelta(hours=24)
    assert event.timestamp > datetime.min.replace(tzinfo=UTC)  # storable, not -infinity
    for key in ("writeKey", "workspaceId", "projectId"):
        assert key not in payload
    assert payload["receivedAt"] == "2024-05-01T12:00:00Z"


def _mutate(data: st.DataObject, body: bytes) -> bytes:
    out = bytearray(body)
    for _ in range(data.draw(st.integers(0, 6))):
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        pos = data.draw(st.integers(0, len(out)))
        byte = data.draw(
            st.sampled_from([*b'{}[]",:\\0e.-\x00\xff\xc3', data.draw(st.integers(0, 255))])
        )
        if op == "insert":
            out.insert(pos, byte)
        elif out and pos < len(out):
            if op == "delete":
                del out[pos]
            else:
                out[pos] = byte
    return bytes(out)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), raw=st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_ingest_error(
    data: st.DataObject, raw: bytes
) -> None:
    valid = orjson.dumps(
        {
            "sentAt": "2024-05-01T12:00:00Z",
            "context": {"ip": "1.2.3.4"},
            "batch": [
                track(type="track", messageId="m", properties={"a": [1.5]}),
                {"type": "alias", "previousId": "p", "userId": "u"},
            ],
        }
    )
    body = data.draw(st.sampled_from([raw, _mutate(data, valid)]))
    try:
        events, rejected, _ = parse_batch(body, meta=META)
    except IngestError as exc:
        assert 400 <= exc.status < 500
        return
    for event in events:
        orjson.loads(event.payload)
    for rejection in rejected:
        assert rejection.detail


VALID_ITEMS = st.builds(
    lambda kind, uid, n: {
        "track": {"type": "track", "userId": uid, "event": f"E{n}"},
        "identify": {"type": "identify", "anonymousId": uid, "traits": {"n": n}},
        "page": {"type": "page", "userId": uid, "name": None, "properties": {"n": n}},
        "screen": {"type": "screen", "userId": uid, "name": "S"},
        "group": {"type": "group", "userId": uid, "groupId": n},
        "alias": {"type": "alias", "userId": uid, "previousId": f"p{n}", "anonymousId": None},
    }[kind],
    st.sampled_from(sorted(segment.EVENT_TYPES)),
    st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=12
    ).filter(lambda s: s.strip() != ""),
    st.integers(0, 10**6),
)
POISONS = [
    ('{"type":"track","userId":"u","event":"E","properties":{"x":NaN}}', "invalid_number"),
    ('{"type":"track","userId":"u","event":"E","properties":{"x":1e400}}', "invalid_number"),
    ('{"type":"track","userId":"u","event":"E","properties":{"x":"\\ud800"}}', "invalid_unicode"),
    ('{"type":"track","userId":"u","event":"E","properties":{"x":"\\u0000"}}', "nul_byte"),
    ('{"type":"track","userId":"u"}', "missing_event"),
    ('{"type":"track","event":"E"}', "missing_identity"),
    ('{"type":"alias","userId":"u"}', "missing_previous_id"),
    ('{"type":"track","userId":"u","event":"E","timestamp":"nope"}', "invalid_timestamp"),
    ('{"type":"track","userId":"u","event":"E","messageId":"' + "m" * 101 + '"}', "invalid_field"),
    ('{"type":"track","userId":"u","event":"E","p":' + json.dumps(nested(40)) + "}", "too_deep"),
    (
        '{"type":"track","userId":"u","event":"E","p":"' + "x" * MAX_EVENT_BYTES + '"}',
        "event_too_large",
    ),
    ("[]", "invalid_event"),
]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(VALID_ITEMS, min_size=0, max_size=15),
    data=st.data(),
    poison=st.sampled_from(POISONS),
)
def test_one_poison_item_costs_only_itself(
    items: list[dict[str, Any]], data: st.DataObject, poison: tuple[str, str]
) -> None:
    position = data.draw(st.integers(0, len(items)))
    for n, item in enumerate(items):
        item["messageId"] = f"msg-{n}"
    texts = [orjson.dumps(item).decode() for item in items]
    texts.insert(position, poison[0])
    body = ('{"sentAt":"2024-05-01T12:00:00Z","batch":[' + ",".join(texts) + "]}").encode()
    events, rejected, _ = parse_batch(body, meta=META)
    assert [e.message_id for e in events] == [f"msg-{n}" for n in range(len(items))]
    assert [(r.index, r.code) for r in rejected] == [(position, poison[1])]
    assert rejected[0].field is not None and rejected[0].field.startswith(f"batch[{position}]")
