"""The `journeys` command. Works whether or not the server runs, against the same database."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.panel import Panel
from sqlalchemy import func, select

from app.core.logging import configure_logging
from app.core.security import KeyKind
from app.core.settings import Settings, get_settings
from app.db.engine import make_engine
from app.db.migrate import upgrade_head
from app.db.models import Workspace
from app.runtime import resolve_database
from app.workspaces import repository as workspaces

T = TypeVar("T")

cli = typer.Typer(help="Journeys: event tracking and journey stitching.", no_args_is_help=True)
workspaces_cli = typer.Typer(help="Workspaces (tenants) and their keys.", no_args_is_help=True)
keys_cli = typer.Typer(help="API keys.", no_args_is_help=True)
cli.add_typer(workspaces_cli, name="workspaces")
cli.add_typer(keys_cli, name="keys")

console = Console(stderr=True)


@contextmanager
def database(settings: Settings, *, migrate: bool = True) -> Iterator[str]:
    """The database URL for a command, migrated; stops an embedded server we started."""
    url, embedded = resolve_database(settings)
    try:
        if migrate:
            upgrade_head(url)
        yield url
    finally:
        if embedded is not None:
            embedded.stop()


def _run_db(url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = make_engine(url, pooled=False)
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _print_json(value: object) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def ensure_default_workspace(url: str) -> workspaces.NewWorkspace | None:
    """Create workspace `default` on the very first start (no workspace at all yet)."""

    async def work(conn: Any) -> workspaces.NewWorkspace | None:
        count = await conn.scalar(select(func.count()).select_from(Workspace))
        if count:
            return None
        return await workspaces.create_workspace(conn, "default")

    return _run_db(url, work)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address [JOURNEYS_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="port [JOURNEYS_PORT]")] = None,
    workers: Annotated[int | None, typer.Option(help="processes [JOURNEYS_WORKERS]")] = None,
) -> None:
    """Apply migrations and serve the API (embedded PostgreSQL when no database URL is set)."""
    import uvicorn

    settings = get_settings()
    configure_logging(settings)
    host = host or settings.host
    port = port or settings.port
    workers = workers or settings.workers
    with database(settings) as url:
        created = ensure_default_workspace(url)
        if created is not None:
            console.print(
                Panel.fit(
                    f"workspace [bold]default[/] (id {created.workspace_id})\n"
                    f"write key  [green]{created.write_key}[/]  (public: SDKs, ingest)\n"
                    f"read key   [yellow]{created.read_key}[/]  (secret: query APIs)\n"
                    f"server key [red]{created.server_key}[/]  (secret: privacy, settings)\n"
                    "These keys are shown once; rotate with `journeys keys rotate`.",
                    title="Journeys: first start",
                )
            )
        # Worker processes read the URL from the environment, like every other setting.
        os.environ["JOURNEYS_DATABASE_URL"] = url
        get_settings.cache_clear()
        console.print(f"Journeys listening on http://{host}:{port} (docs at /docs)")
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it through the handler it
        # found: make that handler unwind the stack, so the embedded PostgreSQL is stopped too.
        previous = signal.signal(signal.SIGTERM, _exit_on_signal)
        try:
            _serve(uvicorn, settings, host=host, port=port, workers=workers)
        finally:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _serve(uvicorn: Any, settings: Settings, *, host: str, port: int, workers: int) -> None:
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        server_header=False,
        timeout_keep_alive=settings.keep_alive_seconds,
        timeout_graceful_shutdown=30,
        limit_concurrency=settings.max_concurrency,
        backlog=2048,
        log_level="warning",
    )


@cli.command()
def migrate() -> None:
    """Apply all migrations (Alembic upgrade head)."""
    settings = get_settings()
    configure_logging(settings)
    with database(settings):
        console.print("database migrated to head")


@workspaces_cli.command("create")
def workspaces_create(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Create a workspace and print its keys (shown once)."""
    settings = get_settings()
    configure_logging(settings)
    with database(settings) as url:
        try:
            created = _run_db(url, lambda conn: workspaces.create_workspace(conn, name))
        except workspaces.WorkspaceExists:
            console.print(f"[red]workspace {name!r} exists already[/]")
            raise typer.Exit(1) from None
    body = {
        "workspace_id": created.workspace_id,
        "name": created.name,
        "write_key": created.write_key,
        "read_key": created.read_key,
        "server_key": created.server_key,
    }
    if as_json:
        _print_json(body)
    else:
        for key, value in body.items():
            console.print(f"{key:13} {value}")


