"""`GET /js/journeys.js`: size budget, caching headers, ETag revalidation, package data."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from importlib.resources import files

import httpx
import pytest

from app.tracker.routes import SCRIPT

GZIP_BUDGET = 6 * 1024


def test_tracker_is_under_its_gzipped_size_budget() -> None:
    source = files("app.tracker").joinpath("journeys.js").read_bytes()
    assert SCRIPT.plain == source
    size = len(gzip.compress(source, compresslevel=9))
    assert size < GZIP_BUDGET, f"journeys.js is {size} bytes gzipped; the budget is {GZIP_BUDGET}"
    assert len(SCRIPT.gzipped) < GZIP_BUDGET


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_tracker_is_valid_javascript() -> None:
    path = str(files("app.tracker").joinpath("journeys.js"))
    done = subprocess.run(["node", "--check", path], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()


async def test_tracker_is_served_gzipped_with_long_lived_caching_and_an_etag(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/js/journeys.js", headers={"Accept-Encoding": "gzip, br"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert r.headers["content-encoding"] == "gzip"
    assert r.content == SCRIPT.plain  # httpx inflated it
    assert int(r.headers["content-length"]) == len(SCRIPT.gzipped) < GZIP_BUDGET
    assert "max-age=86400" in r.headers["cache-control"]
    assert r.headers["cache-control"].startswith("public")
    assert r.headers["vary"] == "Accept-Encoding"
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["x-content-type-options"] == "nosniff"
    etag = r.headers["etag"]
    assert etag.startswith('"') and etag.endswith('-gz"')

    again = await client.get(
        "/js/journeys.js", headers={"Accept-Encoding": "gzip", "If-None-Match": etag}
    )
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    assert "max-age=86400" in again.headers["cache-control"]

    plain = await client.get("/js/journeys.js", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    assert plain.content == SCRIPT.plain
    assert plain.headers["etag"] != etag  # another representation, another strong ETag
    stale = await client.get(
        "/js/journeys.js", headers={"Accept-Encoding": "identity", "If-None-Match": '"old"'}
    )
    assert stale.status_code == 200
    head = await client.head("/js/journeys.js", headers={"Accept-Encoding": "identity"})
    assert head.status_code == 200 and head.headers["etag"] == plain.headers["etag"]


async def test_ingest_answers_let_the_tracker_read_retry_after(
    client: httpx.AsyncClient,
) -> None:
    origin = "https://shop.example"
    r = await client.post(
        "/v1/batch", content=b"{}", headers={"Origin": origin, "Content-Type": "text/plain"}
    )
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == origin
    assert r.headers["access-control-expose-headers"] == "Retry-After"
