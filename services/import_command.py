"""``rankstream import PATH...``: upload activity files or folders of them through POST /v1/activities."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import structlog
from tqdm import tqdm

from shared.runtime import http_base_url
from shared.settings import Settings

log = structlog.get_logger(__name__)

MEDIA_TYPES = {
    ".fit": "application/vnd.ant.fit",
    ".gpx": "application/gpx+xml",
    ".tcx": "application/vnd.garmin.tcx+xml",
}
# Rate-limited (429) and overloaded (503) uploads are retried this many times in all.
MAX_ATTEMPTS = 5
# The maximum wait between attempts, whatever Retry-After requests.
MAX_RETRY_WAIT_S = 30.0
REQUEST_TIMEOUT_S = 120.0
_RETRIED_STATUSES = frozenset({429, 503})


class ImportPathError(Exception):
    """The command line names something that cannot be imported."""


@dataclass
class ImportReport:
    """Event outcome counts of an import, and the files that failed with the reason."""

    files: int = 0
    events: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "duplicate": 0, "rejected": 0, "conflict": 0})
    failures: list[tuple[Path, str]] = field(default_factory=list)


def activity_files(paths: Iterable[Path]) -> list[Path]:
    """Return the files named and, for each folder, the .fit, .gpx and .tcx files under it, sorted.

    Raises ImportPathError for a path that does not exist.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(child for child in path.rglob("*") if child.is_file() and child.suffix.lower() in MEDIA_TYPES))
        elif path.is_file():
            found.append(path)
        else:
            raise ImportPathError(f"{path} does not exist; name activity files or folders that contain them")
    return found


def _retry_wait_s(response: aiohttp.ClientResponse, attempt: int) -> float:
    try:
        wait_s = float(response.headers.get("Retry-After", ""))
    except ValueError:
        wait_s = 2.0**attempt
    return min(wait_s, MAX_RETRY_WAIT_S)


async def upload_file(session: aiohttp.ClientSession, url: str, path: Path, params: dict[str, str]) -> tuple[int, dict]:
    """Upload one file, retrying 429 and 503 responses; return the final status and JSON body."""
    body = path.read_bytes()
    headers = {"Content-Type": MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")}
    for attempt in range(1, MAX_ATTEMPTS + 1):
        async with session.post(url, data=body, headers=headers, params=params) as response:
            document = await response.json(content_type=None)
            if response.status not in _RETRIED_STATUSES or attempt == MAX_ATTEMPTS:
                return response.status, document
            wait_s = _retry_wait_s(response, attempt)
        log.warning("upload retried", path=str(path), status=response.status, attempt=attempt, wait_s=wait_s)
        await asyncio.sleep(wait_s)
    raise AssertionError("unreachable: the last attempt always returns")


async def run_import(files: Sequence[Path], base_url: str, key: str, user_id: str | None, *, progress: bool = True) -> ImportReport:
    """Upload ``files`` one after another and count what happened to their events.

    A file that is rejected (4xx) or cannot be sent is recorded in the report and
    the import goes on with the next file.
    """
    url = base_url.rstrip("/") + "/v1/activities"
    params = {"user_id": user_id} if user_id else {}
    report = ImportReport()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, headers={"Authorization": f"Bearer {key}"}) as session:
        for path in tqdm(files, desc="importing", unit="file", disable=not progress, file=sys.stderr):
            report.files += 1
            try:
                status, document = await upload_file(session, url, path, params)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
                log.warning("upload failed", path=str(path), error=str(error) or type(error).__name__)
                report.failures.append((path, f"upload failed: {str(error) or type(error).__name__}"))
                continue
            if status >= 400:
                log.info("activity file rejected", path=str(path), status=status)
                report.failures.append((path, f"HTTP {status}: {document.get('detail', document)}"))
                continue
            for result in document["results"]:
                report.events[result["status"]] += 1
    return report


def _import(args: argparse.Namespace, settings: Settings) -> int:
    key = args.key or os.environ.get("RANKSTREAM_API_KEY")
    if not key:
        print("rankstream: no API key; pass --key or set RANKSTREAM_API_KEY", file=sys.stderr)
        return 2
    try:
        files = activity_files(Path(path) for path in args.paths)
    except ImportPathError as error:
        print(f"rankstream: {error}", file=sys.stderr)
        return 2
    base_url = args.url or http_base_url(settings)
    report = asyncio.run(run_import(files, base_url, key, args.user, progress=sys.stderr.isatty()))

    events = report.events
    print(
        f"imported {report.files - len(report.failures)} of {report.files} files: {events['accepted']} events accepted, "
        f"{events['duplicate']} duplicate, {events['rejected']} rejected, {events['conflict']} conflicting"
    )
    for path, reason in report.failures:
        print(f"{path}: {reason}", file=sys.stderr)
    return 1 if report.failures else 0


def add_import_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``import`` command to the ``rankstream`` parser."""
    parser = commands.add_parser("import", help="upload FIT, GPX and TCX activity files or folders through the HTTP API")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="an activity file, or a folder searched for .fit, .gpx and .tcx files")
    parser.add_argument("--url", help="base URL of the ingest API (default: http://RANKSTREAM_HTTP_HOST:RANKSTREAM_HTTP_PORT)")
    parser.add_argument("--key", help="API key to upload with (default: RANKSTREAM_API_KEY)")
    parser.add_argument("--user", help="athlete id the activities belong to; required with a server key, omitted with a device key")
    parser.set_defaults(handler=_import)
