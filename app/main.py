"""The ASGI application: `create_app()` and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.aggregates.funnel_store import warm_kernels
from app.aggregates.routes import router as aggregates_router
from app.core.errors import install_error_handlers
from app.core.http import RequestMiddleware
from app.core.logging import configure_logging
from app.core.memory import tune_gc
from app.core.settings import Settings, get_settings
from app.dashboard.routes import router as dashboard_router
from app.ingest.routes import router as ingest_router
from app.links.routes import router as links_router
from app.ops.routes import router as ops_router
from app.privacy.routes import router as privacy_router
from app.profiles.routes import router as profiles_router
from app.runtime import running
from app.settings.routes import router as settings_router
from app.tracker.routes import router as tracker_router
from app.webhooks.routes import router as webhooks_router


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; the lifespan opens the database and starts background work."""
    settings = settings or get_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(settings) as rt:
            app.state.runtime = rt
            tune_gc()
            warm_kernels()  # the funnel index's compiled kernels, in the background
            yield

    app = FastAPI(
        title="Journeys",
        version=__version__,
        summary="Segment-compatible event tracking and journey stitching",
        lifespan=lifespan,
        # FastAPI's OpenTelemetry hooks cost ~50 µs per request; we export Prometheus metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    install_error_handlers(app)
    # Read routes first: they are matched on every query, ingest is answered before routing.
    app.include_router(profiles_router)
    app.include_router(aggregates_router)
    app.include_router(settings_router)
    app.include_router(privacy_router)
    app.include_router(webhooks_router)
    app.include_router(ingest_router)
    app.include_router(ops_router)
    app.include_router(links_router)
    app.include_router(tracker_router)
    app.include_router(dashboard_router)  # `/` and /dashboard/…, after every API route
    app.add_middleware(RequestMiddleware, max_header_bytes=settings.max_header_bytes)
    return app
