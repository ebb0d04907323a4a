"""Shared state of the ingest handlers: clients, boards and clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from datetime import datetime

import asyncpg
import redis.asyncio as redis

from services.ingest.appender import Appender
from services.ingest.auth import Authenticator
from shared.boards import BoardRegistry
from shared.names import Names
from shared.periods import PeriodLookup


@dataclass
class IngestState:
    redis: redis.Redis
    pool: asyncpg.Pool
    names: Names
    boards: BoardRegistry
    clock: Callable[[], datetime]
    appender: Appender
    authenticator: Authenticator
    # The period of each board that the last event fell in, kept across requests.
    periods: PeriodLookup = field(default_factory=PeriodLookup)


STATE_KEY: web.AppKey[IngestState] = web.AppKey("state", IngestState)
