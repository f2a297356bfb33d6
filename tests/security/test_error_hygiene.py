"""What an error tells, and to whom: regressions of what the OpenAPI fuzzing found.

- An unexpected error is logged with a plain traceback, never with the frames' local variables:
  the request scope (with its Authorization header) would put keys in the logs, and rendering
  them took seconds of CPU per error.
- A value the database can't take (an id beyond int64, a NUL byte in stored text) is the
  request's fault: 400 problem+json, never a 500.
- A 405 lists every method of the resource, not only those of the first route matched.
- The OpenAPI document never promises FastAPI's 422: invalid parameters are 400 problems.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI

from app.core import errors
from app.workspaces.repository import NewWorkspace

SECRET = "js_" + "S3cr3t" * 6


def failing_handler(scope: dict[str, object]) -> None:
    raise RuntimeError("boom")


class RecordingLogger:
    """Stands in for the module's structlog logger: records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def record(event: str, **fields: Any) -> None:
            self.calls.append((level, event, fields))

        return record


def test_an_unexpected_error_is_logged_without_local_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = RecordingLogger()
    monkeypatch.setattr(errors, "log", recorder)
    scope = {"headers": [(b"authorization", f"Bearer {SECRET}".encode())]}
    try:
        failing_handler(scope)
    except RuntimeError as exc:
        response = errors.unexpected_error_response(exc)
        raised = exc
    assert response.status_code == 500
    assert SECRET.encode() not in bytes(response.body)
    [(level, event, fields)] = recorder.calls
    if level == "exception":  # structlog's .exception() adds the exception itself
        fields = {**fields, "exc_info": raised}
    # Rendered the way the service renders its console logs.
    rendered = structlog.dev.ConsoleRenderer(colors=False)(None, level, {"event": event, **fields})
    assert event == "unhandled_error" and "failing_handler" in rendered  # the traceback is there
    assert SECRET not in rendered  # but not the frames' locals


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", f"/v1/deletions/{2**64}", None),
        ("GET", f"/v1/deletions/{2**63}", None),
        ("PUT", "/v1/settings/privacy", {"require_consent_category": "a\u0000b"}),
    ],
    ids=["job-id-beyond-uint64", "job-id-beyond-int64", "nul-in-stored-text"],
)
async def test_values_the_database_cannot_take_are_a_400(
    client: httpx.AsyncClient, workspace: NewWorkspace, method: str, path: str, body: object
) -> None:
    r = await client.request(
        method, path, json=body, headers={"authorization": f"Bearer {workspace.server_key}"}
    )
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] in ("invalid_field", "invalid_parameter")


async def test_a_405_lists_every_method_of_the_resource(
    client: httpx.AsyncClient, workspace: NewWorkspace
) -> None:
    for method in ("DELETE", "POST", "PATCH"):
        r = await client.request(
            method,
            "/v1/settings/journey-model",
            headers={"authorization": f"Bearer {workspace.server_key}"},
        )
        assert r.status_code == 405, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "PUT"}


def test_the_openapi_document_promises_no_framework_422(app: FastAPI) -> None:
    """FastAPI documents a 422 `HTTPValidationError` that this app never answers (invalid
    parameters and bodies are 400 problems): it must not be in the document."""
    document = app.openapi()
    promised = [
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if "HTTPValidationError" in str(operation.get("responses", {}).get("422", ""))
    ]
    assert promised == []
    assert "HTTPValidationError" not in document.get("components", {}).get("schemas", {})
