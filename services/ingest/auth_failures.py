"""A per-address limit on failed authentications, so keys cannot be guessed at speed.

Each 401 sent in response to a request that carried an ``Authorization`` header takes
a token from the bucket of the client's address. While that bucket is empty,
every request from the address whose handler checks a key gets 429 before the
key is looked up, so a guessed key cannot be confirmed either.
:func:`services.ingest.security.request_key` runs the check, and skips it for
a key this process verified within its cache time: that key is in use, not
guessed. The read API checks no key, so its requests are never counted or
blocked.
"""

from __future__ import annotations

from aiohttp import web

from services.ingest.auth import AuthError
from services.ingest.rate_limit import RateLimited, RateLimiter


class AuthFailureLimit:
    """Buckets of failed authentications per client address: checked before a key is looked up, taken from on each 401."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    @staticmethod
    def subject(request: web.Request) -> str:
        # NOTE: behind a reverse proxy every client shares the proxy's address.
        return f"authfail:{request.remote or 'unknown'}"

    async def check(self, request: web.Request) -> None:
        """Raise RateLimited when the request carries credentials and its address has no failures left."""
        if "Authorization" not in request.headers:
            return
        allowance = await self.limiter.take(self.subject(request), cost=0)
        if not allowance.allowed:
            detail = (
                f"too many failed authentications from this address (at most {self.limiter.per_minute} a minute); "
                f"retry after {allowance.retry_after_s} s with a valid key"
            )
            raise RateLimited(allowance, self.limiter.per_minute, detail)

    async def record(self, request: web.Request, error: AuthError) -> None:
        """Count a 401 against the request's address when the request carried credentials."""
        if error.status != 401 or "Authorization" not in request.headers:
            return
        await self.limiter.take(self.subject(request))
