"""Identity resolution: a pure union-find over identifiers with guard rules.

Every result is a function of the *set* of events. Links are applied sorted by
(event time, message id, rule, a, b), never in arrival order, so any permutation of the same
events resolves to the same customers, ledger and shared devices.

`alias(previousId -> userId)`: Segment's previousId may be a former user id or the anonymous id
the alias was sent from, and a single event cannot tell which. `links_of` reports it as
`user_id:<previousId>`; `resolve` then links the user id to `anonymous_id:<previousId>` if that
identifier occurs anywhere in the resolved events, and to `user_id:<previousId>` if that occurs
or the anonymous id does not (both when both occur).

Shared devices: an anonymous id whose identifies name user ids of two or more final customers.
Its anonymous-only events follow the last identify at or before them (by time, then message id);
before its first identify they stay with the anonymous id's own customer, which is the first
identified user's unless an email or external id had already tied the device to someone.

Ledger: `into` is the customer key at the moment of the decision (a later merge into an older
customer retires it); a link in `blocked` is recorded with action and rule "unmerged".
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from typing import NamedTuple

from app.journeys.model import StitchEvent, sort_key

USER_ID = "user_id"
ANONYMOUS_ID = "anonymous_id"
EMAIL = "email"

IDENTIFY = "identify"
ALIAS = "alias"
EMAIL_RULE = "email"
EXTERNAL_ID = "external_id"
SAME_EVENT = "same_event"
SHARED_DEVICE = "shared_device"
UNMERGED = "unmerged"

LINKED = "linked"
MERGED = "merged"
REFUSED = "refused"

# What SDKs, templating bugs and QA scripts send in place of a real id. Linking on one of these
# would stitch every visitor who sent it into a single customer, so they never form identifiers.
PLACEHOLDER_VALUES = frozenset(
    {
        "null",
        "undefined",
        "none",
        "nil",
        "nan",
        "anonymous",
        "guest",
        "unknown",
        "n/a",
        "na",
        "test",
        "user",
        "0",
        "-1",
        "[object object]",
    }
)
# Zeroed UUIDs ("00000000-0000-...") and dash runs are what uninitialised id fields render as.
_ZEROS_AND_DASHES = re.compile(r"[0-]+")

# External id kinds that would impersonate the core namespaces; a client-supplied list must not
# be able to mint a user id (which the guards rely on) or an anonymous id.
_RESERVED_EXTERNAL_KINDS = frozenset({USER_ID, ANONYMOUS_ID})


@lru_cache(maxsize=65_536)
def is_placeholder(value: str) -> bool:
    """True for empty, null-like and all-zero/all-dash values that must never be linked."""
    text = value.strip().lower()
    return not text or text in PLACEHOLDER_VALUES or _ZEROS_AND_DASHES.fullmatch(text) is not None


class Identifier(NamedTuple):
    """One identifier of a customer, rendered `kind:value`. A named tuple: the stitcher builds,
    hashes and compares several per event, and a tuple does that in C (ordered by kind, then
    value, as before)."""

    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"

    @classmethod
    def parse(cls, text: str) -> Identifier:
        """Parse `kind:value` (the value may itself contain colons)."""
        kind, sep, value = text.partition(":")
        if not sep or not kind or not value:
            raise ValueError(f"{text!r} is not of the form kind:value")
        return cls(kind, value)


@dataclass(frozen=True, slots=True)
class Link:
    """Evidence from one event that two identifiers belong to the same customer."""

    a: Identifier
    b: Identifier
    rule: str
    message_id: str
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One decision of the resolver, in the order it was taken."""

    at: datetime
    message_id: str
    action: str
    rule: str
    identifiers: tuple[Identifier, ...]
    into: str | None
    reason: str


