"""A noisy workspace far over its rate limit gets 429s; another workspace barely notices.

A real uvicorn runs with a small per-workspace rate limit (JOURNEYS_RATE_LIMIT_EVENTS_PER_SECOND
= 20, burst 20); the quiet workspace's row overrides it with a large one. The noisy workspace is
a separate process (so its client never competes with the quiet client's event loop) that sends
batches of 10 events at 30 requests/s: 300 events/s, 15x its limit.

The quiet workspace sends sequential single events and we compare its p99 latency with and
without the neighbour, measured in the same test, back to back:

    p99_loaded <= max(2 * p99_unloaded, p99_unloaded + 15 ms)

Why this bound: on a quiet machine a request takes a few ms, so "2x" alone would fail on a
single scheduler hiccup of the 2-core machine (the noisy client, the server and other
engineers' jobs share it); the +15 ms floor absorbs that while still catching what a missing or
late rate limit causes (the noisy events reaching the group commit, where every batch costs
tens of ms and the quiet requests queue behind them). 300 samples per phase make the p99 the
3rd-slowest request, not a single outlier. A measurement is retried up to 3 times and the test
passes if one attempt holds: real interference fails every attempt, a neighbour's compile job
does not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from app.workspaces.repository import NewWorkspace
from tests.conftest import LiveServer, new_workspace, stop_process

pytestmark = pytest.mark.slow

LIMIT = 20  # events per second, per workspace (the burst is the same)
NOISY_BATCH = 10
NOISY_REQUESTS_PER_SECOND = 30  # 300 events/s: 15x the limit
SAMPLES = 300
WARMUP = 30
ATTEMPTS = 3
FLOOR_MS = 15.0

NOISY = r"""
import json, sys, time
import httpx

url, key, per_second, seconds, size = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:6])
body = {"batch": [{"type": "track", "userId": "noisy", "event": "Spam"}] * int(size)}
statuses, bad_retry_after, sent = {}, 0, 0
with httpx.Client(base_url=url, auth=(key, ""), timeout=10) as client:
    print("started", flush=True)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        r = client.post("/v1/batch", json=body)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code == 429 and not r.headers.get("retry-after", "").isdigit():
            bad_retry_after += 1
        sent += 1
        pause = start + sent / per_second - time.monotonic()  # pacing, not synchronisation
        if pause > 0:
            time.sleep(pause)
    elapsed = time.monotonic() - start
print(json.dumps({"statuses": statuses, "bad_retry_after": bad_retry_after,
                  "requests": sent, "elapsed": elapsed}), flush=True)
"""


@pytest.fixture
def limited_server(database_url: str) -> Iterator[LiveServer]:
    server = LiveServer(
        database_url,
        extra_env={
            "JOURNEYS_RATE_LIMIT_EVENTS_PER_SECOND": str(LIMIT),
            "JOURNEYS_RATE_LIMIT_BURST": str(LIMIT),
            "JOURNEYS_INPROCESS_WORKER": "false",  # only ingest competes for the CPU
        },
    )
    try:
        yield server
    finally:
        server.stop()


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def quiet_latencies(client: httpx.Client) -> list[float]:
    """Milliseconds of SAMPLES sequential single events (after a warm-up)."""
    out = []
    for n in range(WARMUP + SAMPLES):
        started = time.perf_counter()
        r = client.post("/v1/track", json={"userId": f"q{n % 7}", "event": "Product Viewed"})
        elapsed = (time.perf_counter() - started) * 1000
        assert r.status_code == 200, (r.status_code, r.text)  # never limited by the neighbour
        if n >= WARMUP:
            out.append(elapsed)
    return out


def start_noisy(url: str, key: str, seconds: float) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            NOISY,
            url,
            key,
            str(NOISY_REQUESTS_PER_SECOND),
            str(seconds),
            str(NOISY_BATCH),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "started"
    return process


async def test_noisy_neighbour_gets_429_and_the_quiet_one_keeps_its_latency(
    limited_server: LiveServer, database_url: str, db: asyncpg.Connection
) -> None:
    noisy: NewWorkspace = await new_workspace(database_url, "noisy")
    quiet: NewWorkspace = await new_workspace(database_url, "quiet")
    # The quiet workspace has a limit it never reaches; the noisy one the server's default.
    await db.execute(
        "UPDATE workspaces SET rate_limit_per_second = 1000000 WHERE id = $1", quiet.workspace_id
    )
    attempts: list[tuple[float, float, float]] = []
    with httpx.Client(base_url=limited_server.url, auth=(quiet.write_key, ""), timeout=10) as qc:
        for _ in range(ATTEMPTS):
            t0 = time.monotonic()
            unloaded = quiet_latencies(qc)
            # The neighbour must outlast the loaded measurement by far (it stops by itself).
            seconds = max(4.0, 5 * (time.monotonic() - t0))
            process = start_noisy(limited_server.url, noisy.write_key, seconds)
            try:
                loaded = quiet_latencies(qc)
                assert process.poll() is None, "the noisy neighbour stopped before we measured"
                out, _ = process.communicate(timeout=seconds + 30)
            finally:
                if process.poll() is None:
                    stop_process(process, grace=5)  # type: ignore[arg-type]
            report = json.loads(out.strip().splitlines()[-1])

            # The neighbour was really noisy (≥ 10x its limit), and was refused with 429s.
            statuses = {int(k): v for k, v in report["statuses"].items()}
            offered = report["requests"] * NOISY_BATCH / report["elapsed"]
            assert offered >= 10 * LIMIT, f"only {offered:.0f} events/s offered"
            assert set(statuses) <= {200, 429}, statuses
            assert statuses.get(429, 0) > 0 and report["bad_retry_after"] == 0, report
            accepted = statuses.get(200, 0) * NOISY_BATCH
            # At most the burst plus the rate (+1 s of slack) got through.
            assert accepted <= LIMIT + LIMIT * (report["elapsed"] + 1) + NOISY_BATCH, report

            base, under_load = p99(unloaded), p99(loaded)
            bound = max(2 * base, base + FLOOR_MS)
            attempts.append((base, under_load, bound))
            if under_load <= bound:
                break
    print("noisy neighbour: quiet p99 (unloaded, loaded, bound) ms per attempt:", attempts)
    base, under_load, bound = attempts[-1]
    assert under_load <= bound, (
        "quiet p99 (unloaded ms, loaded ms, bound ms) per attempt: "
        + ", ".join(f"({b:.1f}, {u:.1f}, {m:.1f})" for b, u, m in attempts)
    )
