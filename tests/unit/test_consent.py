"""Segment's consent object: only an explicit `false` denies a category."""

from __future__ import annotations

from typing import Any

import pytest

from app.privacy.consent import denied_categories, denies


def _payload(preferences: Any) -> dict[str, Any]:
    return {"context": {"consent": {"categoryPreferences": preferences}}}


def test_only_an_explicit_false_denies() -> None:
    payload = _payload({"Analytics": False, "Advertising": True, "Functional": None, "X": "false"})
    assert denied_categories(payload) == {"analytics"}
    assert denies(payload, "Analytics")
    assert denies(payload, "ANALYTICS")  # names compare case-insensitively
    assert not denies(payload, "Advertising")
    assert not denies(payload, "Functional")
    assert not denies(payload, "X")
    assert not denies(payload, "Marketing")  # absent: no decision, the event is kept


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"context": None},
        {"context": {"consent": "yes"}},
        {"context": {"consent": {"categoryPreferences": ["Analytics"]}}},
        {"context": {"consent": {}}},
        _payload({}),
    ],
)
def test_no_consent_object_denies_nothing(payload: dict[str, Any]) -> None:
    assert denied_categories(payload) == frozenset()
    assert not denies(payload, "Analytics")
