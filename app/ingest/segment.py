"""Pure parsing and normalising of Segment HTTP tracking API payloads: bytes in, rows out.

Nothing here knows about HTTP frameworks or databases, so every rule can be unit- and
property-tested in isolation. Errors carry the HTTP status and a stable `code` the routes turn
into problem+json; `field` names the offending field (`batch[3].timestamp`).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final

import orjson

EVENT_TYPES: Final = frozenset({"track", "identify", "page", "screen", "group", "alias"})
SHORT_PATHS: Final = {
    "t": "track",
    "i": "identify",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
    "b": "batch",
}

MAX_EVENT_BYTES: Final = 32 * 1024
MAX_BATCH_BYTES: Final = 500 * 1024
MAX_BATCH_ITEMS: Final = 2_500
MAX_DEPTH: Final = 32
MAX_MESSAGE_ID: Final = 100
MAX_FUTURE: Final = timedelta(hours=24)

FLAG_FUTURE_CLAMPED: Final = 1
# Bot or scanner traffic: stored and shown on the timeline, never moves a stage or counts as a
# touch. Set for known crawler user agents and for events the server itself marked (signed email
# links fetched by Apple's privacy proxy or a mail scanner: `context.journeys.bot`). Deliberately
# narrow: a real visitor flagged by mistake would silently lose their journey, so headless
# browsers in general (automation, tests, prerendering) are not treated as bots.
FLAG_BOT: Final = 2
_BOT_AGENT: Final = re.compile(
    r"bot\b|bot/|crawler|spider|crawling|slurp|phantomjs|lighthouse"
    r"|facebookexternalhit|bingpreview|pingdom|uptimerobot|statuscake|site24x7",
)

# asyncpg stores this instant (Go's zero time, a common "unset" value) as -infinity.
_UNSTORABLE: Final = datetime.min.replace(tzinfo=UTC)

# Fields the server owns: a client can't set them (they are recomputed, or secrets).
_SERVER_OWNED: Final = ("receivedAt", "writeKey", "workspaceId", "projectId")
_OBJECT_FIELDS: Final = ("properties", "traits", "context", "integrations")


class IngestError(Exception):
    """Bad input: `status` is the HTTP status (4xx), `code` a stable machine-readable reason."""

    def __init__(self, status: int, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field


@dataclass(slots=True)
class NormalisedEvent:
    """One accepted event, ready for storage. Not frozen only because a frozen dataclass
    costs twice as much to build, once per event: nothing changes one after it is made."""

    message_id: str
    type: str
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    timestamp: datetime
    received_at: datetime
    flags: int
    payload: str  # the normalised event as JSON text


@dataclass(frozen=True, slots=True)
class Rejection:
    """An invalid item of a batch; the valid ones are stored regardless."""

    index: int
    code: str
    detail: str
    field: str | None


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """What the request adds to every event: arrival time, client address, workspace."""

    received_at: datetime
    client_ip: str | None = None


# --------------------------------------------------------------------------- body decoding


def decode_body(
    raw: bytes, *, content_type: str | None, content_encoding: str | None, limit: int
) -> bytes:
    """Check the media type and inflate gzip, refusing anything that inflates past `limit`."""
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media not in ("application/json", "text/plain", "", "application/x-json"):
        raise IngestError(
            415,
            "unsupported_media_type",
            f"Content-Type {media!r} is not supported; send application/json or text/plain",
        )
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        body = raw
    elif encoding in ("gzip", "x-gzip"):
        body = _gunzip(raw, limit)
    else:
        raise IngestError(
            415,
            "unsupported_content_encoding",
            f"Content-Encoding {encoding!r} is not supported; send gzip or no encoding",
        )
    if len(body) > limit:
        raise IngestError(413, "body_too_large", f"body is larger than {limit // 1024} KB")
    return body


def _gunzip(raw: bytes, limit: int) -> bytes:
    # Inflate at most limit+1 bytes so a gzip bomb costs us nothing beyond the limit.
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise IngestError(400, "invalid_gzip", f"body is not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise IngestError(413, "body_too_large", f"body inflates to more than {limit // 1024} KB")
    if not inflater.eof:
        raise IngestError(400, "invalid_gzip", "body is not valid gzip: truncated stream")
    return out


# --------------------------------------------------------------------------- JSON parsing


class _BadNumber:
    """Stands in for NaN, ±Infinity and numbers too large for a double, found after parsing."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _parse_float(text: str) -> float | _BadNumber:
    value = float(text)
    return value if math.isfinite(value) else _BadNumber(text)


