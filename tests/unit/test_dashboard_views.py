"""The dashboard's pure presentation helpers: numbers, breakdown groups, profile search
candidates, the timeline drawing and the chart data block."""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.dashboard import views


def test_figures_read_at_a_glance() -> None:
    assert views.count(None) == "—" and views.count(12345.4) == "12,345"
    assert views.percent(None) == "—" and views.percent(0.4567, 1) == "45.7%"
    assert [views.duration(s) for s in (None, 42, 720, 5 * 3600, 14 * 86400, 1.5 * 86400)] == [
        "—",
        "42 s",
        "12 min",
        "5.0 h",
        "14 d",
        "1.5 d",
    ]
    assert views.signed(42) == "+42" and views.signed(-7.0) == "-7"
    assert views.timestamp("2026-01-05T08:01:00+00:00") == "2026-01-05 08:01 UTC"
    assert views.timestamp("not a time") == "not a time"


def test_feedback_is_coloured_by_its_scale() -> None:
    assert [views.tone("nps", v) for v in (50, 10, -20, None)] == ["good", "ok", "bad", "none"]
    assert [views.tone("csat", v) for v in (4.5, 3.2, 2.0)] == ["good", "ok", "bad"]
    badges = views.feedback_badges(
        {"responses": 3, "nps": 40.0, "csat": 2.5, "effort": 3.0, "success_rate": None,
         "sentiment": -0.5}
    )  # fmt: skip
    assert [(b.label, b.text, b.tone) for b in badges] == [
        ("NPS", "+40", "good"),
        ("CSAT", "2.5/5", "bad"),
        ("CES", "3.0", "neutral"),
        ("Sentiment", "-0.50", "bad"),
    ]
    assert views.feedback_badges(None) == []


def test_groups_of_a_breakdown_answer() -> None:
    answer = {"groups": [{"value": "a", "n": 1}, {"value": None, "n": 2}]}
    assert views.pick_group(answer, None, {}).body == {"value": "a", "n": 1}
    assert views.pick_group(answer, "", {}).body == {"value": None, "n": 2}
    missing = views.pick_group(answer, "zzz", {"n": 0})
    assert missing.body == {"n": 0} and missing.values == ["a", None]
    plain = views.pick_group({"n": 5}, None, {})
    assert plain.body == {"n": 5} and plain.values == []
    assert views.value_label(None) == views.value_label("") == "(no value)"


def test_profile_search_tries_kind_value_then_email_then_user_id() -> None:
    assert views.identifier_candidates("  ") == []
    assert views.identifier_candidates("ann@example.com") == [
        "email:ann@example.com",
        "user_id:ann@example.com",
    ]
    assert views.identifier_candidates("anonymous_id:a:1") == [
        "anonymous_id:a:1",
        "email:anonymous_id:a:1",
        "user_id:anonymous_id:a:1",
    ]
    assert views.identifier_candidates("my id: 7")[0] == "email:my id: 7"


def test_timeline_bands_follow_the_stage_history() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    history = [
        {"stage": "awareness", "entered_at": t0.isoformat()},
        {"stage": "purchase", "entered_at": (t0 + timedelta(days=5)).isoformat()},
    ]
    events = [
        {"timestamp": t0.isoformat(), "channel": "Email", "event": "Email Link Clicked"},
        {"timestamp": (t0 + timedelta(days=10)).isoformat(), "channel": None, "type": "page"},
    ]
    chart = views.timeline_chart(history, events, ["awareness", "consideration", "purchase"])
    assert [b.stage for b in chart.bands] == ["awareness", "purchase"]
    assert chart.bands[0].x == chart.left
    assert chart.bands[1].x == chart.bands[0].x + chart.bands[0].width
    assert chart.bands[1].colour == views.stage_colour(2)
    assert chart.bands[1].x + chart.bands[1].width == chart.width - 10
    assert [lane.channel for lane in chart.lanes] == ["Email", "Unassigned"]
    assert chart.dots[0].x == chart.left and chart.dots[1].x == chart.width - 10
    empty = views.timeline_chart([], [], [])
    assert empty.bands == [] and empty.dots == []


def test_chart_data_cannot_close_its_script_block() -> None:
    text = views.chart_json({"c": views.chart("bar", ["</script><b>&"], [])})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text)["c"]["labels"] == ["</script><b>&"]


def test_views_are_pure() -> None:
    tree = ast.parse(Path(views.__file__).read_text())
    imported = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert imported <= {"__future__", "json", "collections", "dataclasses", "datetime", "typing"}


def test_the_dashboard_doc_quotes_every_definition() -> None:
    from app.aggregates.service import DEFINITIONS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "dashboard.md").read_text()
    for name, text in DEFINITIONS.items():
        assert f"- **{name}**: {text}\n" in doc, name
