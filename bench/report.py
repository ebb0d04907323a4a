"""Turning benchmark results into a console table, docs/benchmarks.md, JSON and a PNG plot. No I/O but the writes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    """One figure of the summary table with its target and the machine's limit measured in the same run."""

    figure: str
    measured: float | None
    unit: str
    target: str
    limit: float | None
    limit_source: str
    met: bool | None
    higher_is_better: bool = True

    def share_of_limit(self) -> str:
        if self.measured is None or not self.limit:
            return "-"
        share = self.measured / self.limit if self.higher_is_better else self.limit / self.measured
        return f"{share:.0%}"

    def verdict(self) -> str:
        if self.met is None:
            return "no target"
        return "met" if self.met else "missed"


def _get(data: dict, *path: str):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def _below(value: float | None, target: float) -> bool | None:
    return None if value is None else value < target


def runs_note(section: dict | None) -> str:
    """Return ", median of N runs: a, b, c" for a figure measured several times, else an empty string."""
    runs = (section or {}).get("runs") or []
    if len(runs) < 2:
        return ""
    return f", median of {len(runs)} runs: {', '.join('-' if value is None else f'{value:,.0f}' for value in runs)}"


def summary_rows(results: dict) -> list[Row]:
    """Build the table rows from the results document; absent figures show as '-'."""
    raw_ingest = _get(results, "limits", "valkey", "ingest", "events_per_s")
    raw_ranker = _get(results, "limits", "valkey", "ranker", "events_per_s")
    raw_every = _get(results, "limits", "valkey", "ingest_consumers_and_ranker", "events_per_s")
    raw_rebuild = _get(results, "limits", "valkey", "rebuild", "events_per_s")
    copy_rate = _get(results, "limits", "postgres_copy", "rows_per_s")
    e2e_limit = min((value for value in (raw_every, copy_rate) if value), default=None)
    single = _get(results, "ingest_single", "requests_per_s")
    relaxed = _get(results, "ingest_single_relaxed", "requests_per_s")
    shared = _get(results, "ingest_single_shared", "requests_per_s")
    batches = _get(results, "end_to_end", "ingest_events_per_s")
    e2e = _get(results, "end_to_end", "end_to_end_events_per_s")
    rows = [
        Row(f"HTTP ingest, one event per POST (requests/s, one ingest process, consumers paused{runs_note(results.get('ingest_single'))})", single, "req/s", ">= 8,000", raw_ingest, "raw Valkey ingest commands, pipelined", _at_least(single, 8000)),
        Row("HTTP ingest, one event per POST, RANKSTREAM_DURABILITY=relaxed (requests/s, consumers paused)", relaxed, "req/s", "-", raw_ingest, "raw Valkey ingest commands, pipelined", None),
        Row("HTTP ingest, one event per POST, ranker and persister running on the same cores (requests/s)", shared, "req/s", "-", raw_ingest, "raw Valkey ingest commands, pipelined", None),
        Row("HTTP ingest, batches of 100 (events/s, one ingest process)", batches, "events/s", "-", raw_ingest, "raw Valkey ingest commands, pipelined", None),
        Row(f"End to end: accepted, ranked and persisted (events/s{runs_note(results.get('end_to_end'))})", e2e, "events/s", ">= 50,000", e2e_limit, "raw Valkey commands of ingest, both consumer groups and the ranker on its one thread, or PostgreSQL COPY if slower", _at_least(e2e, 50000)),
    ]
    for run in results.get("push_latency", []):
        rate = run["rate_per_s"]
        target = "< 50 ms" if rate == 2000 else "-"
        met = _below(run.get("p99_ms"), 50) if rate == 2000 else None
        rows.append(Row(f"POST-to-push p99 at {rate:,} events/s (p50 {_ms(run.get('p50_ms'))}, p95 {_ms(run.get('p95_ms'))})", run.get("p99_ms"), "ms", target, None, "-", met, False))
    paced = results.get("push_latency_paced")
    if paced:
        rows.append(
            Row(
                f"POST-to-push p99 at 2,000 events/s with RANKSTREAM_WS_MAX_UPDATES_PER_S={paced['max_updates_per_s']} "
                f"(p50 {_ms(paced.get('p50_ms'))}, p95 {_ms(paced.get('p95_ms'))})",
                paced.get("p99_ms"), "ms", "-", None, "-", None, False,
            )
        )
    for run in results.get("consumers", []):
        limit, source = (raw_ranker, "raw Valkey ranker commands, pipelined") if run["service"] == "ranker" else (copy_rate, "PostgreSQL COPY")
        rows.append(Row(f"{run['service'].capitalize()} alone, {run['consumers']} consumer(s) (events/s)", run.get("events_per_s"), "events/s", "-", limit, source, None))
    for name, label in (("top_100", "top-100"), ("rank_with_neighbours", "one athlete's rank with 5 neighbours each side")):
        read = _get(results, "reads", name) or {}
        raw = _get(results, "limits", "valkey", name, "reads_per_s")
        rows.append(Row(f"Read {label}, p99 over HTTP (p50 {_ms(read.get('p50_ms'))})", read.get("p99_ms"), "ms", "< 5 ms", None, "-", _below(read.get("p99_ms"), 5), False))
        rows.append(Row(f"Read {label}, throughput over HTTP", read.get("requests_per_s"), "req/s", "-", raw, "raw Valkey read commands, pipelined", None))
    rebuild = results.get("rebuild") or {}
    rebuild_limit_s = round(rebuild["events"] / raw_rebuild, 2) if rebuild.get("events") and raw_rebuild else None
    rows.append(Row(f"Rebuild of {rebuild.get('events', 0):,} events from PostgreSQL (s)", rebuild.get("seconds"), "s", "< 30 s", rebuild_limit_s, "the same events' writes as raw bulk ZADD", _below(rebuild.get("seconds"), 30), False))
    naive = results.get("naive_postgres") or {}
    for name, label in (("count_better", "count(*) of better scores"), ("rank_window", "RANK() over the board"), ("top_100", "top-100 with RANK()")):
        query = naive.get(name) or {}
        rows.append(Row(f"Naive PostgreSQL baseline: {label}, p99 (p50 {_ms(query.get('p50_ms'))})", query.get("p99_ms"), "ms", "baseline", None, "-", None, False))
    clients = _get(results, "fanout", "max_clients_one_gateway")
    fanout_label = "WebSocket clients on one gateway process"
    if results.get("fanout") and clients is None:
        fanout_label += " (figures in the fan-out section below)"
    rows.append(Row(fanout_label, clients, "clients", ">= 10,000", None, "-", _at_least(clients, 10000)))
    return rows


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value < 100:
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def console_table(rows: list[Row]) -> str:
    header = ["figure", "measured", "target", "limit (same run)", "of limit", "verdict"]
    lines = [[row.figure, f"{_number(row.measured)} {row.unit}", row.target, _number(row.limit), row.share_of_limit(), row.verdict()] for row in rows]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True))]
    out.append("  ".join("-" * width for width in widths))
    out += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def markdown_table(rows: list[Row]) -> str:
    out = ["| Figure | Measured | Target | Limit measured in the same run | Share of limit | Verdict |", "|---|---:|---|---|---:|---|"]
    for row in rows:
        limit = f"{_number(row.limit)} ({row.limit_source})" if row.limit else "-"
        out.append(f"| {row.figure} | {_number(row.measured)} {row.unit} | {row.target} | {limit} | {row.share_of_limit()} | {row.verdict()} |")
    return "\n".join(out)


