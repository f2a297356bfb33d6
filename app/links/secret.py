"""The server's link-signing secret: `JOURNEYS_LINK_SECRET`, else one generated on first use and
kept in the data directory (so `journeys links sign` and `journeys serve` on this machine agree).

Several servers on different machines must share `JOURNEYS_LINK_SECRET`; changing it makes
every link sent so far invalid (its pixel still answers a GIF, its click a 404).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Final

from app.core.settings import Settings

ENV_VAR: Final = "JOURNEYS_LINK_SECRET"
FILE_NAME: Final = "link-secret"
MIN_SECRET_CHARS: Final = 32


class LinkSecretError(RuntimeError):
    """The configured secret is unusable."""


def link_secret(settings: Settings) -> bytes:
    """The secret in force (the environment is read on every call; the file once)."""
    configured = (
        settings.link_secret.get_secret_value() if settings.link_secret else os.environ.get(ENV_VAR)
    )
    if configured:
        if len(configured) < MIN_SECRET_CHARS:
            raise LinkSecretError(f"{ENV_VAR} must be at least {MIN_SECRET_CHARS} characters")
        return configured.encode()
    return _persisted_secret(settings.data_dir.resolve())


@lru_cache(maxsize=4)
def _persisted_secret(data_dir: Path) -> bytes:
    path = data_dir / FILE_NAME
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    data_dir.mkdir(parents=True, exist_ok=True)
    # Written aside and hard-linked into place: linking fails if another process won the race,
    # and then everybody uses the winner's secret.
    temporary = data_dir / f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> bytes:
    value = path.read_text().strip()
    if len(value) < MIN_SECRET_CHARS:
        raise LinkSecretError(f"{path} holds no usable link secret; delete it to make a new one")
    return value.encode()
