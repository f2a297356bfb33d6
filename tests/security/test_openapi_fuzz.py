"""Schemathesis against the app's own OpenAPI document, in-process over ASGI.

Every documented operation gets generated requests, valid and invalid, carrying a valid key of the
kind it wants (and half the time the identifier of a real customer, so the 200 answers are
checked too). Every answer must be: no 5xx, a documented status code, a documented content type,
documented headers, and a body that matches the documented schema.

The app is a fresh `create_app()` on the suite's real PostgreSQL; schemathesis runs its lifespan
once on its own event loop (its ASGI client), and we stop it when the module is done.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import pytest_asyncio
import schemathesis
from hypothesis import strategies as st
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from app.core.settings import Settings
from app.main import create_app
from app.workspaces.repository import NewWorkspace
from tests.conftest import new_workspace
from tests.security.test_isolation_matrix import TABLE, WANTS

USER, DEVICE, EMAIL = "fuzz-user", "fuzz-device", "fuzz@example.com"
# Identifiers of the seeded customer (and one nobody has), mixed into generated path ids.
KNOWN_IDS = (f"user_id:{USER}", f"anonymous_id:{DEVICE}", f"email:{EMAIL}", "user_id:nobody")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def fuzz_workspace(database_url: str, app: Any) -> AsyncIterator[NewWorkspace]:
    """A workspace with one stitched customer, seeded through the suite's own app."""
    ws = await new_workspace(database_url, "fuzz")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://seed") as client:
        yield await seed(client, app, ws)


async def seed(client: httpx.AsyncClient, app: Any, ws: NewWorkspace) -> NewWorkspace:
    batch = [
        {"type": "identify", "userId": USER, "anonymousId": DEVICE, "traits": {"email": EMAIL}},
        {"type": "track", "userId": USER, "event": "Order Completed"},
        {"type": "page", "anonymousId": DEVICE, "name": "Home"},
    ]
    for n, item in enumerate(batch):
        item["messageId"] = f"fuzz-seed-{n}-{uuid.uuid4().hex}"
    r = await client.post("/v1/batch", json={"batch": batch}, auth=(ws.write_key, ""))
    assert r.status_code == 200, r.text
    await app.state.runtime.stitcher.drain()
    r = await client.get(
        f"/v1/profiles/user_id:{USER}", headers={"authorization": f"Bearer {ws.read_key}"}
    )
    assert r.status_code == 200, r.text
    return ws


@pytest.fixture(scope="module")
def openapi(settings: Settings) -> Iterator[Any]:
    """The schema of a fresh app, loaded the way a client would: GET /openapi.json."""
    application = create_app(settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", application)
    schema.config.generation.update(
        modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
        max_examples=25,
        deterministic=True,  # the same examples every run: a failure is a bug, not bad luck
    )

    @schema.hook
    def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
        # Half the time a real identifier, so 200 answers are checked against their schema
        # (only in place of a well-formed one: a malformed `id` must stay malformed).
        if path_parameters and ":" in str(path_parameters.get("id", ""))[1:-1]:
            return st.one_of(
                st.just(path_parameters),
                st.sampled_from(KNOWN_IDS).map(lambda i: {**path_parameters, "id": i}),
            )
        return st.just(path_parameters)

    try:
        yield schema
    finally:
        # The lifespan (database pool) runs on schemathesis' event loop until stopped.
        asgi.shutdown_lifespans()


schema = schemathesis.pytest.from_fixture("openapi")


def auth_for(case: Any, ws: NewWorkspace) -> dict[str, str]:
    """The key of the kind the operation wants (the isolation matrix's table says which),
    presented the way its clients present it."""
    route = TABLE.get((case.operation.method.upper(), case.operation.path))
    wants = WANTS[route.kind] if route else None
    if wants is None:
        return {}
    key = {"write": ws.write_key, "read": ws.read_key, "server": ws.server_key}[wants]
    if wants == "write":  # SDKs send the write key as HTTP Basic
        return {"authorization": httpx.BasicAuth(key, "")._auth_header}
    return {"authorization": f"Bearer {key}"}


# Operations allowed to accept some schema-violating input (none today): an entry excludes only
# the negative-data check for that path, every other check still holds.
LAX_INPUT: set[str] = set()


@schema.parametrize()
@hypothesis.settings(
    deadline=None, suppress_health_check=list(hypothesis.HealthCheck), database=None
)
def test_every_operation_conforms_to_its_documentation(
    case: Any, fuzz_workspace: NewWorkspace
) -> None:
    # no 5xx; documented status, content type, headers and body schema. Not checked: that every
    # schema-valid request is accepted. The API refuses more than JSON Schema can say (NUL bytes,
    # lone surrogates, depth > 32, impossible dates, journey-model references) and each of those
    # refusals is a documented 400 problem naming the field, which the checks above verify.
    excluded = [positive_data_acceptance]
    if case.operation.path in LAX_INPUT:
        excluded.append(negative_data_rejection)
    case.call_and_validate(headers=auth_for(case, fuzz_workspace), excluded_checks=excluded)
