"""RFC 9457 problem details responses."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"
# Problem types are URNs: stable identifiers that need no web page behind them.
_TYPE_BASE = "urn:rankstream:problem:"


def problem(status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None, **extensions: Any) -> web.Response:
    """Build a problem+json response; ``slug`` names the problem type under the Rankstream problems URI."""
    body = {"type": _TYPE_BASE + slug, "title": title, "status": status, "detail": detail, **extensions}
    return web.Response(
        status=status, body=msgspec.json.encode(body), content_type=PROBLEM_CONTENT_TYPE, headers=headers
    )
