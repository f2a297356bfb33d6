"""`journeys export`: aggregates and profiles to CSV and Parquet, read back and compared with
what the API answers for the same workspace."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow.parquet as pq
import pytest

from app.aggregates.facts import ATTRIBUTION_MODELS
from app.db.engine import connect
from app.export.aggregates import COLUMNS as AGGREGATE_COLUMNS
from app.export.service import PROFILE_COLUMNS, export_profiles
from app.export.tables import Column, Format, Kind
from app.workspaces.repository import NewWorkspace
from tests.conftest import ROOT

Stitch = Callable[[], Awaitable[int]]
WINDOW = {"from": "2026-01-01", "to": "2026-01-31"}
STAGES = ("awareness", "consideration", "purchase", "retention", "loyalty", "advocacy")


def _ev(kind: str, ts: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "timestamp": ts, "messageId": uuid.uuid4().hex, **fields}


def _journeys() -> list[dict[str, Any]]:
    google = {"page": {"referrer": "https://www.google.com/", "url": "https://shop.test/"}}
    email = {"campaign": {"source": "newsletter", "medium": "email", "name": "jan"}}
    social = {"page": {"referrer": "https://www.facebook.com/", "url": "https://shop.test/"}}
    return [
        # Ann: search, a view, a purchase, a glowing survey (advocacy, feedback).
        _ev("page", "2026-01-02T10:00:00Z", anonymousId="ann-phone", context=google),
        _ev(
            "identify",
            "2026-01-02T10:05:00Z",
            anonymousId="ann-phone",
            userId="ann",
            traits={"email": "ann@example.com", "plan": "pro", "name": 'Ann, "A"\nLee'},
        ),
        _ev("track", "2026-01-02T10:06:00Z", userId="ann", event="Product Viewed"),
        _ev("track", "2026-01-03T09:00:00Z", userId="ann", event="Order Completed"),
        _ev(
            "track",
            "2026-01-05T09:00:00Z",
            userId="ann",
            event="Survey Responded",
            properties={"score": 10},
        ),
        # Bob: social, a view, then nothing.
        _ev("page", "2026-01-04T12:00:00Z", anonymousId="bob-laptop", context=social),
        _ev("track", "2026-01-04T12:03:00Z", anonymousId="bob-laptop", event="Product Viewed"),
        # Cleo: two orders from the newsletter (loyalty).
        _ev("track", "2026-01-06T08:00:00Z", userId="cleo", event="Order Completed", context=email),
        _ev("track", "2026-01-20T08:00:00Z", userId="cleo", event="Order Completed", context=email),
        # Dan: seen in February only (outside the window).
        _ev("page", "2026-02-10T08:00:00Z", userId="dan"),
    ]


@pytest.fixture
async def seeded(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch
) -> NewWorkspace:
    r = await client.post("/v1/batch", json={"batch": _journeys()}, auth=(workspace.write_key, ""))
    assert r.status_code == 200 and "rejected" not in r.json(), r.text
    await stitch()
    return workspace


def _export(database_url: str, *args: str) -> str:
    """`journeys export …` in a subprocess, as an operator runs it; its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "export", *args],
        cwd=ROOT,
        env={**os.environ, "JOURNEYS_DATABASE_URL": database_url, "JOURNEYS_LOG_LEVEL": "warning"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stderr


def _cell(kind: Kind, text: str) -> Any:
    if text == "":
        return None
    match kind:
        case Kind.INT:
            return int(text)
        case Kind.FLOAT:
            return float(text)
        case Kind.DATE:
            return date.fromisoformat(text)
        case Kind.TIMESTAMP:
            return datetime.fromisoformat(text)
        case Kind.JSON | Kind.TEXT_LIST:
            return orjson.loads(text)
    return text


def read_back(path: Path, columns: tuple[Column, ...]) -> list[dict[str, Any]]:
    """The exported rows with their types: CSV parsed by column kind, Parquet as stored."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            assert next(reader) == [c.name for c in columns]
            return [
                {c.name: _cell(c.kind, v) for c, v in zip(columns, row, strict=True)}
                for row in reader
            ]
    table = pq.read_table(path)
    assert table.column_names == [c.name for c in columns]
    rows: list[dict[str, Any]] = table.to_pylist()
    for row in rows:
        for c in columns:
            if c.kind is Kind.JSON and row[c.name] is not None:
                row[c.name] = orjson.loads(row[c.name])
    return rows


async def _api(client: httpx.AsyncClient, ws: NewWorkspace, path: str, **params: Any) -> Any:
    r = await client.get(path, params=params, headers={"Authorization": f"Bearer {ws.read_key}"})
    assert r.status_code == 200, r.text
    return r.json()


async def _expected_aggregates(client: httpx.AsyncClient, ws: NewWorkspace) -> list[dict[str, Any]]:
    """The API's answers, flattened the way docs/export.md describes."""
    blank = {c.name: None for c in AGGREGATE_COLUMNS}
    head = {"from": date(2026, 1, 1), "to": date(2026, 1, 31)}

    def row(report: str, **values: Any) -> dict[str, Any]:
        return {**blank, "report": report, **head, **values}

    def feedback(body: dict[str, Any]) -> dict[str, Any]:
        return {f"feedback_{k}": v for k, v in body["feedback"].items()}

    rows = [
        row("stages", **s)
        for s in (await _api(client, ws, "/v1/aggregates/stages", **WINDOW))["stages"]
    ]
    for stage in STAGES:
        body = await _api(client, ws, "/v1/aggregates/channels", stage=stage, **WINDOW)
        rows += [row("channels", stage=stage, **c) for c in body["channels"]]
    for model in ATTRIBUTION_MODELS:
        body = await _api(
            client, ws, "/v1/aggregates/attribution", model=model, conversion="purchase", **WINDOW
        )
        common = {"model": model, "conversion": "purchase", "conversions": body["conversions"]}
        rows += [row("attribution", **common, **c) for c in body["channels"]] or [
            row("attribution", **common)
        ]
    for s in (await _api(client, ws, "/v1/aggregates/journey-map", **WINDOW))["stages"]:
        channels = s.pop("channels")
        rows.append(
            row("journey_map", **{k: v for k, v in s.items() if k != "feedback"}, **feedback(s))
        )
        for c in channels:
            fields = {k: v for k, v in c.items() if k != "feedback"}
            rows.append(row("journey_map", stage=s["stage"], **fields, **feedback(c)))
    return rows


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
async def test_aggregates_export_equals_the_api(
    client: httpx.AsyncClient, seeded: NewWorkspace, database_url: str, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / f"aggregates.{fmt}"
    _export(
        database_url,
        "aggregates",
        "--workspace",
        seeded.name,
        "--format",
        fmt,
        "--out",
        str(out),
        "--from",
        WINDOW["from"],
        "--to",
        WINDOW["to"],
    )
    exported = read_back(out, AGGREGATE_COLUMNS)
    expected = await _expected_aggregates(client, seeded)
    assert exported == expected
    # Not an empty comparison: every report is there, with real figures.
    reports = {r["report"] for r in exported}
    assert reports == {"stages", "channels", "attribution", "journey_map"}
    stages = {r["stage"]: r for r in exported if r["report"] == "stages"}
    assert stages["purchase"]["entered"] == 2
    assert {r["channel"] for r in exported if r["report"] == "channels"} >= {"Organic Search"}
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
async def test_profiles_export_equals_the_api(
    client: httpx.AsyncClient, seeded: NewWorkspace, database_url: str, tmp_path: Path, fmt: str
) -> None:
    # The format follows the file name when --format is not given.
    out = tmp_path / f"profiles.{fmt}"
    log = _export(database_url, "profiles", "--workspace", seeded.name, "--out", str(out))
    assert "4 customers written" in log
    exported = read_back(out, PROFILE_COLUMNS)
    assert [r["customer_id"] for r in exported] == sorted(r["customer_id"] for r in exported)
    assert len(exported) == 4
    for row in exported:
        ident = f"customer_id:{row['customer_id']}"
        profile = await _api(client, seeded, f"/v1/profiles/{ident}")
        stage = await _api(client, seeded, f"/v1/profiles/{ident}/stage")
        assert row["stage"] == profile["stage"] == stage["stage"]
        assert row["stage_entered_at"] == datetime.fromisoformat(stage["entered_at"])
        assert row["first_seen"] == datetime.fromisoformat(profile["first_seen"])
        assert row["last_seen"] == datetime.fromisoformat(profile["last_seen"])
        assert row["event_count"] == profile["event_count"]
        assert row["traits"] == profile["traits"]
        assert row["identifiers"] == [f"{i['kind']}:{i['value']}" for i in profile["identifiers"]]
    ann = next(r for r in exported if "user_id:ann" in r["identifiers"])
    assert ann["traits"]["name"] == 'Ann, "A"\nLee'  # quoting survives the round trip
    assert set(ann["identifiers"]) == {
        "user_id:ann",
        "anonymous_id:ann-phone",
        "email:ann@example.com",
    }


async def test_profiles_export_streams_in_chunks_and_filters_by_window(
    seeded: NewWorkspace, database_url: str, tmp_path: Path
) -> None:
    conn = await connect(database_url)
    progress: list[tuple[int, int]] = []
    try:
        written = await export_profiles(
            conn,
            seeded.workspace_id,
            path=tmp_path / "all.parquet",
            fmt=Format.PARQUET,
            chunk=3,
            progress=lambda done, total: progress.append((done, total)),
        )
        assert written == 4
        assert progress == [(0, 4), (3, 4), (4, 4)]
        assert pq.ParquetFile(tmp_path / "all.parquet").num_row_groups == 2
        january = await export_profiles(
            conn,
            seeded.workspace_id,
            path=tmp_path / "january.csv",
            fmt=Format.CSV,
            start=date(2026, 1, 1),
            end=date(2026, 1, 31),
        )
    finally:
        await conn.close()
    assert january == 3
    rows = read_back(tmp_path / "january.csv", PROFILE_COLUMNS)
    assert not [r for r in rows if "user_id:dan" in r["identifiers"]]


def test_an_unknown_workspace_or_a_bad_window_is_an_error(
    database_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "JOURNEYS_DATABASE_URL": database_url, "JOURNEYS_LOG_LEVEL": "warning"}
    for args, code, message in (
        (
            ["profiles", "--workspace", "no-such-ws", "--out", str(tmp_path / "x.csv")],
            1,
            "no workspace",
        ),
        (
            [
                "aggregates",
                "--workspace",
                "no-such-ws",
                "--out",
                str(tmp_path / "x.csv"),
                "--from",
                "2026-13-01",
            ],
            2,
            "YYYY-MM-DD",
        ),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", "export", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == code, done.stderr
        assert message in done.stderr + done.stdout
    assert not list(tmp_path.iterdir())
