"""Accessors for the per-application services kept on `app.state`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

if TYPE_CHECKING:
    from app.ingest.service import IngestService
    from app.runtime import Runtime


def runtime(request: Request) -> Runtime:
    """The application's runtime (engine, committer, caches)."""
    return request.app.state.runtime  # type: ignore[no-any-return]


def ingest_service(request: Request) -> IngestService:
    """The ingest service of the running application."""
    return runtime(request).ingest
