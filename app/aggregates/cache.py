"""Exact answer cache of the aggregates, per process.

An answer is stored under the workspace's data version (`agg_read_versions`, bumped by triggers
in the transaction of every statement that changes what the aggregates read: migration 0007)
and the text of its journey model. A request reads the current version first; an entry of an
older version is never served, so an answer is never staler than the data the request could
see. On a miss the answer is computed in a REPEATABLE READ snapshot whose own version is the
one stored with it: the stored answer is exactly the answer of that version.

Only figures that depend on the data alone are cached: drop-off counts depend on the clock as
well, and are computed at every request (the journey map's `dropoff` too).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from app.core.logging import get_logger
from app.journeys.stages import DEFAULT_MODEL, JourneyModel, JourneyModelError, model_from_dict

log = get_logger(__name__)

CAPACITY = 512  # answers per process (a few KB each)
_MODELS_CAPACITY = 64

_STATE_SQL = (
    "SELECT (w.settings -> 'journey_model')::text AS model, coalesce(v.version, 0) AS version "
    "FROM workspaces w LEFT JOIN agg_read_versions v ON v.workspace_id = w.id WHERE w.id = $1"
)
_VERSION_SQL = "SELECT coalesce(max(version), 0) FROM agg_read_versions WHERE workspace_id = $1"
# The same, and no parallel workers for the rest of the transaction: a rollup read is a few
# thousand rows in a few milliseconds, and the parallel plan the planner picks for a UNION ALL
# of the day and block tables spends more starting its workers than the serial read takes
# (stage figures at 1M customers: 9-13 ms parallel, 2-4 ms serial). One statement, so no extra
# round trip.
_SERIAL_VERSION_SQL = (
    "SELECT coalesce((SELECT max(version) FROM agg_read_versions WHERE workspace_id = $1), 0), "
    "set_config('max_parallel_workers_per_gather', '0', true)"
)


@dataclass(frozen=True, slots=True)
class ReadState:
    """What a request's answers are a function of, besides its parameters."""

    version: int
    model_text: str
    model: JourneyModel


class AnswerCache:
    """A bounded LRU map of answers keyed by (workspace, version, model text, request)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._answers: OrderedDict[Hashable, Any] = OrderedDict()
        self._models: OrderedDict[str, JourneyModel] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def model(self, text: str) -> JourneyModel:
        """The journey model of its stored text (parsed once per text)."""
        found = self._models.get(text)
        if found is not None:
            self._models.move_to_end(text)
            return found
        model = DEFAULT_MODEL
        if text:
            try:
                model = model_from_dict(orjson.loads(text))
            except (JourneyModelError, orjson.JSONDecodeError) as exc:
                # validated on PUT; a bad stored one falls back, as in the stitcher
                log.error("journey_model_invalid", error=str(exc))
        self._models[text] = model
        if len(self._models) > _MODELS_CAPACITY:
            self._models.popitem(last=False)
        return model

    async def state(self, conn: asyncpg.Connection, workspace_id: int) -> ReadState:
        """The workspace's data version and journey model, read now."""
        row = await conn.fetchrow(_STATE_SQL, workspace_id)
        text = "" if row is None or row["model"] is None else str(row["model"])
        version = 0 if row is None else int(row["version"])
        return ReadState(version, text, self.model(text))

    def get(self, key: Hashable) -> Any | None:
        """A stored answer, or None."""
        found = self._answers.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._answers.move_to_end(key)
        return found

    def put(self, key: Hashable, answer: Any) -> None:
        """Store an answer (evicting the least recently used beyond the capacity)."""
        self._answers[key] = answer
        self._answers.move_to_end(key)
        while len(self._answers) > self._capacity:
            self._answers.popitem(last=False)

    def clear(self) -> None:
        """Forget every answer (tests)."""
        self._answers.clear()


async def snapshot_version(
    conn: asyncpg.Connection, workspace_id: int, *, serial: bool = False
) -> int:
    """The data version in the current transaction's snapshot; `serial`: and plan the rest of
    the transaction without parallel workers."""
    return int(await conn.fetchval(_SERIAL_VERSION_SQL if serial else _VERSION_SQL, workspace_id))


ANSWERS = AnswerCache()

__all__ = ["ANSWERS", "AnswerCache", "ReadState", "snapshot_version"]
