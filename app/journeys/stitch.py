"""Stitching one workspace's batch of raw events into identities, customers and timelines.

The pure modules decide (identity.graph, journeys.stages/sessions/channels); this module loads
what they need and writes what they decide, inside the caller's transaction. The unit of
identity work is the *cluster*: every identifier connected by any evidence, refused links
included. Whenever new evidence could change a cluster's outcome, the whole cluster is resolved
again from its stored evidence, so the result never depends on the order events arrived in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

import asyncpg
import orjson

from app.aggregates import repository as rollups
from app.aggregates.facts import (
    Deltas,
    Facts,
    add_change,
    diff_entries,
    prune,
)
from app.identity import repository as ids
from app.identity.graph import (
    ALIAS,
    ANONYMOUS_ID,
    EMAIL,
    IDENTIFY,
    USER_ID,
    Identifier,
    LedgerEntry,
    Resolution,
    affected_identifiers,
    assign,
    customer_key,
    is_placeholder,
    links_of,
    own_identifiers,
    resolve,
)
from app.ingest.segment import FLAG_BOT
from app.journeys import repository as journeys
from app.journeys.channels import channel_of
from app.journeys.fold import JourneyWalk
from app.journeys.model import StitchEvent, campaign_of, from_payload
from app.journeys.stages import JourneyModel, StageEntry
from app.privacy.screen import drop_unwanted
from app.webhooks import outbox as webhook_outbox

_ITEM_ORDER = itemgetter("timestamp", "message_id")  # `sort_key` of timeline rows

# Inside `journeys serve` the stitcher shares the event loop with ingest: its CPU-bound loops
# give the loop a turn every this many items, so a large batch delays requests by a few
# milliseconds instead of its whole duration.
YIELD_EVERY = 100


@dataclass(slots=True)
class StitchStats:
    """What one batch did."""

    events: int = 0
    resolved_clusters: int = 0
    customers: int = 0
    touched: set[str] = field(default_factory=set)


# --------------------------------------------------------------------------- parsing


def _trait_identifier(e: StitchEvent) -> str | None:
    """For an event with no usable user or anonymous id: its first trait identifier."""
    if (e.user_id is not None and not is_placeholder(e.user_id)) or (
        e.anonymous_id is not None and not is_placeholder(e.anonymous_id)
    ):
        return None  # the common case, without building the identifiers
    own = own_identifiers(e)
    if any(i.kind in (USER_ID, ANONYMOUS_ID) for i in own):
        return None
    return str(own[0]) if own else None


def _traits(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    traits: dict[str, Any] = {}
    context = payload.get("context")
    if isinstance(context, dict) and isinstance(context.get("traits"), dict):
        traits.update(context["traits"])
    if isinstance(payload.get("traits"), dict):
        traits.update(payload["traits"])
    return traits or None


Parsed = tuple[StitchEvent, journeys.TimelineRow]


async def parse_ahead(records: Sequence[asyncpg.Record]) -> list[Parsed | None]:
    """`parse_raw` of each record, ahead of its batch (`Stitcher` does it while the previous
    batch waits on PostgreSQL); a record that fails to parse is left None, so that its batch
    parses it again and fails where a poison event is handled."""
    out: list[Parsed | None] = []
    for i, record in enumerate(records, 1):
        try:
            out.append(parse_raw(record))
        except Exception:
            out.append(None)
        if i % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    return out


def parse_raw(record: asyncpg.Record) -> Parsed:
    """A raw `events` row → the pure event and its timeline row (customer not yet known)."""
    payload = record["payload"]
    e = from_payload(
        payload, timestamp=record["timestamp"], is_bot=bool(record["flags"] & FLAG_BOT)
    )
    campaign = campaign_of(e)
    channel = channel_of(e, campaign=campaign)
    properties = payload.get("properties")
    row = journeys.TimelineRow(
        message_id=e.message_id,
        customer_id=None,
        timestamp=e.timestamp,
        received_at=record["received_at"],
        type=e.type,
        event=e.event,
        user_id=e.user_id,
        anonymous_id=e.anonymous_id,
        trait_identifier=_trait_identifier(e),
        source_channel=channel,
        channel=channel,
        session_id=None,
        stage=None,
        flags=record["flags"],
        properties=properties if isinstance(properties, dict) and properties else None,
        traits=_traits(payload),
        campaign=campaign or None,
    )
    return e, row


def _light_event(row: Mapping[str, Any]) -> StitchEvent:
    """Enough of a stored timeline row to decide which customer it belongs to."""
    email: str | None = None
    external: tuple[tuple[str, str], ...] = ()
    trait = row["trait_identifier"]
    if trait:
        ident = Identifier.parse(trait)
        if ident.kind == EMAIL:
            email = ident.value
        else:
            external = ((ident.kind, ident.value),)
    return StitchEvent(
        message_id=row["message_id"],
        type=row["type"],
        event=None,
        timestamp=row["timestamp"],
        user_id=row["user_id"],
        anonymous_id=row["anonymous_id"],
        email=email,
        external_ids=external,
    )


# --------------------------------------------------------------------------- evidence → events


def _evidence_events(
    identities: Iterable[ids.IdentityRow],
    links: Iterable[ids.LinkRow],
    occurrences: Iterable[Mapping[str, Any]],
) -> list[StitchEvent]:
    """Synthetic events that carry exactly the cluster's stored evidence, so `resolve` over
    them equals `resolve` over every raw event of the cluster."""
    events: list[StitchEvent] = []
    for row in identities:
        if not row.first_message_id:  # known only as an alias's previousId, never sighted
            continue
        events.append(_carrying(row.first_message_id, row.first_seen, [row.ident]))
    for link in links:
        if link.rule == ALIAS:
            events.append(
                StitchEvent(
                    message_id=link.message_id,
                    type="alias",
                    event=None,
                    timestamp=link.at,
                    user_id=link.b.value,
                    previous_id=link.a.value,
                )
            )
        else:
            events.append(_carrying(link.message_id, link.at, [link.a, link.b]))
    for occ in occurrences:
        events.append(
            StitchEvent(
                message_id=occ["message_id"],
                type="track",
                event=None,
                timestamp=occ["timestamp"],
                user_id=occ["user_id"],
                anonymous_id=occ["anonymous_id"],
            )
        )
    return events


def _carrying(message_id: str, at: datetime, idents: Sequence[Identifier]) -> StitchEvent:
    user = next((i.value for i in idents if i.kind == USER_ID), None)
    anon = next((i.value for i in idents if i.kind == ANONYMOUS_ID), None)
    email = next((i.value for i in idents if i.kind == EMAIL), None)
    external = tuple(
        (i.kind, i.value) for i in idents if i.kind not in (USER_ID, ANONYMOUS_ID, EMAIL)
    )
    return StitchEvent(
        message_id=message_id,
        type="track",
        event=None,
        timestamp=at,
        user_id=user,
        anonymous_id=anon,
        email=email,
        external_ids=external,
    )


def _dedupe_ledger(entries: Iterable[LedgerEntry]) -> list[LedgerEntry]:
    """A repeated decision (the same refusal on every page view) is recorded once."""
    seen: set[tuple[str, str, tuple[Identifier, ...]]] = set()
    kept: list[LedgerEntry] = []
    for entry in entries:
        key = (entry.action, entry.rule, entry.identifiers)
        if key not in seen:
            seen.add(key)
            kept.append(entry)
    return kept


# --------------------------------------------------------------------------- clusters


class _Groups:
    """Union-find over cluster ids and not-yet-stored identifiers."""

    def __init__(self) -> None:
        self.parent: dict[int | Identifier, int | Identifier] = {}

    def find(self, x: int | Identifier) -> int | Identifier:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int | Identifier, b: int | Identifier) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def groups(self) -> list[list[int | Identifier]]:
        out: dict[int | Identifier, list[int | Identifier]] = {}
        for x in list(self.parent):
            out.setdefault(self.find(x), []).append(x)
        return list(out.values())


class WorkspaceStitcher:
    """Stitches batches of one workspace's events inside the caller's transaction."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        workspace_id: int,
        model: JourneyModel,
        *,
        rollups: bool = True,
        webhooks: bool = True,
    ) -> None:
        self.conn = conn
        self.rollups = rollups
        # Off in `journeys rebuild`: a replay re-derives history, it does not change anything.
        self.webhooks = webhooks
        self.ws = workspace_id
        self.model = model
        self.customer_of: dict[Identifier, str] = {}
        self.resolutions: dict[int, Resolution] = {}
        self.cluster_of: dict[Identifier, int] = {}
        self.batch: list[StitchEvent] = []
        # own_identifiers of the batch's events, by message id (computed once, used twice).
        self._own: dict[str, list[Identifier]] = {}
        # Customers that timeline rows were moved away from by a re-resolution.
        self._lost: set[str] = set()
        # Identifiers first stored by this batch (no stored timeline row carries them), and the
        # resolved clusters in which no stored row can have changed customer (see `stitch`).
        self._newcomers: set[Identifier] = set()
        self._unchanged: set[int] = set()
        self._customers_before: dict[int, set[str]] = {}

    async def stitch(
        self,
        records: Sequence[asyncpg.Record],
        *,
        parsed_ahead: Sequence[Parsed | None] | None = None,
    ) -> StitchStats:
        """Stitch raw `events` rows (any order; events already stitched are skipped).
        `parsed_ahead`, aligned with `records`, holds what `parse_raw` gave for each one when it
        was already parsed (`read_ahead`); None entries are parsed here."""
        stats = StitchStats()
        self._own, self._lost, self._newcomers, self._unchanged = {}, set(), set(), set()
        parsed: dict[str, tuple[StitchEvent, journeys.TimelineRow]] = {}
        screened: list[tuple[asyncpg.Record, StitchEvent]] = []
        for i, record in enumerate(records, 1):
            ahead = parsed_ahead[i - 1] if parsed_ahead is not None else None
            e, row = ahead if ahead is not None else parse_raw(record)
            parsed.setdefault(e.message_id, (e, row))
            screened.append((record, e))
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        # Suppressed identifiers (deleted customers) and denied consent: dropped, raw rows too.
        for message_id in await drop_unwanted(self.conn, self.ws, screened):
            parsed.pop(message_id, None)
        done = await journeys.existing_message_ids(self.conn, self.ws, list(parsed))
        fresh = [parsed[m] for m in sorted(parsed) if m not in done]
        if not fresh:
            return stats
        events = [e for e, _ in fresh]
        self.batch = events
        stats.events = len(events)
        dirty = await self._update_identities(events)
        await self._resolve_clusters(dirty)
        stats.resolved_clusters = len(dirty)

        new_rows: list[journeys.TimelineRow] = []
        for e, row in fresh:
            row.customer_id = self._assign(e, self._own.get(e.message_id))
            new_rows.append(row)
        # Stored rows can only change customer in clusters whose stored identifiers changed
        # customer (or that hold a shared device): only those are looked up and re-assigned,
        # and only their former customers are derived again (with the customers that gained
        # or lost rows, and those with new events).
        changed = dirty - self._unchanged
        old_customers = {c for cluster in changed for c in self._customers_before[cluster]}
        moved = await self._reassign(changed, old_customers) if changed else {}
        await journeys.set_customers(self.conn, self.ws, sorted(moved.items()))
        joined = {c for c in moved.values() if c is not None}
        touched = old_customers | joined
        appended = {r.customer_id for r in new_rows if r.customer_id is not None}
        touched |= appended
        # Customers whose stored timeline rows this batch left as they were (none moved to or
        # from them, whatever their clusters' resolution): only new events join them, so their
        # walks may resume (when the new events all come later). Derived state depends on a
        # customer's rows alone.
        await self._recompute(sorted(touched), new_rows, resumable=appended - self._lost - joined)
        stats.customers = len(touched)
        stats.touched = touched
        return stats

    async def restitch(self, cluster_ids: Sequence[int]) -> set[str]:
        """Resolve clusters again from their evidence (after an unmerge or a model change)."""
        old_customers = await self._resolve_clusters(set(cluster_ids))
        moved = await self._reassign(set(cluster_ids), old_customers)
        await journeys.set_customers(self.conn, self.ws, sorted(moved.items()))
        touched = old_customers | {c for c in moved.values() if c is not None}
        await self._recompute(sorted(touched), [])
        return touched

    async def recompute_customers(self, customer_ids: Sequence[str]) -> None:
        """Re-derive sessions, channels and stages of these customers (model changes)."""
        await self._recompute(sorted(customer_ids), [])

    # ---- identities

    async def _update_identities(self, events: Sequence[StitchEvent]) -> set[int]:
        """Store sightings and link evidence; returns the clusters to resolve again."""
        sightings: dict[Identifier, tuple[datetime, str]] = {}
        touched: set[Identifier] = set()
        links: dict[tuple[Identifier, Identifier, str], ids.LinkRow] = {}
        for e in events:
            own = self._own[e.message_id] = own_identifiers(e)
            key = (e.timestamp, e.message_id)
            for ident in own:
                if ident not in sightings or key < sightings[ident]:
                    sightings[ident] = key
            # The event's own identifiers, and for an alias its previousId under both kinds.
            touched.update(affected_identifiers(e) if e.type == ALIAS else own)
            for evidence in links_of(e):
                found = ids.LinkRow(
                    evidence.a, evidence.b, evidence.rule, evidence.timestamp, evidence.message_id
                )
                k = (found.a, found.b, found.rule)
                if k not in links or (found.at, found.message_id) < (
                    links[k].at,
                    links[k].message_id,
                ):
                    links[k] = found
                touched |= {found.a, found.b}

        stored = await ids.load_identities(self.conn, self.ws, touched)
        stored_links = await ids.load_links(self.conn, self.ws, touched)
        # An anonymous id sighted for the first time may be what an earlier alias named.
        new_anons = [i.value for i in sightings if i.kind == ANONYMOUS_ID and i not in stored]
        alias_links = await ids.aliases_naming(self.conn, self.ws, new_anons)
        if alias_links:
            extra = {al.b for al in alias_links} | {al.a for al in alias_links}
            stored.update(await ids.load_identities(self.conn, self.ws, extra))
        for ident, known_row in stored.items():
            self.customer_of[ident] = known_row.customer_id
            self.cluster_of[ident] = known_row.cluster_id

        known = {(sl.a, sl.b, sl.rule): sl for sl in stored_links}
        partners: dict[Identifier, set[str]] = {}
        for any_link in [*stored_links, *links.values()]:
            if any_link.rule == IDENTIFY:
                partners.setdefault(any_link.b, set()).add(any_link.a.value)

        groups = _Groups()

        def node(ident: Identifier) -> int | Identifier:
            hit = stored.get(ident)
            return hit.cluster_id if hit is not None else ident

        dirty_nodes: set[int | Identifier] = set()
        for ident, (ts, mid) in sightings.items():
            groups.find(node(ident))
            seen = stored.get(ident)
            if seen is None:
                continue
            if not seen.first_message_id or (ts, mid) < (seen.first_seen, seen.first_message_id):
                # Sighted earlier than we knew: the oldest identifier may change.
                seen.first_seen, seen.first_message_id = ts, mid
                dirty_nodes.add(node(ident))
        for (a, b, rule), link in links.items():
            if rule == ALIAS:
                # previousId may name an anonymous id sighted before or in this batch: the
                # resolver links that one, so it must be resolved in the same cluster.
                as_anon = Identifier(ANONYMOUS_ID, a.value)
                if as_anon in stored or as_anon in sightings:
                    groups.union(node(as_anon), node(b))
                if a not in stored and a not in sightings:
                    groups.find(node(a))
            groups.union(node(a), node(b))
            old = known.get((a, b, rule))
            if old is None or (link.at, link.message_id) < (old.at, old.message_id):
                dirty_nodes.add(node(a))
            elif rule == IDENTIFY and (
                len(partners.get(b, ())) > 1 or (b in stored and stored[b].shared_device)
            ):
                # A device used by several people: each identify moves its later events.
                dirty_nodes.add(node(a))
        for e in events:
            anon = Identifier(ANONYMOUS_ID, e.anonymous_id) if e.anonymous_id else None
            # A placeholder user id ("0", "undefined") is no user id: the device's history decides.
            no_user = e.user_id is None or is_placeholder(e.user_id)
            if no_user and anon is not None and anon in stored and stored[anon].shared_device:
                dirty_nodes.add(node(anon))
        for named in alias_links:
            anon = Identifier(ANONYMOUS_ID, named.a.value)
            groups.union(node(anon), node(named.b))
            dirty_nodes.add(node(anon))

        await ids.upsert_links(self.conn, self.ws, list(links.values()))

        dirty: set[int] = set()
        new_rows: list[ids.IdentityRow] = []
        updated_rows: list[ids.IdentityRow] = []
        members = groups.groups()
        stored_in: dict[int, list[Identifier]] = {}
        for ident, member in stored.items():
            stored_in.setdefault(member.cluster_id, []).append(ident)
        fresh_ids = await ids.new_cluster_ids(
            self.conn, sum(1 for g in members if not any(isinstance(n, int) for n in g))
        )
        for group in members:
            clusters = sorted(n for n in group if isinstance(n, int))
            newcomers = [n for n in group if isinstance(n, Identifier)]
            target = clusters[0] if clusters else fresh_ids.pop()
            if len(clusters) > 1:
                await ids.move_clusters(self.conn, self.ws, into=target, absorbed=clusters[1:])
            for ident in newcomers:
                if ident not in sightings:
                    # Only an alias's previousId: resolution decides whether it is an identifier.
                    continue
                ts, mid = sightings[ident]
                new_rows.append(ids.IdentityRow(ident, customer_key(ident), target, ts, mid, False))
                self._newcomers.add(ident)
                self.customer_of[ident] = customer_key(ident)
                self.cluster_of[ident] = target
            for cluster in clusters:
                for ident in stored_in.get(cluster, ()):
                    stored[ident].cluster_id = target
                    self.cluster_of[ident] = target
            if len(clusters) + len(newcomers) > 1 or any(n in dirty_nodes for n in group):
                dirty.add(target)
        for ident, member in stored.items():
            if (
                ident in sightings
                and (member.first_seen, member.first_message_id) == sightings[ident]
            ):
                updated_rows.append(member)
        await ids.upsert_identities(self.conn, self.ws, new_rows + updated_rows)
        return dirty

    async def _resolve_clusters(self, cluster_ids: set[int]) -> set[str]:
        """Resolve clusters from their evidence, loading and writing for all of them at once
        (a handful of round trips per batch, not per cluster); returns their former customers."""
        if not cluster_ids:
            return set()
        rows = await ids.load_cluster_identities(self.conn, self.ws, sorted(cluster_ids))
        home = {row.ident: row.cluster_id for row in rows}
        links = await ids.load_links(self.conn, self.ws, list(home))
        # Alias previousIds may not be stored identities yet: include what the links name.
        named = {link.a for link in links} | {link.b for link in links}
        blocked = await ids.blocked_pairs(self.conn, self.ws, set(home) | named)
        partners: dict[str, set[str]] = {}
        for link in links:
            if link.rule == IDENTIFY:
                partners.setdefault(link.b.value, set()).add(link.a.value)
        devices = sorted(
            {a for a, users in partners.items() if len(users) > 1}
            | {r.ident.value for r in rows if r.shared_device and r.ident.kind == ANONYMOUS_ID}
        )
        occurrences: list[Mapping[str, Any]] = list(
            await ids.identify_occurrences(self.conn, self.ws, devices)
        )
        wanted = set(devices)
        occurrences += [
            {
                "message_id": e.message_id,
                "timestamp": e.timestamp,
                "user_id": e.user_id,
                "anonymous_id": e.anonymous_id,
            }
            for e in self.batch
            if e.user_id is not None and e.anonymous_id in wanted
        ]

        def cluster_of(*idents: Identifier) -> int:
            return next(home[i] for i in idents if i in home)

        rows_of: dict[int, list[ids.IdentityRow]] = {c: [] for c in cluster_ids}
        for row in rows:
            rows_of[row.cluster_id].append(row)
        links_of_cluster: dict[int, list[ids.LinkRow]] = {c: [] for c in cluster_ids}
        for link in links:
            links_of_cluster[cluster_of(link.a, link.b)].append(link)
        blocked_of: dict[int, set[tuple[Identifier, Identifier]]] = {c: set() for c in cluster_ids}
        for pair in blocked:
            if pair[0] in home or pair[1] in home:
                blocked_of[cluster_of(*pair)].add(pair)
        occurrences_of: dict[int, list[Mapping[str, Any]]] = {c: [] for c in cluster_ids}
        for occ in occurrences:
            anon = Identifier(ANONYMOUS_ID, occ["anonymous_id"])
            if anon in home:
                occurrences_of[home[anon]].append(occ)

        before: set[str] = {row.customer_id for row in rows}
        previous = {row.ident: row.customer_id for row in rows}  # rows are updated in place
        writes: list[ids.IdentityRow] = []
        stale: list[Identifier] = []
        ledgers: dict[int, list[LedgerEntry]] = {}
        for cluster_id in sorted(cluster_ids):
            resolution = resolve(
                _evidence_events(
                    rows_of[cluster_id], links_of_cluster[cluster_id], occurrences_of[cluster_id]
                ),
                blocked=frozenset(blocked_of[cluster_id]),
            )
            self.resolutions[cluster_id] = resolution
            self._customers_before[cluster_id] = {row.customer_id for row in rows_of[cluster_id]}
            if not resolution.shared_devices and all(
                not row.shared_device
                and (
                    row.ident in self._newcomers
                    or resolution.customer_by_identifier.get(row.ident) == row.customer_id
                )
                for row in rows_of[cluster_id]
            ):
                # Every identifier stored before this batch keeps its customer and no device is
                # shared: each stored timeline row of the cluster keeps its customer too.
                self._unchanged.add(cluster_id)
            writes += self._identity_writes(cluster_id, rows_of[cluster_id], resolution)
            # An alias's previousId stored as a user id before the anonymous id it named was
            # sighted: the resolver now links the anonymous id instead, so the user id is no more.
            for row in rows_of[cluster_id]:
                if row.ident not in resolution.customer_by_identifier:
                    stale.append(row.ident)
                    self.customer_of.pop(row.ident, None)
                    self.cluster_of.pop(row.ident, None)
            ledgers[cluster_id] = _dedupe_ledger(resolution.ledger)
        if self.webhooks:
            await webhook_outbox.record_merges(
                self.conn, self.ws, previous=previous, ledgers=ledgers, resolutions=self.resolutions
            )
        await ids.upsert_identities(self.conn, self.ws, writes)
        await ids.delete_identities(self.conn, self.ws, stale)
        await ids.replace_ledgers(self.conn, self.ws, ledgers)
        return before

    def _identity_writes(
        self, cluster_id: int, rows: Sequence[ids.IdentityRow], resolution: Resolution
    ) -> list[ids.IdentityRow]:
        """Identity rows that the resolution changed (or created)."""
        by_ident = {row.ident: row for row in rows}
        writes: list[ids.IdentityRow] = []
        for ident, customer in resolution.customer_by_identifier.items():
            shared = ident in resolution.shared_devices
            row = by_ident.get(ident)
            if row is None:
                row = ids.IdentityRow(
                    ident, customer, cluster_id, resolution.first_seen[ident], "", shared
                )
                writes.append(row)
            elif (
                row.customer_id != customer
                or row.shared_device != shared
                # Never sighted (an alias's previousId): first seen by its earliest alias,
                # which may have arrived after the one that created the row.
                or (not row.first_message_id and row.first_seen != resolution.first_seen[ident])
            ):
                row.customer_id, row.shared_device = customer, shared
                if not row.first_message_id:
                    row.first_seen = resolution.first_seen[ident]
                writes.append(row)
            self.customer_of[ident] = customer
            self.cluster_of[ident] = cluster_id
        return writes

    # ---- assignment

    def _assign(self, e: StitchEvent, own: list[Identifier] | None = None) -> str | None:
        """The customer of an event; `own` is `own_identifiers(e)` when already known."""
        if own is None:
            own = own_identifiers(e)
        if own:
            cluster = self.cluster_of.get(own[0])
            if cluster is not None and cluster in self.resolutions:
                return assign(e, self.resolutions[cluster])
        if e.user_id is not None:
            customer = self.customer_of.get(Identifier(USER_ID, e.user_id))
            if customer is not None:
                return customer
        return self.customer_of.get(own[0]) if own else None

    async def _reassign(self, clusters: set[int], old_customers: set[str]) -> dict[str, str | None]:
        users: list[str] = []
        anons: list[str] = []
        traits: list[str] = []
        for ident, cluster in self.cluster_of.items():
            if cluster not in clusters:
                continue
            if ident.kind == USER_ID:
                users.append(ident.value)
            elif ident.kind == ANONYMOUS_ID:
                anons.append(ident.value)
            else:
                traits.append(str(ident))
        rows = await journeys.events_to_reassign(
            self.conn,
            self.ws,
            user_ids=users,
            anonymous_ids=anons,
            trait_identifiers=traits,
            customer_ids=sorted(old_customers),
        )
        moved: dict[str, str | None] = {}
        for row in rows:
            customer = self._assign(_light_event(row))
            if customer != row["customer_id"]:
                moved[row["message_id"]] = customer
                if row["customer_id"] is not None:
                    old_customers.add(row["customer_id"])
                    self._lost.add(row["customer_id"])
        return moved

    # ---- per-customer derived state

    async def _recompute(
        self,
        customer_ids: Sequence[str],
        new_rows: Sequence[journeys.TimelineRow],
        *,
        resumable: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        """Sessions, channels, stages, the summary and the rollup contribution of each customer;
        new rows are inserted with their final values, stored rows updated where they changed,
        and the rollups get each customer's new contribution minus its old. A `resumable`
        customer whose new events all come after its stored ones resumes its saved walk with
        them (`app.journeys.fold`); every other one is walked again from all its events."""
        states = await journeys.load_customer_states(self.conn, self.ws, customer_ids)
        stored_facts = {
            c: Facts.from_json(orjson.loads(r["facts"]))
            for c, r in states.items()
            if r["facts"] is not None
        }
        new_of: dict[str, list[Mapping[str, Any]]] = {}
        fresh: dict[str, journeys.TimelineRow] = {}
        for row in new_rows:
            fresh[row.message_id] = row
            if row.customer_id is not None:
                new_of.setdefault(row.customer_id, []).append(_as_mapping(row))
        results: dict[str, Derivation] = {}
        for customer in sorted(resumable & new_of.keys()):
            walk = self._resumed(customer, states.get(customer), stored_facts.get(customer))
            if walk is None:
                continue
            items = new_of[customer]
            items.sort(key=_ITEM_ORDER)
            last = walk.last
            if last is None or (items[0]["timestamp"], items[0]["message_id"]) <= last:
                continue  # a new event before a stored one: walk again from the start
            results[customer] = walk_customer(customer, walk, items)
        replayed = [c for c in customer_ids if c not in results]
        stored = await journeys.load_customer_events(self.conn, self.ws, replayed)
        by_customer: dict[str, list[Mapping[str, Any]]] = {}
        for record in stored:
            by_customer.setdefault(record["customer_id"], []).append(record)
        for customer in replayed:
            if customer in new_of:
                by_customer.setdefault(customer, []).extend(new_of[customer])
        for i, (customer, items) in enumerate(sorted(by_customer.items()), 1):
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            results[customer] = derive_customer(
                customer, items, self.model, with_facts=self.rollups
            )
        deltas = Deltas()
        derived: list[tuple[str, str, str | None, str | None]] = []
        summaries: list[journeys.CustomerRow] = []
        for customer, result in sorted(results.items()):
            for r, values in zip(result.items, result.values, strict=True):
                mid = r["message_id"]
                if mid in fresh:
                    row = fresh[mid]
                    row.channel, row.session_id, row.stage = values
                elif values != (r["channel"], r["session_id"], r["stage"]):
                    derived.append((mid, *values))
            if self.rollups:
                old = stored_facts.get(customer)
                add_change(deltas, old, result.facts)
                diff_entries(deltas, customer, old, result.facts)
            summaries.append(result.summary)
        gone = sorted(set(customer_ids) - set(results))
        for customer in gone:
            old = stored_facts.get(customer) if self.rollups else None
            add_change(deltas, old, None)
            diff_entries(deltas, customer, old, None)
        prune(deltas)
        await journeys.insert_timeline(self.conn, self.ws, new_rows)
        await journeys.update_derived(self.conn, self.ws, derived)
        if self.webhooks:
            await webhook_outbox.record_stage_changes(self.conn, self.ws, summaries)
        await journeys.upsert_customers(self.conn, self.ws, summaries)
        await rollups.apply_deltas(self.conn, self.ws, deltas)
        await journeys.delete_customers(self.conn, self.ws, gone)

    def _resumed(
        self, customer: str, state: Mapping[str, Any] | None, facts: Facts | None
    ) -> JourneyWalk | None:
        """The customer's walk over its stored events, from its saved state, if it has one
        that this stitcher can resume."""
        if state is None or facts is None or facts.walk is None:
            return None
        history = [
            StageEntry(h["stage"], datetime.fromisoformat(h["entered_at"]), h["message_id"])
            for h in state["stage_history"]
        ]
        return JourneyWalk.resume(
            self.model,
            with_facts=self.rollups,
            state=facts.walk,
            facts=facts,
            history=history,
            traits=dict(state["traits"] or {}),
            first=state["first_seen"],
            count=state["event_count"],
        )


@dataclass(slots=True)
class Derivation:
    """One customer's derived state: per event (in `items` order) its channel, session and
    stage; the summary row; the rollup contribution (None when rollups are off)."""

    items: list[Mapping[str, Any]]
    values: list[tuple[str, str | None, str | None]]
    summary: journeys.CustomerRow
    facts: Facts | None


def derive_customer(
    customer: str, items: list[Mapping[str, Any]], model: JourneyModel, *, with_facts: bool
) -> Derivation:
    """Sessions, channels, stages, summary and contribution of one customer from all its
    timeline rows (stored or new, any order). Pure."""
    items.sort(key=_ITEM_ORDER)
    return walk_customer(customer, JourneyWalk(model, with_facts=with_facts), items)


def walk_customer(customer: str, walk: JourneyWalk, items: list[Mapping[str, Any]]) -> Derivation:
    """`derive_customer` from a walk over the customer's earlier events (or none) and its
    timeline rows after them, in `sort_key` order. Pure."""
    values = [
        walk.add(
            StitchEvent(
                message_id=r["message_id"],
                type=r["type"],
                event=r["event"],
                timestamp=r["timestamp"],
                user_id=r["user_id"],
                anonymous_id=r["anonymous_id"],
                properties=r["properties"] or {},
                campaign=r["campaign"] or {},
                is_bot=bool(r["flags"] & FLAG_BOT),
            ),
            r["source_channel"],
            r["traits"],
        )
        for r in items
    ]
    history = walk.history
    dims = walk.dims()
    facts = walk.facts(dims)
    assert walk.first is not None and walk.last is not None  # at least one event
    summary = journeys.CustomerRow(
        customer_id=customer,
        first_seen=walk.first,
        last_seen=walk.last[0],
        event_count=walk.count,
        stage=history[-1].stage if history else None,
        stage_entered_at=history[-1].entered_at if history else None,
        stage_history=[
            {"stage": h.stage, "entered_at": h.entered_at.isoformat(), "message_id": h.message_id}
            for h in history
        ],
        traits=walk.traits,
        dims=dims,
        facts=rollups.facts_bytes(facts),
    )
    return Derivation(items, values, summary, facts if walk.with_facts else None)


def _as_mapping(row: journeys.TimelineRow) -> dict[str, Any]:
    return {
        "message_id": row.message_id,
        "timestamp": row.timestamp,
        "type": row.type,
        "event": row.event,
        "user_id": row.user_id,
        "anonymous_id": row.anonymous_id,
        "flags": row.flags,
        "properties": row.properties,
        "traits": row.traits,
        "campaign": row.campaign,
        "source_channel": row.source_channel,
        "channel": row.channel,
        "session_id": row.session_id,
        "stage": row.stage,
    }


__all__ = [
    "FLAG_BOT",
    "Derivation",
    "StitchStats",
    "WorkspaceStitcher",
    "derive_customer",
    "parse_raw",
]
