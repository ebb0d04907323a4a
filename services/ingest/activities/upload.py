"""POST /v1/activities: one activity file in, its derived score events appended like POST /v1/events."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import msgspec
import structlog
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.ingest.activities.decode import DecodedUpload
from services.ingest.activities.detect import UnsupportedMediaType, declared_format
from services.ingest.activities.model import ActivityFileError, ActivityFormat
from services.ingest.activities.scoring import file_digest, score_events
from services.ingest.activities.worker import DecodeTimeout, decode_in_process
from services.ingest.appender import AppendUnavailable
from services.ingest.auth import AuthError, require_poster
from services.ingest.decode import check_item
from services.ingest.events import append_items, unavailable_problem
from services.ingest.problems import problem
from services.ingest.security import SECURITY_KEY, request_key
from services.ingest.state import STATE_KEY, IngestState
from shared.api_keys import ApiKey, KeyKind
from shared.logs import bind_to_unit_of_work
from shared.schema import IdString, ScoreEvent
from shared.settings import Settings

log = structlog.get_logger(__name__)

_READ_CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on one upload: body size, decoding time and how many files decode at once."""

    max_activity_bytes: int
    decode_timeout_s: float
    decode_slots: asyncio.Semaphore


UPLOAD_LIMITS_KEY: web.AppKey[UploadLimits] = web.AppKey("activity_upload_limits", UploadLimits)


class UploadRejected(Exception):
    """The request cannot be used; ``response`` is the problem+json to send."""

    def __init__(self, response: web.Response) -> None:
        self.response = response


def athlete_of(key: ApiKey, requested: str | None) -> str:
    """Return the athlete an upload is for: a device key's own, or the ``user_id`` a server key names."""
    if key.kind is KeyKind.DEVICE:
        if requested is not None and requested != key.user_id:
            raise AuthError(403, f"this device key may upload only for user_id {key.user_id!r}, not {requested!r}")
        assert key.user_id is not None
        return key.user_id
    if requested is None:
        raise UploadRejected(problem(
            400, "missing-parameter", "Missing parameter",
            "a server key must name the athlete; add ?user_id=<athlete id> to the URL", parameter="user_id",
        ))
    try:
        return msgspec.convert(requested, IdString)
    except msgspec.ValidationError as error:
        raise UploadRejected(problem(
            400, "invalid-parameter", "Invalid parameter",
            f"user_id={requested[:80]!r} is invalid: {error}; use 1-64 letters, digits or ._:@~+-", parameter="user_id",
        )) from None


def event_document(event: ScoreEvent) -> dict[str, object]:
    """Return the fields a derived event has; it never carries a display name or groups."""
    return {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "metric": event.metric,
        "value": event.value,
        "occurred_at": event.occurred_at,
    }


def _too_large(limit_bytes: int) -> UploadRejected:
    return UploadRejected(problem(
        413, "activity-too-large", "Activity file too large",
        f"the activity file exceeds {limit_bytes} bytes; upload one activity per request, or ask the operator to raise RANKSTREAM_MAX_ACTIVITY_BYTES",
    ))


