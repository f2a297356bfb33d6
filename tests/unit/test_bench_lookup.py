"""`journeys bench lookup` judges its phases: a phase that waited on the disk says so."""

from __future__ import annotations

from typing import Any

from app.bench.lookup import LookupBenchReport, LookupPhase, _judge, _median_phase, markdown


def _phase(name: str, *, machine: float, read: int | None, hit: int | None = 1_000) -> LookupPhase:
    return LookupPhase(
        name=name,
        label=name,
        connections=8,
        seconds=15.0,
        requests=1_000,
        requests_per_s=66.7,
        p50_ms=40.0,
        p90_ms=80.0,
        p99_ms=900.0,
        max_ms=1_500.0,
        non2xx=0,
        socket_errors={},
        cpu_pct={"server": 5.0, "postgres": 5.0, "other": 0.0, "machine": machine},
        blocks_read=read,
        blocks_hit=hit,
    )


def _report(*phases: LookupPhase) -> LookupBenchReport:
    dataset: dict[str, Any] = {
        "customers": 1_000,
        "events": 10_000,
        "spec": {"days": 180},
        "archetype_stats": {},
        "timings": {},
        "reused": True,
        "derived": "test",
    }
    machine = {"cores": 2, "cpu": "test", "memory_gb": 1, "python": "3"}
    report = LookupBenchReport("now", machine, "PostgreSQL", dataset, phases=list(phases))
    _judge(report)
    return report


def test_an_idle_machine_reading_blocks_is_reported_as_waiting_on_the_disk() -> None:
    report = _report(_phase("timeline", machine=12.0, read=50_000))
    assert any("waited on the disk" in w and "50.0 blocks" in w for w in report.warnings)
    text = markdown(report)
    assert "1.0 found in shared_buffers, 50.0 read from outside" in text


def test_a_busy_machine_or_a_cached_phase_is_not() -> None:
    busy = _report(_phase("timeline", machine=160.0, read=50_000))
    cached = _report(_phase("timeline", machine=12.0, read=10))
    unknown = _report(_phase("timeline", machine=12.0, read=None, hit=None))
    for report in (busy, cached, unknown):
        assert not any("disk" in w for w in report.warnings)
    assert "blocks per request" not in markdown(unknown)


def test_medians_add_up_the_block_counts() -> None:
    merged = _median_phase(
        [_phase("stage", machine=150, read=5), _phase("stage", machine=150, read=7)]
    )
    assert (merged.blocks_read, merged.blocks_hit) == (12, 2_000)
    partial = _median_phase(
        [_phase("stage", machine=150, read=5), _phase("stage", machine=1, read=None)]
    )
    assert partial.blocks_read is None
