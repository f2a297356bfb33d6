"""`journeys bench funnel-index`: the funnel index of one workspace, measured in-process.

On a kept `journeys bench aggregates` dataset (or any workspace): the cold load of the index
(the stages, one breakdown, the event funnel's events), its memory, the evaluation alone per
funnel variant (median and p99 of `--repeat` runs), the answer compared with the SQL path's
(the same JSON, or the run fails), and the change feed: `--changes` customers' stage entries
moved by a second in one transaction, then the refresh time of the next request and the answer
compared with SQL again (the change is undone at the end).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import date, timedelta
from typing import Annotated, Any

import orjson
import typer

from app.aggregates import service
from app.aggregates.funnel_store import FunnelIndexes, funnel_found
from app.bench.aggregates import EVENT_FUNNEL, STAGE_FUNNEL
from app.db.engine import connect
from app.journeys.stitcher import model_for

VARIANTS = (
    ("funnel-stages", STAGE_FUNNEL, "30d", False),
    ("funnel-stages+bd", STAGE_FUNNEL, "30d", True),
    ("funnel-events", EVENT_FUNNEL, "14d", False),
    ("funnel-events+bd", EVENT_FUNNEL, "14d", True),
)


async def probe(
    url: str,
    workspace_id: int,
    *,
    breakdown: str,
    start: date,
    end: date,
    repeat: int,
    changes: int,
    sql: bool,
) -> dict[str, Any]:
    conn = await connect(url)
    indexes = FunnelIndexes()
    out: dict[str, Any] = {"workspace_id": workspace_id, "variants": {}}
    try:
        model = await model_for(conn, workspace_id)
        win = service.window(start, end)

        async def answer(name: str, steps_raw: str, window: str, bd: bool) -> tuple[Any, float]:
            steps = service.funnel_steps(model, steps_raw)
            span = service.funnel_window(window)
            dim = breakdown if bd else ""
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                await conn.fetchval("SELECT 1")
                started = time.perf_counter()
                found = await funnel_found(
                    indexes,
                    conn,
                    workspace_id,
                    stages=model.stage_names,
                    dim=dim,
                    steps=steps,
                    start=win.start_at,
                    end=win.end_at,
                    span=span,
                    max_bytes=4_000_000_000,
                )
                took = time.perf_counter() - started
            return service.funnel_answer(dim, win, steps, span, found), took

        async def by_sql(steps_raw: str, window: str, bd: bool) -> tuple[Any, float]:
            started = time.perf_counter()
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                got = await service.funnel(
                    conn,
                    workspace_id,
                    model,
                    dim=breakdown if bd else "",
                    win=win,
                    steps=service.funnel_steps(model, steps_raw),
                    span=service.funnel_window(window),
                )
            return orjson.loads(orjson.dumps(got)), time.perf_counter() - started

        # Cold: the first request of the richest variant loads everything it needs.
        _, cold = await answer(*VARIANTS[3])
        entry = indexes.entry(workspace_id)
        assert entry is not None
        out["cold_load_s"] = round(cold, 2)
        out["index_mb"] = round(entry.nbytes / 1e6, 1)
        out["customers"] = entry.index.size
        out["step_events"] = {k: int(v.base_at.size) for k, v in entry.index.events.items()}
        for name, steps_raw, window, bd in VARIANTS:
            runs = []
            body: Any = None
            for _ in range(repeat):
                body, took = await answer(name, steps_raw, window, bd)
                runs.append(took * 1000)
            runs.sort()
            figures: dict[str, Any] = {
                "median_ms": round(statistics.median(runs), 2),
                "p99_ms": round(runs[min(len(runs) - 1, int(0.99 * len(runs)))], 2),
                "first_step": [s["customers"] for s in body.get("steps", [])],
            }
            if sql:
                expected, sql_s = await by_sql(steps_raw, window, bd)
                figures["sql_s"] = round(sql_s, 2)
                figures["equal_to_sql"] = orjson.loads(orjson.dumps(body)) == expected
                if not figures["equal_to_sql"]:
                    raise RuntimeError(f"{name}: the index answer differs from SQL")
            out["variants"][name] = figures
        if changes:
            moved = await conn.fetch(
                "SELECT customer_id FROM stage_entries WHERE workspace_id = $1 "
                "AND stage = 'awareness' ORDER BY customer_id LIMIT $2",
                workspace_id,
                changes,
            )
            ids = [r["customer_id"] for r in moved]
            shift = "UPDATE stage_entries SET entered_at = entered_at + $3::interval "
            shift += "WHERE workspace_id = $1 AND customer_id = ANY($2::text[])"
            await conn.execute(shift, workspace_id, ids, timedelta(seconds=1))
            try:
                body, took = await answer(*VARIANTS[3])
                out["refresh_ms"] = {"customers": len(ids), "ms": round(took * 1000, 1)}
                if sql:
                    expected, _ = await by_sql(*VARIANTS[3][1:])
                    equal = orjson.loads(orjson.dumps(body)) == expected
                    out["refresh_ms"]["equal_to_sql"] = equal
                    if not equal:
                        raise RuntimeError("after the changes the index answer differs from SQL")
                _, took = await answer(*VARIANTS[3])
                out["refresh_ms"]["next_ms"] = round(took * 1000, 1)
            finally:
                await conn.execute(shift, workspace_id, ids, timedelta(seconds=-1))
        out["loads"] = indexes.loads
        out["refreshes"] = indexes.refreshes
    finally:
        await conn.close()
    return out


def bench_funnel_index(
    database_url: Annotated[str, typer.Option(help="postgresql://…")],
    workspace_id: Annotated[int, typer.Option(help="the workspace (a bench dataset's)")],
    start: Annotated[str, typer.Option(help="first day of the window, YYYY-MM-DD")],
    end: Annotated[str, typer.Option(help="last day of the window, YYYY-MM-DD")],
    breakdown: Annotated[str, typer.Option(help="the breakdown")] = "trait:marketing_opt_in",
    repeat: Annotated[int, typer.Option(min=1, help="evaluations per variant")] = 50,
    changes: Annotated[int, typer.Option(min=0, help="customers changed for the feed")] = 1000,
    sql: Annotated[bool, typer.Option(help="compare every answer with the SQL path")] = True,
) -> None:
    """The funnel index in-process: cold load, memory, evaluation, exactness, refresh."""
    result = asyncio.run(
        probe(
            database_url,
            workspace_id,
            breakdown=breakdown,
            start=date.fromisoformat(start),
            end=date.fromisoformat(end),
            repeat=repeat,
            changes=changes,
            sql=sql,
        )
    )
    typer.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


# --------------------------------------------------------------------------- feed cost

FEED_TRIGGERS = tuple(
    (table, f"funnel_changes_{table}_{suffix}")
    for table in ("stage_entries", "customers", "journey_events")
    for suffix in ("ins", "upd", "del")
)


async def set_feed_triggers(dsn: str, *, enabled: bool) -> None:
    """Enable or disable the change feed's triggers (migration 0011)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for table, trigger in FEED_TRIGGERS:
            verb = "ENABLE" if enabled else "DISABLE"
            await conn.execute(f"ALTER TABLE {table} {verb} TRIGGER {trigger}")
    finally:
        await conn.close()


