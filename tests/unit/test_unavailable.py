"""Which database errors mean "retry later" (503) rather than "this event is bad" (400).

A 400 makes an SDK drop the event for good, so a transient failure misread as one loses data;
a 503 makes it retry, so bad data misread as one is an outage."""

from __future__ import annotations

import asyncpg
import pytest

from app.db.engine import is_unavailable


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError("reset"),
        asyncpg.exceptions.InterfaceError("connection is closed"),
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        ),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction"),
        asyncpg.exceptions.DiskFullError("no space left on device"),
    ],
)
def test_transient_failures_are_unavailable(exc: BaseException) -> None:
    assert is_unavailable(exc)
    wrapped = RuntimeError("commit failed")
    wrapped.__cause__ = exc
    assert is_unavailable(wrapped)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.UntranslatableCharacterError("\\u0000 cannot be converted"),
        asyncpg.exceptions.NumericValueOutOfRangeError("value out of range"),
        ValueError("bad"),
    ],
)
def test_bad_data_is_not_unavailable(exc: BaseException) -> None:
    assert not is_unavailable(exc)
