"""The OpenAPI document: it lists exactly the registered routes, and schemathesis finds the handlers true to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from shared.api_keys import KeyKind
from shared.settings import Settings
from tests.conftest import ROOT
from tests.helpers import ingest_client, new_key, wait_healthy
from tests.processes import service_processes

DOCUMENT = json.loads((ROOT / "docs" / "openapi.json").read_text(encoding="utf-8"))
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}

# Checks that hold for every operation whatever the data; positive_data_acceptance
# is left out because a schema-valid event may still be implausible (and rejected).
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance"


def documented_operations() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item if method in HTTP_METHODS}


def operation_of(route: web.AbstractRoute) -> tuple[str, str]:
    """Return a route's method and OpenAPI path; a static folder is documented as ``<prefix>/{filename}``."""
    path = route.resource.canonical
    if isinstance(route.resource, web.StaticResource):
        path = path.rstrip("/") + "/{filename}"
    return route.method, path


async def test_document_lists_every_route(settings: Settings, redis_client) -> None:
    """Every route the app registers is documented, and every documented operation is registered."""
    async with ingest_client(settings) as http:
        registered = {
            operation_of(route)
            for route in http.server.app.router.routes()
            if route.method != "HEAD" and route.resource is not None
        }

    assert registered - documented_operations() == set(), "routes missing from docs/openapi.json"
    assert documented_operations() - registered == set(), "operations documented but not registered"


async def test_served_document_is_the_file(settings: Settings, redis_client) -> None:
    """GET /v1/openapi.json serves docs/openapi.json unchanged."""
    async with ingest_client(settings) as http:
        response = await http.get("/v1/openapi.json")
        served = await response.json()

    assert response.status == 200
    assert served == DOCUMENT
    assert (ROOT / "docs" / "openapi.json").resolve() == (ROOT / "services" / "ingest" / "openapi.json").resolve()


def run_schemathesis(url: str, key: str, path_filter: list[str], report_dir: Path) -> subprocess.CompletedProcess:
    """Run the schemathesis CLI on 127.0.0.1 with bounded examples and a fixed seed."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", url,
        "--checks", CHECKS,
        *path_filter,
        "--header", f"Authorization: Bearer {key}",
        "--max-examples", "25",
        "--seed", "1",
        "--workers", "1",
        "--request-timeout", "10",
        "--phases", "examples,coverage,fuzzing",
        "--suppress-health-check", "all",
        "--no-color",
        "--report-dir", str(report_dir),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=report_dir)


async def test_schemathesis_finds_no_errors(settings: Settings, redis_client, tmp_path: Path) -> None:
    """Generated requests to every operation get documented statuses and bodies, and never a 5xx."""
    server_key = await new_key(settings, KeyKind.SERVER)
    admin_key = await new_key(settings, KeyKind.ADMIN)
    base = f"http://127.0.0.1:{settings.http_port}"

    with service_processes(settings, tmp_path / "logs") as services:
        services.start("ingest", "ingest", RANKSTREAM_RATE_LIMIT_PER_MINUTE="0")
        await wait_healthy(f"{base}/healthz")
        scoring = run_schemathesis(f"{base}/v1/openapi.json", server_key, ["--exclude-path-regex", "^/v1/admin/"], tmp_path)
        admin = run_schemathesis(f"{base}/v1/openapi.json", admin_key, ["--include-path-regex", "^/v1/admin/"], tmp_path)
        async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as response:
            still_up = response.status
        services.stop("ingest")
        ingest_log = services.log_text("ingest")

    assert scoring.returncode == 0, scoring.stdout[-6000:]
    assert admin.returncode == 0, admin.stdout[-6000:]
    assert still_up == 200
    assert '"request failed"' not in ingest_log


async def test_unsupported_method_lists_allowed(settings: Settings, redis_client) -> None:
    """A method a path does not take gets 405 problem+json with the Allow header."""
    async with ingest_client(settings) as http:
        response = await http.put("/v1/events", json={})
        body = await response.json(content_type=None)

    assert response.status == 405
    assert response.content_type == "application/problem+json"
    assert response.headers["Allow"] == "POST"
    assert body["status"] == 405
