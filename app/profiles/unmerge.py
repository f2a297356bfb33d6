"""Unmerge: block a link and replay the cluster's evidence without it."""

from __future__ import annotations

from typing import Any

import asyncpg

from app.core.errors import ProblemError
from app.identity import repository as ids
from app.identity.graph import LINKED, MERGED, Identifier
from app.journeys import repository as journeys
from app.journeys.stitch import WorkspaceStitcher
from app.journeys.stitcher import model_for
from app.profiles import repository as profiles
from app.profiles.service import parse_identifier, resolve_customer


async def unmerge(
    conn: asyncpg.Connection,
    workspace_id: int,
    text: str,
    *,
    identifiers: list[str] | None,
    message_id: str | None,
) -> dict[str, Any]:
    """Undo the link(s) named by two identifiers or by the event that made them."""
    if not identifiers and not message_id:
        raise ProblemError(
            400, "invalid_field", "give `identifiers` (two) or `message_id`", field="identifiers"
        )
    async with conn.transaction():
        # The shard's progress row lock serialises us with the stitcher of this workspace.
        await journeys.lock_progress(conn, workspace_id % journeys.SHARDS)
        customer_id = await resolve_customer(conn, workspace_id, text)
        rows = await profiles.identifiers(conn, workspace_id, customer_id)
        clusters = sorted({r["cluster_id"] for r in rows})
        ledger = await ids.ledger_for(conn, workspace_id, clusters)
        joins = [r for r in ledger if r["action"] in (MERGED, LINKED)]
        if identifiers:
            wanted = {str(parse_identifier(i)) for i in identifiers}
            pairs = [r for r in joins if set(r["identifiers"]) == wanted]
        else:
            pairs = [r for r in joins if r["message_id"] == message_id]
        if not pairs:
            raise ProblemError(
                404,
                "merge_not_found",
                "no link of this customer's ledger matches; see GET …/identities",
            )
        undone = []
        for r in pairs:
            a, b = (Identifier.parse(x) for x in r["identifiers"])
            await ids.block_link(conn, workspace_id, a, b, reason=f"unmerge of {r['message_id']}")
            undone.append([str(a), str(b)])
        model = await model_for(conn, workspace_id)
        touched = await WorkspaceStitcher(conn, workspace_id, model).restitch(clusters)
    return {"customer_id": customer_id, "unmerged": undone, "customers": sorted(touched)}
