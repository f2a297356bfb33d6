"""Garbage-collector settings for the long-running processes (server and stitcher worker)."""

from __future__ import annotations

import gc

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
