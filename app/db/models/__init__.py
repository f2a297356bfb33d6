"""SQLAlchemy 2 typed models. Every key and index leads with `workspace_id`."""

from app.db.models.aggregates import (
    AggAttributionDay,
    AggReadVersion,
    AggStageDay,
    AggStageDuration,
    AggStageDurationBlock,
    AggTouchBlock,
    AggTouchDay,
    FunnelChange,
    FunnelChangeHorizon,
    StageEntryRow,
)
from app.db.models.base import Base
from app.db.models.events import Event
from app.db.models.journeys import (
    BlockedLink,
    Customer,
    Identity,
    IdentityLink,
    Job,
    JourneyEvent,
    LedgerRow,
    StitchFailure,
    StitchProgress,
)
from app.db.models.privacy import Deletion, SuppressedIdentifier
from app.db.models.webhooks import Webhook, WebhookDelivery, WebhookEvent
from app.db.models.workspaces import ApiKey, Workspace

__all__ = [
    "AggAttributionDay",
    "AggReadVersion",
    "AggStageDay",
    "AggStageDuration",
    "AggStageDurationBlock",
    "AggTouchBlock",
    "AggTouchDay",
    "ApiKey",
    "Base",
    "BlockedLink",
    "Customer",
    "Deletion",
    "Event",
    "FunnelChange",
    "FunnelChangeHorizon",
    "Identity",
    "IdentityLink",
    "Job",
    "JourneyEvent",
    "LedgerRow",
    "StageEntryRow",
    "StitchFailure",
    "StitchProgress",
    "SuppressedIdentifier",
    "Webhook",
    "WebhookDelivery",
    "WebhookEvent",
    "Workspace",
]
