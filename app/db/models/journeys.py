"""Derived state maintained by the stitcher; all of it can be rebuilt from `events` by replay."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    Sequence,
    SmallInteger,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.models.base import Base
from app.db.models.events import Xid8

CLUSTER_SEQ = Sequence("identity_cluster_seq")
JOBS_SEQ = Sequence("jobs_seq")


class Identity(Base):
    """An identifier (`kind:value`) of a workspace: its customer and its cluster.

    A cluster is a connected component of *all* link evidence, refused links included; the
    stitcher re-resolves a whole cluster whenever new evidence touches it, which is what makes
    the outcome independent of the order in which events arrive.
    """

    __tablename__ = "identities"
    __table_args__ = (
        PrimaryKeyConstraint("workspace_id", "kind", "value"),
        Index(None, "workspace_id", "cluster_id"),
        Index(None, "workspace_id", "customer_id"),
    )

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(Text)
    value: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[str] = mapped_column(Text)
    cluster_id: Mapped[int] = mapped_column(BigInteger)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    first_message_id: Mapped[str] = mapped_column(Text)
    shared_device: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))


class IdentityLink(Base):
    """The earliest evidence (event) for each link between two identifiers, per rule."""

    __tablename__ = "identity_links"
    __table_args__ = (
        PrimaryKeyConstraint("workspace_id", "a_kind", "a_value", "b_kind", "b_value", "rule"),
        Index(None, "workspace_id", "b_kind", "b_value"),
    )

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    a_kind: Mapped[str] = mapped_column(Text)
    a_value: Mapped[str] = mapped_column(Text)
    b_kind: Mapped[str] = mapped_column(Text)
    b_value: Mapped[str] = mapped_column(Text)
    rule: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    message_id: Mapped[str] = mapped_column(Text)


class BlockedLink(Base):
    """A link an operator undid with unmerge; the resolver never applies it again."""

    __tablename__ = "blocked_links"
    __table_args__ = (PrimaryKeyConstraint("workspace_id", "a", "b"),)

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    a: Mapped[str] = mapped_column(Text)  # `kind:value`, a < b
    b: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    reason: Mapped[str | None] = mapped_column(Text)


class LedgerRow(Base):
    """The identity ledger of a cluster: every link, merge, refusal and unmerge, explained."""

    __tablename__ = "identity_ledger"
    __table_args__ = (PrimaryKeyConstraint("workspace_id", "cluster_id", "position"),)

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    cluster_id: Mapped[int] = mapped_column(BigInteger)
    position: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    message_id: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    rule: Mapped[str] = mapped_column(Text)
    identifiers: Mapped[list[str]] = mapped_column(ARRAY(Text))
    into: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)


class JourneyEvent(Base):
    """One event on a customer's timeline, with its session, channel and stage at the time."""

    __tablename__ = "journey_events"
    __table_args__ = (
        PrimaryKeyConstraint("workspace_id", "message_id"),
        Index(None, "workspace_id", "customer_id", "timestamp", "message_id"),
        Index(
            "ix_journey_events_anonymous",
            "workspace_id",
            "anonymous_id",
            postgresql_where=text("anonymous_id IS NOT NULL"),
        ),
        Index(
            "ix_journey_events_user",
            "workspace_id",
            "user_id",
            postgresql_where=text("user_id IS NOT NULL"),
        ),
        # Event steps of funnels.
        Index(
            "ix_journey_events_event",
            "workspace_id",
            "event",
            "timestamp",
            postgresql_where=text("event IS NOT NULL"),
        ),
    )

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[str | None] = mapped_column(Text)
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    type: Mapped[str] = mapped_column(Text)
    event: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(Text)
    anonymous_id: Mapped[str | None] = mapped_column(Text)
    # For events whose only usable identifier is a trait (email, external id): `kind:value`.
    trait_identifier: Mapped[str | None] = mapped_column(Text)
    # The channel the event shows on its own, and the one its session attributes it to.
    source_channel: Mapped[str] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(Text)
    session_id: Mapped[str | None] = mapped_column(Text)
    stage: Mapped[str | None] = mapped_column(Text)
    flags: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    properties: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    traits: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    campaign: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class Customer(Base):
    """A stitched customer: the answer to "where is this customer now?"."""

    __tablename__ = "customers"
    __table_args__ = (
        PrimaryKeyConstraint("workspace_id", "customer_id"),
        # Drop-off: who has sat in a stage since before a cutoff.
        Index(None, "workspace_id", "stage", "stage_entered_at", "customer_id"),
    )

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    customer_id: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    event_count: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str | None] = mapped_column(Text)
    stage_entered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stage_history: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    traits: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    # The customer's breakdown groups and its contribution to the rollups (app/aggregates).
    dims: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    facts: Mapped[bytes | None] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class StitchProgress(Base):
    """The stitcher's position in the raw event feed, per shard of workspaces."""

    __tablename__ = "stitch_progress"

    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    tx: Mapped[int] = mapped_column(Xid8(), server_default=text("'0'::xid8"))
    seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    events: Mapped[int] = mapped_column(BigInteger, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Job(Base):
    """Background work of a workspace (re-deriving stages after a model change), resumable:
    `cursor` is the last customer id done, so a crash continues where it stopped."""

    __tablename__ = "jobs"
    __table_args__ = (
        PrimaryKeyConstraint("workspace_id", "id"),
        Index("ix_jobs_open", "workspace_id", "id", postgresql_where=text("status <> 'done'")),
    )

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    id: Mapped[int] = mapped_column(BigInteger, JOBS_SEQ, server_default=JOBS_SEQ.next_value())
    kind: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    total: Mapped[int] = mapped_column(Integer, server_default="0")
    done: Mapped[int] = mapped_column(Integer, server_default="0")
    cursor: Mapped[str] = mapped_column(Text, server_default="")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class StitchFailure(Base):
    """An event the stitcher could not process on its own; skipped so its shard keeps moving,
    and kept here (visible in /readyz) until a fix and `journeys rebuild` replay it."""

    __tablename__ = "stitch_failures"
    __table_args__ = (PrimaryKeyConstraint("workspace_id", "message_id"),)

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
