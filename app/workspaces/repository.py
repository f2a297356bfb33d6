"""SQL for workspaces and keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.security import KeyKind, hash_key, new_key
from app.db.models import ApiKey, Workspace


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What a key hash resolves to."""

    workspace_id: int
    kind: KeyKind
    key_hash: str
    rate_limit_per_second: float | None
    # The consent category the workspace requires (privacy settings); None: store everything.
    consent_category: str | None = None


@dataclass(frozen=True, slots=True)
class NewWorkspace:
    """A created workspace with its keys in clear text (shown once, never stored)."""

    workspace_id: int
    name: str
    write_key: str
    read_key: str
    server_key: str


class WorkspaceExists(Exception):
    """A workspace of that name exists already."""


class WorkspaceNotFound(Exception):
    """No workspace of that name or id."""


async def create_workspace(conn: AsyncConnection, name: str) -> NewWorkspace:
    """Create a workspace with one key of each kind."""
    exists = await conn.scalar(select(Workspace.id).where(Workspace.name == name))
    if exists is not None:
        raise WorkspaceExists(name)
    workspace_id = await conn.scalar(insert(Workspace).values(name=name).returning(Workspace.id))
    assert workspace_id is not None
    keys = {kind: new_key(kind) for kind in KeyKind}
    await conn.execute(
        insert(ApiKey),
        [
            {"workspace_id": workspace_id, "kind": kind.value, "key_hash": hash_key(key)}
            for kind, key in keys.items()
        ],
    )
    return NewWorkspace(
        workspace_id=workspace_id,
        name=name,
        write_key=keys[KeyKind.WRITE],
        read_key=keys[KeyKind.READ],
        server_key=keys[KeyKind.SERVER],
    )


async def list_workspaces(conn: AsyncConnection) -> list[dict[str, object]]:
    """Every workspace with its creation time and number of live keys per kind."""
    now = func.now()
    live = or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now)
    rows = await conn.execute(
        select(Workspace.id, Workspace.name, Workspace.created_at).order_by(Workspace.id)
    )
    result: list[dict[str, object]] = []
    for ws_id, name, created in rows:
        kinds = await conn.execute(
            select(ApiKey.kind, func.count())
            .where(ApiKey.workspace_id == ws_id, live)
            .group_by(ApiKey.kind)
        )
        result.append(
            {
                "workspace_id": ws_id,
                "name": name,
                "created_at": created.isoformat(),
                "keys": dict(kinds.all()),
            }
        )
    return result


async def find_workspace(conn: AsyncConnection, ref: str) -> int:
    """A workspace id from its name or numeric id."""
    condition = Workspace.name == ref
    if ref.isdigit():
        condition = or_(condition, Workspace.id == int(ref))
    found = await conn.scalar(select(Workspace.id).where(condition))
    if found is None:
        raise WorkspaceNotFound(ref)
    return int(found)


async def rotate_key(
    conn: AsyncConnection, *, workspace_id: int, kind: KeyKind, overlap: timedelta
) -> str:
    """Issue a new key of `kind`; the old ones keep working for `overlap`, then expire."""
    now = await conn.scalar(select(func.now()))
    assert isinstance(now, datetime)
    await conn.execute(
        update(ApiKey)
        .where(
            ApiKey.workspace_id == workspace_id,
            ApiKey.kind == kind.value,
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now + overlap),
        )
        .values(expires_at=now + overlap)
    )
    # Keys expired long ago are of no use to anybody: keep the table small.
    await conn.execute(
        delete(ApiKey).where(
            ApiKey.workspace_id == workspace_id, ApiKey.expires_at < now - timedelta(days=30)
        )
    )
    key = new_key(kind)
    await conn.execute(
        insert(ApiKey).values(workspace_id=workspace_id, kind=kind.value, key_hash=hash_key(key))
    )
    return key


async def lookup_key(conn: AsyncConnection, key_hash: str) -> KeyRecord | None:
    """Resolve a live key by its hash."""
    row = (
        await conn.execute(
            select(
                ApiKey.workspace_id,
                ApiKey.kind,
                ApiKey.key_hash,
                Workspace.rate_limit_per_second,
                Workspace.settings["privacy"]["require_consent_category"].astext.label("consent"),
            )
            .join(Workspace, Workspace.id == ApiKey.workspace_id)
            .where(
                ApiKey.key_hash == key_hash,
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > func.now()),
            )
        )
    ).first()
    if row is None:
        return None
    return KeyRecord(
        workspace_id=row.workspace_id,
        kind=KeyKind(row.kind),
        key_hash=row.key_hash,
        rate_limit_per_second=row.rate_limit_per_second,
        consent_category=row.consent,
    )
