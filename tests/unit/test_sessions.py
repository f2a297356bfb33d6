"""Sessions: idle timeout, campaign change, 24-hour cap, deterministic ids, order independence."""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from app.journeys.model import StitchEvent
from app.journeys.sessions import assign_sessions, campaign_key, session_id

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
GOOGLE_CPC = {"source": "google", "medium": "cpc", "name": "spring"}
NEWSLETTER = {"source": "newsletter", "medium": "email", "name": "may"}


def ev(
    message_id: str,
    at: timedelta,
    *,
    campaign: dict[str, str] | None = None,
    page_url: str | None = None,
    event: str | None = "Product Viewed",
    is_bot: bool = False,
) -> StitchEvent:
    return StitchEvent(
        message_id=message_id,
        type="track",
        event=event,
        timestamp=T0 + at,
        anonymous_id="d1",
        campaign=campaign or {},
        page_url=page_url,
        is_bot=is_bot,
    )


def groups(events: list[StitchEvent]) -> list[list[str]]:
    """Message ids grouped by session, in event order."""
    assigned = assign_sessions(events)
    out: dict[str, list[str]] = {}
    for e in sorted(events, key=lambda x: (x.timestamp, x.message_id)):
        out.setdefault(assigned[e.message_id], []).append(e.message_id)
    return list(out.values())


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def test_session_id_is_derived_from_the_first_event() -> None:
    expected = "ses_" + hashlib.sha256(b"m1").hexdigest()[:16]
    assert session_id("m1") == expected
    events = [ev("m2", minutes(5)), ev("m1", minutes(0))]
    assert assign_sessions(events) == {"m1": expected, "m2": expected}


def test_thirty_minutes_idle_starts_a_new_session() -> None:
    events = [
        ev("a", minutes(0)),
        ev("b", minutes(29) + timedelta(seconds=59)),
        ev("c", minutes(59) + timedelta(seconds=59)),
        ev("d", minutes(120)),
    ]
    assert groups(events) == [["a", "b"], ["c"], ["d"]]


def test_a_new_campaign_starts_a_new_session() -> None:
    events = [
        ev("a", minutes(0)),
        ev("b", minutes(1), campaign=GOOGLE_CPC),
        ev("c", minutes(2)),
        ev("d", minutes(3), campaign={"source": "Google", "medium": "CPC", "name": "Spring"}),
        ev("e", minutes(4), campaign=NEWSLETTER),
        ev("f", minutes(5), campaign={**NEWSLETTER, "term": "shoes"}),
    ]
    assert groups(events) == [["a"], ["b", "c", "d"], ["e", "f"]]


def test_campaign_from_page_url_when_context_has_none() -> None:
    url = "https://shop.example.com/sale?utm_source=newsletter&utm_medium=email&utm_campaign=may"
    events = [
        ev("a", minutes(0), page_url="https://shop.example.com/"),
        ev("b", minutes(1), page_url=url),
    ]
    assert groups(events) == [["a"], ["b"]]
    assert campaign_key(events[1]) == ("newsletter", "email", "may")
    assert campaign_key(events[0]) is None


def test_sessions_are_capped_at_24_hours() -> None:
    events = [ev(f"m{i:03d}", minutes(20 * i)) for i in range(80)]  # every 20 min for 26h20
    split = groups(events)
    assert [len(g) for g in split] == [72, 8]
    assert split[1][0] == "m072"  # 72 * 20 min = exactly 24 h after the first


def test_bots_and_email_opens_still_get_sessions() -> None:
    events = [ev("a", minutes(0), is_bot=True), ev("b", minutes(1), event="Email Opened")]
    assert groups(events) == [["a", "b"]]


def test_no_events_no_sessions() -> None:
    assert assign_sessions([]) == {}


@st.composite
def visits(draw: st.DrawFn) -> list[StitchEvent]:
    count = draw(st.integers(0, 30))
    return [
        ev(
            f"m{i:02d}",
            minutes(draw(st.one_of(st.integers(0, 3 * 24 * 60), st.sampled_from((0, 30, 60))))),
            campaign=draw(st.sampled_from((None, GOOGLE_CPC, NEWSLETTER))),
        )
        for i in range(count)
    ]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_sessions_are_the_same_for_any_permutation(data: st.DataObject) -> None:
    events = data.draw(visits())
    shuffled = data.draw(st.permutations(events))
    assert assign_sessions(shuffled) == assign_sessions(events)


@settings(max_examples=200, deadline=None)
@given(visits())
def test_sessions_are_contiguous_and_bounded(events: list[StitchEvent]) -> None:
    split = groups(events)
    by_id = {e.message_id: e for e in events}
    assert sum(len(g) for g in split) == len(events)
    for group in split:
        times = [by_id[m].timestamp for m in group]
        assert times[-1] - times[0] < timedelta(hours=24)
        assert all(b - a < minutes(30) for a, b in itertools.pairwise(times))
        assert assign_sessions(events)[group[0]] == session_id(group[0])
