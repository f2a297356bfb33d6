"""One settings object for the whole service, read from `JOURNEYS_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service configuration; every field maps to `JOURNEYS_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="JOURNEYS_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="postgresql://… URL; unset runs an embedded PostgreSQL"
    )
    data_dir: Path = Field(default=Path(".journeys"), description="embedded PostgreSQL data")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(default=1, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = "console"
    admin_token: str | None = None
    # Signs email open/click links (app/links); servers on several machines must share it.
    # Unset: one is generated into DATA_DIR/link-secret on first use.
    link_secret: SecretStr | None = Field(default=None, min_length=32)
    inprocess_worker: bool = True

    # Webhooks (app/webhooks, docs/webhooks.md). Private, loopback, link-local and other
    # non-global destinations are refused (SSRF) unless allowed: a receiver on the server's
    # own network, or tests.
    webhooks_allow_private: bool = False
    webhooks_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    webhooks_backoff_base_seconds: float = Field(
        default=10.0, gt=0, description="first retry delay, doubling on each failure"
    )
    webhooks_backoff_max_seconds: float = Field(default=3600.0, gt=0)
    webhooks_give_up_hours: float = Field(default=24.0, gt=0)

    # Database pool and group commit.
    pool_size: int = Field(default=10, ge=1)
    commit_max_events: int = Field(default=5_000, ge=1, description="events per group commit")
    commit_max_wait_ms: float = Field(
        default=0.0, ge=0, description="how long a commit waits for company"
    )
    commit_concurrency: int = Field(default=3, ge=1, description="group commits in flight")

    # Exactly-once window: a messageId is deduplicated for at least this many days.
    dedupe_days: int = Field(default=7, ge=7)
    retention_days: int | None = Field(default=None, ge=14)

    # Per-workspace token bucket, in events per second (per process).
    rate_limit_events_per_second: float = Field(default=20_000, gt=0)
    rate_limit_burst: float = Field(default=40_000, gt=0)

    # Server hardening.
    request_timeout_seconds: float = Field(default=30.0, gt=0)
    keep_alive_seconds: int = Field(default=5, ge=1)
    max_header_bytes: int = Field(default=16_384, ge=1024)
    max_concurrency: int = Field(default=2_000, ge=1)
    key_cache_seconds: float = Field(default=10.0, ge=0)

    # Funnels of workspaces with at least this many customers are answered from an in-memory
    # index per process (app/aggregates/funnel_store.py; 0: every workspace), within this
    # much memory (least recently used indexes evicted); the change feed keeps its rows this
    # long (an index idle for longer reloads).
    funnel_index_min_customers: int = Field(default=20_000, ge=0)
    funnel_index_max_mb: int = Field(default=1_024, ge=1)
    funnel_changes_retention_seconds: float = Field(default=3_600.0, gt=0)

    @property
    def embedded(self) -> bool:
        """True when no external database is configured."""
        return not self.database_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (environment read once)."""
    return Settings()
