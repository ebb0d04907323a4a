"""Token-bucket rate limits in Redis, one bucket per subject (an API key or a client address), taken from by one atomic script."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from importlib import resources

import redis.asyncio as redis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.command_batcher import CommandBatcher
from shared.names import Names

log = structlog.get_logger(__name__)

_SCRIPTS = resources.files("services.ingest")
# The token bucket function that every script taking tokens starts with.
TAKE_TOKENS_LUA = _SCRIPTS.joinpath("take_tokens.lua").read_text(encoding="utf-8")
RATE_LIMIT_SCRIPT = TAKE_TOKENS_LUA + _SCRIPTS.joinpath("rate_limit.lua").read_text(encoding="utf-8")

# While Redis is unreachable, one warning per this many seconds is enough.
_OUTAGE_LOG_INTERVAL_S = 10.0
# Subjects a process remembers as empty; the map is cleared when full, which
# only costs round trips, so a flood of subjects cannot grow memory.
MAX_EMPTY_SUBJECTS = 10_000


@dataclass(frozen=True)
class Allowance:
    """The outcome of taking from a bucket."""

    allowed: bool
    retry_after_ms: int
    remaining: int
    # True when the limiter returned this from a bucket it remembers as empty, without Redis.
    remembered: bool = False

    @property
    def retry_after_s(self) -> int:
        """Whole seconds to wait, rounded up, as the ``Retry-After`` header carries them."""
        return max(1, math.ceil(self.retry_after_ms / 1000))


@dataclass(frozen=True, slots=True)
class Bucket:
    """One subject's token bucket, for a script that takes a request's token along with its own work."""

    key: str
    capacity: int
    per_minute: int


class RateLimited(Exception):
    """A bucket is empty; ``detail`` names the limit; retry after ``allowance.retry_after_s``."""

    def __init__(self, allowance: Allowance, limit_per_minute: int, detail: str | None = None) -> None:
        if detail is None:
            detail = f"this key may make {limit_per_minute} requests per minute; retry after {allowance.retry_after_s} s"
        super().__init__(detail)
        self.allowance = allowance
        self.limit_per_minute = limit_per_minute
        self.detail = detail


class RateLimiter:
    """Token buckets of ``burst_requests`` tokens refilled at ``per_minute`` tokens a minute.

    Each request costs one token, whatever its number of events. A
    ``per_minute`` of 0 turns limiting off. When Redis does not reply the
    request is let through: the events it carries cannot be stored then
    anyway, and admin calls keep working during a Redis outage.

    A reply that shows a bucket without a whole token also gives the wait
    until one is back, and only time adds tokens. Until then the limiter
    rejects that subject without a call to Redis, so a client over its limit
    costs a dictionary lookup. The wait is counted from when the call was
    sent, before the server ran it, so a rejection from memory never outlasts
    the server's. A request just after it goes to Redis again.
    """

    def __init__(
        self, client: redis.Redis, names: Names, per_minute: int, burst_requests: int, *, batcher: CommandBatcher | None = None
    ) -> None:
        self.names = names
        self.per_minute = per_minute
        self.burst_requests = burst_requests
        self.script = client.register_script(RATE_LIMIT_SCRIPT)
        # Limiters of one process share a batcher, so their checks share round trips.
        self.batcher = batcher if batcher is not None else CommandBatcher(client)
        self._outage_logged_at = -math.inf
        # subject -> (time.monotonic() at which its bucket has a whole token
        # again, whether a rejection of this empty spell was logged at info)
        self._empty_until: dict[str, tuple[float, bool]] = {}

    def bucket(self, subject: str) -> Bucket | None:
        """Return ``subject``'s bucket, or None when limiting is off."""
        if self.per_minute == 0:
            return None
        return Bucket(self.names.rate_limit_bucket(subject), self.burst_requests, self.per_minute)

    def known_empty(self, subject: str) -> Allowance | None:
        """Return the rejection for ``subject`` while an earlier reply showed its bucket without a whole token.

        No I/O. The rejection is ``remembered`` unless it is the first of an
        empty spell that no Redis reply rejected, so the caller logs that one
        as it logs a rejection from Redis.
        """
        empty = self._empty_until.get(subject)
        if empty is None:
            return None
        until, reported = empty
        wait_ms = math.ceil((until - time.monotonic()) * 1000)
        if wait_ms <= 0:
            del self._empty_until[subject]
            return None
        if not reported:
            self._empty_until[subject] = (until, True)
        return Allowance(False, wait_ms, 0, remembered=reported)

    def note_empty(self, subject: str, wait_ms: int, sent_at: float, *, rejected: bool) -> None:
        """Remember that ``subject``'s bucket had no whole token for ``wait_ms`` after ``sent_at``.

        ``sent_at`` is the ``time.monotonic()`` at which the call that learned
        it was sent, and ``rejected`` is whether that call was itself rejected.
        """
        if len(self._empty_until) >= MAX_EMPTY_SUBJECTS:
            self._empty_until.clear()
        self._empty_until[subject] = (sent_at + wait_ms / 1000, rejected)

    def raise_if_known_empty(self, subject: str) -> None:
        """Raise RateLimited, without a round trip, while :meth:`known_empty` returns a rejection."""
        rejection = self.known_empty(subject)
        if rejection is not None:
            raise RateLimited(rejection, self.per_minute)

    async def take(self, subject: str, cost: int = 1) -> Allowance:
        """Take ``cost`` tokens from ``subject``'s bucket; return whether the request may go on.

        A ``cost`` of 0 takes nothing: the allowance then reports whether a token
        is left, and ``retry_after_ms`` is the wait until one is.
        """
        if self.per_minute == 0:
            return Allowance(True, 0, self.burst_requests)
        rejection = self.known_empty(subject) if cost <= 1 else None
        if rejection is not None:
            return rejection
        sent_at = time.monotonic()
        try:
            reply = await self.batcher.call(self.script, [self.names.rate_limit_bucket(subject)], [self.burst_requests, self.per_minute, cost])
        except (RedisConnectionError, RedisTimeoutError) as error:
            now = time.monotonic()
            if now - self._outage_logged_at >= _OUTAGE_LOG_INTERVAL_S:
                self._outage_logged_at = now
                log.warning("rate limit check failed, request let through", subject=subject, error=str(error))
            return Allowance(True, 0, 0)
        if isinstance(reply.value, Exception):
            raise reply.value
        allowed, wait_ms, remaining, wait_one_ms = reply.value
        if cost == 0:
            allowance = Allowance(int(remaining) >= 1, int(wait_one_ms), int(remaining))
        else:
            allowance = Allowance(bool(allowed), int(wait_ms), int(remaining))
        if int(wait_one_ms) > 0:
            self.note_empty(subject, int(wait_one_ms), sent_at, rejected=not allowance.allowed)
        return allowance

    async def check(self, subject: str) -> Allowance:
        """Take one token; raise RateLimited when the bucket is empty."""
        allowance = await self.take(subject)
        if not allowance.allowed:
            raise RateLimited(allowance, self.per_minute)
        return allowance
