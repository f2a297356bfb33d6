"""FastAPI dependencies for the read and server keys (`Authorization: Bearer …`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.deps import runtime
from app.core.security import KeyKind, bearer_token


async def read_workspace(request: Request) -> int:
    """The workspace of a valid read key (401/403 otherwise)."""
    token = bearer_token(request.headers.get("authorization"))
    record = await runtime(request).keys.require(token, KeyKind.READ)
    return record.workspace_id


async def server_workspace(request: Request) -> int:
    """The workspace of a valid server key (401/403 otherwise)."""
    token = bearer_token(request.headers.get("authorization"))
    record = await runtime(request).keys.require(token, KeyKind.SERVER)
    return record.workspace_id


ReadWorkspace = Annotated[int, Depends(read_workspace)]
ServerWorkspace = Annotated[int, Depends(server_workspace)]
