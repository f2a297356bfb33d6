"""The `demo` workspace for `journeys demo` when no write key is given: created on first use,
later reused with freshly rotated write and read keys (keys are stored hashed, never in clear)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.security import KeyKind
from app.workspaces import repository as workspaces

DEMO_WORKSPACE = "demo"
# Keys of an earlier demo run keep working this long (a dashboard tab left open).
KEY_OVERLAP = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class DemoKeys:
    """Keys of the demo workspace in clear text; `server_key` only when it was just created."""

    workspace_id: int
    name: str
    created: bool
    write_key: str
    read_key: str
    server_key: str | None

    def as_dict(self) -> dict[str, object]:
        """The JSON form (`journeys demo --json`)."""
        return asdict(self)


async def demo_workspace_keys(conn: AsyncConnection, name: str = DEMO_WORKSPACE) -> DemoKeys:
    """Create workspace `name` with its keys, or issue new write and read keys for it."""
    try:
        created = await workspaces.create_workspace(conn, name)
    except workspaces.WorkspaceExists:
        pass
    else:
        return DemoKeys(
            workspace_id=created.workspace_id,
            name=created.name,
            created=True,
            write_key=created.write_key,
            read_key=created.read_key,
            server_key=created.server_key,
        )
    workspace_id = await workspaces.find_workspace(conn, name)
    write_key = await workspaces.rotate_key(
        conn, workspace_id=workspace_id, kind=KeyKind.WRITE, overlap=KEY_OVERLAP
    )
    read_key = await workspaces.rotate_key(
        conn, workspace_id=workspace_id, kind=KeyKind.READ, overlap=KEY_OVERLAP
    )
    return DemoKeys(
        workspace_id=workspace_id,
        name=name,
        created=False,
        write_key=write_key,
        read_key=read_key,
        server_key=None,
    )
