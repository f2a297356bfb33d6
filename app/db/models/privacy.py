"""Privacy state: suppressed identifiers and the ledger of deletions. Neither holds personal
data: identifiers are kept only as SHA-256 of `kind:value`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.db.models.base import Base


class SuppressedIdentifier(Base):
    """An identifier whose events are dropped (after a deletion), as SHA-256 of `kind:value`."""

    __tablename__ = "suppressed_identifiers"
    __table_args__ = (PrimaryKeyConstraint("workspace_id", "identifier_hash"),)

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    identifier_hash: Mapped[bytes] = mapped_column(LargeBinary)
    # The deletion job that suppressed it.
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Deletion(Base):
    """The ledger of one deletion request (a `delete_customer` job): who asked, when, and what
    was removed, counted; the identifiers only as hashes."""

    __tablename__ = "deletions"
    __table_args__ = (PrimaryKeyConstraint("workspace_id", "job_id"),)

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    job_id: Mapped[int] = mapped_column(BigInteger)
    # Pseudonymous (derived from the hash of the customer's oldest identifier); the job's target.
    customer_id: Mapped[str] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # `api_keys.id` of the server key that asked.
    requested_by_key_id: Mapped[int | None] = mapped_column(BigInteger)
    deleted_events: Mapped[int] = mapped_column(BigInteger, server_default="0")
    deleted_identifiers: Mapped[int] = mapped_column(Integer, server_default="0")
    identifier_hashes: Mapped[list[bytes]] = mapped_column(ARRAY(LargeBinary), server_default="{}")
    # Failed runs of the job so far; it is marked failed after a few.
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
