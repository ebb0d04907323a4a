"""Limits the ingest handlers enforce: event rules, rate limits, batch size and body size."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from services.ingest.auth_failures import AuthFailureLimit
from services.ingest.rate_limit import RateLimiter
from services.ingest.rules import EventRules
from services.ingest.state import STATE_KEY
from shared.api_keys import ApiKey


@dataclass(frozen=True)
class Security:
    rules: EventRules
    rate_limiter: RateLimiter
    auth_failures: AuthFailureLimit
    max_events_per_request: int
    max_body_bytes: int


SECURITY_KEY: web.AppKey[Security] = web.AppKey("security", Security)


async def request_key(request: web.Request) -> ApiKey:
    """Return the key of the request's bearer header; raise AuthError, or RateLimited for an address with too many failures.

    Only handlers that check a key call this, so requests that ignore the
    header, such as reads, never pay for the address check. A key this
    process verified moments ago is no guess, so its requests skip that
    check too: one round trip less on the hot path, and a client sharing an
    address with a guesser keeps working.
    """
    header = request.headers.get("Authorization")
    authenticator = request.app[STATE_KEY].authenticator
    key = authenticator.verified(header)
    if key is not None:
        return key
    await request.app[SECURITY_KEY].auth_failures.check(request)
    return await authenticator.authenticate(header)
