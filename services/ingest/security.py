"""Limits the ingest handlers enforce: event rules, rate limits, batch size and body size."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from services.ingest.auth_failures import AuthFailureLimit
from services.ingest.rate_limit import RateLimiter
from services.ingest.rules import EventRules


@dataclass(frozen=True)
class Security:
    rules: EventRules
    rate_limiter: RateLimiter
    auth_failures: AuthFailureLimit
    max_events_per_request: int
    max_body_bytes: int


SECURITY_KEY: web.AppKey[Security] = web.AppKey("security", Security)
