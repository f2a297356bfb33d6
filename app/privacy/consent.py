"""Segment's consent object, `context.consent.categoryPreferences` (pure: no I/O).

`{"Analytics": false, "Advertising": true}`: only an explicit `false` denies a category; a
missing object, a missing category or any other value leaves the event alone. Category names
are compared case-insensitively (analytics.js sends "Analytics", our tracker "analytics").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_CATEGORY_LENGTH = 100


def denied_categories(payload: Mapping[str, Any]) -> frozenset[str]:
    """The categories an event's consent preferences explicitly deny, case-folded."""
    context = payload.get("context")
    if not isinstance(context, Mapping):
        return frozenset()
    consent = context.get("consent")
    if not isinstance(consent, Mapping):
        return frozenset()
    preferences = consent.get("categoryPreferences")
    if not isinstance(preferences, Mapping):
        return frozenset()
    return frozenset(
        name.casefold()
        for name, allowed in preferences.items()
        if isinstance(name, str) and allowed is False
    )


def denies(payload: Mapping[str, Any], category: str) -> bool:
    """True when the event explicitly denies `category` (the one the workspace requires)."""
    return category.casefold() in denied_categories(payload)