# (event time, user id value, message id) of one identify on a device.
IdentifyRecord = tuple[datetime, str, str]


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of `resolve`: customers, first-seen times, ledger and shared devices."""

    customer_by_identifier: Mapping[Identifier, str]
    first_seen: dict[Identifier, datetime]
    ledger: tuple[LedgerEntry, ...]
    shared_devices: dict[Identifier, list[IdentifyRecord]]

    def customer_of(self, identifier: Identifier) -> str | None:
        """The customer key of an identifier, or None if no resolved event carried it."""
        return self.customer_by_identifier.get(identifier)

    def components(self) -> dict[str, frozenset[Identifier]]:
        """Every customer key with the identifiers that belong to it."""
        groups: dict[str, set[Identifier]] = {}
        for identifier, customer in self.customer_by_identifier.items():
            groups.setdefault(customer, set()).add(identifier)
        return {customer: frozenset(members) for customer, members in sorted(groups.items())}

    def device_customers(self, anonymous_id: Identifier) -> tuple[str, ...]:
        """The customers a shared device's anonymous id has belonged to, oldest first."""
        history = self.shared_devices.get(anonymous_id)
        if history is None:
            own = self.customer_of(anonymous_id)
            return () if own is None else (own,)
        seen: list[str] = []
        candidates = [self.customer_of(anonymous_id)]
        candidates += [self.customer_of(Identifier(USER_ID, user)) for _, user, _ in history]
        for customer in candidates:
            if customer is not None and customer not in seen:
                seen.append(customer)
        return tuple(seen)


def customer_key(identifier: Identifier) -> str:
    """The stable customer id named after a component's oldest identifier."""
    digest = hashlib.sha256(str(identifier).encode("utf-8")).hexdigest()
    return "cus_" + digest[:20]


def _identifier(kind: str, value: str | None) -> Identifier | None:
    if value is None or is_placeholder(value):
        return None
    return Identifier(kind, value)


def _trait_identifiers(e: StitchEvent) -> list[Identifier]:
    """Email and external ids, deduplicated, in a fixed order."""
    found: list[Identifier] = []
    email = _identifier(EMAIL, e.email)
    if email is not None:
        found.append(email)
    for kind, value in e.external_ids:
        if kind in _RESERVED_EXTERNAL_KINDS:
            continue
        ident = _identifier(kind, value)
        if ident is not None and ident not in found:
            found.append(ident)
    return found


def own_identifiers(e: StitchEvent) -> list[Identifier]:
    """The identifiers an event carries: user id, anonymous id, email, external ids, in that
    order; previousId is excluded (see the module notes)."""
    found = [
        ident
        for ident in (_identifier(USER_ID, e.user_id), _identifier(ANONYMOUS_ID, e.anonymous_id))
        if ident is not None
    ]
    return found + [ident for ident in _trait_identifiers(e) if ident not in found]


def affected_identifiers(e: StitchEvent) -> set[Identifier]:
    """Every identifier the event touches, previousId under both kinds it may stand for."""
    found = set(own_identifiers(e))
    if e.type == ALIAS:
        for kind in (USER_ID, ANONYMOUS_ID):
            ident = _identifier(kind, e.previous_id)
            if ident is not None:
                found.add(ident)
    return found


def links_of(e: StitchEvent) -> list[Link]:
    """The links one event asserts; placeholder values never take part."""
    user = _identifier(USER_ID, e.user_id)
    anon = _identifier(ANONYMOUS_ID, e.anonymous_id)
    links: list[Link] = []

    def add(a: Identifier, b: Identifier, rule: str) -> None:
        if a != b:
            links.append(Link(a, b, rule, e.message_id, e.timestamp))

    if user is not None and anon is not None:
        add(user, anon, IDENTIFY)
    if e.type == ALIAS and user is not None:
        previous = _identifier(USER_ID, e.previous_id)
        if previous is not None:
            add(previous, user, ALIAS)

    traits = _trait_identifiers(e)
    anchor = user or anon
    if anchor is None:
        # Only placeholder ids: the traits still vouch for each other.
        if not traits:
            return links
        anchor, traits = traits[0], traits[1:]
        for ident in traits:
            add(anchor, ident, SAME_EVENT)
        return links
    for ident in traits:
        add(anchor, ident, EMAIL_RULE if ident.kind == EMAIL else EXTERNAL_ID)
    return links


