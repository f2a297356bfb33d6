"""Webhook subscriptions: create (secret shown once), list, delete, delivery log; keys and
workspaces; validation of URLs (the SSRF guard) and event types.

These run on the suite's app, whose settings keep the default: private addresses refused.
Deliveries themselves are in tests/integration/test_webhook_delivery.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.webhooks.repository import MAX_WEBHOOKS_PER_WORKSPACE
from app.workspaces.repository import NewWorkspace
from tests.conftest import new_workspace

URL = "https://hooks.example.com/journeys"


def _server(ws: NewWorkspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {ws.server_key}"}


async def _create(client: httpx.AsyncClient, ws: NewWorkspace, **body: Any) -> dict[str, Any]:
    r = await client.post(
        "/v1/webhooks", json={"url": URL, "events": ["stage.changed"], **body}, headers=_server(ws)
    )
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def test_create_list_delete_and_the_secret_is_shown_once(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    created = await _create(
        client, workspace, events=["customer.deleted", "stage.changed", "stage.changed"]
    )
    assert set(created) == {"id", "url", "events", "secret", "created_at"}
    assert created["url"] == URL
    assert created["events"] == ["stage.changed", "customer.deleted"]  # deduplicated, ordered
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40

    own = await _create(client, workspace, secret="my-own-secret-0123456789")
    assert own["secret"] == "my-own-secret-0123456789"

    r = await client.get("/v1/webhooks", headers=_server(workspace))
    assert r.status_code == 200, r.text
    listed = r.json()["webhooks"]
    assert [w["id"] for w in listed] == [created["id"], own["id"]]
    assert all(set(w) == {"id", "url", "events", "created_at"} for w in listed)
    assert created["secret"] not in r.text and own["secret"] not in r.text

    r = await client.get(f"/v1/webhooks/{created['id']}/deliveries", headers=_server(workspace))
    assert r.status_code == 200, r.text
    assert r.json() == {"deliveries": [], "next_cursor": None}

    r = await client.delete(f"/v1/webhooks/{created['id']}", headers=_server(workspace))
    assert r.status_code == 204, r.text
    assert r.content == b""
    r = await client.get("/v1/webhooks", headers=_server(workspace))
    assert [w["id"] for w in r.json()["webhooks"]] == [own["id"]]
    r = await client.delete(f"/v1/webhooks/{created['id']}", headers=_server(workspace))
    assert r.status_code == 404
    assert r.json()["code"] == "webhook_not_found"
    r = await client.get(f"/v1/webhooks/{created['id']}/deliveries", headers=_server(workspace))
    assert r.status_code == 404


async def test_only_the_server_key_of_the_workspace(
    client: httpx.AsyncClient, workspace: NewWorkspace, database_url: str
) -> None:
    created = await _create(client, workspace)
    hook = f"/v1/webhooks/{created['id']}"
    calls = [
        ("POST", "/v1/webhooks", {"url": URL, "events": ["stage.changed"]}),
        ("GET", "/v1/webhooks", None),
        ("DELETE", hook, None),
        ("GET", hook + "/deliveries", None),
    ]
    for method, path, body in calls:
        for key, status in (
            (f"Bearer {workspace.read_key}", 403),
            (f"Bearer {workspace.write_key}", 403),
            ("Bearer js_" + "x" * 32, 401),
        ):
            r = await client.request(method, path, json=body, headers={"Authorization": key})
            assert r.status_code == status, (method, path, key[:10], r.text)
            assert r.headers["content-type"] == "application/problem+json"
        r = await client.request(method, path, json=body)
        assert r.status_code == 401, (method, path)

    # Another workspace's server key: the webhook does not exist for it, and its list is its own.
    other = await new_workspace(database_url, "other")
    assert (await client.delete(hook, headers=_server(other))).status_code == 404
    assert (await client.get(hook + "/deliveries", headers=_server(other))).status_code == 404
    r = await client.get("/v1/webhooks", headers=_server(other))
    assert r.json() == {"webhooks": []}
    r = await client.get("/v1/webhooks", headers=_server(workspace))
    assert [w["id"] for w in r.json()["webhooks"]] == [created["id"]]


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"url": "ftp://hooks.example.com/x"}, "url", "invalid_url"),
        ({"url": "file:///etc/passwd"}, "url", "invalid_url"),
        ({"url": "javascript:alert(1)"}, "url", "invalid_url"),
        ({"url": "https://"}, "url", "invalid_url"),
        ({"url": "https://hooks.example.com:99999/x"}, "url", "invalid_url"),
        ({"url": "http://127.0.0.1:8000/hook"}, "url", "invalid_url"),
        ({"url": "http://localhost/hook"}, "url", "invalid_url"),
        ({"url": "http://10.1.2.3/hook"}, "url", "invalid_url"),
        ({"url": "http://192.168.0.10/hook"}, "url", "invalid_url"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, "url", "invalid_url"),
        ({"url": "http://[::1]/hook"}, "url", "invalid_url"),
        ({"url": "http://[::ffff:10.0.0.1]/hook"}, "url", "invalid_url"),
        ({"url": "http://0.0.0.0/hook"}, "url", "invalid_url"),
        ({"url": "http://metadata.google.internal/x"}, "url", "invalid_url"),
        ({"url": "http://intranet/hook"}, "url", "invalid_url"),
        ({"url": ""}, "url", "invalid_field"),
        ({"events": ["stage.changed", "order.completed"]}, "events.1", "invalid_field"),
        ({"events": []}, "events", "invalid_field"),
        ({"events": "stage.changed"}, "events", "invalid_field"),
        ({"secret": "short"}, "secret", "invalid_field"),
        ({"colour": "blue"}, "colour", "invalid_field"),
    ],
)
async def test_invalid_subscriptions_are_400_naming_the_field(
    client: httpx.AsyncClient,
    workspace: NewWorkspace,
    body: dict[str, Any],
    field: str,
    code: str,
) -> None:
    full = {"url": URL, "events": ["stage.changed"], **body}
    r = await client.post("/v1/webhooks", json=full, headers=_server(workspace))
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["field"] == field, problem
    assert problem["code"] == code, problem
    r = await client.get("/v1/webhooks", headers=_server(workspace))
    assert r.json() == {"webhooks": []}


async def test_a_workspace_has_a_bounded_number_of_webhooks(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    for _ in range(MAX_WEBHOOKS_PER_WORKSPACE):
        await _create(client, workspace)
    r = await client.post(
        "/v1/webhooks",
        json={"url": URL, "events": ["stage.changed"]},
        headers=_server(workspace),
    )
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "too_many_webhooks"


async def test_delivery_log_parameters_are_validated(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    created = await _create(client, workspace)
    path = f"/v1/webhooks/{created['id']}/deliveries"
    for query, field in (
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("cursor=abc", "cursor"),
        ("status=lost", "status"),
    ):
        r = await client.get(f"{path}?{query}", headers=_server(workspace))
        assert r.status_code == 400, (query, r.text)
        assert r.json()["field"] == field
    r = await client.get("/v1/webhooks/0/deliveries", headers=_server(workspace))
    assert r.status_code == 400
    r = await client.get("/v1/webhooks/not-a-number/deliveries", headers=_server(workspace))
    assert r.status_code == 400
