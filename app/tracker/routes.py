"""`GET /js/journeys.js`: the first-party browser tracker, cached by browsers and CDNs."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib.resources import files
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import Response

router = APIRouter(tags=["tracker"])

SCRIPT_NAME: Final = "journeys.js"
# A day fresh, then a week served stale while revalidating: the URL is not versioned, so a new
# release reaches every browser within a day, and revalidation is a 304 thanks to the ETag.
CACHE_CONTROL: Final = "public, max-age=86400, stale-while-revalidate=604800"


@dataclass(frozen=True, slots=True)
class Asset:
    """The script as served: plain and gzipped, each with its strong ETag."""

    plain: bytes
    gzipped: bytes
    etag: str
    gzip_etag: str


def load_script() -> Asset:
    """Read the tracker shipped in this package (package data) and prepare both encodings."""
    plain = files("app.tracker").joinpath(SCRIPT_NAME).read_bytes()
    digest = hashlib.sha256(plain).hexdigest()[:32]
    # mtime=0: the same bytes (and so the same ETag) from every process and every start.
    gzipped = gzip.compress(plain, compresslevel=9, mtime=0)
    return Asset(plain=plain, gzipped=gzipped, etag=f'"{digest}"', gzip_etag=f'"{digest}-gz"')


SCRIPT: Final = load_script()


def _accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def _matches(if_none_match: str, etag: str) -> bool:
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


@router.get(
    "/js/journeys.js",
    summary="The journeys.js browser tracker",
    response_class=Response,
    responses={
        200: {"content": {"text/javascript": {}}, "description": "the script"},
        304: {"description": "the cached copy (If-None-Match) is current"},
    },
)
async def tracker_script(request: Request) -> Response:
    """Load it with `<script src="/js/journeys.js" data-write-key="jw_…" async>`."""
    use_gzip = _accepts_gzip(request.headers.get("accept-encoding", ""))
    etag = SCRIPT.gzip_etag if use_gzip else SCRIPT.etag
    headers = {
        "ETag": etag,
        "Cache-Control": CACHE_CONTROL,
        "Vary": "Accept-Encoding",
        # Public code: any page may load it, with or without `crossorigin` (for SRI).
        "Access-Control-Allow-Origin": "*",
        "Cross-Origin-Resource-Policy": "cross-origin",
        "X-Content-Type-Options": "nosniff",
    }
    if _matches(request.headers.get("if-none-match", ""), etag):
        return Response(status_code=304, headers=headers)
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    body = SCRIPT.gzipped if use_gzip else SCRIPT.plain
    return Response(body, media_type="text/javascript; charset=utf-8", headers=headers)


# HEAD answers like GET; kept out of the OpenAPI document (one operation per route there).
router.add_api_route("/js/journeys.js", tracker_script, methods=["HEAD"], include_in_schema=False)
