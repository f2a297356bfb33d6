"""The pure pieces of `journeys bench aggregates` and the rollup-cost phase of `bench stitch`."""

from __future__ import annotations

from datetime import date
from urllib.parse import parse_qs, urlsplit

import pytest
import typer

from app.bench import aggregates as agg
from app.bench import stitch
from app.bench.lookup import LookupPhase

START, END = date(2026, 8, 26), date(2026, 11, 23)
BREAKDOWN = "trait:marketing_opt_in"


def _query(path: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}


def test_endpoints_cover_every_route_with_and_without_the_breakdown() -> None:
    found = agg.endpoints(START, END, BREAKDOWN)
    names = [e.name for e in found]
    assert names[0] == "healthz" and found[0].path == "/healthz"
    assert len(names) == len(set(names))
    for route in ("stages", "funnel-stages", "funnel-events", "channels", "journey-map"):
        assert route in names and f"{route}+bd" in names
    for model in agg.ATTRIBUTION_MODELS:
        assert f"attribution-{model}" in names
    assert {"attribution-linear+bd", "attribution-time_decay+bd"} <= set(names)
    assert "dropoff" in names and "dropoff+bd" in names and "dropoff-customers" in names
    by_name = {e.name: e for e in found}
    stages = _query(by_name["stages+bd"].path)
    assert stages == {"from": "2026-08-26", "to": "2026-11-23", "breakdown": BREAKDOWN}
    assert "breakdown" not in _query(by_name["stages"].path)
    funnel = _query(by_name["funnel-events"].path)
    assert funnel["steps"] == agg.EVENT_FUNNEL and funnel["window"] == "14d"
    assert " " not in by_name["funnel-events"].path  # spaces are encoded for wrk
    customers = _query(by_name["dropoff-customers"].path)
    assert customers == {"customers": "true", "stage": "consideration"}
    assert by_name["funnel-stages"].reads == "customers"
    assert by_name["journey-map"].reads == "rollups + 1 day"
    assert by_name["channels"].reads == "rollups"


def test_select_keeps_healthz_and_takes_prefixes() -> None:
    found = agg.endpoints(START, END, BREAKDOWN)
    assert agg.select(found, None) == found
    chosen = [e.name for e in agg.select(found, "attribution,stages")]
    assert chosen[0] == "healthz"
    assert "stages" in chosen and "stages+bd" in chosen
    assert sum(n.startswith("attribution-") for n in chosen) == 7
    assert "funnel-stages" not in chosen
    with pytest.raises(typer.BadParameter):
        agg.select(found, "nope")


def test_digest_summarises_each_answer_kind() -> None:
    stages = {"stages": [{"stage": "awareness", "entered": 1200, "customers": 3}]}
    assert agg.digest(stages) == "entered awareness 1,200"
    grouped = {"breakdown": BREAKDOWN, "groups": [{"value": "true", **stages}, {"value": None}]}
    assert agg.digest(grouped).startswith("2 groups (true, none); first: entered awareness")
    funnel = {"steps": [{"customers": 10}, {"customers": 4}]}
    assert agg.digest(funnel) == "customers per step 10 → 4"
    attribution = {"conversions": 7, "channels": [{"channel": "Email", "credit": 3.5}]}
    assert agg.digest(attribution) == "7 conversions, 1 channels; top Email 3.5"
    assert agg.digest({"channels": [{"touches": 5}, {"touches": 6}]}) == "2 channels, 11 touches"
    dropoff = {"stages": [{"stage": "purchase", "stalled": 3, "threshold_seconds": 1}]}
    assert agg.digest(dropoff) == "stalled purchase 3"
    assert agg.digest({"customers": [{}, {}], "next_cursor": "x"}) == "2 customers (more pages)"
    assert agg.digest({"status": "ok"}) == "ok"


def test_lua_script_gets_the_path_with_the_key_and_reports() -> None:
    script = agg.lua_script("/v1/aggregates/stages?from=2026-08-26", "Bearer rk_x")
    assert 'wrk.format("GET", path, headers)' in script
    assert "Bearer rk_x" in script and "/v1/aggregates/stages?from=2026-08-26" in script
    assert "JOURNEYS_WRK_RESULT" in script
    assert "Authorization" not in agg.lua_script("/healthz", None)


def test_lua_script_sends_the_no_cache_header_as_a_header() -> None:
    script = agg.lua_script("/v1/aggregates/stages", "Bearer rk_x", agg.UNCACHED)
    # A key written `[[=[...]=]]` would open a Lua long string: the header would be lost.
    assert "[ [=[Cache-Control]=] ] = [=[no-cache]=]," in script
    assert "[[" not in script.replace("[[=[", "")


