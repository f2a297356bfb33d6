"""Sessions: a customer's events cut into visits, GA-style.

Pure: standard library only. A new session starts after 30 minutes without events, when an event
brings a campaign (utm source/medium/name) different from the session's, or once the session is
24 hours old. Events are walked in `sort_key` order, so any permutation gives the same sessions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta

from app.journeys.model import StitchEvent, campaign_of, sort_key

SESSION_IDLE = timedelta(minutes=30)
SESSION_MAX_AGE = timedelta(hours=24)

CampaignKey = tuple[str, str, str]


def session_id(first_message_id: str) -> str:
    """The session id named after the session's first event."""
    return "ses_" + hashlib.sha256(first_message_id.encode("utf-8")).hexdigest()[:16]


def campaign_key(e: StitchEvent) -> CampaignKey | None:
    """(source, medium, name), case-folded; None when the event carries no campaign."""
    campaign = campaign_of(e)
    if not campaign:
        return None
    key = tuple(campaign.get(part, "").strip().lower() for part in ("source", "medium", "name"))
    if not any(key):
        return None
    return (key[0], key[1], key[2])


def assign_sessions(events: Iterable[StitchEvent]) -> dict[str, str]:
    """Map each event's message id to its session id; pass one customer's events."""
    sessions: dict[str, str] = {}
    current = ""
    started: datetime | None = None
    last: datetime | None = None
    campaign: CampaignKey | None = None
    for e in sorted(events, key=sort_key):
        key = campaign_key(e)
        new = (
            started is None
            or last is None
            or e.timestamp - last >= SESSION_IDLE
            or e.timestamp - started >= SESSION_MAX_AGE
            # GA semantics: a campaign arriving mid-visit (even after a direct start) is a new
            # visit; events without one (later pages of the same visit) continue it.
            or (key is not None and key != campaign)
        )
        if new:
            current = session_id(e.message_id)
            started = e.timestamp
            campaign = key
        last = e.timestamp
        sessions[e.message_id] = current
    return sessions
