"""The rollup tables rebuilt from the contributions stored with the customers.

Each customer keeps its whole contribution (`customers.facts`, see `app.aggregates.facts`), and
the rollups are the sum of those contributions. Rebuilding them from the stored facts is a
set-based SQL pass over `customers` (no replay of raw events): after a bulk load of customers, or
to repair rollups suspected of drift. `sum_facts` is the same sum through the stitcher's own
`add_facts`, in Python, for checking one against the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import orjson

from app.aggregates.facts import (
    ATTRIBUTION_MODELS,
    TOUCH_FIELDS,
    Deltas,
    Facts,
    add_facts,
    ordinal_date,
    prune,
)
from app.aggregates.repository import rebuild_blocks

ROLLUP_TABLES = ("agg_stage_days", "agg_stage_durations", "agg_touch_days", "agg_attribution_days")
_US_PER_DAY = 86_400_000_000
_EPOCH_ORDINAL = 719_163  # date(1970, 1, 1).toordinal()

# Every (dim, dval) group of every customer with its parsed facts: the totals ('', '') and one
# group per breakdown it has a value for (`facts._groups`: no-value groups are not stored).
_GROUPS = """
WITH f AS (
    SELECT convert_from(facts, 'UTF8')::jsonb AS j FROM customers
    WHERE workspace_id = $1 AND facts IS NOT NULL
), g AS (
    SELECT j, ''::text AS dim, ''::text AS dval FROM f
    UNION ALL
    SELECT f.j, d.key, d.value FROM f CROSS JOIN LATERAL jsonb_each_text(f.j -> 'd') AS d
    WHERE d.value <> ''
)
"""
# The UTC day of an entry instant in epoch µs (floor division, also before 1970).
_US = "(s ->> 1)::int8"
_D = _US_PER_DAY
_ENTRY_DAY = f"(date '1970-01-01' + (({_US} - (({_US} % {_D}) + {_D}) % {_D}) / {_D})::int)"


def _value_sums(names: tuple[str, ...], offset: int) -> tuple[str, str]:
    columns = ", ".join(f'"{n}"' for n in names)
    sums = ", ".join(f"sum((x ->> {offset + i})::float8)" for i in range(len(names)))
    return columns, sums


_TOUCH_COLUMNS, _TOUCH_SUMS = _value_sums(TOUCH_FIELDS, 3)
_ATTR_COLUMNS, _ATTR_SUMS = _value_sums(ATTRIBUTION_MODELS, 3)
_KEYED_DAY = "(date '0001-01-01' + ((x ->> 2)::int - 1))"

REBUILD_SQL: dict[str, str] = {
    "agg_stage_days": _GROUPS
    + f"""
    INSERT INTO agg_stage_days (workspace_id, dim, day, stage, dval, entered, converted)
    SELECT $1, g.dim, {_ENTRY_DAY}, s ->> 0, g.dval, count(*), sum((s ->> 2)::int8)
    FROM g CROSS JOIN LATERAL jsonb_array_elements(g.j -> 's') AS s
    GROUP BY 2, 3, 4, 5 ORDER BY 2, 3, 4, 5
    """,
    "agg_stage_durations": _GROUPS
    + f"""
    INSERT INTO agg_stage_durations (workspace_id, dim, day, stage, dval, bucket, n)
    SELECT $1, g.dim, {_ENTRY_DAY}, s ->> 0, g.dval, (s ->> 3)::int2, count(*)
    FROM g CROSS JOIN LATERAL jsonb_array_elements(g.j -> 's') AS s
    WHERE (s ->> 3)::int >= 0
    GROUP BY 2, 3, 4, 5, 6 ORDER BY 2, 3, 4, 5, 6
    """,
    "agg_touch_days": _GROUPS
    + f"""
    INSERT INTO agg_touch_days (workspace_id, dim, day, stage, channel, dval, {_TOUCH_COLUMNS})
    SELECT $1, g.dim, {_KEYED_DAY}, x ->> 0, x ->> 1, g.dval, {_TOUCH_SUMS}
    FROM g CROSS JOIN LATERAL jsonb_array_elements(g.j -> 't') AS x
    GROUP BY 2, 3, 4, 5, 6 ORDER BY 2, 3, 4, 5, 6
    """,
    "agg_attribution_days": _GROUPS
    + f"""
    INSERT INTO agg_attribution_days (workspace_id, dim, day, stage, channel, dval, {_ATTR_COLUMNS})
    SELECT $1, g.dim, {_KEYED_DAY}, x ->> 0, x ->> 1, g.dval, {_ATTR_SUMS}
    FROM g CROSS JOIN LATERAL jsonb_array_elements(g.j -> 'a') AS x
    GROUP BY 2, 3, 4, 5, 6 ORDER BY 2, 3, 4, 5, 6
    """,
}


async def rebuild_rollups_from_facts(
    conn: asyncpg.Connection,
    workspace_id: int,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Replace the workspace's rollup rows by the sum of its customers' stored facts (call it
    in a transaction that holds the shard's progress lock, so no stitcher writes meanwhile).
    Returns the rows written per table."""
    written: dict[str, int] = {}
    for table in ROLLUP_TABLES:
        if progress is not None:
            progress(table)
        await conn.execute(f"DELETE FROM {table} WHERE workspace_id = $1", workspace_id)
        status = await conn.execute(REBUILD_SQL[table], workspace_id)
        written[table] = int(status.rsplit(" ", 1)[-1])
    await rebuild_blocks(conn, workspace_id)
    return written


