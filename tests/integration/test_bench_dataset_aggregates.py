"""The aggregates bench's dataset: archetypes stitched by the real stitcher, copied in SQL with
their contributions, rollups summed from those; the copy must equal what the stitcher makes of
the same raw events, and the checks must catch a copy that does not."""

from __future__ import annotations

import asyncpg
import orjson
from rich.console import Console

from app.bench import dataset as ds
from app.db.engine import asyncpg_dsn


async def test_the_copied_aggregates_state_is_the_real_stitchers(database_url: str) -> None:
    console = Console(quiet=True)
    spec = ds.DatasetSpec(
        customers=600, archetypes=150, days=60, breakdowns=("trait:marketing_opt_in",)
    )
    data = await ds.generate(database_url, spec, "aggregates", console)
    dsn = asyncpg_dsn(database_url)
    conn = await asyncpg.connect(dsn)
    try:
        ws = data.workspace_id
        assert data.customers == 600 and data.events > 0
        with_facts = await conn.fetchval(
            "SELECT count(*) FROM customers WHERE workspace_id = $1 AND facts IS NOT NULL", ws
        )
        assert with_facts == 600
        assert await conn.fetchval("SELECT count(*) FROM stage_entries WHERE workspace_id = $1", ws)
        for table in ("agg_stage_days", "agg_stage_durations", "agg_touch_days"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE workspace_id = $1", ws)

        sample = await ds.verify_sample(database_url, ws, 40, console)
        assert sample["identical"], sample["mismatches"]
        assert "customers.facts" not in str(sample["mismatches"])
        rollups = await ds.verify_rollups(database_url, ws, console)
        assert rollups["identical"], rollups["mismatches"]

        # A contribution that is off by one touch: both checks must see it.
        row = await conn.fetchrow(
            "SELECT customer_id, facts FROM customers WHERE workspace_id = $1 "
            "AND facts IS NOT NULL ORDER BY customer_id LIMIT 1",
            ws,
        )
        facts = orjson.loads(row["facts"])
        facts["t"][0][3] += 1  # touches of its first touch key
        await conn.execute(
            "UPDATE customers SET facts = $3 WHERE workspace_id = $1 AND customer_id = $2",
            ws,
            row["customer_id"],
            orjson.dumps(facts),
        )
        rollups = await ds.verify_rollups(database_url, ws, console)
        assert not rollups["identical"]
        assert any(m.get("table") == "agg_touch_days" for m in rollups["mismatches"])
        sample = await ds.verify_sample(database_url, ws, 600, console)
        assert [m["table"] for m in sample["mismatches"]] == ["customers.facts"]
    finally:
        await conn.close()
        await ds.drop_workspace_data(dsn, data.workspace_id)