def write_json(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def plot_latency(results: dict, path: Path) -> bool:
    """Plot POST-to-push and POST latency percentiles against the offered event rate; return False without data."""
    runs = [run for run in results.get("push_latency", []) if run.get("p99_ms") is not None]
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [run["rate_per_s"] for run in runs]
    figure, (push, post) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^-")):
        push.plot(rates, [run[key] for run in runs], style, label=key.split("_")[0])
        post.plot(rates, [run[f"post_{key}"] for run in runs], style, label=key.split("_")[0])
    push.axhline(50, color="grey", linestyle=":", label="p99 target at 2,000/s")
    for axis, title in ((push, "POST to WebSocket push"), (post, "POST /v1/events response")):
        axis.set_xscale("log")
        # Latency spans milliseconds to seconds once the pipeline falls behind, so the axis is logarithmic too.
        axis.set_yscale("log")
        axis.set_xticks(rates, [f"{rate:,}" for rate in rates])
        axis.set_xlabel("offered load (events/s, open loop)")
        axis.set_ylabel("latency (ms)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle(f"Rankstream latency against load ({results['machine']['cpu_model']}, {results['machine']['cpus']} CPUs)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def foreign_sections(existing: str, own_headings: set[str]) -> list[str]:
    """Return the ``## `` sections of an existing page whose headings this report does not write, in order.

    Other benchmark scripts (such as the WebSocket fan-out script) keep their own
    section in the same page, and a rewrite must not drop it.
    """
    sections = re.split(r"(?m)^(?=## )", existing)
    kept = []
    for section in sections:
        if not section.startswith("## "):
            continue
        heading = section.splitlines()[0][3:].strip()
        if heading not in own_headings:
            kept.append(section.rstrip() + "\n")
    return kept
