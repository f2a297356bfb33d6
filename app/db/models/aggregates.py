"""Rollups of stage-level aggregates, maintained by the stitcher (see app/aggregates/facts.py).

Every figure is filed under the UTC day a customer entered a stage, per breakdown group: `dim` is
the breakdown (`trait:persona`) or "" for the totals, `dval` the group's value. Rows are
additive, so any window is a sum of days; a recomputed customer adds its new contribution and
removes its old one, which keeps the rollups exact after merges, late events and deletions.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Double,
    Index,
    PrimaryKeyConstraint,
    Sequence,
    SmallInteger,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.db.models.base import Base
from app.db.models.events import Xid8


class AggStageDay(Base):
    """Customers who entered a stage that day; of those, how many reached a later stage."""

    __tablename__ = "agg_stage_days"
    __table_args__ = (PrimaryKeyConstraint("workspace_id", "dim", "day", "stage", "dval"),)

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    dim: Mapped[str] = mapped_column(Text)
    day: Mapped[date] = mapped_column(Date)
    stage: Mapped[str] = mapped_column(Text)
    dval: Mapped[str] = mapped_column(Text)
    entered: Mapped[int] = mapped_column(BigInteger)
    converted: Mapped[int] = mapped_column(BigInteger)


class AggStageDuration(Base):
    """Histogram (log buckets) of the time from entering a stage to entering the next one."""

    __tablename__ = "agg_stage_durations"
    __table_args__ = (
        PrimaryKeyConstraint("workspace_id", "dim", "day", "stage", "dval", "bucket"),
    )

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    dim: Mapped[str] = mapped_column(Text)
    day: Mapped[date] = mapped_column(Date)
    stage: Mapped[str] = mapped_column(Text)
    dval: Mapped[str] = mapped_column(Text)
    bucket: Mapped[int] = mapped_column(SmallInteger)
    n: Mapped[int] = mapped_column(BigInteger)


class AggTouchDay(Base):
    """Touches (events) by channel while customers were in a stage, with their feedback."""

    __tablename__ = "agg_touch_days"
    __table_args__ = (
        PrimaryKeyConstraint("workspace_id", "dim", "day", "stage", "channel", "dval"),
    )

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    dim: Mapped[str] = mapped_column(Text)
    day: Mapped[date] = mapped_column(Date)
    stage: Mapped[str] = mapped_column(Text)  # "" = the whole journey
    channel: Mapped[str] = mapped_column(Text)
    dval: Mapped[str] = mapped_column(Text)
    touches: Mapped[float] = mapped_column(Double)
    customers: Mapped[float] = mapped_column(Double)
    converted: Mapped[float] = mapped_column(Double)
    responses: Mapped[float] = mapped_column(Double)
    nps_n: Mapped[float] = mapped_column(Double)
    nps_promoters: Mapped[float] = mapped_column(Double)
    nps_detractors: Mapped[float] = mapped_column(Double)
    csat_n: Mapped[float] = mapped_column(Double)
    csat_sum: Mapped[float] = mapped_column(Double)
    effort_n: Mapped[float] = mapped_column(Double)
    effort_sum: Mapped[float] = mapped_column(Double)
    success_n: Mapped[float] = mapped_column(Double)
    success_yes: Mapped[float] = mapped_column(Double)
    sentiment_n: Mapped[float] = mapped_column(Double)
    sentiment_sum: Mapped[float] = mapped_column(Double)


class AggAttributionDay(Base):
    """Conversion credit per channel under each attribution model, on the conversion's day."""

    __tablename__ = "agg_attribution_days"
    __table_args__ = (
        PrimaryKeyConstraint("workspace_id", "dim", "day", "stage", "channel", "dval"),
    )

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    dim: Mapped[str] = mapped_column(Text)
    day: Mapped[date] = mapped_column(Date)
    stage: Mapped[str] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(Text)
    dval: Mapped[str] = mapped_column(Text)
    first: Mapped[float] = mapped_column(Double)
    last: Mapped[float] = mapped_column(Double)
    linear: Mapped[float] = mapped_column(Double)
    position: Mapped[float] = mapped_column(Double)
    time_decay: Mapped[float] = mapped_column(Double)


