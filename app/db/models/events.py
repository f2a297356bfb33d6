"""The raw events: the source of truth, append-only, partitioned by week of receipt."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Index,
    PrimaryKeyConstraint,
    Sequence,
    SmallInteger,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

from app.db.models.base import Base

EVENT_SEQ = Sequence("events_seq", cache=1000)


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (never wraps)."""

    cache_ok = True

    def get_col_spec(self, **_: Any) -> str:
        return "XID8"


# Let reflection (alembic check) recognise the type instead of warning about it.
ischema_names["xid8"] = Xid8


class Event(Base):
    """One accepted event as received (normalised), never rewritten.

    `received_week` (Monday, UTC) is the partition key; dedupe is the primary key inside a week
    plus a look into the previous week's partition, so a retry is stored once for ≥ 7 days and old
    weeks can be dropped whole. `(tx, seq)` is the stitcher's feed order: rows whose transaction id
    is below the oldest running transaction can never be joined by an earlier one.
    """

    __tablename__ = "events"
    __table_args__ = (
        PrimaryKeyConstraint("workspace_id", "message_id", "received_week"),
        # The stitcher's feed: per shard of workspaces, in (tx, seq) order.
        Index("ix_events_feed", text("(workspace_id % 16)"), "tx", "seq"),
        {"postgresql_partition_by": "RANGE (received_week)"},
    )

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    received_week: Mapped[date] = mapped_column(Date)
    message_id: Mapped[str] = mapped_column(Text)
    seq: Mapped[int] = mapped_column(BigInteger, EVENT_SEQ, server_default=EVENT_SEQ.next_value())
    tx: Mapped[int] = mapped_column(Xid8(), server_default=text("pg_current_xact_id()"))
    type: Mapped[str] = mapped_column(Text)
    event: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(Text)
    anonymous_id: Mapped[str | None] = mapped_column(Text)
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    flags: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
