"""SQL of the identity graph: identities, link evidence, blocked links and the ledger."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from app.identity.graph import Identifier, LedgerEntry


@dataclass(slots=True)
class IdentityRow:
    """An identifier's stored state."""

    ident: Identifier
    customer_id: str
    cluster_id: int
    first_seen: datetime
    first_message_id: str
    shared_device: bool


@dataclass(frozen=True, slots=True)
class LinkRow:
    """The earliest evidence of one link."""

    a: Identifier
    b: Identifier
    rule: str
    at: datetime
    message_id: str


def _split(idents: Iterable[Identifier]) -> tuple[list[str], list[str]]:
    kinds: list[str] = []
    values: list[str] = []
    for ident in idents:
        kinds.append(ident.kind)
        values.append(ident.value)
    return kinds, values


def _identity(r: asyncpg.Record) -> IdentityRow:
    return IdentityRow(
        ident=Identifier(r["kind"], r["value"]),
        customer_id=r["customer_id"],
        cluster_id=r["cluster_id"],
        first_seen=r["first_seen"],
        first_message_id=r["first_message_id"],
        shared_device=r["shared_device"],
    )


_IDENTITY_COLUMNS = (
    "kind, value, customer_id, cluster_id, first_seen, first_message_id, shared_device"
)


async def load_identities(
    conn: asyncpg.Connection, workspace_id: int, idents: Iterable[Identifier]
) -> dict[Identifier, IdentityRow]:
    """Stored state of the given identifiers (missing ones are absent)."""
    kinds, values = _split(idents)
    if not kinds:
        return {}
    rows = await conn.fetch(
        f"SELECT {_IDENTITY_COLUMNS} FROM identities i "
        "JOIN unnest($2::text[], $3::text[]) AS q(kind, value) USING (kind, value) "
        "WHERE i.workspace_id = $1",
        workspace_id,
        kinds,
        values,
    )
    return {row.ident: row for row in map(_identity, rows)}


async def load_cluster_identities(
    conn: asyncpg.Connection, workspace_id: int, cluster_ids: Sequence[int]
) -> list[IdentityRow]:
    """Every identifier of the given clusters."""
    rows = await conn.fetch(
        f"SELECT {_IDENTITY_COLUMNS} FROM identities "
        "WHERE workspace_id = $1 AND cluster_id = ANY($2::bigint[])",
        workspace_id,
        list(cluster_ids),
    )
    return [_identity(r) for r in rows]


async def identities_of_customer(
    conn: asyncpg.Connection, workspace_id: int, customer_id: str
) -> list[IdentityRow]:
    """Every identifier that currently resolves to a customer."""
    rows = await conn.fetch(
        f"SELECT {_IDENTITY_COLUMNS} FROM identities WHERE workspace_id = $1 AND customer_id = $2 "
        "ORDER BY first_seen, kind, value",
        workspace_id,
        customer_id,
    )
    return [_identity(r) for r in rows]


async def new_cluster_ids(conn: asyncpg.Connection, count: int) -> list[int]:
    """Fresh cluster ids."""
    if count == 0:
        return []
    rows = await conn.fetch(
        "SELECT nextval('identity_cluster_seq') AS id FROM generate_series(1, $1)", count
    )
    return [r["id"] for r in rows]


async def upsert_identities(
    conn: asyncpg.Connection, workspace_id: int, rows: Sequence[IdentityRow]
) -> None:
    """Write identifiers' state (insert or overwrite)."""
    if not rows:
        return
    kinds, values = _split(r.ident for r in rows)
    await conn.execute(
        """
        INSERT INTO identities (workspace_id, kind, value, customer_id, cluster_id, first_seen,
                                first_message_id, shared_device)
        SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[],
                                 $6::timestamptz[], $7::text[], $8::bool[])
        ON CONFLICT (workspace_id, kind, value) DO UPDATE SET
            customer_id = excluded.customer_id, cluster_id = excluded.cluster_id,
            first_seen = excluded.first_seen, first_message_id = excluded.first_message_id,
            shared_device = excluded.shared_device
        """,
        workspace_id,
        kinds,
        values,
        [r.customer_id for r in rows],
        [r.cluster_id for r in rows],
        [r.first_seen for r in rows],
        [r.first_message_id for r in rows],
        [r.shared_device for r in rows],
    )


async def delete_identities(
    conn: asyncpg.Connection, workspace_id: int, idents: Iterable[Identifier]
) -> None:
    """Forget identifiers that a resolution no longer contains."""
    kinds, values = _split(idents)
    if not kinds:
        return
    await conn.execute(
        "DELETE FROM identities i USING unnest($2::text[], $3::text[]) AS q(kind, value) "
        "WHERE i.workspace_id = $1 AND (i.kind, i.value) = (q.kind, q.value)",
        workspace_id,
        kinds,
        values,
    )


async def move_clusters(
    conn: asyncpg.Connection, workspace_id: int, *, into: int, absorbed: Sequence[int]
) -> None:
    """Fold clusters into one (their ledgers are rewritten by the next resolution)."""
    if not absorbed:
        return
    await conn.execute(
        "UPDATE identities SET cluster_id = $2 WHERE workspace_id = $1 AND cluster_id = ANY($3)",
        workspace_id,
        into,
        list(absorbed),
    )
    await conn.execute(
        "DELETE FROM identity_ledger WHERE workspace_id = $1 AND cluster_id = ANY($2)",
        workspace_id,
        list(absorbed),
    )


