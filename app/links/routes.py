"""Signed email links: `POST /v1/links` (server key), the open pixel and the click redirect."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from app.core.auth import ServerWorkspace
from app.core.deps import runtime
from app.core.errors import ProblemError, json_bytes
from app.core.logging import get_logger
from app.ingest.ratelimit import RateLimiter
from app.journeys.model import normalise_email
from app.links import signing
from app.links.secret import link_secret
from app.links.service import LinkService

log = get_logger(__name__)

router = APIRouter(tags=["email links"])

# The smallest transparent 1x1 GIF (GIF89a, one transparent palette entry).
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
# Every open must reach us: no browser, proxy or webmail image cache may answer for us.
_NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, private, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}


class LinkRequest(BaseModel):
    """A campaign message to one recipient, and the page its link leads to."""

    campaign: str = Field(min_length=1, max_length=signing.MAX_NAME_CHARS, examples=["spring"])
    message: str = Field(min_length=1, max_length=signing.MAX_NAME_CHARS, examples=["welcome-1"])
    recipient: str = Field(min_length=3, max_length=signing.MAX_NAME_CHARS)
    url: str = Field(min_length=1, max_length=signing.MAX_URL_CHARS)
    base_url: str | None = Field(
        default=None,
        description="public URL of this service for the links; default: the URL of this request",
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "campaign": "spring-sale",
                    "message": "welcome-1",
                    "recipient": "ann@example.com",
                    "url": "https://shop.example/spring?utm_source=email",
                }
            ]
        }
    }


def link_service(request: Request) -> LinkService:
    """The application's link service (one per runtime, so its rate limiter is shared)."""
    rt = runtime(request)
    cached: tuple[Any, LinkService] | None = getattr(request.app.state, "link_service", None)
    if cached is not None and cached[0] is rt:
        return cached[1]
    service = LinkService(
        engine=rt.engine,
        committer=rt.committer,
        limiter=RateLimiter(
            rate=rt.settings.rate_limit_events_per_second, burst=rt.settings.rate_limit_burst
        ),
        server_secret=lambda: link_secret(rt.settings),
    )
    request.app.state.link_service = (rt, service)
    return service


def _client(request: Request) -> tuple[str | None, str | None]:
    return request.headers.get("user-agent"), request.client.host if request.client else None


@router.post(
    "/v1/links",
    summary="Sign the open-pixel and click URLs of a campaign message for one recipient",
    responses={
        400: {"description": "An invalid field (problem+json naming it)"},
        401: {"description": "Missing or unknown server key"},
        403: {"description": "A key of another kind"},
    },
)
async def create_links(
    request: Request, body: LinkRequest, workspace_id: ServerWorkspace
) -> Response:
    """`{open_url, click_url, …}`: put the pixel in the message's HTML and use the click URL
    in place of the link. Both are signed for this workspace, message and recipient."""
    base_url = body.base_url or str(request.base_url)
    try:
        links = link_service(request).sign(
            base_url=base_url,
            workspace_id=workspace_id,
            campaign=body.campaign,
            message=body.message,
            recipient=body.recipient,
            url=body.url,
        )
    except signing.LinkError as exc:
        raise ProblemError(
            400, "invalid_field", f"{exc.field}: {exc.detail}", field=exc.field
        ) from None
    answer = {
        "workspace_id": workspace_id,
        "campaign": body.campaign.strip(),
        "message": body.message.strip(),
        "recipient": normalise_email(body.recipient),
        "url": body.url,
        "open_url": links.open_url,
        "click_url": links.click_url,
    }
    return Response(json_bytes(answer), media_type="application/json")


async def _open(request: Request, token: str) -> Response:
    try:
        service = link_service(request)
        claims = service.verify(token, signing.OPEN)
        # HEAD is a prefetch or a check, never somebody reading the message.
        if claims is not None and request.method == "GET":
            user_agent, ip = _client(request)
            await service.record(claims, user_agent=user_agent, client_ip=ip)
    except Exception as exc:  # the recipient's email shows a pixel whatever happens here
        log.error("open_pixel_failed", error=repr(exc))
    return Response(PIXEL, media_type="image/gif", headers=_NO_CACHE)


async def _click(request: Request, token: str) -> Response:
    service = link_service(request)
    claims = service.verify(token, signing.CLICK)
    if claims is None or claims.url is None:
        raise ProblemError(404, "link_not_found", "this link is not valid")
    if request.method == "GET":
        user_agent, ip = _client(request)
        await service.record(claims, user_agent=user_agent, client_ip=ip)
    return Response(status_code=302, headers={"Location": claims.url, "Cache-Control": "no-store"})


@router.get(
    "/l/o/{token}.gif",
    summary="Email open pixel: always a 1x1 GIF; a genuine token records `Email Opened`",
    response_class=Response,
    responses={200: {"content": {"image/gif": {}}, "description": "a transparent 1x1 GIF"}},
)
async def open_pixel(request: Request, token: str) -> Response:
    """Answers the same GIF whatever the token, so it tells nobody whether a token is valid."""
    return await _open(request, token)


@router.get(
    "/l/c/{token}",
    summary="Email click: records `Email Link Clicked` and redirects to the signed URL",
    response_class=Response,
    responses={
        302: {"description": "to the URL the token was signed for"},
        404: {"description": "not a genuine link (never a redirect)"},
    },
)
async def click_redirect(request: Request, token: str) -> Response:
    """Redirects only to the URL inside a genuine token: never an open redirect."""
    return await _click(request, token)


# The contract's spelling of the same two routes.
@router.api_route("/v1/o/{token}.gif", methods=["GET", "HEAD"], include_in_schema=False)
async def open_pixel_v1(request: Request, token: str) -> Response:
    """`/l/o/{token}.gif` under /v1."""
    return await _open(request, token)


@router.api_route("/v1/c/{token}", methods=["GET", "HEAD"], include_in_schema=False)
async def click_redirect_v1(request: Request, token: str) -> Response:
    """`/l/c/{token}` under /v1."""
    return await _click(request, token)


# HEAD answers like GET; kept out of the OpenAPI document (one operation per route there).
router.add_api_route("/l/o/{token}.gif", open_pixel, methods=["HEAD"], include_in_schema=False)
router.add_api_route("/l/c/{token}", click_redirect, methods=["HEAD"], include_in_schema=False)
