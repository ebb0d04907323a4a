"""Service settings read once from ``RANKSTREAM_*`` environment variables.

Every variable, its default and its meaning is listed in ``docs/operations.md``.
A bad value raises :class:`SettingsError` naming the variable and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from shared.env_values import SettingsError, read_int, read_url

_NAMESPACE_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_METRIC_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

# Per-metric plausibility bounds of one event, as (minimum, maximum); None is unbounded.
# The 5 km minimum is the men's world record, 12:35.36 (Joshua Cheptegei, 2020).
DEFAULT_METRIC_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "pushups": (0, 1500),
    "run_distance_m": (0, 350_000),
    "run_5k_time_s": (755.36, 86_400),
}


def _read_metrics(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name) or ""
    metrics = tuple(part.strip() for part in raw.split(",") if part.strip())
    for metric in metrics:
        if not _METRIC_PATTERN.match(metric):
            raise SettingsError(f"{name} contains {metric!r}; list metric names of lower-case letters, digits and '_', separated by commas")
    return metrics


def _read_bound(name: str, entry: str, text: str) -> float | None:
    if text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise SettingsError(f"{name} entry {entry!r} has bound {text!r}, which is not a finite number; write METRIC=MIN:MAX, such as pushups=0:1500")
    return value


def _read_metric_bounds(env: Mapping[str, str], name: str) -> dict[str, tuple[float | None, float | None]]:
    """Return the default bounds updated by entries such as ``pushups=0:1500,plank_s=:3600``."""
    bounds = dict(DEFAULT_METRIC_BOUNDS)
    for entry in (env.get(name) or "").split(","):
        if not entry.strip():
            continue
        metric, equals, limits = entry.strip().partition("=")
        minimum_text, colon, maximum_text = limits.partition(":")
        if not equals or not colon or not _METRIC_PATTERN.match(metric):
            raise SettingsError(f"{name} entry {entry!r} is invalid; write METRIC=MIN:MAX, such as pushups=0:1500, leaving a side empty for no bound")
        minimum = _read_bound(name, entry, minimum_text)
        maximum = _read_bound(name, entry, maximum_text)
        if minimum is not None and maximum is not None and minimum > maximum:
            raise SettingsError(f"{name} entry {entry!r} has a minimum above its maximum; swap them")
        bounds[metric] = (minimum, maximum)
    return bounds


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Configuration shared by every service; build it with :meth:`from_env`."""

    redis_url: str | None = None
    database_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    ws_host: str = "127.0.0.1"
    ws_port: int = 8001
    data_dir: Path = field(default_factory=lambda: Path(".rankstream"))
    boards_file: Path = field(default_factory=lambda: Path("deploy/boards.toml"))
    namespace: str = "rs"
    log_level: str = "info"
    log_format: str = "auto"
    consumer_name: str | None = None
    read_count: int = 500
    block_ms: int = 100
    persist_batch_size: int = 1000
    persist_max_wait_ms: int = 100
    dedupe_ttl_s: int = 7 * 24 * 3600
    api_key_cache_ttl_s: int = 5
    max_activity_bytes: int = 25 * 1024 * 1024
    activity_decode_timeout_ms: int = 60_000
    durability: str = "aof"
    waitaof_timeout_ms: int = 5_000
    max_backlog: int = 1_000_000
    retry_after_s: int = 5
    claim_idle_ms: int = 30_000
    claim_interval_ms: int = 5_000
    max_deliveries: int = 5
    handle_timeout_s: int = 60
    stop_timeout_s: int = 10
    consumer_idle_delete_ms: int = 3_600_000
    trim_interval_ms: int = 1_000
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    max_body_bytes: int = 1024 * 1024
    max_events_per_request: int = 1000
    rate_limit_per_minute: int = 600
    rate_limit_burst_requests: int = 100
    auth_failures_per_minute: int = 60
    auth_failure_burst: int = 30
    max_clock_skew_s: int = 300
    allowed_metrics: tuple[str, ...] = ()
    metric_bounds: dict[str, tuple[float | None, float | None]] = field(default_factory=lambda: dict(DEFAULT_METRIC_BOUNDS))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); raise SettingsError on bad values."""
        env = os.environ if env is None else env
        namespace = env.get("RANKSTREAM_NAMESPACE") or "rs"
        if not _NAMESPACE_PATTERN.match(namespace):
            raise SettingsError(
                f"RANKSTREAM_NAMESPACE={namespace!r} is invalid; use 1-32 lower-case letters, digits, '_' or '-', starting with a letter"
            )
        log_level = (env.get("RANKSTREAM_LOG_LEVEL") or "info").lower()
        if log_level not in {"debug", "info", "warning", "error"}:
            raise SettingsError(f"RANKSTREAM_LOG_LEVEL={log_level!r} is invalid; use debug, info, warning or error")
        log_format = (env.get("RANKSTREAM_LOG_FORMAT") or "auto").lower()
        if log_format not in {"auto", "json", "console"}:
            raise SettingsError(f"RANKSTREAM_LOG_FORMAT={log_format!r} is invalid; use auto, json or console")
        durability = (env.get("RANKSTREAM_DURABILITY") or "aof").lower()
        if durability not in {"aof", "relaxed"}:
            raise SettingsError(f"RANKSTREAM_DURABILITY={durability!r} is invalid; use aof (wait for the fsync) or relaxed")
        return cls(
            redis_url=read_url(env, "RANKSTREAM_REDIS_URL", ("redis", "rediss", "unix")),
            database_url=read_url(env, "RANKSTREAM_DATABASE_URL", ("postgres", "postgresql")),
            http_host=env.get("RANKSTREAM_HTTP_HOST") or "127.0.0.1",
            http_port=read_int(env, "RANKSTREAM_HTTP_PORT", 8000, 0, 65535),
            ws_host=env.get("RANKSTREAM_WS_HOST") or "127.0.0.1",
            ws_port=read_int(env, "RANKSTREAM_WS_PORT", 8001, 0, 65535),
            data_dir=Path(env.get("RANKSTREAM_DATA_DIR") or ".rankstream"),
            boards_file=Path(env.get("RANKSTREAM_BOARDS_FILE") or "deploy/boards.toml"),
            namespace=namespace,
            log_level=log_level,
            log_format=log_format,
            consumer_name=env.get("RANKSTREAM_CONSUMER_NAME") or None,
            read_count=read_int(env, "RANKSTREAM_READ_COUNT", 500, 1, 10_000),
            block_ms=read_int(env, "RANKSTREAM_BLOCK_MS", 100, 1, 60_000),
            persist_batch_size=read_int(env, "RANKSTREAM_PERSIST_BATCH_SIZE", 1000, 1, 10_000),
            persist_max_wait_ms=read_int(env, "RANKSTREAM_PERSIST_MAX_WAIT_MS", 100, 0, 60_000),
            dedupe_ttl_s=read_int(env, "RANKSTREAM_DEDUPE_TTL_S", 7 * 24 * 3600, 7 * 24 * 3600, 366 * 24 * 3600),
            api_key_cache_ttl_s=read_int(env, "RANKSTREAM_API_KEY_CACHE_TTL_S", 5, 0, 300),
            max_activity_bytes=read_int(env, "RANKSTREAM_MAX_ACTIVITY_BYTES", 25 * 1024 * 1024, 1024, 1024 * 1024 * 1024),
            activity_decode_timeout_ms=read_int(env, "RANKSTREAM_ACTIVITY_DECODE_TIMEOUT_MS", 60_000, 1, 600_000),
            durability=durability,
            waitaof_timeout_ms=read_int(env, "RANKSTREAM_WAITAOF_TIMEOUT_MS", 5_000, 1, 60_000),
            max_backlog=read_int(env, "RANKSTREAM_MAX_BACKLOG", 1_000_000, 1, 1_000_000_000),
            retry_after_s=read_int(env, "RANKSTREAM_RETRY_AFTER_S", 5, 1, 3600),
            claim_idle_ms=read_int(env, "RANKSTREAM_CLAIM_IDLE_MS", 30_000, 1, 86_400_000),
            claim_interval_ms=read_int(env, "RANKSTREAM_CLAIM_INTERVAL_MS", 5_000, 10, 3_600_000),
            max_deliveries=read_int(env, "RANKSTREAM_MAX_DELIVERIES", 5, 1, 1000),
            handle_timeout_s=read_int(env, "RANKSTREAM_HANDLE_TIMEOUT_S", 60, 1, 3600),
            stop_timeout_s=read_int(env, "RANKSTREAM_STOP_TIMEOUT_S", 10, 1, 600),
            consumer_idle_delete_ms=read_int(env, "RANKSTREAM_CONSUMER_IDLE_DELETE_MS", 3_600_000, 0, 30 * 86_400_000),
            trim_interval_ms=read_int(env, "RANKSTREAM_TRIM_INTERVAL_MS", 1_000, 0, 3_600_000),
            metrics_host=env.get("RANKSTREAM_METRICS_HOST") or "127.0.0.1",
            # Unset serves no probe listener in the ranker and persister; 0 binds a free port.
            metrics_port=read_int(env, "RANKSTREAM_METRICS_PORT", 0, 0, 65535) if env.get("RANKSTREAM_METRICS_PORT") else None,
            max_body_bytes=read_int(env, "RANKSTREAM_MAX_BODY_BYTES", 1024 * 1024, 1024, 16 * 1024 * 1024),
            max_events_per_request=read_int(env, "RANKSTREAM_MAX_EVENTS_PER_REQUEST", 1000, 1, 10_000),
            rate_limit_per_minute=read_int(env, "RANKSTREAM_RATE_LIMIT_PER_MINUTE", 600, 0, 6_000_000),
            rate_limit_burst_requests=read_int(env, "RANKSTREAM_RATE_LIMIT_BURST_REQUESTS", 100, 1, 1_000_000),
            auth_failures_per_minute=read_int(env, "RANKSTREAM_AUTH_FAILURES_PER_MINUTE", 60, 0, 6_000_000),
            auth_failure_burst=read_int(env, "RANKSTREAM_AUTH_FAILURE_BURST", 30, 1, 1_000_000),
            max_clock_skew_s=read_int(env, "RANKSTREAM_MAX_CLOCK_SKEW_S", 300, 0, 3600),
            allowed_metrics=_read_metrics(env, "RANKSTREAM_ALLOWED_METRICS"),
            metric_bounds=_read_metric_bounds(env, "RANKSTREAM_METRIC_BOUNDS"),
        )

    def with_servers(self, redis_url: str, database_url: str) -> Settings:
        """Return a copy that points at the given servers."""
        return replace(self, redis_url=redis_url, database_url=database_url)
