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


class SessionWalk:
    """`assign_sessions` one event at a time, resumable from a saved state
    (`app.journeys.fold`): the current session, when it started, the last event's time and
    the session's campaign."""

    __slots__ = ("campaign", "current", "last", "started")

    def __init__(
        self,
        current: str = "",
        started: datetime | None = None,
        last: datetime | None = None,
        campaign: CampaignKey | None = None,
    ) -> None:
        self.current = current
        self.started = started
        self.last = last
        self.campaign = campaign

    def add(self, e: StitchEvent) -> str:
        """The session of the next event in `sort_key` order."""
        key = campaign_key(e)
        started, last = self.started, self.last
        if (
            started is None
            or last is None
            or e.timestamp - last >= SESSION_IDLE
            or e.timestamp - started >= SESSION_MAX_AGE
            # GA semantics: a campaign arriving mid-visit (even after a direct start) is a new
            # visit; events without one (later pages of the same visit) continue it.
            or (key is not None and key != self.campaign)
        ):
            self.current = session_id(e.message_id)
            self.started = e.timestamp
            self.campaign = key
        self.last = e.timestamp
        return self.current


def assign_sessions(events: Iterable[StitchEvent], *, ordered: bool = False) -> dict[str, str]:
    """Map each event's message id to its session id; pass one customer's events
    (`ordered`: they already come in `sort_key` order, which saves sorting them again)."""
    walk = SessionWalk()
    return {
        e.message_id: walk.add(e) for e in (events if ordered else sorted(events, key=sort_key))
    }