def _link_key(link: Link) -> tuple[datetime, str, str, Identifier, Identifier]:
    return (link.timestamp, link.message_id, link.rule, link.a, link.b)


SeenKey = tuple[datetime, str, str, str]


class _Forest:
    """Union-find with, per component, its members, user ids and oldest identifier."""

    def __init__(self, first_seen: Mapping[Identifier, tuple[datetime, str]]) -> None:
        self._rank: dict[Identifier, SeenKey] = {
            ident: (ts, msg, ident.kind, ident.value) for ident, (ts, msg) in first_seen.items()
        }
        self._parent: dict[Identifier, Identifier] = {ident: ident for ident in first_seen}
        self.members: dict[Identifier, set[Identifier]] = {i: {i} for i in first_seen}
        self.users: dict[Identifier, set[Identifier]] = {
            i: ({i} if i.kind == USER_ID else set()) for i in first_seen
        }
        self._oldest: dict[Identifier, Identifier] = {i: i for i in first_seen}

    def find(self, ident: Identifier) -> Identifier:
        root = ident
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[ident] != root:
            self._parent[ident], ident = root, self._parent[ident]
        return root

    def key(self, root: Identifier) -> str:
        return customer_key(self._oldest[root])

    def sorted_users(self, root: Identifier) -> list[Identifier]:
        return sorted(self.users[root], key=self._rank.__getitem__)

    def union(self, ra: Identifier, rb: Identifier) -> Identifier:
        # The root is an internal detail; only the oldest identifier names the customer.
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self._parent[rb] = ra
        self.members[ra] |= self.members.pop(rb)
        self.users[ra] |= self.users.pop(rb)
        oldest_b = self._oldest.pop(rb)
        if self._rank[oldest_b] < self._rank[self._oldest[ra]]:
            self._oldest[ra] = oldest_b
        return ra


def _describe(link: Link) -> str:
    if link.rule == IDENTIFY:
        return f"{link.b} was identified as {link.a}"
    if link.rule == ALIAS:
        return f"{link.a} was aliased to {link.b}"
    if link.rule == EMAIL_RULE:
        return f"{link.a} carried the email {link.b.value}"
    if link.rule == EXTERNAL_ID:
        return f"{link.a} carried the external id {link.b}"
    return f"{link.a} and {link.b} were carried by the same event"


def _names(idents: Iterable[Identifier]) -> str:
    return ", ".join(str(ident) for ident in idents)


def _expand_alias(link: Link, seen: Mapping[Identifier, tuple[datetime, str]]) -> list[Link]:
    as_user = link.a
    as_anon = Identifier(ANONYMOUS_ID, link.a.value)
    targets: list[Identifier] = []
    if as_user in seen or as_anon not in seen:
        targets.append(as_user)
    if as_anon in seen:
        targets.append(as_anon)
    return [replace(link, a=target) for target in targets if target != link.b]


