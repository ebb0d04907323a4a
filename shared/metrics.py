"""Every Prometheus metric Rankstream exports, in one registry per process.

Names carry their unit (``_seconds``, ``_bytes``, ``_entries``) and counters end
in ``_total``. Services record with one call at the place the thing happens.
Values read from Redis (stream length, group lag and pending, memory) are
sampled when ``/metrics`` is scraped, and :class:`SnapshotCollector` renders them.
Each service process serves this registry on ``/metrics``; a process exports
only what it does itself, plus the shared Redis snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.loop_metrics import LoopCounter, LoopHistogram

# The text exposition format version 0.0.4, which Prometheus 2 and 3 both read.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

# -- HTTP (ingest and read API) ------------------------------------------------

# These four change on every request, so they are lock-free loop metrics (see shared/loop_metrics.py).
HTTP_REQUESTS = LoopCounter(
    "rankstream_http_requests", "HTTP requests served, by route template, method and status code.",
    ["route", "method", "status"], registry=REGISTRY,
)
HTTP_REQUEST_DURATION = LoopHistogram(
    "rankstream_http_request_duration_seconds", "Time from request received to response ready, by route template and method.",
    ["route", "method"], buckets=_LATENCY_BUCKETS_S, registry=REGISTRY,
)

# -- ingest ----------------------------------------------------------------------

INGEST_EVENTS = LoopCounter(
    "rankstream_ingest_events", "Events in POST /v1/events bodies, by outcome: accepted, duplicate, conflict or rejected.",
    ["outcome"], registry=REGISTRY,
)
INGEST_REJECTIONS = LoopCounter(
    "rankstream_ingest_rejections", "Rejected events by reason, which is the top-level field that failed validation.",
    ["reason"], registry=REGISTRY,
)

# -- consumer groups (ranker, persister) -----------------------------------------

BATCH_SIZE = Histogram(
    "rankstream_batch_size_entries", "Stream entries per batch handed to a consumer group's handler.",
    ["group"], buckets=_BATCH_BUCKETS, registry=REGISTRY,
)
BATCH_DURATION = Histogram(
    "rankstream_batch_duration_seconds", "Time to handle and acknowledge one batch, by consumer group.",
    ["group"], buckets=_LATENCY_BUCKETS_S, registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "rankstream_dead_letters", "Entries this process moved to the dead-letter stream, by consumer group.",
    ["group"], registry=REGISTRY,
)
POSTGRES_INSERT_DURATION = Histogram(
    "rankstream_postgres_insert_duration_seconds", "Time of one batch insert into the events table, commit included.",
    buckets=_LATENCY_BUCKETS_S, registry=REGISTRY,
)
POSTGRES_ROWS_INSERTED = Counter(
    "rankstream_postgres_rows_inserted", "Rows the persister inserted; re-delivered events are not counted.",
    registry=REGISTRY,
)

# -- gateway ---------------------------------------------------------------------

WEBSOCKET_CONNECTIONS = Gauge(
    "rankstream_websocket_connections", "Open WebSocket connections on this gateway process.", registry=REGISTRY,
)
WEBSOCKET_MESSAGES_SENT = Counter(
    "rankstream_websocket_messages_sent", "Update messages the push loop handed to open WebSocket connections.", registry=REGISTRY,
)
WEBSOCKET_MESSAGES_CONFLATED = Counter(
    "rankstream_websocket_messages_conflated",
    "Updates held back from a client whose send buffer is full; it later gets one message with the merged changes.",
    registry=REGISTRY,
)
WEBSOCKET_SLOW_CLIENTS_CLOSED = Counter(
    "rankstream_websocket_slow_clients_closed", "Connections closed because the client stayed too slow to read its updates.",
    registry=REGISTRY,
)
WEBSOCKET_MESSAGES_DROPPED = Counter(
    "rankstream_websocket_messages_dropped", "Update messages not sent because the connection was already closing.",
    registry=REGISTRY,
)

# Top-level fields of a score event; any other rejection path is reported as "body".
_EVENT_FIELDS = frozenset({"event_id", "user_id", "metric", "value", "occurred_at", "display_name", "groups"})
_FIELD_HEAD = re.compile(r"^[A-Za-z_]+")


def rejection_reason(field_path: str) -> str:
    """Return the metric label of a rejection: the top-level field name, or ``body``.

    Field paths come from client input, so the label is limited to known names
    to keep the number of series bounded.
    """
    match = _FIELD_HEAD.match(field_path)
    if match is None or match.group(0) not in _EVENT_FIELDS:
        return "body"
    return match.group(0)


def record_event_outcomes(results: Iterable) -> None:
    """Count one request's event results (items with ``status`` and ``field``) by outcome and rejection reason."""
    outcomes: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for result in results:
        outcomes[result.status] = outcomes.get(result.status, 0) + 1
        if result.status == "rejected":
            reason = rejection_reason(result.field or "")
            reasons[reason] = reasons.get(reason, 0) + 1
    for outcome, count in outcomes.items():
        INGEST_EVENTS.inc((outcome,), count)
    for reason, count in reasons.items():
        INGEST_REJECTIONS.inc((reason,), count)


