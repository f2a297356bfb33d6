"""Garbage-collector settings for the long-running processes (server and stitcher worker)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# A batch request (or a stitch batch) allocates thousands of dicts and lists that live until its
# COMMIT, so with the default thresholds the collector ran a full collection of every module,
# class and SQLAlchemy mapping every few requests: a third of the ingest CPU and 100+ ms stalls
# (track p99).
_GC_THRESHOLDS = (20_000, 20, 20)
_gc_tuned = False


def tune_gc() -> None:
    """Once per process, after start-up: move what start-up built out of the collector's sight
    and collect young objects less often (garbage cycles are rare on the hot path)."""
    global _gc_tuned
    if _gc_tuned:
        return
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


# How many pieces of work are running with the collector paused (coroutines of one event loop:
# the collector runs again when the last one ends).
_paused = 0


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic collector for a bounded piece of work that builds many objects living
    until its end, such as a stitch batch: reference counting frees them when it ends, and
    the collector would only have traversed them again and again meanwhile (at the stitcher's
    rate, three young-generation collections per batch and their promotions cost about 8 µs
    per event, measured). Garbage cycles made meanwhile wait: the allocation counts go on
    while the collector is off, so the first allocations after the last piece of work ends
    run the collections that came due, between batches (a stitcher that never idles still
    leaves the pause between two batches)."""
    global _paused
    _paused += 1
    if _paused == 1:
        gc.disable()
    try:
        yield
    finally:
        _paused -= 1
        if _paused == 0:
            gc.enable()
