"""Best efforts from a record stream: fastest time over a distance, best average power over a duration.

Plain functions over samples sorted by time. Both work on elapsed time, so a
pause inside the fastest 5 km counts against it, as a stopwatch would.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

from services.ingest.activities.model import Sample

# A power sample is kept until the next one, but for at most this long. A longer gap
# is a pause, because auto-pause records nothing, and counts as zero watts.
POWER_HOLD_MAX_S = 10
# Power efforts are skipped for record streams longer than this, which bounds the
# one-second series the average is computed over.
POWER_SPAN_MAX_S = 7 * 24 * 3600


def fastest_time_s(samples: Sequence[Sample], distance_m: float) -> float | None:
    """Return the shortest elapsed time in which ``distance_m`` was covered, or None if it never was.

    The start of each window is interpolated linearly between the two samples on
    either side of it; the end is always a sample. A distance that drops (a
    sensor glitch) is held at its previous maximum.
    """
    points: list[tuple[float, float]] = []
    highest = float("-inf")
    for sample in samples:
        if sample.distance_m is None:
            continue
        highest = max(highest, sample.distance_m)
        points.append((sample.time_s, highest))
    if not points or points[-1][1] - points[0][1] < distance_m:
        return None

    best: float | None = None
    first = 0
    for end_time_s, end_distance_m in points:
        start_distance_m = end_distance_m - distance_m
        if start_distance_m < points[0][1]:
            continue
        # Move ``first`` to the last sample at or before the start distance.
        while points[first + 1][1] <= start_distance_m:
            first += 1
        before_time_s, before_distance_m = points[first]
        after_time_s, after_distance_m = points[first + 1]
        start_time_s = before_time_s + (after_time_s - before_time_s) * (start_distance_m - before_distance_m) / (after_distance_m - before_distance_m)
        elapsed_s = end_time_s - start_time_s
        if best is None or elapsed_s < best:
            best = elapsed_s
    return best


def best_average_power_w(samples: Sequence[Sample], duration_s: int) -> float | None:
    """Return the highest mean power over any ``duration_s`` window, or None without enough power data.

    The samples are spread over a one-second series in which each value is kept
    until the next sample, for at most POWER_HOLD_MAX_S seconds.
    """
    powered = [(sample.time_s, sample.power_w) for sample in samples if sample.power_w is not None]
    if not powered:
        return None
    origin_s = powered[0][0]
    span_s = round(powered[-1][0] - origin_s) + 1
    if span_s < duration_s or span_s > POWER_SPAN_MAX_S:
        return None

    series = [0.0] * span_s
    for index, (time_s, power_w) in enumerate(powered):
        start = round(time_s - origin_s)
        following = round(powered[index + 1][0] - origin_s) if index + 1 < len(powered) else start + 1
        stop = min(following, start + POWER_HOLD_MAX_S, span_s)
        series[start:stop] = [power_w] * max(stop - start, 0)

    totals = [0.0, *accumulate(series)]
    best_total = max(totals[index + duration_s] - totals[index] for index in range(span_s - duration_s + 1))
    return best_total / duration_s