def _phase(
    name: str, rps: float, p99: float, *, cpu: dict[str, float] | None = None
) -> LookupPhase:
    return LookupPhase(
        name=name,
        label=name,
        connections=4,
        seconds=10.0,
        requests=int(rps * 10),
        requests_per_s=rps,
        p50_ms=p99 / 2,
        p90_ms=p99 * 0.8,
        p99_ms=p99,
        max_ms=p99 * 2,
        non2xx=0,
        socket_errors={"connect": 0, "timeout": 0},
        cpu_pct=cpu or {"server": 95.0, "postgres": 40.0, "other": 0.0},
    )


def _report() -> agg.AggregatesBenchReport:
    report = agg.AggregatesBenchReport(
        started_at="2026-11-23T14:00:00+00:00",
        machine={"cores": 2, "cpu": "x", "memory_gb": 1, "python": "3.11"},
        database="PostgreSQL 15",
        dataset={
            "customers": 1000,
            "events": 10000,
            "spec": {"days": 180},
            "archetype_stats": {},
            "reused": False,
        },
        breakdowns=["trait:persona", BREAKDOWN],
        breakdown=BREAKDOWN,
        window={"from": "2026-08-26", "to": "2026-11-23", "days": "90"},
        stitch={
            "events": 10000,
            "seconds": 5.0,
            "events_per_s": 2000.0,
            "batch_size": 2000,
            "batch_p50_ms": 900.0,
            "batch_p99_ms": 1000.0,
            "vacuum_analyze_s": 1.0,
        },
    )
    report.endpoints = [
        {"name": "healthz", "label": "GET /healthz", "reads": "floor", "bytes": 15, "digest": "ok"},
        {
            "name": "stages",
            "label": "stages",
            "reads": "rollups",
            "bytes": 700,
            "digest": "",
            "ms_once": 30.0,
            "ms_hit": 2.0,
            "ms_uncached": 25.0,
        },
        {
            "name": "funnel-events",
            "label": "funnel",
            "reads": "customers",
            "bytes": 600,
            "digest": "",
            "mode": "sequential",
        },
    ]
    report.phases = [
        _phase("healthz", 5000, 2.0),
        _phase("stages", 500, 18.0),
        _phase("funnel-events", 0.5, 2400.0),
        _phase("stages", 400, 22.0),
        _phase("stages~uncached", 100, 61.0),
    ]
    return report


def test_judge_takes_medians_and_names_the_endpoints_over_the_target() -> None:
    report = _report()
    agg.judge(report)
    assert report.ok
    assert report.summary["stages"].p99_ms == pytest.approx(20.0)
    served, uncached = report.targets
    assert "as served" in served["target"] and "uncached" in uncached["target"]
    assert not served["met"] and not uncached["met"]
    assert "funnel-events (2400.0 ms)" in served["measured"]
    assert "stages" not in served["measured"].split("missed by")[1]
    # Uncached: the cached endpoint's no-cache phase, and the endpoints without a cache.
    assert "stages (61.0 ms)" in uncached["measured"]
    assert "funnel-events (2400.0 ms)" in uncached["measured"]


def test_judge_timeouts_are_findings_other_socket_errors_failures() -> None:
    report = _report()
    report.phases[2].socket_errors = {"timeout": 3, "connect": 0}
    agg.judge(report)
    assert report.ok and any("timed out" in w for w in report.warnings)
    report = _report()
    report.phases[1].socket_errors = {"connect": 2}
    agg.judge(report)
    assert not report.ok


def test_markdown_tables() -> None:
    report = _report()
    report.row_counts = {
        table: {
            "rows": 100,
            "total": 40,
            "breakdown": 60,
            "window": 20,
            "window_breakdown": 30,
            "days": 180,
            "groups": 3,
        }
        for table in agg.ROLLUP_TABLES
    }
    agg.judge(report)
    text = agg.markdown(report)
    assert "| GET /healthz | floor | - | 5,000.0 |" in text
    assert "| stages | rollups | 30.0 | 450.0 | 10.00 | 20.00 | 100.0 | 30.50 | 61.00 |" in text
    assert "| 700 | yes / **NO** |" in text
    assert "as served: 5 requests one at a time" in text
    assert "| agg_touch_days | 100 | 40 | 60 | 20 | 30 | 180 | 3 |" in text
    assert "MISSED: p99 < 50 ms" in text
    assert "medians of" not in text
    report.rounds = 2
    assert "medians of 2 rounds" in agg.markdown(report)


def test_maintenance_is_geometric_with_a_cap() -> None:
    assert not agg.maintenance_due(agg.MAINTAIN_FIRST - 1, 0)
    assert agg.maintenance_due(agg.MAINTAIN_FIRST, 0)
    assert not agg.maintenance_due(14_000, 10_000)
    assert agg.maintenance_due(15_000, 10_000)
    assert agg.maintenance_due(300_000, 200_000)  # the cap, before 1.5x
    assert not agg.maintenance_due(299_000, 200_000)


