"""`journeys bench stitch`: the CPU-per-event comparison of the stitch and ingest phases."""

from __future__ import annotations

import pytest

from app.bench.stitch import StitchPhase, cpu_per_event


def _phase(cpu_pct: dict[str, float], *, events: int, seconds: float) -> StitchPhase:
    return StitchPhase(
        events=events,
        workspace_events=events,
        batches=events // 2_000,
        seconds=seconds,
        events_per_s=events / seconds,
        batch_p50_ms=0.0,
        batch_p99_ms=0.0,
        batch_max_ms=0.0,
        batch_size=2_000,
        customers=0,
        journey_rows=events,
        first_received=None,
        last_received=None,
        feed_remaining=0,
        cpu_pct=cpu_pct,
    )


def test_cpu_per_event_compares_both_phases_and_bounds_the_ratio() -> None:
    # 100,000 events in 20 s: 60 % of a core is 120 µs per event, 40 % is 80 µs.
    stitch = _phase({"bench": 60.0, "postgres": 40.0}, events=100_000, seconds=20.0)
    # 20,000 events/s: 100 % of a core is 50 µs per event.
    ingest = {"events_per_s": 20_000.0, "cpu_pct": {"server": 100.0, "postgres": 60.0, "wrk": 4.0}}
    c = cpu_per_event(stitch, ingest, cores=2)
    assert c is not None
    assert c["stitch_us"] == pytest.approx({"stitcher": 120.0, "postgres": 80.0, "total": 200.0})
    assert c["ingest_us"] == pytest.approx(
        {"server": 50.0, "postgres": 30.0, "wrk": 2.0, "total": 82.0}
    )
    assert c["stitch_postgres_share_of_ingest_pct"] == pytest.approx(100 * 80 / 82)
    # Two cores kept busy at 200 µs per event: 10,000 events/s, half the ingest rate.
    assert c["every_core_events_per_s"] == pytest.approx(10_000.0)
    assert c["every_core_ratio"] == pytest.approx(0.5)


def test_cpu_per_event_needs_both_phases_cpu() -> None:
    stitch = _phase({"bench": 60.0}, events=100_000, seconds=20.0)
    ingest = {"events_per_s": 20_000.0, "cpu_pct": {"server": 100.0}}
    assert cpu_per_event(stitch, ingest, cores=2) is None
    complete = _phase({"bench": 60.0, "postgres": 40.0}, events=100_000, seconds=20.0)
    assert cpu_per_event(complete, {"events_per_s": 0.0, "cpu_pct": {}}, cores=2) is None