def parse_json(body: bytes) -> Any:
    """Parse JSON fast; on failure, reparse leniently so a bad value inside one batch item can
    be blamed on that item instead of failing the whole request."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as strict_error:
        try:
            # surrogateescape turns invalid UTF-8 into lone surrogates that the item check finds.
            text = body.decode("utf-8", "surrogateescape")
            return json.loads(text, parse_constant=_BadNumber, parse_float=_parse_float)
        except RecursionError:
            raise IngestError(
                400, "too_deep", f"JSON is nested deeper than {MAX_DEPTH} levels"
            ) from None
        except ValueError:
            raise IngestError(
                400, "invalid_json", f"body is not valid JSON: {strict_error}"
            ) from None


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True when containers nest deeper than `limit` ({} alone is depth 1). Recursion stops at
    the limit, so it is bounded however deep the input is."""
    kind = type(value)
    if kind is dict:
        children: Any = value.values()
    elif kind is list:
        children = value
    else:
        return False
    if limit <= 0:
        return True
    for child in children:
        child_kind = type(child)
        if (child_kind is dict or child_kind is list) and _depth_exceeds(child, limit - 1):
            return True
    return False


def _too_deep(item: Any) -> bool:
    """`_depth_exceeds(item, MAX_DEPTH)`, mostly without walking: every container writes one
    opening bracket, so an item whose JSON has at most MAX_DEPTH of them (brackets inside
    strings only add to the count) can't nest deeper. Typical events have half a dozen."""
    try:
        text = orjson.dumps(item)
    except TypeError:  # a non-finite number or lone surrogate, or deeper than orjson goes
        return _depth_exceeds(item, MAX_DEPTH)
    if text.count(b"{") + text.count(b"[") <= MAX_DEPTH:
        return False
    return _depth_exceeds(item, MAX_DEPTH)


def _find_bad_value(value: Any, path: str) -> tuple[str, str, str] | None:
    """Locate the first NUL byte, lone surrogate or non-finite number: (code, detail, path)."""
    if isinstance(value, str):
        if "\x00" in value:
            return "nul_byte", "contains a NUL byte", path
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "invalid_unicode", "contains a lone surrogate or invalid UTF-8", path
        return None
    if isinstance(value, _BadNumber):
        return "invalid_number", f"{value.text} is not a finite number", path
    if isinstance(value, dict):
        for key, child in value.items():
            found = _find_bad_value(key, f"{path}.{_path_key(key):.40}") or _find_bad_value(
                child, f"{path}.{_path_key(key)}"
            )
            if found:
                return found
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found = _find_bad_value(child, f"{path}[{i}]")
            if found:
                return found
    return None


def _path_key(key: Any) -> str:
    """A key as it appears in a field path: a bad key is escaped, since the path goes back to
    the client in a JSON error body (a lone surrogate can't be encoded; a NUL doesn't belong)."""
    text = str(key)
    if _find_bad_value(text, "") is not None:
        return text.encode("unicode_escape").decode("ascii")
    return text


# --------------------------------------------------------------------------- field helpers