@workspaces_cli.command("list")
def workspaces_list(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List workspaces."""
    settings = get_settings()
    configure_logging(settings)
    with database(settings) as url:
        rows = _run_db(url, workspaces.list_workspaces)
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        console.print(f"{row['workspace_id']:>5}  {row['name']:<24} keys {row['keys']}")


@keys_cli.command("rotate")
def keys_rotate(
    workspace: Annotated[str, typer.Argument(help="workspace name or id")],
    kind: Annotated[KeyKind, typer.Option(help="which key")] = KeyKind.WRITE,
    overlap_hours: Annotated[
        float, typer.Option(help="hours the old key keeps working", min=0)
    ] = 24.0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Issue a new key; the old one keeps working for the overlap period, then expires."""
    settings = get_settings()
    configure_logging(settings)

    async def work(conn: Any) -> tuple[int, str]:
        workspace_id = await workspaces.find_workspace(conn, workspace)
        key = await workspaces.rotate_key(
            conn, workspace_id=workspace_id, kind=kind, overlap=timedelta(hours=overlap_hours)
        )
        return workspace_id, key

    with database(settings) as url:
        try:
            workspace_id, key = _run_db(url, work)
        except workspaces.WorkspaceNotFound:
            console.print(f"[red]no workspace {workspace!r}[/]")
            raise typer.Exit(1) from None
    body = {
        "workspace_id": workspace_id,
        "kind": kind.value,
        "key": key,
        "old_keys_expire_in_hours": overlap_hours,
    }
    if as_json:
        _print_json(body)
    else:
        console.print(f"new {kind.value} key: {key} (old keys expire in {overlap_hours} h)")


@cli.command()
def worker(
    shards: Annotated[
        str | None, typer.Option(help="comma-separated shards 0-15 to take (default: any free)")
    ] = None,
) -> None:
    """Stitch in a separate process (several may run; shards are divided by advisory locks)."""
    from app.db.engine import make_engine as engine_for
    from app.journeys.stitcher import Stitcher
    from app.webhooks.delivery import WebhookDeliverer

    settings = get_settings()
    configure_logging(settings)
    wanted = tuple(range(16)) if not shards else tuple(int(s) for s in shards.split(","))
    if any(not 0 <= s < 16 for s in wanted):
        console.print("[red]shards are numbers from 0 to 15[/]")
        raise typer.Exit(2)

    async def run(url: str) -> None:
        import signal

        from app.core.memory import tune_gc

        engine = engine_for(url, pool_size=2)
        tune_gc()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            # Webhook deliveries go out from every worker (claims skip each other's rows).
            await asyncio.gather(
                Stitcher(engine, shards=wanted).run(stop),
                WebhookDeliverer(engine, settings=settings).run(stop),
            )
        finally:
            await engine.dispose()

    with database(settings) as url:
        console.print(f"stitcher worker running (shards {', '.join(map(str, wanted))})")
        asyncio.run(run(url))


@cli.command()
def rebuild(
    workspace: Annotated[
        str | None, typer.Option(help="workspace name or id (default: all)")
    ] = None,
) -> None:
    """Throw away derived state and replay the raw events (with a progress bar)."""
    from app.journeys.rebuild import rebuild_workspaces

    settings = get_settings()
    configure_logging(settings)
    with database(settings) as url:
        asyncio.run(rebuild_workspaces(url, workspace, console=console))


@cli.command()
def demo(
    customers: Annotated[int, typer.Option(min=1, help="customers to generate")] = 500,
    days: Annotated[int, typer.Option(min=1, help="spread the journeys over the last DAYS")] = 30,
    url: Annotated[str, typer.Option(help="the Journeys service")] = "http://127.0.0.1:8000",
    write_key: Annotated[
        str | None,
        typer.Option(
            envvar="JOURNEYS_WRITE_KEY",
            help="write key (default: workspace `demo` in this command's database, "
            "created, or given new write and read keys)",
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="random seed: the same seed sends the same journeys")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=32, help="HTTP connections")] = 4,
    gzip: Annotated[bool, typer.Option(help="gzip the request bodies")] = False,
    wait: Annotated[bool, typer.Option(help="wait until the stitcher has caught up")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON summary")] = False,
) -> None:
    """Send realistic synthetic customer journeys through the HTTP API (POST /v1/batch)."""
    import random
    from datetime import UTC, datetime

    from app.demo import send
    from app.demo.generator import generate
    from app.demo.workspace import demo_workspace_keys

    settings = get_settings()
    configure_logging(settings)
    keys = None
    try:
        send.check_service(url)
        if not write_key:
            try:
                with database(settings) as db_url:
                    keys = _run_db(db_url, demo_workspace_keys)
            except Exception as exc:
                raise send.DemoError(
                    f"no write key given and the database is unreachable ({exc!r}); "
                    "pass --write-key or set JOURNEYS_WRITE_KEY"
                ) from None
            write_key = keys.write_key
            if not as_json:
                console.print(send.keys_panel(keys, url))
        if seed is None:
            seed = random.SystemRandom().randrange(1_000_000)
        dataset = generate(customers=customers, days=days, seed=seed, now=datetime.now(UTC))
        report = asyncio.run(
            send.run_demo(
                dataset,
                url=url,
                write_key=write_key,
                console=console,
                concurrency=concurrency,
                compress=gzip,
                wait=wait,
                show_progress=not as_json,
            )
        )
    except send.DemoError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    if as_json:
        workspace = None if keys is None else keys.as_dict()
        _print_json({**report.as_dict(dataset), "workspace": workspace})
        return
    console.print(send.summary_table(dataset, report))
    if report.stitch is not None and not report.stitch.caught_up:
        console.print(
            "[yellow]the stitcher has not caught up yet: with JOURNEYS_INPROCESS_WORKER=false "
            "run `journeys worker`[/]"
        )


def main() -> None:
    """Console-script entry point."""
    from app.bench.cli import bench_cli
    from app.export.cli import export_cli
    from app.links.cli import links_cli

    cli.add_typer(bench_cli, name="bench")
    cli.add_typer(export_cli, name="export")
    cli.add_typer(links_cli, name="links")
    cli()


if __name__ == "__main__":
    main()
