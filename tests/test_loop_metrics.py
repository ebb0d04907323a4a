"""Lock-free loop metrics render as Prometheus counters and histograms with the right counts."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from shared.loop_metrics import LoopCounter, LoopHistogram


def test_counter_adds_per_label_set() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("demo_requests", "Requests.", ["route", "status"], registry)
    counter.inc(("/a", "200"))
    counter.inc(("/a", "200"), 2)
    counter.inc(("/b", "404"))

    assert generate_latest(registry).decode().splitlines() == [
        "# HELP demo_requests_total Requests.",
        "# TYPE demo_requests_total counter",
        'demo_requests_total{route="/a",status="200"} 3.0',
        'demo_requests_total{route="/b",status="404"} 1.0',
    ]


def test_histogram_buckets_are_cumulative_and_bounds_inclusive() -> None:
    """A value equal to a bound counts in that bound's bucket; one above every bound counts only in +Inf."""
    registry = CollectorRegistry()
    histogram = LoopHistogram("demo_seconds", "Durations.", ["route"], [0.1, 1], registry)
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(("/a",), value)

    assert registry.get_sample_value("demo_seconds_bucket", {"route": "/a", "le": "0.1"}) == 2
    assert registry.get_sample_value("demo_seconds_bucket", {"route": "/a", "le": "1.0"}) == 3
    assert registry.get_sample_value("demo_seconds_bucket", {"route": "/a", "le": "+Inf"}) == 4
    assert registry.get_sample_value("demo_seconds_count", {"route": "/a"}) == 4
    assert registry.get_sample_value("demo_seconds_sum", {"route": "/a"}) == pytest.approx(3.65)


def test_histogram_rejects_bounds_out_of_order() -> None:
    with pytest.raises(ValueError, match="bucket bounds must increase"):
        LoopHistogram("demo_bad_seconds", "Durations.", [], [1, 0.5], CollectorRegistry())
