"""What an email open or click records: the Segment track event, and whether a machine made it.

Pure: standard library only.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Final

from app.links.signing import CLICK, LinkClaims

EMAIL_OPENED: Final = "Email Opened"
EMAIL_LINK_CLICKED: Final = "Email Link Clicked"
LIBRARY_NAME: Final = "journeys-email-links"

APPLE_PRIVACY_PROXY: Final = "apple_mail_privacy_proxy"
LINK_SCANNER: Final = "link_scanner"
CLICKED_ON_DELIVERY: Final = "clicked_on_delivery"
SCANNER_SECONDS: Final = 15.0

# Apple owns 17.0.0.0/8; Mail Privacy Protection fetches remote content from Apple's network
# ahead of any reading, with a bare "Mozilla/5.0" user agent.
_APPLE_NETWORK: Final = ipaddress.ip_network("17.0.0.0/8")
_APPLE_PROXY_AGENTS: Final = frozenset({"mozilla/5.0"})
# Mail security gateways and link checkers that fetch every URL of a message on delivery.
_SCANNER_AGENT: Final = re.compile(
    r"bot\b|spider|crawl|scanner|preview|barracuda|proofpoint|mimecast|symantec|trendmicro"
    r"|forcepoint|ironport|safelinks|python-|curl/|wget/|go-http-client|java/|okhttp",
    re.IGNORECASE,
)


def machine_reason(
    kind: str,
    *,
    user_agent: str | None,
    ip: str | None,
    seconds_since_sent: float | None = None,
) -> str | None:
    """Why an open or click was probably made by a machine rather than the recipient, or None.
    `seconds_since_sent`: since the link was signed (emails are signed as they are sent)."""
    agent = (user_agent or "").strip()
    # Mail security gateways follow every link as the message is delivered; people don't click
    # within seconds of it being sent.
    if kind == CLICK and seconds_since_sent is not None and seconds_since_sent < SCANNER_SECONDS:
        return CLICKED_ON_DELIVERY
    # Apple's proxy fetches images; it does not follow links.
    if kind != CLICK and (agent.lower() in _APPLE_PROXY_AGENTS or _in_apple_network(ip)):
        return APPLE_PRIVACY_PROXY
    if not agent or _SCANNER_AGENT.search(agent):
        return LINK_SCANNER
    return None


def _in_apple_network(ip: str | None) -> bool:
    if not ip:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address in _APPLE_NETWORK


def link_event(
    claims: LinkClaims,
    *,
    anonymous_id: str,
    message_id: str,
    user_agent: str | None,
    machine: str | None,
    library_version: str,
) -> dict[str, Any]:
    """The `Email Opened` / `Email Link Clicked` track event (Segment's Email spec) for a
    verified token. The recipient's email goes in `context.traits`, which is what stitching
    links on, so the event joins the recipient's journey; the anonymous id is the recipient's
    own, stable across messages."""
    clicked = claims.kind == CLICK
    properties: dict[str, Any] = {
        "campaign_id": claims.campaign,
        "campaign_name": claims.campaign,
        "email_id": claims.message,
    }
    if clicked:
        properties["link_url"] = claims.url
    marker: dict[str, Any] = {"link": "click" if clicked else "open", "bot": machine is not None}
    if machine is not None:
        marker["botReason"] = machine
    context: dict[str, Any] = {
        "traits": {"email": claims.recipient},
        "campaign": {
            "source": "email",
            "medium": "email",
            "name": claims.campaign,
            "content": claims.message,
        },
        "library": {"name": LIBRARY_NAME, "version": library_version},
        "journeys": marker,
    }
    if user_agent:
        context["userAgent"] = user_agent[:512]
    return {
        "type": "track",
        "event": EMAIL_LINK_CLICKED if clicked else EMAIL_OPENED,
        "anonymousId": anonymous_id,
        "messageId": message_id,
        "properties": properties,
        "context": context,
    }
