"""Lock-free loop metrics render as Prometheus counters and histograms with the right counts."""

from __future__ import annotations

import math
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from shared.loop_metrics import LoopCounter, LoopHistogram


def test_counter_sums_per_label_set() -> None:
    """Each label set sums its increments and exports when it was created."""
    registry = CollectorRegistry()
    counter = LoopCounter("demo_requests", "Requests.", ["route", "status"], registry)
    before = time.time()
    counter.inc(("/a", "200"))
    counter.inc(("/a", "200"), 2)
    counter.inc(("/b", "404"))
    after = time.time()

    lines = [line for line in generate_latest(registry).decode().splitlines() if line.startswith("demo_requests_total")]
    assert lines == ['demo_requests_total{route="/a",status="200"} 3.0', 'demo_requests_total{route="/b",status="404"} 1.0']
    for labels in ({"route": "/a", "status": "200"}, {"route": "/b", "status": "404"}):
        assert before <= registry.get_sample_value("demo_requests_created", labels) <= after


def test_counter_rejects_wrong_labels_and_negative_amounts() -> None:
    counter = LoopCounter("demo_checked", "Checked.", ["route", "status"], CollectorRegistry())
    with pytest.raises(ValueError, match=r"demo_checked takes 2 label values as strings \(route, status\), not \('/a',\)"):
        counter.inc(("/a",))
    with pytest.raises(ValueError, match="demo_checked takes 2 label values"):
        counter.inc(("/a", 200))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only goes up; it cannot be increased by -5"):
        counter.inc(("/a", "200"), -5)
    assert counter.values == {}


def test_histogram_buckets_are_cumulative_and_bounds_inclusive() -> None:
    """A value equal to a bound counts in that bound's bucket; one above every bound counts only in +Inf."""
    registry = CollectorRegistry()
    histogram = LoopHistogram("demo_seconds", "Durations.", ["route"], [0.1, 1], registry)
    before = time.time()
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(("/a",), value)

    assert registry.get_sample_value("demo_seconds_bucket", {"route": "/a", "le": "0.1"}) == 2
    assert registry.get_sample_value("demo_seconds_bucket", {"route": "/a", "le": "1.0"}) == 3
    assert registry.get_sample_value("demo_seconds_bucket", {"route": "/a", "le": "+Inf"}) == 4
    assert registry.get_sample_value("demo_seconds_count", {"route": "/a"}) == 4
    assert registry.get_sample_value("demo_seconds_sum", {"route": "/a"}) == pytest.approx(3.65)
    assert before <= registry.get_sample_value("demo_seconds_created", {"route": "/a"}) <= time.time()


def test_histogram_infinite_bound_kept_once() -> None:
    """A bucket list ending in +Inf gives one +Inf bucket, not two."""
    registry = CollectorRegistry()
    histogram = LoopHistogram("demo_inf_seconds", "Durations.", [], [1, math.inf], registry)
    histogram.observe((), 5.0)

    inf_lines = [line for line in generate_latest(registry).decode().splitlines() if 'le="+Inf"' in line]
    assert inf_lines == ['demo_inf_seconds_bucket{le="+Inf"} 1.0']


def test_histogram_rejects_bounds_out_of_order() -> None:
    with pytest.raises(ValueError, match="bucket bounds must increase"):
        LoopHistogram("demo_bad_seconds", "Durations.", [], [1, 0.5], CollectorRegistry())
