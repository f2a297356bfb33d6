"""The stitcher's timeline insert: COPY for large batches, INSERT … ON CONFLICT otherwise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from app.db.engine import copies_jsonb, make_engine, raw_connection
from app.journeys.repository import TimelineRow, insert_timeline
from tests.conftest import new_workspace

AT = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def _rows(n: int, prefix: str) -> list[TimelineRow]:
    return [
        TimelineRow(
            message_id=f"{prefix}-{i:04d}",
            customer_id="c-1",
            timestamp=AT + timedelta(minutes=i),
            received_at=AT + timedelta(minutes=i, seconds=1),
            type="track",
            event="Product Viewed",
            user_id=None,
            anonymous_id="anon-1",
            trait_identifier=None,
            source_channel="Direct",
            channel="Direct",
            session_id="s-1",
            stage="awareness",
            flags=0,
            properties={"sku": f"sku-{i}", "price": i / 4},
            traits=None,
            campaign={"source": "news"} if i % 2 else None,
        )
        for i in range(n)
    ]


async def _stored(conn: asyncpg.Connection, ws: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT message_id, properties::text AS p, campaign::text AS c, timestamp "
        "FROM journey_events WHERE workspace_id = $1 ORDER BY message_id",
        ws,
    )


async def test_copy_and_insert_store_the_same_rows_and_a_stored_row_falls_back(
    database_url: str,
) -> None:
    """A large batch is copied, a small one inserted, with identical results; a large batch
    holding a row that is already there (COPY fails on the key) is inserted instead, in the
    same transaction, keeping the stored row and adding the others."""
    copied = await new_workspace(database_url, "timeline-copy")
    inserted = await new_workspace(database_url, "timeline-insert")
    engine = make_engine(database_url, pool_size=1)
    try:
        async with raw_connection(engine) as conn:
            assert copies_jsonb(conn)  # the pool's connections take the COPY path
            rows = _rows(100, "m")
            async with conn.transaction():
                await insert_timeline(conn, copied.workspace_id, rows)
            async with conn.transaction():
                for start in range(0, 100, 10):  # batches below the COPY threshold
                    await insert_timeline(conn, inserted.workspace_id, rows[start : start + 10])
            a = await _stored(conn, copied.workspace_id)
            b = await _stored(conn, inserted.workspace_id)
            assert len(a) == 100
            assert [tuple(r) for r in a] == [tuple(r) for r in b]
            assert a[1]["c"] == '{"source": "news"}' and a[0]["c"] is None
            # COPY fires the statement triggers too: the funnel indexes hear of the customer.
            changed = await conn.fetchval(
                "SELECT array_agg(DISTINCT u) FROM funnel_changes f, unnest(f.customer_ids) u "
                "WHERE f.workspace_id = $1",
                copied.workspace_id,
            )
            assert changed == ["c-1"]

            again = _rows(80, "m")[40:] + _rows(80, "n")  # 40 stored rows, 80 new ones
            for r in again[:40]:
                r.stage = "purchase"  # a stored row keeps its values
            async with conn.transaction():
                await insert_timeline(conn, copied.workspace_id, again)
            after = await _stored(conn, copied.workspace_id)
            assert len(after) == 180
            stages = await conn.fetch(
                "SELECT DISTINCT stage FROM journey_events WHERE workspace_id = $1",
                copied.workspace_id,
            )
            assert [r["stage"] for r in stages] == ["awareness"]
    finally:
        await engine.dispose()
