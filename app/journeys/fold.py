"""A customer's derived state walked event by event, and resumed from a saved state.

Pure: standard library only (and the pure journey and facts modules). `JourneyWalk` is what
the stitcher derives a customer with: sessions (`sessions`), session channels (`channels`),
stages (`stages`), traits, breakdown groups and the rollup contribution (`aggregates.facts`),
one event at a time in `sort_key` order. Every one of those values depends only on the events
before it, so when a batch only *appends* to a customer (its new events all come after its last
stored one, and no event joined or left it otherwise) the walk resumes from the state saved with
the customer instead of replaying its stored events: the same result, at the cost of the new
events only. The state (`state()`, stored with the contribution in `customers.facts` under
"k") names the journey model it was walked under; a state of another model, or of a walk
without the contribution, is never resumed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from app.aggregates.facts import NONE_VALUE, Facts, FactsWalk, breakdown_value, day_of
from app.journeys.channels import DIRECT, UNASSIGNED
from app.journeys.model import StitchEvent
from app.journeys.sessions import CampaignKey, SessionWalk
from app.journeys.stages import JourneyModel, PerModel, StageEntry, StageWalk, model_to_dict

# A customer with more sessions than this keeps no state (its walk always replays): the state
# lists every session, for attribution, and must stay small next to the contribution.
MAX_SAVED_SESSIONS = 256

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

Values = tuple[str, str | None, str | None]  # (channel, session id, stage) of one event


def _us(at: datetime) -> int:
    return (at - _EPOCH) // _MICROSECOND


def _at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _fingerprint(model: JourneyModel) -> str:
    text = json.dumps(model_to_dict(model), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# A short digest of a journey model: a saved walk is resumed only under the same model.
model_fingerprint = PerModel(_fingerprint)


class JourneyWalk:
    """One customer's derived state, built by `add` in `sort_key` order."""

    __slots__ = (
        "_facts",
        "_model",
        "_properties",
        "_sessions",
        "_source",
        "_source_session",
        "_stages",
        "count",
        "first",
        "last",
        "traits",
        "with_facts",
    )

    def __init__(self, model: JourneyModel, *, with_facts: bool) -> None:
        self._model = model
        self.with_facts = with_facts
        self._sessions = SessionWalk()
        self._stages = StageWalk(model)
        self._facts = FactsWalk()
        # The current session's source so far (`channels.session_channels_from`).
        self._source_session = ""
        self._source: str | None = None
        # `property:NAME` breakdowns: the group of the latest event carrying the property.
        self._properties: dict[str, str] = {
            b: NONE_VALUE for b in model.breakdowns if b.startswith("property:")
        }
        self.traits: dict[str, Any] = {}
        self.count = 0
        self.first: datetime | None = None
        self.last: tuple[datetime, str] | None = None

    @property
    def history(self) -> list[StageEntry]:
        """The stage entries so far."""
        return self._stages.history

    def add(self, e: StitchEvent, source_channel: str, traits: Mapping[str, Any] | None) -> Values:
        """The next event (later, in `sort_key` order, than every event added before), its
        `channel_of` and its traits; returns its channel, session and stage."""
        session = self._sessions.add(e)
        known = self._source if session == self._source_session else None
        if source_channel not in (DIRECT, UNASSIGNED):
            # The first real source names the session; GA4 never lets Direct override one.
            if known is None or known == DIRECT:
                self._source_session, self._source = session, source_channel
            channel = source_channel
        else:
            if source_channel == DIRECT and known is None:
                self._source_session, self._source = session, DIRECT
            channel = known if known is not None else source_channel
        self._stages.add(e)
        history = self._stages.history
        stage = history[-1].stage if history else None
        if self.with_facts:
            self._facts.add(e, channel, session, stage, history)
            for breakdown in self._properties:
                value = e.properties.get(breakdown[9:])
                if value is not None:
                    self._properties[breakdown] = breakdown_value(value)
        if traits:
            self.traits.update(traits)
        self.count += 1
        if self.first is None:
            self.first = e.timestamp
        self.last = (e.timestamp, e.message_id)
        return channel, session, stage

    def dims(self) -> dict[str, str]:
        """The customer's group per breakdown (`facts.customer_dims`); {} without facts."""
        if not self.with_facts:
            return {}
        return {
            b: self._properties[b]
            if b in self._properties
            else breakdown_value(self.traits.get(b.partition(":")[2]))
            for b in self._model.breakdowns
        }

    def facts(self, dims: dict[str, str]) -> Facts:
        """The contribution (empty without facts), with the walk's state to resume from."""
        facts = self._facts.facts(self.history, dims=dims) if self.with_facts else Facts()
        facts.walk = self.state()
        return facts

    def state(self) -> dict[str, Any] | None:
        """What `resume` needs, JSON-ready; None when too large to keep."""
        if self.last is None or len(self._facts.sessions) > MAX_SAVED_SESSIONS:
            return None
        s = self._sessions
        return {
            "m": model_fingerprint(self._model),
            "r": 1 if self.with_facts else 0,
            "l": [_us(self.last[0]), self.last[1]],
            "s": [
                s.current,
                None if s.started is None else _us(s.started),
                None if s.last is None else _us(s.last),
                None if s.campaign is None else list(s.campaign),
            ],
            "src": [self._source_session, self._source],
            "c": [[i, j, n] for (i, j), n in sorted(self._stages.counts.items())],
            "a": [list(session) for session in self._facts.sessions],
            "p": self._properties,
        }

    @classmethod
    def resume(
        cls,
        model: JourneyModel,
        *,
        with_facts: bool,
        state: Mapping[str, Any],
        facts: Facts | None,
        history: list[StageEntry],
        traits: dict[str, Any],
        first: datetime,
        count: int,
    ) -> JourneyWalk | None:
        """The walk of a customer's stored events, from its saved state, its stored
        contribution, stage history, traits, first event time and event count; None when the
        state cannot be resumed (another model, or saved without the contribution)."""
        if state.get("m") != model_fingerprint(model) or state.get("r") != int(with_facts):
            return None
        if with_facts and facts is None:
            return None
        walk = cls(model, with_facts=with_facts)
        current, started, last, campaign = state["s"]
        walk._sessions = SessionWalk(
            current,
            None if started is None else _at(started),
            None if last is None else _at(last),
            None if campaign is None else _campaign_key(campaign),
        )
        walk._source_session, walk._source = state["src"]
        walk._stages = StageWalk(
            model, counts={(i, j): n for i, j, n in state["c"]}, history=history
        )
        if with_facts and facts is not None:
            walk._facts = FactsWalk(
                first_day=day_of(first),
                # Copies: the stored contribution is also the "old" side of the rollup delta.
                touches={key: list(values) for key, values in facts.touches.items()},
                sessions=[list(session) for session in state["a"]],
                base=facts,
            )
            walk._properties = dict(state["p"])
        walk.traits = traits
        walk.count = count
        walk.first = first
        walk.last = (_at(state["l"][0]), state["l"][1])
        return walk


def _campaign_key(raw: list[str]) -> CampaignKey:
    return (raw[0], raw[1], raw[2])


__all__ = ["MAX_SAVED_SESSIONS", "JourneyWalk", "Values", "model_fingerprint"]
