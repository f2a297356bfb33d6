"""Customers rows as wide as the stitcher writes them, for `journeys bench lookup --kind full`.

A "full" dataset (`app.bench.dataset`) leaves `customers.dims` and `customers.facts` empty, so its
rows are narrower than production's (about 475 bytes against about 1,230 at 1M customers) and a
lookup bench on it is flattering. `widen_customers` re-stitches a random sample of the dataset's
customers with the real stitcher (rollups on: it writes `dims` and `facts`) into a scratch
workspace, then gives every customer the `dims` and `facts` of a sampled customer with the same
event count (any sampled customer when none has it), picked by a hash of its id. The sizes and
shapes are real; the contents are another customer's, so a widened workspace is for lookups only
(its aggregates would be wrong). Kind "aggregates" writes each customer's own contribution, but
costs much more to generate.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import asyncpg
import orjson
from rich.console import Console

from app.bench import dataset as ds
from app.db.engine import asyncpg_dsn, make_engine, raw_connection

_WIDEN_SQL = """
UPDATE customers c SET dims = s.dims, facts = s.facts
FROM (
    SELECT c2.customer_id, coalesce(k.event_count, -1) AS ec,
           (hashtext(c2.customer_id)::int8 & 2147483647) % coalesce(k.n, a.n) AS idx
    FROM customers c2
    LEFT JOIN w_count k ON k.event_count = c2.event_count
    CROSS JOIN (SELECT n FROM w_count WHERE event_count = -1) a
    WHERE c2.workspace_id = $1
) p
JOIN w_source s ON s.event_count = p.ec AND s.idx = p.idx
WHERE c.workspace_id = $1 AND c.customer_id = p.customer_id
"""


# What `verify_sample` compares that a widened workspace cannot match: the borrowed contributions
# and the stage entries a "full" dataset does not copy. Every other derived row is still compared.
NOT_COMPARABLE = frozenset({"customers.facts", "stage_entries"})


async def widened(dsn: str, workspace_id: int) -> dict[str, Any] | None:
    """What `widen_customers` recorded for the workspace, or None if it was not widened."""
    conn = await asyncpg.connect(dsn)
    try:
        raw = await conn.fetchval(
            "SELECT settings -> 'bench_widened' FROM workspaces WHERE id = $1", workspace_id
        )
    finally:
        await conn.close()
    return orjson.loads(raw) if raw else None


def split_verification(verification: dict[str, Any]) -> dict[str, Any]:
    """`verify_sample`'s answer for a widened workspace: mismatches of NOT_COMPARABLE tables are
    expected (moved to `not_comparable`); `identical` judges the other tables."""
    mismatches = verification.get("mismatches", [])
    expected = [m for m in mismatches if m.get("table") in NOT_COMPARABLE]
    real = [m for m in mismatches if m.get("table") not in NOT_COMPARABLE]
    return {
        **verification,
        "mismatches": real,
        "not_comparable": sorted(m["table"] for m in expected),
        "identical": not real,
    }


async def facts_filled(dsn: str, workspace_id: int) -> bool:
    """Whether the workspace's customers already carry `facts` (checks the first 1,000)."""
    conn = await asyncpg.connect(dsn)
    try:
        filled = await conn.fetchval(
            "SELECT count(facts) FROM (SELECT facts FROM customers WHERE workspace_id = $1 "
            "LIMIT 1000) c",
            workspace_id,
        )
    finally:
        await conn.close()
    return bool(filled)


async def widen_customers(
    url: str, workspace_id: int, console: Console, *, sample: int = 500
) -> dict[str, Any]:
    """Fill `dims` and `facts` of every customer of the workspace from really stitched ones
    (see the module docstring); returns what was done."""
    from app.journeys.stitch import WorkspaceStitcher
    from app.journeys.stitcher import model_for

    dsn = asyncpg_dsn(url)
    started = time.perf_counter()
    scratch, _ = await ds._new_workspace(url, f"bench-widen-{secrets.token_hex(4)}")
    engine = make_engine(url, pool_size=1)
    try:
        async with raw_connection(engine) as conn:
            customers = [
                r["customer_id"]
                for r in await conn.fetch(
                    "SELECT customer_id FROM customers WHERE workspace_id = $1 "
                    "ORDER BY random() LIMIT $2",
                    workspace_id,
                    sample,
                )
            ]
            raw = await conn.fetch(
                "SELECT workspace_id, message_id, tx::text::bigint AS tx, seq, timestamp, "
                "received_at, flags, payload FROM events WHERE workspace_id = $1 "
                "AND message_id IN (SELECT message_id FROM journey_events WHERE "
                "workspace_id = $1 AND customer_id = ANY($2::text[])) ORDER BY tx, seq",
                workspace_id,
                customers,
            )
            model = await model_for(conn, scratch)
            for start in range(0, len(raw), 2_000):
                async with conn.transaction():
                    await WorkspaceStitcher(conn, scratch, model).stitch(raw[start : start + 2_000])
            stitched = await conn.fetch(
                "SELECT event_count, dims::text AS dims, facts FROM customers "
                "WHERE workspace_id = $1 AND facts IS NOT NULL ORDER BY customer_id",
                scratch,
            )
        if not stitched:
            raise RuntimeError("the re-stitched sample has no facts: are rollups off?")
        groups: dict[int, list[asyncpg.Record]] = {}
        for r in stitched:
            groups.setdefault(r["event_count"], []).append(r)
        records: list[tuple[int, int, str, bytes]] = [
            (-1, i, r["dims"], r["facts"]) for i, r in enumerate(stitched)
        ]
        for count, rows in groups.items():
            records += [(count, i, r["dims"], r["facts"]) for i, r in enumerate(rows)]
        conn2 = await asyncpg.connect(dsn)
        try:
            await conn2.execute("SET synchronous_commit = off")
            await conn2.execute("SET work_mem = '256MB'")
            await conn2.execute(
                "CREATE TEMP TABLE w_source (event_count int, idx int, dims text, facts bytea, "
                "PRIMARY KEY (event_count, idx))"
            )
            await conn2.copy_records_to_table("w_source", records=records)
            await conn2.execute(
                "ALTER TABLE w_source ALTER COLUMN dims TYPE jsonb USING dims::jsonb"
            )
            await conn2.execute(
                "CREATE TEMP TABLE w_count AS SELECT event_count, count(*) AS n FROM w_source "
                "GROUP BY event_count"
            )
            await conn2.execute("ANALYZE w_source")
            await conn2.execute("ANALYZE w_count")
            t0 = time.perf_counter()
            status = await conn2.execute(_WIDEN_SQL, workspace_id)
            update_s = time.perf_counter() - t0
            await conn2.execute("RESET synchronous_commit")
            await conn2.execute("VACUUM (ANALYZE) customers")
            result = {
                "sampled": len(customers),
                "stitched_with_facts": len(stitched),
                "event_counts": len(groups),
                "updated": int(status.split()[-1]),
                "update_s": round(update_s, 1),
                "total_s": round(time.perf_counter() - started, 1),
            }
            await conn2.execute(
                "UPDATE workspaces SET settings = settings || jsonb_build_object("
                "'bench_widened', $2::jsonb) WHERE id = $1",
                workspace_id,
                orjson.dumps(result).decode(),
            )
        finally:
            await conn2.close()
    finally:
        await engine.dispose()
        await ds.drop_workspace_data(dsn, scratch)
    console.log(
        f"customers widened: dims and facts of {result['stitched_with_facts']} re-stitched "
        f"customers given to {result['updated']:,} customers in {result['total_s']:.0f} s"
    )
    return result
