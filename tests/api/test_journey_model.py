"""The per-workspace journey model: validation, storage, and background re-derivation."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from app.journeys.stages import DEFAULT_MODEL, model_to_dict
from app.workspaces.repository import NewWorkspace

Stitch = Callable[[], Awaitable[int]]


def _server(ws: NewWorkspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {ws.server_key}"}


async def test_default_model_is_the_contracts(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    r = await client.get("/v1/settings/journey-model", headers=_server(workspace))
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == model_to_dict(DEFAULT_MODEL)
    assert [s["name"] for s in body["model"]["stages"]] == [
        "awareness",
        "consideration",
        "purchase",
        "retention",
        "loyalty",
        "advocacy",
    ]
    assert body["rederive"] is None


async def test_read_key_cannot_change_the_model(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    r = await client.put(
        "/v1/settings/journey-model",
        json={"stages": []},
        headers={"Authorization": f"Bearer {workspace.read_key}"},
    )
    assert r.status_code == 403


async def test_invalid_models_are_400_naming_the_field(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    bad: list[dict[str, Any]] = [
        {"stages": []},
        {
            "stages": [
                {
                    "name": "a",
                    "rules": [{"conditions": [{"property": "score", "op": "~", "value": 1}]}],
                }
            ]
        },
        {"stages": [{"name": "a", "rules": [{}]}, {"name": "a", "rules": [{}]}]},
        {"stages": [{"name": "a", "rules": [{"occurrence": 0, "events": ["X"]}]}]},
    ]
    for model in bad:
        r = await client.put("/v1/settings/journey-model", json=model, headers=_server(workspace))
        assert r.status_code == 400, (model, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "invalid_journey_model"
        assert r.json()["field"].startswith("stages")
    r = await client.put("/v1/settings/journey-model", content=b"{", headers=_server(workspace))
    assert r.status_code == 400


async def test_a_new_model_rederives_existing_customers(
    client: httpx.AsyncClient, workspace: NewWorkspace, stitch: Stitch
) -> None:
    events = [
        {
            "type": "track",
            "userId": "u1",
            "event": "Product Viewed",
            "timestamp": "2026-01-01T10:00:00Z",
            "messageId": uuid.uuid4().hex,
        },
        {
            "type": "track",
            "userId": "u1",
            "event": "Trial Started",
            "timestamp": "2026-01-02T10:00:00Z",
            "messageId": uuid.uuid4().hex,
        },
    ]
    r = await client.post("/v1/batch", json={"batch": events}, auth=(workspace.write_key, ""))
    assert r.status_code == 200
    await stitch()
    read = {"Authorization": f"Bearer {workspace.read_key}"}
    before = (await client.get("/v1/profiles/user_id:u1/stage", headers=read)).json()
    assert before["stage"] == "consideration"

    model = {
        "stages": [
            {"name": "visitor", "rules": [{}]},
            {"name": "trial", "rules": [{"events": ["Trial Started"]}]},
            {"name": "paying", "rules": [{"events": ["Subscription Started"]}]},
        ]
    }
    r = await client.put("/v1/settings/journey-model", json=model, headers=_server(workspace))
    assert r.status_code == 202, r.text
    assert r.json()["rederive"]["status"] == "pending"
    assert r.json()["rederive"]["total"] == 1

    deadline = time.monotonic() + 30
    status = "pending"
    while status != "done" and time.monotonic() < deadline:
        await stitch()
        got = await client.get("/v1/settings/journey-model", headers=_server(workspace))
        status = got.json()["rederive"]["status"]
    assert status == "done"
    after = (await client.get("/v1/profiles/user_id:u1/stage", headers=read)).json()
    assert after["stage"] == "trial"
    assert [h["stage"] for h in after["stage_history"]] == ["visitor", "trial"]
    timeline = (await client.get("/v1/profiles/user_id:u1/timeline", headers=read)).json()
    assert [e["stage"] for e in timeline["events"]] == ["visitor", "trial"]

    # The same model again (as configuration tools do): stored, nothing re-derived.
    again = await client.put("/v1/settings/journey-model", json=model, headers=_server(workspace))
    assert again.status_code == 200, again.text
    assert again.json()["rederive"]["job_id"] == r.json()["rederive"]["job_id"]
    assert again.json()["rederive"]["status"] == "done"


async def test_putting_the_model_in_force_queues_no_rederivation(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    """The default model, never stored: PUT as it is, it changes nothing (200, no job)."""
    current = await client.get("/v1/settings/journey-model", headers=_server(workspace))
    model = current.json()["model"]
    r = await client.put("/v1/settings/journey-model", json=model, headers=_server(workspace))
    assert r.status_code == 200, r.text
    assert r.json() == {"model": model, "rederive": None}
    model["stages"] = model["stages"][:-1]  # one stage less: a change
    r = await client.put("/v1/settings/journey-model", json=model, headers=_server(workspace))
    assert r.status_code == 202, r.text
    assert r.json()["rederive"]["status"] == "pending"