def bench_funnel_feed_cost(
    database_url: Annotated[str, typer.Option(help="postgresql://… (a dedicated database)")],
    customers: Annotated[int, typer.Option(min=1000, help="customers of the raw dataset")] = 20_000,
    seconds: Annotated[float, typer.Option(help="measured stitching of the first phase")] = 30.0,
    rounds: Annotated[int, typer.Option(min=1, max=10, help="pairs of phases")] = 3,
) -> None:
    """What the funnel change feed's triggers cost the stitcher: the stitch bench's replay of
    the same events (rollups on), alternating with the triggers enabled and disabled."""
    from rich.console import Console

    from app.bench import dataset as ds
    from app.bench import stitch as sb
    from app.bench.ingest import _database_info
    from app.db.engine import asyncpg_dsn
    from app.db.migrate import upgrade_head

    console = Console(stderr=True)
    dsn = asyncpg_dsn(database_url)
    upgrade_head(database_url)
    spec = ds.DatasetSpec(customers=customers)
    opts = sb.StitchBenchOptions(database_url=database_url, spec=spec, seconds=seconds)
    _, postmaster = asyncio.run(_database_info(dsn))
    data = asyncio.run(ds.ensure_dataset(database_url, spec, "raw", console, reuse=True))
    ws = data.workspace_id
    rates: dict[bool, list[float]] = {True: [], False: []}
    first = None
    try:
        order = [True, False] + [on for _ in range(rounds - 1) for on in (True, False)]
        for on in order:
            asyncio.run(set_feed_triggers(dsn, enabled=on))
            asyncio.run(sb.reset_derived(dsn, ws))
            asyncio.run(sb.rewind_feed(dsn, ws))
            phase = asyncio.run(
                sb._stitch_phase(
                    database_url,
                    ws,
                    opts,
                    postmaster,
                    console,
                    warmup_events=None if first is None else first.warmup_events,
                    max_events=None if first is None else first.events,
                )
            )
            first = first or phase
            rates[on].append(phase.events_per_s)
            console.log(
                f"feed triggers {'on' if on else 'OFF'}: {phase.events:,} events in "
                f"{phase.seconds:.1f} s: {phase.events_per_s:,.0f} events/s"
            )
    finally:
        asyncio.run(set_feed_triggers(dsn, enabled=True))
    with_, without = statistics.median(rates[True]), statistics.median(rates[False])
    result = {
        "workspace_id": ws,
        "events_per_phase": first.events if first else 0,
        "events_per_s_with": rates[True],
        "events_per_s_without": rates[False],
        "median_with": round(with_),
        "median_without": round(without),
        "cost_pct": round(100 * (1 - with_ / without), 1) if without else None,
    }
    typer.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
