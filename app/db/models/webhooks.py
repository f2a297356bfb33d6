"""Webhooks: subscriptions, the event outbox and one delivery row per (webhook, event).

Events are written to `webhook_events` in the transaction of the change they describe (the
stitch batch, the deletion step), with a `webhook_deliveries` row for every webhook of the
workspace subscribed to their type; the delivery loop (app/webhooks/delivery.py) sends them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Sequence,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.models.base import Base

WEBHOOKS_SEQ = Sequence("webhooks_seq")
# Not cached: ids must grow in the order events are written, whichever connection writes them
# (a cache hands each session its own range), since a customer's events are sent in id order.
WEBHOOK_EVENTS_SEQ = Sequence("webhook_events_seq")


class Webhook(Base):
    """A workspace's subscription: where to POST which event types, and the signing secret."""

    __tablename__ = "webhooks"
    __table_args__ = (PrimaryKeyConstraint("workspace_id", "id"),)

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    id: Mapped[int] = mapped_column(
        BigInteger, WEBHOOKS_SEQ, server_default=WEBHOOKS_SEQ.next_value()
    )
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    # Kept as is: signing needs it (HMAC), so it cannot be stored hashed like the API keys.
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookEvent(Base):
    """One event of the outbox; its id is the `Journeys-Event-Id` receivers deduplicate on."""

    __tablename__ = "webhook_events"
    __table_args__ = (PrimaryKeyConstraint("workspace_id", "id"),)

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    id: Mapped[int] = mapped_column(
        BigInteger, WEBHOOK_EVENTS_SEQ, server_default=WEBHOOK_EVENTS_SEQ.next_value()
    )
    type: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookDelivery(Base):
    """The delivery of one event to one webhook: pending until delivered or given up (failed)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        PrimaryKeyConstraint("workspace_id", "webhook_id", "event_id"),
        # What may be sent: only the head of each (webhook, customer) has a next attempt, so
        # the delivery loop never wades through the events queued behind a failing receiver.
        Index(
            "ix_webhook_deliveries_due",
            "workspace_id",
            "next_attempt_at",
            postgresql_where=text("status = 'pending' AND next_attempt_at IS NOT NULL"),
        ),
        # In order per customer: the pending events of a (webhook, customer), oldest first.
        Index(
            "ix_webhook_deliveries_customer",
            "workspace_id",
            "webhook_id",
            "customer_id",
            "event_id",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    webhook_id: Mapped[int] = mapped_column(BigInteger)
    event_id: Mapped[int] = mapped_column(BigInteger)
    customer_id: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="pending")  # delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    # Null while the delivery waits for an earlier pending event of the same customer.
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
