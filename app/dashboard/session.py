"""The dashboard's session and browser hardening: the read key in a cookie, the same-origin
check on its two POSTs (log in, log out), and the headers every dashboard answer carries.

The cookie holds the read key itself (HttpOnly, SameSite=Strict, Secure over https): it is
checked on every request by the same resolver as the API's `Authorization` header, so a
rotated or revoked key ends the session at once, and there is no server-side session state.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "journeys_dashboard"
COOKIE_MAX_AGE = 30 * 86400  # a wall screen stays logged in; rotating the key ends it
MAX_FORM_BYTES = 4096

# No inline script or style at all (charts get their data from a JSON data block, which is
# never executed), nothing from another origin, no framing, forms post only to us.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
}


def secure_headers(response: Response, *, cache: bool = False) -> Response:
    """Add the security headers (and `no-store`: pages hold customer data)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    if not cache:
        response.headers["Cache-Control"] = "no-store"
    return response


def is_https(request: Request) -> bool:
    """Whether the browser reached us over https (uvicorn applies trusted proxy headers)."""
    return request.url.scheme == "https"


def set_session(response: Response, request: Request, key: str) -> None:
    """Keep the read key in the session cookie."""
    response.set_cookie(
        COOKIE,
        key,
        max_age=COOKIE_MAX_AGE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def clear_session(response: Response, request: Request) -> None:
    """Forget the session cookie."""
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=is_https(request)
    )


def session_key(request: Request) -> str | None:
    """The key in the session cookie, if any."""
    return request.cookies.get(COOKIE) or None


def same_origin(request: Request) -> bool:
    """Whether a POST comes from one of our own pages: its `Origin` (or, when a browser sends
    none, its `Referer`) names this host. A missing or `null` origin is refused: every browser
    sends one on a form POST. With the SameSite=Strict cookie this closes CSRF."""
    host = request.headers.get("host")
    if not host:
        return False
    source = request.headers.get("origin")
    if source is None:
        source = request.headers.get("referer")
    if not source or source == "null":
        return False
    try:
        parts = urlsplit(source)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https"):
        return False
    return parts.netloc.lower() == host.lower()


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path of this site, never another origin."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(ch) < 0x20 for ch in target)
    ):
        return "/"
    return target


async def read_form(request: Request) -> dict[str, str] | None:
    """An `application/x-www-form-urlencoded` body (first value of each field), or None when
    it is not one or exceeds MAX_FORM_BYTES."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return {name: values[0] for name, values in parse_qs(text, keep_blank_values=True).items()}