# -- values sampled from Redis -----------------------------------------------------


@dataclass(frozen=True)
class GroupInfo:
    """One consumer group as XINFO GROUPS reports it; ``lag_entries`` is None before Redis 7."""

    name: str
    consumers: int
    pending_entries: int
    lag_entries: int | None
    last_delivered_id: str


@dataclass(frozen=True)
class MemoryInfo:
    """Redis memory figures from INFO and CONFIG GET."""

    used_memory_bytes: int
    maxmemory_bytes: int
    fragmentation_ratio: float
    evicted_keys: int
    maxmemory_policy: str | None


@dataclass(frozen=True)
class RedisSnapshot:
    """Stream lengths, consumer groups and memory read from Redis at one moment."""

    stream_length_entries: int
    dead_letter_length_entries: int
    groups: list[GroupInfo] = field(default_factory=list)
    memory: MemoryInfo | None = None


def policy_evicts_stream_keys(policy: str | None) -> bool:
    """Return True when ``maxmemory-policy`` may evict keys without a TTL.

    The events stream and the board sorted sets have no TTL, so only the
    ``allkeys-*`` policies can evict them. The ``volatile-*`` policies evict only
    the de-duplication keys, because those are the keys with a TTL.
    """
    return policy is not None and policy.startswith("allkeys-")


class SnapshotCollector(Collector):
    """Render the latest :class:`RedisSnapshot` as metrics; nothing before the first sample."""

    def __init__(self) -> None:
        self.snapshot: RedisSnapshot | None = None

    def collect(self) -> Iterator:
        snapshot = self.snapshot
        if snapshot is None:
            return
        streams = GaugeMetricFamily("rankstream_stream_length_entries", "Entries in a Redis stream (XLEN).", labels=["stream"])
        streams.add_metric(["events"], snapshot.stream_length_entries)
        streams.add_metric(["dead-letter"], snapshot.dead_letter_length_entries)
        yield streams

        consumers = GaugeMetricFamily("rankstream_group_consumers", "Consumers registered in a consumer group.", labels=["group"])
        pending = GaugeMetricFamily("rankstream_group_pending_entries", "Entries delivered to a group and not yet acknowledged.", labels=["group"])
        lag = GaugeMetricFamily("rankstream_group_lag_entries", "Entries in the stream not yet delivered to a group.", labels=["group"])
        for group in snapshot.groups:
            consumers.add_metric([group.name], group.consumers)
            pending.add_metric([group.name], group.pending_entries)
            if group.lag_entries is not None:
                lag.add_metric([group.name], group.lag_entries)
        yield consumers
        yield pending
        yield lag

        memory = snapshot.memory
        if memory is None:
            return
        yield GaugeMetricFamily("rankstream_redis_used_memory_bytes", "Memory Redis has allocated (INFO used_memory).", value=memory.used_memory_bytes)
        yield GaugeMetricFamily("rankstream_redis_maxmemory_bytes", "Redis maxmemory setting; 0 means no limit.", value=memory.maxmemory_bytes)
        yield GaugeMetricFamily(
            "rankstream_redis_memory_fragmentation_ratio", "Resident memory over allocated memory (INFO mem_fragmentation_ratio).",
            value=memory.fragmentation_ratio,
        )
        yield CounterMetricFamily("rankstream_redis_evicted_keys", "Keys Redis evicted since it started (INFO evicted_keys).", value=memory.evicted_keys)
        risk = GaugeMetricFamily(
            "rankstream_redis_eviction_risk", "1 when maxmemory-policy may evict the events stream or board keys.", labels=["policy"]
        )
        risk.add_metric([memory.maxmemory_policy or "unknown"], 1 if policy_evicts_stream_keys(memory.maxmemory_policy) else 0)
        yield risk


SNAPSHOT = SnapshotCollector()
REGISTRY.register(SNAPSHOT)


def render_metrics() -> bytes:
    """Return every metric of this process in the Prometheus text format."""
    return generate_latest(REGISTRY)
