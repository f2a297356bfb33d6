"""Engine and connection helpers; raw asyncpg connections for the hot paths."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool


def sqlalchemy_url(url: str) -> str:
    """`postgresql://…` → `postgresql+asyncpg://…` (accepts either)."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("database URL must start with postgresql://")


def asyncpg_dsn(url: str) -> str:
    """The plain libpq-style DSN asyncpg wants."""
    return "postgresql://" + sqlalchemy_url(url)[len("postgresql+asyncpg://") :]


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def make_engine(url: str, *, pool_size: int = 10, pooled: bool = True) -> AsyncEngine:
    """An async engine over asyncpg; `pooled=False` for one-shot CLI work."""
    kwargs: dict[str, Any] = {
        "pool_pre_ping": False,
        "json_serializer": _dumps,
        "json_deserializer": orjson.loads,
    }
    if pooled:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_timeout=5)
    else:
        kwargs["poolclass"] = NullPool
    return create_async_engine(sqlalchemy_url(url), **kwargs)


@asynccontextmanager
async def raw_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """Borrow the pooled asyncpg connection itself, for COPY, `unnest` and prepared queries."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        yield driver


_JSONB_OID = 3802
_BINARY_FORMAT = 1  # asyncpg's PG_FORMAT_BINARY


def copies_jsonb(conn: asyncpg.Connection) -> bool:
    """Whether the connection can send jsonb (as serialised JSON text) in COPY's binary format.
    The pool's connections can (SQLAlchemy registers binary JSON codecs); one with the text
    JSON codecs of `init_connection` can't, and must INSERT instead."""
    try:
        return conn.get_settings().get_data_codec(_JSONB_OID, _BINARY_FORMAT) is not None
    except Exception:  # an asyncpg without this introspection: INSERT works everywhere
        return False


async def init_connection(conn: asyncpg.Connection) -> None:
    """JSON in and out as SQLAlchemy's pooled connections do: str (serialised) in, objects out."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=lambda s: s, decoder=orjson.loads, schema="pg_catalog", format="text"
        )


async def connect(url: str) -> asyncpg.Connection:
    """A standalone asyncpg connection (CLI, tests) with the same codecs as the pool."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    await init_connection(conn)
    return conn


_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InterfaceError,
    # The connection's protocol state broke mid-operation (seen when the server restarts).
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    # A full disk or a read-only server: the database cannot take writes now, retry later.
    asyncpg.exceptions.DiskFullError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.InsufficientResourcesError,
    sa_exc.TimeoutError,
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether an error means "the database can't be reached now" (→ 503) rather than bad data."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, _UNAVAILABLE):
            return True
        if isinstance(cur, sa_exc.DBAPIError) and cur.connection_invalidated:
            return True
        orig = getattr(cur, "orig", None)
        cur = orig if isinstance(orig, BaseException) else (cur.__cause__ or cur.__context__)
    return False
