"""The benchmark's pure parts: percentiles, profile summaries, the summary table and kept page sections."""

from __future__ import annotations

from bench.common import median_run, percentiles_ms
from bench.ingest_phases import command_costs
from bench.limits import resp
from bench.page import budget_lines
from bench.profile import summarize
from bench.report import foreign_sections, runs_note, summary_rows


def test_percentiles_nearest_rank() -> None:
    """p50, p95 and p99 use the nearest rank of the sorted samples."""
    samples = [index / 1000 for index in range(1, 101)]
    assert percentiles_ms(samples) == {"p50_ms": 50.0, "p95_ms": 95.0, "p99_ms": 99.0}
    assert percentiles_ms([0.002]) == {"p50_ms": 2.0, "p95_ms": 2.0, "p99_ms": 2.0}
    assert percentiles_ms([]) == {"p50_ms": None, "p95_ms": None, "p99_ms": None}


def test_command_costs_per_event() -> None:
    """Command time and calls between two commandstats snapshots, per event, most time first."""
    before = {"cmdstat_evalsha": {"calls": 10, "usec": 100}, "cmdstat_get": {"calls": 5, "usec": 5}}
    after = {
        "cmdstat_evalsha": {"calls": 30, "usec": 1100},
        "cmdstat_xadd": {"calls": 2000, "usec": 400},
        "cmdstat_get": {"calls": 5, "usec": 5},
    }

    costs = command_costs(before, after, events=1000)

    assert costs == [
        {"command": "EVALSHA", "calls_per_event": 0.02, "us_per_event": 1.0},
        {"command": "XADD", "calls_per_event": 2.0, "us_per_event": 0.4},
    ]


def test_resp_encoding() -> None:
    """Commands are encoded as RESP arrays of bulk strings."""
    assert resp("SET", "k", 5) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n"


def test_profile_summary_shares() -> None:
    """Leaf frames give own time; packages on the stack give inclusive time, entry frames left out."""
    raw = "\n".join(
        [
            "<module> (runpy.py:1);run (runners.py:2);handle (/x/services/ingest/events.py:10);pack (/v/site-packages/redis/connection.py:5) 30",
            "<module> (runpy.py:1);run (runners.py:2);handle (/x/services/ingest/events.py:10) 10",
            "<module> (runpy.py:1);run (runners.py:2) 60",
        ]
    )
    summary = summarize(raw)
    assert summary["samples"] == 100
    assert summary["self"] == [["run (runners.py)", 60.0], ["pack (connection.py)", 30.0], ["handle (events.py)", 10.0]]
    assert summary["inclusive"] == [["runpy.py", 100.0], ["services/ingest", 40.0], ["redis", 30.0]]


def test_summary_rows_verdicts() -> None:
    """Targets are judged in the right direction and limits come from the same results."""
    results = {
        "limits": {
            "valkey": {
                "ingest": {"events_per_s": 100_000.0},
                "ranker": {"events_per_s": 80_000.0},
                "ingest_consumers_and_ranker": {"events_per_s": 44_444.4},
                "rebuild": {"events_per_s": 200_000.0},
            },
            "postgres_copy": {"rows_per_s": 90_000.0},
        },
        "ingest_single": {"requests_per_s": 9_000.0},
        "end_to_end": {"ingest_events_per_s": 60_000.0, "end_to_end_events_per_s": 40_000.0},
        "push_latency": [{"rate_per_s": 2000, "p50_ms": 10.0, "p95_ms": 20.0, "p99_ms": 60.0}],
        "rebuild": {"events": 1_000_000, "seconds": 20.0},
    }
    rows = {row.figure.split(" (")[0]: row for row in summary_rows(results)}
    assert rows["HTTP ingest, one event per POST"].met is True
    assert rows["HTTP ingest, one event per POST"].share_of_limit() == "9%"
    assert rows["End to end: accepted, ranked and persisted"].met is False
    assert rows["End to end: accepted, ranked and persisted"].limit == 44_444.4
    assert rows["POST-to-push p99 at 2,000 events/s"].met is False
    assert rows["Rebuild of 1,000,000 events from PostgreSQL"].met is True
    assert rows["Rebuild of 1,000,000 events from PostgreSQL"].limit == 5.0
    assert rows["WebSocket clients on one gateway process"].met is None


def test_foreign_sections_kept() -> None:
    """Sections another script wrote survive a rewrite; the report's own sections do not."""
    page = "# Benchmarks\n\n## Summary\nold table\n\n## WebSocket fan-out\n10,000 clients\n\n## Reproduce\nmake bench\n"
    assert foreign_sections(page, {"Summary", "Reproduce"}) == ["## WebSocket fan-out\n10,000 clients\n"]


def test_budget_subtracts_raw_limits() -> None:
    """The end-to-end budget subtracts the raw Valkey and COPY time per event from what the cores give."""
    results = {"limits": {"valkey": {"ingest_consumers_and_ranker": {"events_per_s": 40_000.0}}, "postgres_copy": {"rows_per_s": 125_000.0}}}
    [line] = budget_lines(results, 50_000, 2)
    assert line.startswith("  - At 50,000 events/s, 2 cores give each event 40.0 µs of CPU in all.")
    assert "take about 25.0 µs of Valkey's one thread" in line
    assert "8.0 µs of a COPY into PostgreSQL" in line
    assert "That leaves about 7.0 µs for HTTP" in line
    assert budget_lines({"limits": {}}, 50_000, 2) == []


def test_budget_overspent_by_raw_limits() -> None:
    """When the raw limits alone exceed the budget, the line reports that instead of a negative remainder."""
    results = {"limits": {"valkey": {"ingest_consumers_and_ranker": {"events_per_s": 30_000.0}}, "postgres_copy": {"rows_per_s": 100_000.0}}}
    [line] = budget_lines(results, 50_000, 2)
    assert "take about 33.3 µs of Valkey's one thread" in line
    assert "That is already more than the budget, before any HTTP" in line


def test_median_run_keeps_every_value() -> None:
    """The median run is returned whole, with every run's figure, and a run without one counts as the lowest."""
    runs = [{"rate": 9.0, "cpu": "a"}, {"rate": 5.0, "cpu": "b"}, {"rate": None, "cpu": "c"}, {"rate": 7.0, "cpu": "d"}]
    assert median_run(runs[:3], "rate") == {"rate": 5.0, "cpu": "b", "runs": [9.0, 5.0, None]}
    assert median_run(runs, "rate") == {"rate": 5.0, "cpu": "b", "runs": [9.0, 5.0, None, 7.0]}
    assert median_run([runs[0]], "rate") == {"rate": 9.0, "cpu": "a", "runs": [9.0]}
    assert median_run([], "rate") is None


def test_runs_note_lists_repeated_runs() -> None:
    """A figure of several runs names them in its label; a single run adds nothing."""
    assert runs_note({"runs": [8123.4, 5672.0, None]}) == ", median of 3 runs: 8,123, 5,672, -"
    assert runs_note({"runs": [8123.4]}) == ""
    assert runs_note(None) == ""
