"""FastAPI dependencies for the read and server keys (`Authorization: Bearer …`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.deps import runtime
from app.core.security import KeyKind, basic_auth_user, bearer_token


def _presented_key(request: Request) -> str | None:
    """The key of a Bearer header, or of a Basic one (an SDK's write key sent to the wrong
    route must be told 403, not "missing")."""
    header = request.headers.get("authorization")
    return bearer_token(header) or basic_auth_user(header)


async def read_workspace(request: Request) -> int:
    """The workspace of a valid read key (401/403 otherwise)."""
    record = await runtime(request).keys.require(_presented_key(request), KeyKind.READ)
    return record.workspace_id


async def server_workspace(request: Request) -> int:
    """The workspace of a valid server key (401/403 otherwise)."""
    record = await runtime(request).keys.require(_presented_key(request), KeyKind.SERVER)
    return record.workspace_id


ReadWorkspace = Annotated[int, Depends(read_workspace)]
ServerWorkspace = Annotated[int, Depends(server_workspace)]