class StageEntryRow(Base):
    """When each customer entered each stage: the stage steps of funnels."""

    __tablename__ = "stage_entries"
    __table_args__ = (
        PrimaryKeyConstraint("workspace_id", "customer_id", "stage"),
        Index(None, "workspace_id", "stage", "entered_at"),
    )

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    customer_id: Mapped[str] = mapped_column(Text)
    stage: Mapped[str] = mapped_column(Text)
    entered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AggReadVersion(Base):
    """A workspace's aggregates data version: bumped by triggers (migration 0007) by every
    statement that changes what the aggregates read, in the writer's transaction. The
    aggregates' answer cache keys on it."""

    __tablename__ = "agg_read_versions"

    workspace_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class AggStageDurationBlock(Base):
    """`agg_stage_durations` summed over aligned blocks of `span` days (8 or 64) starting on
    `start`; kept by triggers (migration 0007) so a window reads a few blocks, not every day."""

    __tablename__ = "agg_stage_duration_blocks"
    __table_args__ = (
        PrimaryKeyConstraint("workspace_id", "dim", "span", "start", "stage", "dval", "bucket"),
    )

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    dim: Mapped[str] = mapped_column(Text)
    span: Mapped[int] = mapped_column(SmallInteger)
    start: Mapped[date] = mapped_column(Date)
    stage: Mapped[str] = mapped_column(Text)
    dval: Mapped[str] = mapped_column(Text)
    bucket: Mapped[int] = mapped_column(SmallInteger)
    n: Mapped[int] = mapped_column(BigInteger)


class AggTouchBlock(Base):
    """`agg_touch_days` summed over aligned blocks of days (see AggStageDurationBlock)."""

    __tablename__ = "agg_touch_blocks"
    __table_args__ = (
        PrimaryKeyConstraint("workspace_id", "dim", "span", "start", "stage", "channel", "dval"),
    )

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    dim: Mapped[str] = mapped_column(Text)
    span: Mapped[int] = mapped_column(SmallInteger)
    start: Mapped[date] = mapped_column(Date)
    stage: Mapped[str] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(Text)
    dval: Mapped[str] = mapped_column(Text)
    touches: Mapped[float] = mapped_column(Double)
    customers: Mapped[float] = mapped_column(Double)
    converted: Mapped[float] = mapped_column(Double)
    responses: Mapped[float] = mapped_column(Double)
    nps_n: Mapped[float] = mapped_column(Double)
    nps_promoters: Mapped[float] = mapped_column(Double)
    nps_detractors: Mapped[float] = mapped_column(Double)
    csat_n: Mapped[float] = mapped_column(Double)
    csat_sum: Mapped[float] = mapped_column(Double)
    effort_n: Mapped[float] = mapped_column(Double)
    effort_sum: Mapped[float] = mapped_column(Double)
    success_n: Mapped[float] = mapped_column(Double)
    success_yes: Mapped[float] = mapped_column(Double)
    sentiment_n: Mapped[float] = mapped_column(Double)
    sentiment_sum: Mapped[float] = mapped_column(Double)


FUNNEL_CHANGES_SEQ = Sequence("funnel_changes_seq")


class FunnelChange(Base):
    """Customers whose stage entries, breakdown values or timeline a statement changed, with
    the writer's transaction id (triggers of migration 0011): the funnel indexes of the API
    processes re-read exactly these customers in their next request's snapshot."""

    __tablename__ = "funnel_changes"
    __table_args__ = (PrimaryKeyConstraint("workspace_id", "xid", "seq"),)

    workspace_id: Mapped[int] = mapped_column(BigInteger)
    xid: Mapped[int] = mapped_column(Xid8())
    seq: Mapped[int] = mapped_column(
        BigInteger, FUNNEL_CHANGES_SEQ, server_default=FUNNEL_CHANGES_SEQ.next_value()
    )
    customer_ids: Mapped[list[str]] = mapped_column(ARRAY(Text))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class FunnelChangeHorizon(Base):
    """The newest transaction id whose changes were trimmed from `funnel_changes`: an index
    whose snapshot is older reloads instead of reading the feed."""

    __tablename__ = "funnel_change_horizons"

    workspace_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    trimmed_through: Mapped[int] = mapped_column(Xid8())
