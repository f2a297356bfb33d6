"""Signed email links: the tokens of open pixels and click redirects.

Pure: standard library only (and the email normaliser the stitcher uses). A token is
`base64url(payload) "." base64url(HMAC-SHA256(workspace secret, payload))`, where the payload
is the compact JSON array `[version, kind, workspace, campaign, message, recipient, url]`.
The signature covers every field, so nothing in a token can be changed (the redirect target
least of all), and the kind, so an open token cannot be replayed as a click. The workspace
secret is derived from the server's secret: one leaked workspace secret says nothing about
another's, and no per-workspace state is stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from app.journeys.model import normalise_email

OPEN: Final = "o"
CLICK: Final = "c"
KINDS: Final = (OPEN, CLICK)

VERSION: Final = 1
MAX_TOKEN_CHARS: Final = 8_192
MAX_URL_CHARS: Final = 2_048
MAX_NAME_CHARS: Final = 256
_SIGNATURE_BYTES: Final = 32


class LinkError(ValueError):
    """A field of a link to sign is invalid; `field` names it."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


@dataclass(frozen=True, slots=True)
class LinkClaims:
    """What a token vouches for. `url` is the redirect target of a click (None for an open)."""

    kind: str
    workspace_id: int
    campaign: str
    message: str
    recipient: str
    url: str | None = None
    # When the link was signed (Unix seconds): a click seconds later is a mail scanner's.
    # Tokens signed before this field existed carry none.
    issued: int | None = None


@dataclass(frozen=True, slots=True)
class SignedLinks:
    """The open-pixel and click URLs of one message to one recipient."""

    open_url: str
    click_url: str


def workspace_secret(server_secret: bytes, workspace_id: int) -> bytes:
    """The signing key of one workspace, derived from the server's secret."""
    label = f"journeys/links/v{VERSION}/workspace/{workspace_id}".encode()
    return hmac.new(server_secret, label, hashlib.sha256).digest()


def recipient_anonymous_id(secret: bytes, recipient: str) -> str:
    """A stable anonymous id for a recipient's email events that does not reveal the address."""
    digest = hmac.new(secret, b"recipient:" + recipient.encode(), hashlib.sha256).hexdigest()
    return "eml-" + digest[:32]


def check_url(url: object, field: str = "url") -> str:
    """An absolute http(s) URL without whitespace or control characters, else LinkError."""
    if not isinstance(url, str) or not url:
        raise LinkError(field, "must be an absolute http or https URL")
    if len(url) > MAX_URL_CHARS:
        raise LinkError(field, f"is longer than {MAX_URL_CHARS} characters")
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        raise LinkError(field, "must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise LinkError(field, "is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise LinkError(field, "must be an absolute http or https URL")
    return url


def _name(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LinkError(field, "must be a non-empty string")
    value = value.strip()
    if len(value) > MAX_NAME_CHARS:
        raise LinkError(field, f"is longer than {MAX_NAME_CHARS} characters")
    return value


def make_claims(
    *,
    kind: str,
    workspace_id: int,
    campaign: object,
    message: object,
    recipient: object,
    url: object = None,
    issued: int | None = None,
) -> LinkClaims:
    """Validated, normalised claims (the recipient's email trimmed and lower-cased)."""
    if kind not in KINDS:
        raise LinkError("kind", "must be 'o' (open) or 'c' (click)")
    email = normalise_email(recipient)
    if email is None or len(email) > MAX_NAME_CHARS:
        raise LinkError("recipient", "must be an email address")
    return LinkClaims(
        kind=kind,
        workspace_id=workspace_id,
        campaign=_name(campaign, "campaign"),
        message=_name(message, "message"),
        recipient=email,
        url=check_url(url) if kind == CLICK else None,
        issued=issued,
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _payload(claims: LinkClaims) -> bytes:
    fields = [
        VERSION,
        claims.kind,
        claims.workspace_id,
        claims.campaign,
        claims.message,
        claims.recipient,
        claims.url or "",
    ]
    if claims.issued is not None:
        fields.append(claims.issued)
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


def _mac(secret: bytes, encoded_payload: str) -> bytes:
    return hmac.new(secret, encoded_payload.encode("ascii"), hashlib.sha256).digest()


def sign(claims: LinkClaims, secret: bytes) -> str:
    """The token for `claims`, signed with the workspace secret."""
    encoded = _b64(_payload(claims))
    return f"{encoded}.{_b64(_mac(secret, encoded))}"


def verify(token: str, secret_for: Callable[[int], bytes]) -> LinkClaims | None:
    """The claims of a genuine token, else None (malformed, tampered or signed elsewhere).

    Only the workspace id is read before the signature is checked: it picks the secret."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        return None
    encoded, _, signature = token.partition(".")
    try:
        raw = _unb64(encoded)
        given = _unb64(signature)
        fields = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if (
        not isinstance(fields, list)
        or len(fields) not in (7, 8)
        or (len(fields) == 8 and type(fields[7]) is not int)
        or fields[0] != VERSION
        or type(fields[2]) is not int
        or len(given) != _SIGNATURE_BYTES
    ):
        return None
    if not hmac.compare_digest(_mac(secret_for(fields[2]), encoded), given):
        return None
    _, kind, workspace_id, campaign, message, recipient, url = fields[:7]
    issued = fields[7] if len(fields) == 8 else None
    try:
        # Signed by us, so valid when signed; checked again in case the rules got stricter.
        return make_claims(
            kind=kind,
            workspace_id=workspace_id,
            campaign=campaign,
            message=message,
            recipient=recipient,
            url=url or None,
            issued=issued,
        )
    except LinkError:
        return None


def link_urls(
    *,
    base_url: str,
    workspace_id: int,
    campaign: object,
    message: object,
    recipient: object,
    url: object,
    server_secret: bytes,
) -> SignedLinks:
    """The open-pixel and click URLs for one message to one recipient (LinkError if invalid)."""
    base = check_url(base_url, "base_url").rstrip("/")
    parts = urlsplit(base)
    if parts.query or parts.fragment:
        raise LinkError("base_url", "must not have a query or a fragment")
    secret = workspace_secret(server_secret, workspace_id)
    now = int(time.time())
    fields = {"campaign": campaign, "message": message, "recipient": recipient}
    opened = make_claims(kind=OPEN, workspace_id=workspace_id, issued=now, **fields)
    clicked = make_claims(kind=CLICK, workspace_id=workspace_id, url=url, issued=now, **fields)
    return SignedLinks(
        open_url=f"{base}/l/o/{sign(opened, secret)}.gif",
        click_url=f"{base}/l/c/{sign(clicked, secret)}",
    )
