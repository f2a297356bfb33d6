"""The collector pause around stitch batches: nested and interleaved pieces of work."""

from __future__ import annotations

import asyncio
import gc

import pytest

from app.core.memory import collector_paused


def test_paused_inside_and_enabled_after() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_enabled_again_after_an_error() -> None:
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("batch failed")
    assert gc.isenabled()


async def test_interleaved_batches_enable_only_when_the_last_ends() -> None:
    """Two shards' batches overlap on one event loop: the first to end must not turn the
    collector back on under the other."""
    first_in = asyncio.Event()
    second_in = asyncio.Event()
    first_out = asyncio.Event()
    seen: list[bool] = []

    async def first() -> None:
        with collector_paused():
            first_in.set()
            await second_in.wait()
        first_out.set()

    async def second() -> None:
        await first_in.wait()
        with collector_paused():
            second_in.set()
            await first_out.wait()
            seen.append(gc.isenabled())
        seen.append(gc.isenabled())

    await asyncio.gather(first(), second())
    assert seen == [False, True]


def test_collections_that_came_due_during_a_pause_run_after_it() -> None:
    """What the pause relies on: garbage cycles made during a batch are not left behind, the
    first allocation after it runs the collection that came due."""
    started: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    thresholds = gc.get_threshold()
    gc.collect()
    gc.set_threshold(1_000, 10, 10)
    gc.callbacks.append(seen)
    try:
        with collector_paused():
            batch: list[list[int]] = [[] for _ in range(5_000)]  # (5x the young threshold)
            assert started == []
        del batch
        after: list[list[int]] = [[]]
        assert started, "no collection after the pause"
        assert after
    finally:
        gc.callbacks.remove(seen)
        gc.set_threshold(*thresholds)
