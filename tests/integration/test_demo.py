"""`journeys demo` end to end: the real command sends its journeys through the HTTP API of a real
uvicorn (in-process stitcher on), waits for the stitcher, and the stored state must hold every
event once, one customer per generated journey, each in the stage the generator planned (which
the unit tests check against the pure stage engine), with all six stages present."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from app.demo.generator import STAGES, generate
from tests.conftest import ROOT, LiveServer, free_port, new_workspace

pytestmark = pytest.mark.slow

CUSTOMERS = 60
SEED = 11


async def run_demo(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`journeys demo ARGS` in a subprocess (the console script's own entry point)."""
    environment = {**os.environ, "JOURNEYS_LOG_LEVEL": "warning", **(env or {})}
    environment.pop("JOURNEYS_WRITE_KEY", None)
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "demo", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
    )


def summary_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert isinstance(body, dict)
    return body


async def test_demo_journeys_are_accepted_and_stitched(
    database_url: str, db: asyncpg.Connection
) -> None:
    workspace = await new_workspace(database_url, "demo-test")
    server = LiveServer(database_url)
    try:
        done = await run_demo(
            "--customers", str(CUSTOMERS), "--days", "20", "--seed", str(SEED),
            "--url", server.url, "--write-key", workspace.write_key, "--gzip", "--json",
        )  # fmt: skip
    finally:
        server.stop()
    summary = summary_of(done)
    dataset = generate(customers=CUSTOMERS, days=20, seed=SEED, now=datetime.now(UTC))

    assert summary["events"] == summary["accepted"] == dataset.event_count
    assert summary["rejected"] == []
    assert summary["stitched"] is True
    planned = Counter(c.planned_stage for c in dataset.customers)
    assert summary["planned_stages"] == {stage: planned[stage] for stage in STAGES}

    ws = workspace.workspace_id
    stored = await db.fetchval("SELECT count(*) FROM events WHERE workspace_id = $1", ws)
    timeline = await db.fetchval("SELECT count(*) FROM journey_events WHERE workspace_id = $1", ws)
    customers = await db.fetchval("SELECT count(*) FROM customers WHERE workspace_id = $1", ws)
    assert stored == timeline == dataset.event_count
    assert customers == CUSTOMERS
    assert (
        await db.fetchval("SELECT count(*) FROM stitch_failures WHERE workspace_id = $1", ws) == 0
    )

    rows = await db.fetch(
        "SELECT i.kind, i.value, c.customer_id, c.stage FROM identities i"
        " JOIN customers c USING (workspace_id, customer_id)"
        " WHERE i.workspace_id = $1 AND i.kind IN ('user_id', 'anonymous_id')",
        ws,
    )
    found = {(r["kind"], r["value"]): (r["customer_id"], r["stage"]) for r in rows}
    stages: dict[int, str] = {}
    owners: set[str] = set()
    for c in dataset.customers:
        customer_id, stage = found[c.identifier]
        # Every identifier of the journey (both devices) belongs to that one customer.
        for anonymous_id in c.anonymous_ids:
            assert found[("anonymous_id", anonymous_id)][0] == customer_id
        owners.add(customer_id)
        stages[c.index] = stage
    assert len(owners) == CUSTOMERS
    assert stages == {c.index: c.planned_stage for c in dataset.customers}
    assert set(stages.values()) == set(STAGES)


async def test_demo_without_a_key_uses_a_demo_workspace(
    database_url: str, db: asyncpg.Connection
) -> None:
    server = LiveServer(database_url)
    env = {"JOURNEYS_DATABASE_URL": database_url}
    try:
        first = summary_of(
            await run_demo("--customers", "3", "--seed", "1", "--url", server.url, "--no-wait",
                           "--json", env=env)
        )  # fmt: skip
        again = summary_of(
            await run_demo("--customers", "3", "--seed", "2", "--url", server.url, "--no-wait",
                           "--json", env=env)
        )  # fmt: skip
    finally:
        server.stop()
    created, reused = first["workspace"], again["workspace"]
    assert created["name"] == reused["name"] == "demo"
    assert created["workspace_id"] == reused["workspace_id"]
    assert created["created"] is True and created["server_key"].startswith("js_")
    assert reused["created"] is False and reused["server_key"] is None
    assert reused["write_key"] != created["write_key"]
    assert reused["read_key"].startswith("jr_") and reused["read_key"] != created["read_key"]
    for summary in (first, again):
        assert summary["accepted"] == summary["events"] > 0
        assert summary["stitched"] is None
    stored = await db.fetchval(
        "SELECT count(*) FROM events WHERE workspace_id = $1", created["workspace_id"]
    )
    assert stored == first["events"] + again["events"]


async def test_demo_says_when_the_service_is_not_there() -> None:
    done = await run_demo("--url", f"http://127.0.0.1:{free_port()}", "--write-key", "jw_x")
    assert done.returncode == 1
    assert "no Journeys service" in done.stderr
