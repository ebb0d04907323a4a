"""POST /v1/events: validate, authorise per athlete, append, report per event."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
import msgspec
import structlog

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.ingest.appender import CONFLICT, DUPLICATE, AppendUnavailable
from services.ingest.auth import require_poster
from services.ingest.decode import BodyError, Item, Rejection, decode_events
from services.ingest.event_timing import check_timing, closed_boards
from services.ingest.problems import problem
from services.ingest.rate_limit import RateLimited, RateLimiter
from services.ingest.security import SECURITY_KEY, request_key
from services.ingest.state import STATE_KEY, IngestState
from shared.api_keys import KeyKind
from shared.metrics import record_event_outcomes
from shared.schema import EventResult, ScoreEvent

log = structlog.get_logger(__name__)
# The standard library logger under ``log``. Its isEnabledFor reads a cache,
# while a filtered structlog call took about 3 microseconds in a measurement on
# a two-core development machine.
_stdlib_log = logging.getLogger(__name__)


def _result_of(event: ScoreEvent, outcome: str) -> EventResult:
    if outcome == DUPLICATE:
        return EventResult(event_id=event.event_id, status="duplicate")
    if outcome == CONFLICT:
        return EventResult(
            event_id=event.event_id, status="conflict", field="event_id",
            reason="this event_id was accepted before with a different body; use a new event_id for a new event",
        )
    return EventResult(event_id=event.event_id, status="accepted", stream_id=outcome)


@dataclass(frozen=True, slots=True)
class Appended:
    """The outcome of :func:`append_items`: one result per item, in order, and the boards that leave a stored event out."""

    results: list[EventResult]
    closed_periods: list[dict[str, str]]


async def append_items(
    state: IngestState, items: Sequence[Item], limiter: RateLimiter | None = None, subject: str = ""
) -> Appended:
    """Append the valid events of ``items`` in one script call; return a result per item and the boards that leave one out.

    With a ``limiter`` the request also takes ``subject``'s token: in the same
    call when it has events to append, and RateLimited is raised, with nothing
    appended, when the bucket is empty. A request without a valid event takes
    it through the limiter, which lets requests through during a Redis outage,
    so the response still lists its rejections.
    """
    # One instant for the timing check and received_at, so the ranker's late
    # check on received_at agrees with what ingest reported.
    now = state.clock()
    items = check_timing(items, state.boards, now, state.periods)
    events = [item for item in items if isinstance(item, ScoreEvent)]
    bucket = None
    if limiter is not None:
        if events:
            bucket = limiter.bucket(subject)
        else:
            await limiter.check(subject)
    sent_at = time.monotonic()
    try:
        appended = await state.appender.append(events, now, bucket)
    except RateLimited as error:
        assert limiter is not None, "only a call with a bucket raises RateLimited"
        limiter.note_empty(subject, error.allowance.retry_after_ms, sent_at, rejected=True)
        raise
    outcomes = iter(appended)
    results: list[EventResult] = []
    closed: list[dict[str, str]] = []
    for item in items:
        if isinstance(item, Rejection):
            results.append(EventResult(event_id=item.event_id, status="rejected", field=item.error.field, reason=item.error.reason))
            continue
        result = _result_of(item, next(outcomes))
        results.append(result)
        # Accepted and duplicate events are in the stream, so the ranker reads
        # them and the boards whose period closed leave them out.
        if result.status in ("accepted", "duplicate"):
            closed.extend(closed_boards(item, state.boards, now, state.periods))
    record_event_outcomes(results)
    return Appended(results, closed)


def unavailable_problem(error: AppendUnavailable | RedisConnectionError | RedisTimeoutError, state: IngestState, key_id: int) -> web.Response:
    """Log and return the 503 problem for an append the event store did not take."""
    if isinstance(error, AppendUnavailable):
        log.warning("events not accepted", key_id=key_id, problem=error.slug, retry_after_s=error.retry_after_s)
        return problem(503, error.slug, "Service unavailable", error.detail, headers={"Retry-After": str(error.retry_after_s)})
    log.warning("events not accepted, redis unavailable", key_id=key_id, error=str(error))
    return problem(
        503, "store-unavailable", "Service unavailable", "the event store did not respond; retry the same request later, events already stored count once",
        headers={"Retry-After": str(state.appender.retry_after_s)},
    )


async def post_events(request: web.Request) -> web.Response:
    state: IngestState = request.app[STATE_KEY]
    security = request.app[SECURITY_KEY]
    key = await request_key(request)
    require_poster(key)
    # Every request costs one token. A request that reaches the append takes it
    # in the append's own script call, and one rejected before takes it here,
    # so a request on an empty bucket gets 429 whatever else is wrong with it.
    subject = f"key:{key.id}"
    limiter = security.rate_limiter
    # A bucket this process saw empty rejects the request before its body is read.
    limiter.raise_if_known_empty(subject)
    try:
        body = await request.read()
    except (RequestPayloadError, web.HTTPRequestEntityTooLarge):
        await limiter.check(subject)
        raise
    try:
        items = decode_events(body, state.boards, security.rules, state.clock(), security.max_events_per_request)
    except BodyError as error:
        await limiter.check(subject)
        return problem(error.status, error.slug, error.title, error.detail)

    # Device keys may only post for their own athlete.
    if key.kind is KeyKind.DEVICE:
        for item in items:
            if isinstance(item, ScoreEvent) and item.user_id != key.user_id:
                await limiter.check(subject)
                return problem(
                    403, "forbidden-user", "Forbidden",
                    f"this device key may post only for user_id {key.user_id!r}, not {item.user_id!r}",
                )

    try:
        appended = await append_items(state, items, limiter, subject)
    except (AppendUnavailable, RedisConnectionError, RedisTimeoutError) as error:
        return unavailable_problem(error, state, key.id)
    results = appended.results
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0, "conflict": 0}
    for result in results:
        counts[result.status] += 1
    # A line per request at info took about a fifth of a single-event request's
    # CPU. The metrics count every outcome, so info is kept for requests with
    # rejected or conflicting events, which point to a faulty device.
    if counts["rejected"] or counts["conflict"]:
        log.info("events posted, some not accepted", key_id=key.id, **counts)
    elif _stdlib_log.isEnabledFor(logging.DEBUG):
        log.debug("events posted", key_id=key.id, **counts)
    status = 202 if counts["accepted"] else 200
    document: dict[str, object] = {"results": results}
    if appended.closed_periods:
        document["closed_periods"] = appended.closed_periods
    return web.Response(status=status, body=msgspec.json.encode(document), content_type="application/json")