def resolve(
    events: Iterable[StitchEvent],
    *,
    blocked: frozenset[tuple[Identifier, Identifier]] = frozenset(),
) -> Resolution:
    """Resolve events into customers; `blocked` pairs (either order) are never linked."""
    ordered = sorted(events, key=sort_key)
    first: dict[Identifier, tuple[datetime, str]] = {}
    for e in ordered:
        for ident in own_identifiers(e):
            first.setdefault(ident, sort_key(e))

    links: list[Link] = []
    for e in ordered:
        for link in links_of(e):
            if link.rule == ALIAS:
                links.extend(_expand_alias(link, first))
            else:
                links.append(link)
    for link in links:
        # Only reached for a previousId seen nowhere else: its first sighting is the alias.
        first.setdefault(link.a, (link.timestamp, link.message_id))
    # Identical evidence (a replayed or re-derived event) counts once.
    links = sorted(set(links), key=_link_key)

    forest = _Forest(first)
    ledger: list[LedgerEntry] = []
    identified: dict[Identifier, set[IdentifyRecord]] = {}
    for link in links:
        if (link.a, link.b) in blocked or (link.b, link.a) in blocked:
            ledger.append(
                LedgerEntry(
                    at=link.timestamp,
                    message_id=link.message_id,
                    action=UNMERGED,
                    rule=UNMERGED,
                    identifiers=(link.a, link.b),
                    into=None,
                    reason=f"{_describe(link)} ({link.rule}); the link was undone by an unmerge",
                )
            )
            continue
        if link.rule == IDENTIFY:
            identified.setdefault(link.b, set()).add(
                (link.timestamp, link.a.value, link.message_id)
            )
        entry = _apply(forest, link)
        if entry is not None:
            ledger.append(entry)

    customers = {ident: forest.key(forest.find(ident)) for ident in sorted(first)}
    shared: dict[Identifier, list[IdentifyRecord]] = {}
    for anon in sorted(identified):
        history = sorted(identified[anon], key=lambda rec: (rec[0], rec[2], rec[1]))
        owners = {customers[anon]} | {customers[Identifier(USER_ID, u)] for _, u, _ in history}
        if len(owners) > 1:
            shared[anon] = history
    return Resolution(
        customer_by_identifier=customers,
        first_seen={ident: first[ident][0] for ident in sorted(first)},
        ledger=tuple(ledger),
        shared_devices=shared,
    )


def _apply(forest: _Forest, link: Link) -> LedgerEntry | None:
    ra, rb = forest.find(link.a), forest.find(link.b)
    if ra == rb:
        return None
    users_a, users_b = forest.users[ra], forest.users[rb]
    if link.rule != ALIAS and users_a and users_b:
        # Automatic evidence never joins two user ids; only an explicit alias may.
        if link.rule == IDENTIFY:
            rule = SHARED_DEVICE
            reason = (
                f"{link.b} was identified as {link.a} but already belongs to "
                f"{_names(forest.sorted_users(rb))} (shared device)"
            )
        else:
            rule = link.rule
            reason = (
                f"{_describe(link)}, which would join {_names(forest.sorted_users(ra))} with "
                f"{_names(forest.sorted_users(rb))}; automatic links never join two user ids"
            )
        return LedgerEntry(
            at=link.timestamp,
            message_id=link.message_id,
            action=REFUSED,
            rule=rule,
            identifiers=(link.a, link.b),
            into=None,
            reason=reason,
        )
    merged = bool(users_a and users_b) or (
        len(forest.members[ra]) > 1 and len(forest.members[rb]) > 1
    )
    key_a, key_b = forest.key(ra), forest.key(rb)
    root = forest.union(ra, rb)
    into = forest.key(root)
    if merged:
        absorbed = key_b if into == key_a else key_a
        reason = f"{_describe(link)}: {absorbed} merged into {into} (the oldest customer survives)"
    else:
        reason = f"{_describe(link)}"
    return LedgerEntry(
        at=link.timestamp,
        message_id=link.message_id,
        action=MERGED if merged else LINKED,
        rule=link.rule,
        identifiers=(link.a, link.b),
        into=into,
        reason=reason,
    )


def assign(e: StitchEvent, r: Resolution) -> str | None:
    """The customer an event belongs to; shared devices follow their identify history."""
    user = _identifier(USER_ID, e.user_id)
    if user is not None:
        return r.customer_of(user)
    anon = _identifier(ANONYMOUS_ID, e.anonymous_id)
    if anon is not None:
        history = r.shared_devices.get(anon)
        if history is None:
            return r.customer_of(anon)
        position = bisect_right([(ts, msg) for ts, _, msg in history], (e.timestamp, e.message_id))
        if position == 0:
            # Before its first identify: the customer the device joined first (its component),
            # which is the first identified user's unless an email or external id came earlier.
            return r.customer_of(anon)
        return r.customer_of(Identifier(USER_ID, history[position - 1][1]))
    traits = _trait_identifiers(e)
    return r.customer_of(traits[0]) if traits else None