async def read_body(request: web.Request, limit_bytes: int) -> bytes:
    """Read the whole body, stopping as soon as it exceeds ``limit_bytes``.

    The app-wide body limit is meant for JSON batches, so this reads the stream
    directly instead of through ``request.read()``.
    """
    if request.content_length is not None and request.content_length > limit_bytes:
        raise _too_large(limit_bytes)
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(_READ_CHUNK_BYTES):
        size += len(chunk)
        if size > limit_bytes:
            raise _too_large(limit_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _declared(media_type: str) -> ActivityFormat | None:
    try:
        return declared_format(media_type)
    except UnsupportedMediaType as error:
        raise UploadRejected(problem(415, "unsupported-media-type", "Unsupported media type", str(error))) from None


async def _decode(limits: UploadLimits, body: bytes, declared: ActivityFormat | None) -> DecodedUpload:
    try:
        # The semaphore bounds concurrent decoding processes; the time bound starts once one runs.
        # NOTE: uploads waiting for a slot are not bounded in number, only by the rate limit
        # per key, so each keeps its body (up to max_activity_bytes) in memory while it waits.
        async with limits.decode_slots:
            return await asyncio.to_thread(decode_in_process, body, declared, limits.decode_timeout_s)
    except ActivityFileError as error:
        log.info("activity file rejected", problem=error.slug, size_bytes=len(body))
        raise UploadRejected(problem(422, error.slug, error.title, error.detail)) from None
    except DecodeTimeout:
        log.warning("activity decode timed out", size_bytes=len(body), timeout_s=limits.decode_timeout_s)
        raise UploadRejected(problem(
            422, "activity-decode-timeout", "Activity file took too long to decode",
            f"decoding stopped after {limits.decode_timeout_s:g} s; upload a shorter activity, "
            "or ask the operator to raise RANKSTREAM_ACTIVITY_DECODE_TIMEOUT_MS",
        )) from None


async def _handle(request: web.Request, state: IngestState) -> web.Response:
    # Authenticate, authorise and rate-limit exactly as POST /v1/events does.
    security = request.app[SECURITY_KEY]
    limits = request.app[UPLOAD_LIMITS_KEY]
    key = await request_key(request)
    require_poster(key)
    await security.rate_limiter.check(f"key:{key.id}")
    user_id = athlete_of(key, request.query.get("user_id"))
    declared = _declared(request.content_type)

    # Read and decode the whole file before anything is appended.
    body = await read_body(request, limits.max_activity_bytes)
    if not body:
        return problem(400, "empty-body", "Empty body", "the request body is empty; send one FIT, GPX or TCX file as the body")
    digest = file_digest(body)
    bind_to_unit_of_work(user_id=user_id, file_sha256=digest)
    decoded = await _decode(limits, body, declared)

    # Derived events pass the same checks and the same append script as posted ones.
    events = score_events(decoded.measurements, digest, user_id)
    if len(events) > security.max_events_per_request:
        log.info("activity file rejected", problem="too-many-events", events=len(events), sessions=decoded.session_count)
        return problem(
            422, "too-many-events", "Too many events",
            f"the file's {decoded.session_count} sessions yield {len(events)} events, more than the "
            f"{security.max_events_per_request} one request may append; split the file into fewer sessions per upload",
        )
    now = state.clock()
    items = [check_item(event, state.boards, security.rules, now) for event in events]
    try:
        appended = await append_items(state, items)
    except (AppendUnavailable, RedisConnectionError, RedisTimeoutError) as error:
        return unavailable_problem(error, state, key.id)
    results = appended.results

    counts = {"accepted": 0, "duplicate": 0, "rejected": 0, "conflict": 0}
    for result in results:
        counts[result.status] += 1
    log.info("activity uploaded", key_id=key.id, format=decoded.format.value, size_bytes=len(body), sessions=decoded.session_count, **counts)
    document = {
        "activity": {"format": decoded.format.value, "sha256": digest, "sessions": decoded.session_count},
        "events": [event_document(event) for event in events],
        "results": results,
        "closed_periods": appended.closed_periods,
    }
    status = 202 if counts["accepted"] else 200
    return web.Response(status=status, body=msgspec.json.encode(document), content_type="application/json")


async def post_activity(request: web.Request) -> web.Response:
    """Decode one activity file and append the score events derived from it; see docs/activities.md."""
    try:
        return await _handle(request, request.app[STATE_KEY])
    except UploadRejected as rejected:
        return rejected.response


def add_activity_routes(app: web.Application, settings: Settings) -> None:
    """Register POST /v1/activities with the limits from ``settings``."""
    app[UPLOAD_LIMITS_KEY] = UploadLimits(
        max_activity_bytes=settings.max_activity_bytes,
        decode_timeout_s=settings.activity_decode_timeout_ms / 1000,
        decode_slots=asyncio.Semaphore(os.cpu_count() or 1),
    )
    app.router.add_post("/v1/activities", post_activity)
