"""`journeys bench …` commands."""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table


class ProfileFormat(StrEnum):
    """py-spy output formats."""

    RAW = "raw"
    FLAMEGRAPH = "flamegraph"
    SPEEDSCOPE = "speedscope"


bench_cli = typer.Typer(
    help="Benchmarks (ratios to a baseline measured in the same run).", no_args_is_help=True
)


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--env")
        env[key] = value
    return env


@bench_cli.command("ingest")
def ingest(
    database_url: Annotated[
        str | None,
        typer.Option(help="postgresql://… [JOURNEYS_DATABASE_URL; else the embedded PostgreSQL]"),
    ] = None,
    duration: Annotated[int, typer.Option(help="seconds per HTTP phase", min=2, max=60)] = 15,
    batch_connections: Annotated[
        int, typer.Option(help="wrk connections for /v1/batch", min=1, max=1024)
    ] = 32,
    track_connections: Annotated[
        int, typer.Option(help="wrk connections for /v1/track", min=1, max=1024)
    ] = 64,
    batch_size: Annotated[
        int, typer.Option(help="events per /v1/batch request", min=2, max=500)
    ] = 100,
    copy_events: Annotated[
        int, typer.Option(help="events in the COPY baseline", min=10_000, max=2_000_000)
    ] = 200_000,
    copy_batch: Annotated[
        int, typer.Option(help="events per COPY (one transaction each)", min=100, max=100_000)
    ] = 10_000,
    workers: Annotated[int | None, typer.Option(help="server processes", min=1, max=16)] = 2,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            help="extra server setting, KEY=VALUE (repeatable), e.g. JOURNEYS_COMMIT_MAX_WAIT_MS=1",
        ),
    ] = None,
    wrk_threads: Annotated[int, typer.Option(help="wrk threads", min=1, max=16)] = 2,
    profile: Annotated[
        Path | None,
        typer.Option(
            help="record the server with py-spy during each HTTP phase into this directory "
            "(slows the server down: don't compare its numbers)"
        ),
    ] = None,
    profile_format: Annotated[
        ProfileFormat,
        typer.Option(
            help="py-spy output: raw (summarised: top functions), flamegraph (SVG) or speedscope"
        ),
    ] = ProfileFormat.RAW,
    keep_events: Annotated[
        bool,
        typer.Option(
            help="keep the bench workspace and its events (default: deleted after the count)"
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
    output: Annotated[Path | None, typer.Option(help="write the markdown table here")] = None,
) -> None:
    """Raw COPY ceiling vs. end-to-end HTTP ingest (/v1/batch, /v1/track) driven by wrk."""
    from app.bench import ingest as bench
    from app.bench.wrk import WrkError
    from app.core.settings import get_settings
    from app.runtime import resolve_database

    console = Console(stderr=True)
    # The ingest bench measures ingest: the stitcher is measured by `bench stitch`, and at this
    # load it runs as `journeys worker` processes, not inside the API processes.
    server_env = {"JOURNEYS_INPROCESS_WORKER": "false", **_parse_env(env or [])}
    url = database_url or os.environ.get("JOURNEYS_DATABASE_URL")
    embedded = None
    if not url:
        console.log("no database URL: starting the embedded PostgreSQL")
        url, embedded = resolve_database(get_settings())
    opts = bench.IngestBenchOptions(
        database_url=url,
        duration=duration,
        batch_connections=batch_connections,
        track_connections=track_connections,
        batch_size=batch_size,
        copy_events=copy_events,
        copy_batch=copy_batch,
        wrk_threads=wrk_threads,
        workers=workers,
        server_env=server_env,
        profile_dir=profile,
        profile_format=profile_format.value,
        keep_events=keep_events,
        embedded=embedded is not None,
    )
    try:
        report = bench.run(opts, console)
    except (bench.BenchFailed, WrkError) as exc:
        console.print(Panel(str(exc), title="journeys bench ingest: FAILED", style="bold red"))
        raise typer.Exit(2) from None
    finally:
        if embedded is not None:
            embedded.stop()

    text = bench.markdown(report)
    if output is not None:
        output.write_text(text)
    if as_json:
        sys.stdout.write(
            orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2, default=str).decode() + "\n"
        )
    else:
        _print_human(report, text)
    if not report.ok:
        console.print(
            Panel("\n".join(report.failures), title="BENCHMARK RUN FAILED", style="bold red")
        )
        raise typer.Exit(1)


def _print_human(report: object, text: str) -> None:
    from app.bench.ingest import IngestBenchReport

    assert isinstance(report, IngestBenchReport)
    out = Console()
    table = Table(title="journeys bench ingest")
    for name, justify in (
        ("phase", "left"),
        ("events/s", "right"),
        ("p50 ms", "right"),
        ("p99 ms", "right"),
        ("ratio to COPY", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for p in report.phases:
        ratio = "-" if p.ratio_to_copy is None else f"{p.ratio_to_copy:.2f}"
        table.add_row(
            p.label, f"{p.events_per_s:,.0f}", f"{p.p50_ms:.1f}", f"{p.p99_ms:.1f}", ratio
        )
    out.print(table)
    # Everything below the table in the markdown: machine, CPU, verification, targets.
    out.print(text.split("\n\n", 1)[1], markup=False, highlight=False)
    for p in report.phases:
        if p.profile is None:
            continue
        prof = Table(title=f"py-spy: {p.name} ({p.profile.samples:,} samples, {p.profile.path})")
        prof.add_column("function (own time)")
        prof.add_column("own %", justify="right")
        prof.add_column("total %", justify="right")
        for hot in p.profile.by_own[:10]:
            prof.add_row(hot.function, f"{hot.own_pct:.1f}", f"{hot.total_pct:.1f}")
        out.print(prof)
        prof = Table(title=f"py-spy: {p.name}, project functions by total (inclusive) time")
        prof.add_column("function (total time)")
        prof.add_column("total %", justify="right")
        prof.add_column("own %", justify="right")
        for hot in p.profile.by_total[:15]:
            prof.add_row(hot.function, f"{hot.total_pct:.1f}", f"{hot.own_pct:.1f}")
        out.print(prof)


def _register_stitch_lookup_aggregates() -> None:
    from app.bench.aggregates import bench_aggregates
    from app.bench.funnel_probe import bench_funnel_feed_cost, bench_funnel_index
    from app.bench.lookup import bench_lookup
    from app.bench.stitch import bench_stitch

    bench_cli.command("stitch")(bench_stitch)
    bench_cli.command("lookup")(bench_lookup)
    bench_cli.command("aggregates")(bench_aggregates)
    bench_cli.command("funnel-index")(bench_funnel_index)
    bench_cli.command("funnel-feed-cost")(bench_funnel_feed_cost)


_register_stitch_lookup_aggregates()