def test_cpu_per_request() -> None:
    p = _phase("stages", 500, 10.0, cpu={"server": 100.0, "postgres": 50.0})
    assert agg.cpu_us_per_request(p, "server") == pytest.approx(2000.0)
    assert agg.cpu_us_per_request(p, "postgres") == pytest.approx(1000.0)
    assert agg.cpu_us_per_request(p, "wrk") is None


# --------------------------------------------------------------------------- rollup cost


def _stitch_phase(
    rate: float, *, rollups: bool, bench_pct: float = 80.0, cpu: dict[str, float] | None = None
) -> stitch.StitchPhase:
    return stitch.StitchPhase(
        events=10_000,
        workspace_events=10_000,
        batches=5,
        seconds=10_000 / rate,
        events_per_s=rate,
        batch_p50_ms=800.0,
        batch_p99_ms=900.0,
        batch_max_ms=950.0,
        batch_size=2_000,
        customers=1_000,
        journey_rows=10_000,
        first_received=None,
        last_received=None,
        feed_remaining=0,
        cpu_pct=cpu if cpu is not None else {"bench": bench_pct, "postgres": 20.0, "other": 0.0},
        queries=[{"function": "apply_deltas", "ms_per_batch": 70.0}],
        rollups=rollups,
    )


def test_cpu_per_event_compares_the_stitch_and_ingest_phases() -> None:
    # 10,000 events in 2 s: 60 % of a core is 120 µs per event, 20 % is 40 µs.
    phase = _stitch_phase(5_000.0, rollups=True, bench_pct=60.0)
    # 20,000 events/s: 100 % of a core is 50 µs per event.
    ingest = {"events_per_s": 20_000.0, "cpu_pct": {"server": 100.0, "postgres": 60.0, "wrk": 4.0}}
    c = stitch.cpu_per_event(phase, ingest, cores=2)
    assert c is not None
    assert c["stitch_us"] == pytest.approx({"stitcher": 120.0, "postgres": 40.0, "total": 160.0})
    assert c["ingest_us"] == pytest.approx(
        {"server": 50.0, "postgres": 30.0, "wrk": 2.0, "total": 82.0}
    )
    assert c["stitch_postgres_share_of_ingest_pct"] == pytest.approx(100 * 40 / 82)
    # Two cores kept busy at 160 µs per event: 12,500 events/s, 0.625 of the ingest rate.
    assert c["every_core_events_per_s"] == pytest.approx(12_500.0)
    assert c["every_core_ratio"] == pytest.approx(0.625)


def test_cpu_per_event_needs_both_phases_cpu() -> None:
    ingest = {"events_per_s": 20_000.0, "cpu_pct": {"server": 100.0}}
    no_postgres = _stitch_phase(5_000.0, rollups=True, cpu={"bench": 60.0})
    assert stitch.cpu_per_event(no_postgres, ingest, cores=2) is None
    phase = _stitch_phase(5_000.0, rollups=True)
    assert stitch.cpu_per_event(phase, ingest, cores=2) is not None
    assert stitch.cpu_per_event(phase, {"events_per_s": 0.0, "cpu_pct": {}}, cores=2) is None


def test_rollup_cost_order_alternates() -> None:
    assert stitch.rollup_cost_order(1) == [False]
    assert stitch.rollup_cost_order(2) == [False, True, False]
    assert stitch.rollup_cost_order(3).count(True) == 2


def test_rollup_cost_is_one_minus_the_ratio_of_medians() -> None:
    assert stitch.rollup_cost_pct(2000, 2500) == pytest.approx(20.0)
    assert stitch.rollup_cost_pct(2000, 0) is None
    cost = stitch.RollupCost(
        with_rollups=[_stitch_phase(2000, rollups=True), _stitch_phase(2200, rollups=True)],
        without_rollups=[_stitch_phase(2500, rollups=False), _stitch_phase(2700, rollups=False)],
        order=["with", "without", "with", "without"],
    )
    stitch.summarise_rollup_cost(cost)
    assert cost.with_events_per_s == pytest.approx(2100)
    assert cost.without_events_per_s == pytest.approx(2600)
    assert cost.cost_pct == pytest.approx(100 * (1 - 2100 / 2600))
    assert cost.cpu_cost_pct is not None and 0 < cost.cpu_cost_pct < 30
    lines = "\n".join(stitch.rollup_cost_markdown(cost))
    assert lines.count("| with |") == 2 and lines.count("| without |") == 2
    assert "| 70.0 |" in lines  # the rollup SQL per batch
    assert "rollup_cost_pct" in lines and "19.2 %" in lines


def test_stitch_bench_resets_every_derived_table() -> None:
    from app.bench.dataset import BENCH_DERIVED_TABLES
    from app.journeys.rebuild import DERIVED_TABLES

    assert set(DERIVED_TABLES) <= set(BENCH_DERIVED_TABLES)
    for table in ("stage_entries", *agg.ROLLUP_TABLES):
        assert table in BENCH_DERIVED_TABLES
