"""Run Alembic from code (used by `journeys migrate`, `journeys serve` and the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config


def _root() -> Path:
    """The folder holding `migrations/`: the source tree, else the working directory (an
    installed package, as in the Docker image, whose WORKDIR holds alembic.ini and migrations)."""
    source = Path(__file__).resolve().parents[2]
    return source if (source / "migrations").is_dir() else Path.cwd()


_ROOT = _root()


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at our migrations and the given database."""
    ini = _ROOT / "alembic.ini"
    cfg = Config(str(ini)) if ini.exists() else Config()
    cfg.set_main_option("script_location", str(_ROOT / "migrations"))
    cfg.attributes["url"] = url
    return cfg


def upgrade_head(url: str) -> None:
    """Apply every migration (idempotent)."""
    command.upgrade(alembic_config(url), "head")


def head_revision() -> str | None:
    """The newest revision in the migrations folder."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("postgresql://unused/")).get_current_head()
