"""`journeys rebuild`: derived state thrown away and replayed from the raw events."""

from __future__ import annotations

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from app.db.engine import connect, is_unavailable
from app.journeys import repository as journeys
from app.journeys.stages import JourneyModel
from app.journeys.stitch import WorkspaceStitcher
from app.journeys.stitcher import model_for

BATCH = 5_000
# Every table whose rows of a workspace are derived from its raw events (what a rebuild clears).
DERIVED_TABLES = (
    "identities",
    "identity_links",
    "identity_ledger",
    "journey_events",
    "customers",
    "stage_entries",
    "agg_stage_days",
    "agg_stage_durations",
    "agg_touch_days",
    "agg_attribution_days",
    "agg_stage_duration_blocks",
    "agg_touch_blocks",
)


async def rebuild_workspace(
    conn: asyncpg.Connection, workspace_id: int, progress: Progress | None = None
) -> int:
    """Replay one workspace in one transaction; readers see the old state until it commits.
    Returns the raw events replayed. Events set aside earlier (`stitch_failures`) are tried
    again, so a fixed one joins its journey; one that still fails is set aside again, as the
    stitcher does, instead of failing the rebuild."""
    async with conn.transaction():
        position = await journeys.lock_progress(conn, workspace_id % journeys.SHARDS)
        for table in (*DERIVED_TABLES, "stitch_failures"):
            await conn.execute(f"DELETE FROM {table} WHERE workspace_id = $1", workspace_id)
        total = await conn.fetchval(
            "SELECT count(*) FROM events WHERE workspace_id = $1 "
            "AND (tx, seq) <= ($2::text::xid8, $3::bigint)",
            workspace_id,
            str(position[0]),
            position[1],
        )
        task = progress.add_task(f"workspace {workspace_id}", total=total) if progress else None
        model = await model_for(conn, workspace_id)
        after: tuple[int, int] = (0, 0)
        done = 0
        while True:
            rows = await conn.fetch(
                "SELECT workspace_id, message_id, tx::text::bigint AS tx, seq, timestamp, "
                "received_at, flags, payload FROM events WHERE workspace_id = $1 "
                "AND (tx, seq) > ($2::text::xid8, $3::bigint) "
                "AND (tx, seq) <= ($4::text::xid8, $5::bigint) "
                "ORDER BY events.tx, events.seq LIMIT $6",
                workspace_id,
                str(after[0]),
                after[1],
                str(position[0]),
                position[1],
                BATCH,
            )
            if not rows:
                break
            await _replay(conn, workspace_id, model, rows)
            after = (rows[-1]["tx"], rows[-1]["seq"])
            done += len(rows)
            if progress is not None and task is not None:
                progress.update(task, completed=done)
        return done


async def _replay(
    conn: asyncpg.Connection, workspace_id: int, model: JourneyModel, rows: list[asyncpg.Record]
) -> None:
    """Stitch a batch of raw events; if it fails, event by event (each in a savepoint), setting
    aside the ones that fail. Stitching is order-independent: the state is the same. When
    every event of the batch fails alone the fault is not in the events: the rebuild fails
    (and rolls back) rather than set a whole workspace aside."""

    async def stitch(batch: list[asyncpg.Record]) -> None:
        async with conn.transaction():  # a savepoint: a failure undoes only this batch
            await WorkspaceStitcher(conn, workspace_id, model, webhooks=False).stitch(batch)

    try:
        await stitch(rows)
        return
    except Exception as exc:
        if is_unavailable(exc):
            raise
    failed: list[tuple[asyncpg.Record, Exception]] = []
    for row in rows:
        try:
            await stitch([row])
        except Exception as exc:
            if is_unavailable(exc):
                raise
            failed.append((row, exc))
    if len(rows) > 1 and len(failed) == len(rows):
        raise failed[0][1]
    for row, error in failed:
        await journeys.set_aside(conn, workspace_id, row["message_id"], error)


async def rebuild_workspaces(url: str, workspace: str | None, *, console: Console) -> None:
    """Rebuild one workspace (name or id) or all of them, with a progress bar."""
    conn = await connect(url)
    try:
        if workspace is None:
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM workspaces ORDER BY id")]
        else:
            found = await conn.fetchval(
                "SELECT id FROM workspaces WHERE name = $1 OR id::text = $1", workspace
            )
            if found is None:
                console.print(f"[red]no workspace {workspace!r}[/]")
                raise SystemExit(1)
            ids = [found]
        columns = (
            *Progress.get_default_columns()[:1],
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console) as progress:
            for workspace_id in ids:
                await rebuild_workspace(conn, workspace_id, progress)
        console.print(f"rebuilt {len(ids)} workspace(s)")
        failed = await conn.fetch(
            "SELECT workspace_id, count(*) AS n FROM stitch_failures "
            "WHERE workspace_id = ANY($1::bigint[]) GROUP BY 1 ORDER BY 1",
            ids,
        )
        for row in failed:
            console.print(
                f"[yellow]workspace {row['workspace_id']}: {row['n']} event(s) could not be "
                "stitched and are set aside in stitch_failures (their errors are there)[/]"
            )
    finally:
        await conn.close()
