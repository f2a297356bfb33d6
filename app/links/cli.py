"""`journeys links …`: signed email links from the command line (no server needed)."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import orjson
import typer
from rich.console import Console

from app.core.logging import configure_logging
from app.core.settings import get_settings
from app.db.engine import make_engine
from app.journeys.model import normalise_email
from app.links import signing
from app.links.secret import link_secret
from app.workspaces import repository as workspaces

links_cli = typer.Typer(help="Signed email links: open-pixel and click URLs.", no_args_is_help=True)
console = Console(stderr=True)


async def _workspace_id(url: str, ref: str) -> int:
    engine = make_engine(url, pooled=False)
    try:
        async with engine.connect() as conn:
            return await workspaces.find_workspace(conn, ref)
    finally:
        await engine.dispose()


@links_cli.command("sign")
def sign(
    workspace: Annotated[str, typer.Option(help="workspace name or id")],
    campaign: Annotated[str, typer.Option(help="campaign name")],
    message: Annotated[str, typer.Option(help="message (email) id within the campaign")],
    recipient: Annotated[str, typer.Option(help="the recipient's email address")],
    url: Annotated[str, typer.Option(help="where the click URL leads")],
    base_url: Annotated[
        str | None,
        typer.Option(
            help="public URL of the service (default: http://JOURNEYS_HOST:JOURNEYS_PORT)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Print the open-pixel URL and the click URL of a message for one recipient."""
    from app.cli import database

    settings = get_settings()
    configure_logging(settings)
    with database(settings) as db_url:
        try:
            workspace_id = asyncio.run(_workspace_id(db_url, workspace))
        except workspaces.WorkspaceNotFound:
            console.print(f"[red]no workspace {workspace!r}[/]")
            raise typer.Exit(1) from None
    try:
        links = signing.link_urls(
            base_url=base_url or f"http://{settings.host}:{settings.port}",
            workspace_id=workspace_id,
            campaign=campaign,
            message=message,
            recipient=recipient,
            url=url,
            server_secret=link_secret(settings),
        )
    except signing.LinkError as exc:
        console.print(f"[red]--{exc.field.replace('_', '-')}: {exc.detail}[/]")
        raise typer.Exit(2) from None
    body = {
        "workspace_id": workspace_id,
        "campaign": campaign.strip(),
        "message": message.strip(),
        "recipient": normalise_email(recipient),
        "url": url,
        "open_url": links.open_url,
        "click_url": links.click_url,
    }
    if as_json:
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    sys.stdout.write(f"open pixel  {links.open_url}\nclick       {links.click_url}\n")
