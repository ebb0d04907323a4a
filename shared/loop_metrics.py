"""Counters and histograms for the hot path of an event-loop process, rendered by prometheus-client at scrape time.

prometheus-client's own metrics take a lock on every increment and check the
labels on every ``labels()`` call. Per single-event POST, the request counter,
the latency histogram and the event counter took about 5% of the instructions
in a callgrind count. The collectors here keep plain numbers in dictionaries
keyed by label values, and prometheus-client renders them like its own,
``_created`` series included.

They take no lock, so they are only for values that one thread changes: the
event loop's, which also serves ``/metrics``. A scrape then never reads half
an update. The label values are checked once per series, when it is created.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


def _check_labels(name: str, labelnames: tuple[str, ...], labels: tuple[str, ...]) -> None:
    if len(labels) != len(labelnames) or not all(isinstance(value, str) for value in labels):
        raise ValueError(f"{name} takes {len(labelnames)} label values as strings ({', '.join(labelnames)}), not {labels!r}")


class LoopCounter(Collector):
    """A counter family whose children are created on first increment. Label values are given as a tuple, in ``labelnames`` order."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.values: dict[tuple[str, ...], float] = {}
        self.created: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        """Add ``amount``, which must not be negative, to the child with these label values."""
        if amount < 0:
            raise ValueError(f"{self.name} is a counter and only goes up; it cannot be increased by {amount}")
        value = self.values.get(labels)
        if value is None:
            _check_labels(self.name, self.labelnames, labels)
            self.created[labels] = time.time()
            value = 0.0
        self.values[labels] = value + amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in sorted(self.values.items()):
            family.add_metric(labels, value, created=self.created[labels])
        yield family


class _Series:
    __slots__ = ("counts", "total", "created")

    def __init__(self, buckets: int) -> None:
        # One count per bucket, not cumulative; the last one is +Inf.
        self.counts = [0] * buckets
        self.total = 0.0
        self.created = time.time()


class LoopHistogram(Collector):
    """A histogram family with the buckets' upper bounds given in increasing order; +Inf is always the last bucket."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        bounds = tuple(float(bound) for bound in buckets)
        if list(bounds) != sorted(set(bounds)) or any(math.isnan(bound) for bound in bounds):
            raise ValueError(f"bucket bounds must increase, not {buckets!r}")
        if bounds and bounds[-1] == math.inf:
            bounds = bounds[:-1]
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = bounds
        self._labels_of_bounds = [floatToGoString(bound) for bound in bounds] + ["+Inf"]
        self.series: dict[tuple[str, ...], _Series] = {}
        registry.register(self)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound is at least ``value``."""
        series = self.series.get(labels)
        if series is None:
            _check_labels(self.name, self.labelnames, labels)
            series = self.series[labels] = _Series(len(self.bounds) + 1)
        series.counts[bisect_left(self.bounds, value)] += 1
        series.total += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, series in sorted(self.series.items()):
            cumulative = 0
            buckets = []
            for bound_label, count in zip(self._labels_of_bounds, series.counts, strict=True):
                cumulative += count
                buckets.append((bound_label, cumulative))
            family.add_metric(labels, buckets, series.total)
            # HistogramMetricFamily takes no creation time, so its sample is added as prometheus-client's own histograms add it.
            family.samples.append(Sample(f"{self.name}_created", dict(zip(self.labelnames, labels, strict=True)), series.created))
        yield family
