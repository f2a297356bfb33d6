"""`journeys export aggregates|profiles --workspace NAME --format csv|parquet --out PATH`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Annotated, TypeVar

import asyncpg
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from app.cli import console, database
from app.core.errors import ProblemError
from app.core.logging import configure_logging
from app.core.settings import get_settings
from app.db.engine import connect
from app.export import service
from app.export.tables import Format

T = TypeVar("T")

export_cli = typer.Typer(
    help="Export a workspace's aggregates or profiles to CSV or Parquet.", no_args_is_help=True
)

WorkspaceOption = Annotated[str, typer.Option("--workspace", help="workspace name or id")]
OutOption = Annotated[
    Path, typer.Option("--out", help="the file to write", dir_okay=False, resolve_path=True)
]
FormatOption = Annotated[
    Format | None,
    typer.Option("--format", help="csv or parquet (default: from the --out extension, else csv)"),
]


def _day(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter("expected a date YYYY-MM-DD", param_hint=name) from None


FromOption = Annotated[str | None, typer.Option("--from", help="first UTC day, YYYY-MM-DD")]
ToOption = Annotated[str | None, typer.Option("--to", help="last UTC day, YYYY-MM-DD")]


def _run(work: Callable[[asyncpg.Connection, int], Awaitable[T]], workspace: str) -> T:
    """Run `work(conn, workspace_id)` against the configured database."""
    settings = get_settings()
    configure_logging(settings)

    async def main(url: str) -> T:
        conn = await connect(url)
        try:
            workspace_id = await service.find_workspace(conn, workspace)
            return await work(conn, workspace_id)
        finally:
            await conn.close()

    with database(settings) as url:
        try:
            return asyncio.run(main(url))
        except service.WorkspaceNotFound:
            console.print(f"[red]no workspace {workspace!r}[/]")
            raise typer.Exit(1) from None
        except ProblemError as exc:
            console.print(f"[red]{exc.detail}[/]")
            raise typer.Exit(2) from None


@export_cli.command("aggregates")
def aggregates(
    workspace: WorkspaceOption,
    out: OutOption,
    fmt: FormatOption = None,
    start: FromOption = None,
    end: ToOption = None,
    conversion: Annotated[
        str | None,
        typer.Option(help="attribution's conversion stage (default: purchase, else the last)"),
    ] = None,
) -> None:
    """The aggregate reports of a window as one table.

    Stages, channels per stage, attribution per model and the journey map, told apart by the
    column `report`; the window defaults to the last 30 days, as in the API."""
    first, last = _day(start, "--from"), _day(end, "--to")
    chosen = service.format_of(out, fmt)

    async def work(conn: asyncpg.Connection, workspace_id: int) -> int:
        with console.status("computing the aggregates"):
            return await service.export_aggregates(
                conn,
                workspace_id,
                path=out,
                fmt=chosen,
                start=first,
                end=last,
                conversion=conversion,
            )

    rows = _run(work, workspace)
    console.print(f"{rows} rows written to {out} ({chosen.value})")


@export_cli.command("profiles")
def profiles(
    workspace: WorkspaceOption,
    out: OutOption,
    fmt: FormatOption = None,
    start: FromOption = None,
    end: ToOption = None,
) -> None:
    """One row per customer, streamed in chunks.

    customer_id, stage, stage_entered_at, first_seen, last_seen, event_count, identifiers and
    traits (JSON); with --from/--to, only customers seen in the window."""
    first, last = _day(start, "--from"), _day(end, "--to")
    chosen = service.format_of(out, fmt)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )

    async def work(conn: asyncpg.Connection, workspace_id: int) -> int:
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("customers", total=None)

            def advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            return await service.export_profiles(
                conn,
                workspace_id,
                path=out,
                fmt=chosen,
                start=first,
                end=last,
                progress=advance,
            )

    rows = _run(work, workspace)
    console.print(f"{rows} customers written to {out} ({chosen.value})")