async def sum_facts(conn: asyncpg.Connection, workspace_id: int, *, chunk: int = 5_000) -> Deltas:
    """The rollups from scratch: every stored contribution added by the stitcher's own
    `add_facts` (in Python; zero keys pruned). Run it inside a transaction (a cursor)."""
    deltas = Deltas()
    cursor = await conn.cursor(
        "SELECT facts FROM customers WHERE workspace_id = $1 AND facts IS NOT NULL", workspace_id
    )
    while True:
        rows = await cursor.fetch(chunk)
        if not rows:
            break
        for r in rows:
            add_facts(deltas, Facts.from_json(orjson.loads(r["facts"])), 1)
    prune(deltas)
    return deltas


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


async def compare_rollups(
    conn: asyncpg.Connection, workspace_id: int, expected: Deltas
) -> dict[str, Any]:
    """Compare the stored rollup rows with a from-scratch sum (`sum_facts`): every non-zero
    row must be expected, every expected row stored; floats within 1e-6 (relative)."""
    wanted: dict[str, dict[tuple[Any, ...], list[float]]] = {
        "agg_stage_days": {
            (k[0], k[1], k[2], ordinal_date(k[3])): [float(x) for x in v]
            for k, v in expected.stages.items()
        },
        "agg_stage_durations": {
            (k[0], k[1], k[2], ordinal_date(k[3]), k[4]): [float(v)]
            for k, v in expected.durations.items()
        },
        "agg_touch_days": {
            (k[0], k[1], k[2], k[3], ordinal_date(k[4])): v for k, v in expected.touches.items()
        },
        "agg_attribution_days": {
            (k[0], k[1], k[2], k[3], ordinal_date(k[4])): v for k, v in expected.attribution.items()
        },
    }
    sql = {
        "agg_stage_days": "SELECT dim, dval, stage, day, entered, converted FROM agg_stage_days",
        "agg_stage_durations": "SELECT dim, dval, stage, day, bucket, n FROM agg_stage_durations",
        "agg_touch_days": "SELECT dim, dval, stage, channel, day, "
        + ", ".join(f'"{n}"' for n in TOUCH_FIELDS)
        + " FROM agg_touch_days",
        "agg_attribution_days": "SELECT dim, dval, stage, channel, day, "
        + ", ".join(f'"{n}"' for n in ATTRIBUTION_MODELS)
        + " FROM agg_attribution_days",
    }
    width = {"agg_stage_days": 4, "agg_stage_durations": 5}
    out: dict[str, Any] = {"rows": {}, "mismatches": []}
    for table, query in sql.items():
        keys = width.get(table, 5)
        want = wanted[table]
        seen = 0
        for r in await conn.fetch(query + " WHERE workspace_id = $1", workspace_id):
            values = [float(x) for x in tuple(r)[keys:]]
            key = tuple(r)[:keys]
            expect = want.pop(key, None)
            if expect is None:
                if any(abs(v) > 1e-9 for v in values):
                    out["mismatches"].append({"table": table, "key": repr(key), "stored": values})
                continue
            seen += 1
            if not all(_close(a, b) for a, b in zip(values, expect, strict=True)):
                out["mismatches"].append(
                    {"table": table, "key": repr(key), "stored": values, "expected": expect}
                )
        for key, expect in list(want.items())[:5]:
            out["mismatches"].append({"table": table, "key": repr(key), "expected": expect})
        if want:
            out["mismatches"].append({"table": table, "missing_rows": len(want)})
        out["rows"][table] = seen
    out["identical"] = not out["mismatches"]
    return out


__all__ = [
    "REBUILD_SQL",
    "ROLLUP_TABLES",
    "compare_rollups",
    "rebuild_rollups_from_facts",
    "sum_facts",
]