async def load_links(
    conn: asyncpg.Connection, workspace_id: int, idents: Iterable[Identifier]
) -> list[LinkRow]:
    """All link evidence touching any of the identifiers."""
    kinds, values = _split(idents)
    if not kinds:
        return []
    rows = await conn.fetch(
        """
        WITH q(kind, value) AS (SELECT * FROM unnest($2::text[], $3::text[]))
        SELECT l.* FROM identity_links l JOIN q ON (l.a_kind, l.a_value) = (q.kind, q.value)
        WHERE l.workspace_id = $1
        UNION
        SELECT l.* FROM identity_links l JOIN q ON (l.b_kind, l.b_value) = (q.kind, q.value)
        WHERE l.workspace_id = $1
        """,
        workspace_id,
        kinds,
        values,
    )
    return [
        LinkRow(
            a=Identifier(r["a_kind"], r["a_value"]),
            b=Identifier(r["b_kind"], r["b_value"]),
            rule=r["rule"],
            at=r["at"],
            message_id=r["message_id"],
        )
        for r in rows
    ]


async def aliases_naming(
    conn: asyncpg.Connection, workspace_id: int, values: Sequence[str]
) -> list[LinkRow]:
    """Alias evidence whose previousId is one of `values` (it may name an anonymous id)."""
    if not values:
        return []
    rows = await conn.fetch(
        "SELECT * FROM identity_links WHERE workspace_id = $1 AND a_kind = 'user_id' "
        "AND a_value = ANY($2::text[]) AND rule = 'alias'",
        workspace_id,
        list(values),
    )
    return [
        LinkRow(
            Identifier(r["a_kind"], r["a_value"]),
            Identifier(r["b_kind"], r["b_value"]),
            r["rule"],
            r["at"],
            r["message_id"],
        )
        for r in rows
    ]


async def upsert_links(
    conn: asyncpg.Connection, workspace_id: int, links: Sequence[LinkRow]
) -> None:
    """Record link evidence, keeping the earliest (event time, message id) per link."""
    if not links:
        return
    await conn.execute(
        """
        INSERT INTO identity_links (workspace_id, a_kind, a_value, b_kind, b_value, rule, at,
                                    message_id)
        SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                 $7::timestamptz[], $8::text[])
        ON CONFLICT (workspace_id, a_kind, a_value, b_kind, b_value, rule) DO UPDATE
            SET at = excluded.at, message_id = excluded.message_id
            WHERE (excluded.at, excluded.message_id)
                < (identity_links.at, identity_links.message_id)
        """,
        workspace_id,
        [link.a.kind for link in links],
        [link.a.value for link in links],
        [link.b.kind for link in links],
        [link.b.value for link in links],
        [link.rule for link in links],
        [link.at for link in links],
        [link.message_id for link in links],
    )


async def identify_occurrences(
    conn: asyncpg.Connection, workspace_id: int, anonymous_ids: Sequence[str]
) -> list[asyncpg.Record]:
    """Every event carrying both a user id and one of these anonymous ids (device history)."""
    if not anonymous_ids:
        return []
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT message_id, timestamp, user_id, anonymous_id FROM journey_events "
        "WHERE workspace_id = $1 AND anonymous_id = ANY($2::text[]) AND user_id IS NOT NULL",
        workspace_id,
        list(anonymous_ids),
    )
    return rows


async def blocked_pairs(
    conn: asyncpg.Connection, workspace_id: int, idents: Iterable[Identifier]
) -> frozenset[tuple[Identifier, Identifier]]:
    """Links undone by unmerge among these identifiers."""
    names = [str(i) for i in idents]
    if not names:
        return frozenset()
    rows = await conn.fetch(
        "SELECT a, b FROM blocked_links WHERE workspace_id = $1 "
        "AND (a = ANY($2::text[]) OR b = ANY($2::text[]))",
        workspace_id,
        names,
    )
    return frozenset((Identifier.parse(r["a"]), Identifier.parse(r["b"])) for r in rows)


async def block_link(
    conn: asyncpg.Connection, workspace_id: int, a: Identifier, b: Identifier, reason: str
) -> None:
    """Never apply the link between a and b again."""
    first, second = sorted((str(a), str(b)))
    await conn.execute(
        "INSERT INTO blocked_links (workspace_id, a, b, reason) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT DO NOTHING",
        workspace_id,
        first,
        second,
        reason,
    )


async def replace_ledgers(
    conn: asyncpg.Connection, workspace_id: int, ledgers: Mapping[int, Sequence[LedgerEntry]]
) -> None:
    """Rewrite clusters' ledgers from their latest resolutions."""
    if not ledgers:
        return
    await conn.execute(
        "DELETE FROM identity_ledger WHERE workspace_id = $1 AND cluster_id = ANY($2::bigint[])",
        workspace_id,
        sorted(ledgers),
    )
    rows = [
        (
            workspace_id,
            cluster_id,
            i,
            e.at,
            e.message_id,
            e.action,
            e.rule,
            [str(x) for x in e.identifiers],
            e.into,
            e.reason,
        )
        for cluster_id, entries in sorted(ledgers.items())
        for i, e in enumerate(entries)
    ]
    if rows:
        await conn.executemany(
            "INSERT INTO identity_ledger (workspace_id, cluster_id, position, at, message_id,"
            ' action, rule, identifiers, "into", reason)'
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            rows,
        )


async def ledger_for(
    conn: asyncpg.Connection, workspace_id: int, cluster_ids: Sequence[int]
) -> list[asyncpg.Record]:
    """Ledger rows of clusters, in decision order."""
    rows: list[asyncpg.Record] = await conn.fetch(
        'SELECT at, message_id, action, rule, identifiers, "into", reason FROM identity_ledger '
        "WHERE workspace_id = $1 AND cluster_id = ANY($2::bigint[]) "
        "ORDER BY at, message_id, position",
        workspace_id,
        list(cluster_ids),
    )
    return rows