def parse_timestamp(value: Any, field: str) -> datetime:
    """ISO-8601 (with Z or an offset, any fraction; naive = UTC) → aware UTC datetime."""
    if not isinstance(value, str) or not value or len(value) > 64:
        raise IngestError(400, "invalid_timestamp", "must be an ISO-8601 date-time string", field)
    text = value.strip()
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise IngestError(
            400, "invalid_timestamp", f"{value[:64]!r} is not an ISO-8601 date-time", field
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        parsed = _UNSTORABLE
    if parsed == _UNSTORABLE:
        raise IngestError(400, "invalid_timestamp", "date-time is out of range", field)
    return parsed


@lru_cache(maxsize=64)
def _cached_timestamp(value: str) -> datetime:
    return parse_timestamp(value, "")


def _shared_timestamp(value: Any, field: str) -> datetime:
    """A batch's sentAt, which every item shares: parsed once, not once per item."""
    if type(value) is str:
        try:
            return _cached_timestamp(value)
        except IngestError:
            pass
    return parse_timestamp(value, field)  # raises, naming the item's field


def _identifier(value: Any, field: str) -> str | None:
    """userId/anonymousId/previousId/groupId: a string, or a number the SDK didn't quote."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise IngestError(400, "invalid_field", "must be a string", field)
    if isinstance(value, int):
        value = str(value)
    elif isinstance(value, float) and math.isfinite(value):
        value = str(int(value)) if value.is_integer() else repr(value)
    if not isinstance(value, str):
        raise IngestError(400, "invalid_field", "must be a string", field)
    value = value.strip()
    if len(value) > 1024:
        raise IngestError(400, "invalid_field", "is longer than 1024 characters", field)
    return value or None


@lru_cache(maxsize=4096)
def truncate_ip(value: str) -> str | None:
    """Anonymise an address before storage: IPv4 to its /24, IPv6 to its /48."""
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)


# --------------------------------------------------------------------------- normalising


def _is_bot(context: dict[str, Any]) -> bool:
    """A crawler's user agent, or traffic the server marked as a machine's."""
    marker = context.get("journeys")
    if isinstance(marker, dict) and marker.get("bot") is True:
        return True
    agent = context.get("userAgent")
    return isinstance(agent, str) and _is_bot_agent(agent)


@lru_cache(maxsize=2048)
def _is_bot_agent(agent: str) -> bool:
    # Matched on the lowered text (re.IGNORECASE made this search ~20 µs per event), and
    # remembered: a site's traffic comes from a few hundred distinct user agents.
    return _BOT_AGENT.search(agent[:1024].lower()) is not None


def normalise_event(
    item: Any,
    *,
    type_hint: str | None,
    meta: RequestMeta,
    defaults: Mapping[str, Any] | None = None,
    field: str = "",
    depth_checked: bool = False,
    may_hold_nul: bool = True,
) -> NormalisedEvent:
    """Validate one event and produce its stored form. `type_hint` is the route's type
    (None inside a batch); `defaults` holds the batch's `context`, `integrations`, `sentAt`.
    `may_hold_nul=False` says the request body has no `\\u0000` escape, the only way JSON
    can carry a NUL, so the stored form needs no search for one."""
    prefix = f"{field}." if field else ""
    if not isinstance(item, dict):
        raise IngestError(400, "invalid_event", "event must be a JSON object", field or None)
    if not depth_checked and _too_deep(item):
        raise IngestError(
            400, "too_deep", f"event is nested deeper than {MAX_DEPTH} levels", field or None
        )
    # SDKs send explicit nulls for optional fields: they mean "absent".
    event: dict[str, Any] = {k: v for k, v in item.items() if v is not None}
    for key in _SERVER_OWNED:
        event.pop(key, None)

    kind = type_hint or event.get("type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise IngestError(
            400,
            "invalid_type",
            "type must be one of " + ", ".join(sorted(EVENT_TYPES)),
            prefix + "type",
        )
    event["type"] = kind

    for obj in _OBJECT_FIELDS:
        if obj in event and not isinstance(event[obj], dict):
            raise IngestError(400, "invalid_field", "must be a JSON object", prefix + obj)
    if defaults:
        for obj in ("context", "integrations"):
            base = defaults.get(obj)
            if isinstance(base, dict) and base:
                event[obj] = {**base, **event.get(obj, {})}

    user_id = _identifier(event.get("userId"), prefix + "userId")
    anonymous_id = _identifier(event.get("anonymousId"), prefix + "anonymousId")
    if user_id is None and anonymous_id is None:
        raise IngestError(
            400, "missing_identity", "userId or anonymousId is required", prefix + "userId"
        )
    for key, value in (("userId", user_id), ("anonymousId", anonymous_id)):
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value

    name: str | None = None
    if kind == "track":
        name = event.get("event")
        if not isinstance(name, str) or not name.strip():
            raise IngestError(
                400, "missing_event", "track needs a non-empty event name", prefix + "event"
            )
        if len(name) > 512:
            raise IngestError(
                400, "invalid_field", "is longer than 512 characters", prefix + "event"
            )
    elif kind == "alias":
        previous = _identifier(event.get("previousId"), prefix + "previousId")
        if previous is None:
            raise IngestError(
                400, "missing_previous_id", "alias needs previousId", prefix + "previousId"
            )
        event["previousId"] = previous
    elif kind == "group":
        group = _identifier(event.get("groupId"), prefix + "groupId")
        if group is None:
            raise IngestError(400, "missing_group_id", "group needs groupId", prefix + "groupId")
        event["groupId"] = group
    elif kind in ("page", "screen") and "name" in event and not isinstance(event["name"], str):
        raise IngestError(400, "invalid_field", "must be a string", prefix + "name")

    message_id = event.get("messageId")
    if message_id is None or message_id == "":
        message_id = f"journeys-{uuid.uuid4()}"
    elif isinstance(message_id, int | float) and not isinstance(message_id, bool):
        message_id = str(message_id)
    if not isinstance(message_id, str):
        raise IngestError(400, "invalid_field", "must be a string", prefix + "messageId")
    if len(message_id) > MAX_MESSAGE_ID:
        raise IngestError(
            400,
            "invalid_field",
            f"is longer than {MAX_MESSAGE_ID} characters",
            prefix + "messageId",
        )
    event["messageId"] = message_id

    # Every time field present is checked, even one the event time doesn't use.
    timestamp = event.get("timestamp")
    if timestamp is not None:
        timestamp = parse_timestamp(timestamp, prefix + "timestamp")
    original = event.get("originalTimestamp")
    if original is not None:
        original = parse_timestamp(original, prefix + "originalTimestamp")
    sent_at = event.get("sentAt")
    if sent_at is not None:
        sent_at = parse_timestamp(sent_at, prefix + "sentAt")
    elif defaults and defaults.get("sentAt") is not None:
        event["sentAt"] = defaults["sentAt"]
        sent_at = _shared_timestamp(defaults["sentAt"], prefix + "sentAt")
    received_at = meta.received_at
    flags = 0
    if timestamp is not None:
        when = timestamp
    elif original is not None and sent_at is not None:
        # The device clock may be off; the offset between its sentAt and our receipt corrects it.
        try:
            when = received_at - (sent_at - original)
        except OverflowError:
            when = _UNSTORABLE
        if when == _UNSTORABLE:
            raise IngestError(
                400,
                "invalid_timestamp",
                "sentAt and originalTimestamp are too far apart",
                prefix + "originalTimestamp",
            )
    elif original is not None:
        when = original
    else:
        when = received_at
    if when - received_at > MAX_FUTURE:
        when = received_at
        flags |= FLAG_FUTURE_CLAMPED
    event["timestamp"] = when.isoformat().replace("+00:00", "Z")
    event["receivedAt"] = _iso(received_at)

    context = event.get("context")
    raw_ip = context.get("ip") if isinstance(context, dict) else None
    ip = truncate_ip(raw_ip) if isinstance(raw_ip, str) else None
    if ip is None and meta.client_ip:
        ip = truncate_ip(meta.client_ip)
    if isinstance(context, dict) and _is_bot(context):
        flags |= FLAG_BOT
    if isinstance(context, dict) or ip:
        event["context"] = (
            {**(context or {}), "ip": ip}
            if ip
            else {k: v for k, v in (context or {}).items() if k != "ip"}
        )

    try:
        payload = orjson.dumps(event)
    except TypeError:
        payload = b""
    if not payload or (may_hold_nul and b"\\u0000" in payload):
        bad = _find_bad_value(event, field or "event")
    else:
        bad = None
    if bad is not None:
        code, detail, path = bad
        raise IngestError(400, code, f"{path} {detail}", path)
    if not payload:
        raise IngestError(400, "invalid_event", "event cannot be encoded as JSON", field or None)
    return NormalisedEvent(
        message_id=message_id,
        type=kind,
        event=name,
        user_id=user_id,
        anonymous_id=anonymous_id,
        timestamp=when,
        received_at=received_at,
        flags=flags,
        payload=payload.decode(),
    )


@lru_cache(maxsize=64)
def _iso(moment: datetime) -> str:
    # One request's events share receivedAt: format it once.
    return moment.isoformat().replace("+00:00", "Z")


def _item_size(item: Any) -> int:
    try:
        return len(orjson.dumps(item))
    except TypeError:
        return len(json.dumps(item, default=str, ensure_ascii=False).encode("utf-8", "replace"))


def parse_single(body: bytes, *, type_hint: str, meta: RequestMeta) -> tuple[NormalisedEvent, Any]:
    """A single-event route's body → its event (raises IngestError) and the parsed document."""
    if len(body) > MAX_EVENT_BYTES:
        raise IngestError(
            413, "event_too_large", f"event is larger than {MAX_EVENT_BYTES // 1024} KB"
        )
    doc = parse_json(body)
    event = normalise_event(doc, type_hint=type_hint, meta=meta, may_hold_nul=b"\\u0000" in body)
    return event, doc


def parse_batch(
    body: bytes, *, meta: RequestMeta
) -> tuple[list[NormalisedEvent], list[Rejection], Any]:
    """A batch body → accepted events and per-item rejections (one bad item never costs the
    others). Errors of the envelope itself raise IngestError."""
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise IngestError(400, "invalid_batch", "body must be a JSON object with a batch array")
    items = doc.get("batch")
    if not isinstance(items, list):
        raise IngestError(400, "invalid_batch", "batch must be an array of events", "batch")
    if len(items) > MAX_BATCH_ITEMS:
        raise IngestError(
            413,
            "too_many_events",
            f"batch has {len(items)} events; at most {MAX_BATCH_ITEMS} are accepted",
            "batch",
        )
    defaults: dict[str, Any] = {}
    for name in ("context", "integrations"):
        value = doc.get(name)
        if value is not None and not isinstance(value, dict):
            raise IngestError(400, "invalid_field", "must be a JSON object", name)
        if value:
            defaults[name] = value
    if doc.get("sentAt") is not None:
        parse_timestamp(doc["sentAt"], "sentAt")
        defaults["sentAt"] = doc["sentAt"]
    envelope = {k: v for k, v in doc.items() if k != "batch"}
    if _depth_exceeds(envelope, MAX_DEPTH):
        raise IngestError(400, "too_deep", f"JSON is nested deeper than {MAX_DEPTH} levels")
    bad_envelope = _find_bad_value(envelope, "body")
    if bad_envelope is not None:
        code, detail, path = bad_envelope
        raise IngestError(400, code, f"{path} {detail}", path)

    events: list[NormalisedEvent] = []
    rejected: list[Rejection] = []
    may_hold_nul = b"\\u0000" in body
    for index, item in enumerate(items):
        field = f"batch[{index}]"
        try:
            # Depth first: measuring the size of an absurdly deep item would recurse too far.
            if _too_deep(item):
                raise IngestError(
                    400, "too_deep", f"event is nested deeper than {MAX_DEPTH} levels", field
                )
            event = normalise_event(
                item,
                type_hint=None,
                meta=meta,
                defaults=defaults,
                field=field,
                depth_checked=True,
                may_hold_nul=may_hold_nul,
            )
            # The stored form holds the item, so only an event whose stored form could be over
            # the limit (a UTF-8 character is at most 4 bytes) needs the exact size of the item.
            if len(event.payload) * 4 > MAX_EVENT_BYTES and _item_size(item) > MAX_EVENT_BYTES:
                raise IngestError(
                    413,
                    "event_too_large",
                    f"event is larger than {MAX_EVENT_BYTES // 1024} KB",
                    field,
                )
            events.append(event)
        except IngestError as exc:
            rejected.append(
                Rejection(index=index, code=exc.code, detail=exc.detail, field=exc.field)
            )
    return events, rejected, doc


def write_key_in_body(doc: Any) -> str | None:
    """The `writeKey` an SDK put in the body (analytics.js, analytics-python), if any."""
    if isinstance(doc, dict):
        key = doc.get("writeKey")
        if isinstance(key, str) and key:
            return key
    return None
