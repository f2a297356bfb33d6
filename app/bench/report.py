"""What every benchmark report shares: numbers, the machine line, and the verdicts, warnings and
failures it ends with, in markdown."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from rich.console import Console


def stats_row(dsn: str, sql: str) -> dict[str, int] | None:
    """One row of PostgreSQL's cumulative statistics (`pg_stat_*`), as integers, read on a new
    connection (so no statistics snapshot of an earlier read is reused; other backends flush
    their counters at least once a second). None when the server can't be asked."""

    async def query() -> dict[str, int] | None:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(sql)
        finally:
            await conn.close()
        return None if row is None else {k: int(v) for k, v in row.items()}

    try:
        return asyncio.run(query())
    except (OSError, asyncpg.PostgresError):
        return None


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile (NaN for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))]


def number(value: float | None, fmt: str) -> str:
    """A figure for a table: `-` for a missing or NaN one."""
    if value is None or value != value:
        return "-"
    return format(value, fmt)


def machine_line(machine: dict[str, Any], database: str, sharing: str) -> str:
    """`Machine: …` with what shares its cores."""
    m = machine
    return (
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, Python {m['python']}; "
        f"{database}; {sharing}"
    )


def verdict_lines(
    targets: Sequence[dict[str, Any]], warnings: Sequence[str], failures: Sequence[str]
) -> list[str]:
    """Markdown lines: each target met or MISSED, then warnings, then why the run failed."""
    lines: list[str] = []
    if targets:
        lines += ["", "Targets:"]
        lines += [
            f"- {'met' if t['met'] else 'MISSED'}: {t['target']} (measured {t['measured']})"
            for t in targets
        ]
    if warnings:
        lines += ["", "Warnings:"] + [f"- {w}" for w in warnings]
    if failures:
        lines += ["", "**RUN FAILED:**"] + [f"- {f}" for f in failures]
    return lines


def emit(text: str, body: dict[str, Any], *, output: Path | None, as_json: bool) -> Console | None:
    """A benchmark's result: the markdown to `output` (when given), then JSON or the markdown on
    stdout. Returns the console to print more on (profiles), None with `--json`."""
    if output is not None:
        output.write_text(text)
    if as_json:
        sys.stdout.write(
            orjson.dumps(body, option=orjson.OPT_INDENT_2, default=str).decode() + "\n"
        )
        return None
    out = Console()
    out.print(text, markup=False, highlight=False)
    return out
