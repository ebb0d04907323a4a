"""Gateway limits and options, read once from ``RANKSTREAM_WS_*`` environment variables.

Every variable, its default and its unit is listed in ``docs/websocket.md``. A bad
value raises :class:`shared.env_values.SettingsError` naming the variable and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from shared.env_values import SettingsError, read_flag, read_int, read_number

# HS256 keys shorter than the hash output are easy to brute-force (RFC 7518, section 3.2).
MIN_JWT_SECRET_BYTES = 32


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """Limits of one gateway process; see ``docs/websocket.md`` for each variable."""

    max_updates_per_s: float = 50.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    idle_timeout_s: float = 60.0
    close_timeout_s: float = 5.0
    max_message_bytes: int = 4096
    max_subscriptions: int = 50
    max_connections_per_ip: int = 256
    max_invalid_messages: int = 10
    high_water_bytes: int = 256 * 1024
    slow_close_after_s: float = 10.0
    history_max_changes: int = 5000
    history_max_board_periods: int = 10_000
    loss_check_interval_s: float = 5.0
    jwt_secret: str | None = None
    allowed_origins: frozenset[str] = frozenset()
    reuse_port: bool = False
    public_url: str | None = None

    @property
    def flush_interval_s(self) -> float:
        return 1.0 / self.max_updates_per_s

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewayConfig:
        """Build the config from ``env`` (default ``os.environ``); raise SettingsError on bad values."""
        env = os.environ if env is None else env
        secret = env.get("RANKSTREAM_WS_JWT_SECRET") or None
        if secret is not None and len(secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise SettingsError(
                f"RANKSTREAM_WS_JWT_SECRET is {len(secret.encode())} bytes long; use at least {MIN_JWT_SECRET_BYTES} random bytes"
            )
        origins = frozenset(origin.strip().rstrip("/") for origin in (env.get("RANKSTREAM_WS_ALLOWED_ORIGINS") or "").split(",") if origin.strip())
        return cls(
            max_updates_per_s=read_number(env, "RANKSTREAM_WS_MAX_UPDATES_PER_S", 50.0, 0.1, 1000.0),
            ping_interval_s=read_number(env, "RANKSTREAM_WS_PING_INTERVAL_S", 20.0, 0.05, 3600.0),
            ping_timeout_s=read_number(env, "RANKSTREAM_WS_PING_TIMEOUT_S", 20.0, 0.05, 3600.0),
            idle_timeout_s=read_number(env, "RANKSTREAM_WS_IDLE_TIMEOUT_S", 60.0, 0.05, 86_400.0),
            close_timeout_s=read_number(env, "RANKSTREAM_WS_CLOSE_TIMEOUT_S", 5.0, 0.05, 60.0),
            max_message_bytes=read_int(env, "RANKSTREAM_WS_MAX_MESSAGE_BYTES", 4096, 256, 1024 * 1024),
            max_subscriptions=read_int(env, "RANKSTREAM_WS_MAX_SUBSCRIPTIONS", 50, 1, 10_000),
            max_connections_per_ip=read_int(env, "RANKSTREAM_WS_MAX_CONNECTIONS_PER_IP", 256, 1, 1_000_000),
            max_invalid_messages=read_int(env, "RANKSTREAM_WS_MAX_INVALID_MESSAGES", 10, 1, 10_000),
            high_water_bytes=read_int(env, "RANKSTREAM_WS_HIGH_WATER_BYTES", 256 * 1024, 1024, 1024 * 1024 * 1024),
            slow_close_after_s=read_number(env, "RANKSTREAM_WS_SLOW_CLOSE_AFTER_S", 10.0, 0.05, 3600.0),
            history_max_changes=read_int(env, "RANKSTREAM_WS_HISTORY_MAX_CHANGES", 5000, 0, 10_000_000),
            history_max_board_periods=read_int(env, "RANKSTREAM_WS_HISTORY_MAX_BOARD_PERIODS", 10_000, 1, 10_000_000),
            loss_check_interval_s=read_number(env, "RANKSTREAM_WS_LOSS_CHECK_INTERVAL_S", 5.0, 0.05, 3600.0),
            jwt_secret=secret,
            allowed_origins=origins,
            reuse_port=read_flag(env, "RANKSTREAM_WS_REUSE_PORT", False),
            public_url=env.get("RANKSTREAM_WS_PUBLIC_URL") or None,
        )
