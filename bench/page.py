"""Writing docs/benchmarks.md from one run's results; sections of other benchmark scripts are kept."""

from __future__ import annotations

import os
from pathlib import Path

from bench.report import Row, foreign_sections, markdown_table

OWN_HEADINGS = {
    "Summary",
    "Machine and sizes",
    "How each figure is measured",
    "Missed targets",
    "Details",
    "Reproduce",
}

# The next step for each kind of missed target: a plan, not a measurement.
NEXT_STEPS = {
    "single": (
        "Each request makes one Redis call, a script that takes its rate-limit token and appends its events, and "
        "the calls of concurrent requests go out as shared pipelines (shared/command_batcher.py). So what a request "
        "costs is mostly aiohttp's HTTP handling, validation and the event loop (see the profile). "
        "When the ingest process uses close to one core (see the CPU line), that Python work is the bound. Then run "
        "several ingest processes per host behind a load balancer, and send batches from clients that can: the "
        "batch row reaches far more events per second per process. When it uses much less, it waits for the "
        "fsync that WAITAOF confirms (compare the relaxed-durability row) or for cores shared with other processes "
        "(see the load average above)."
    ),
    "e2e": (
        "The CPU line shows what each accepted event costs in every process and the rate the machine's cores allow "
        "at that cost: on two cores the whole pipeline, its two servers and the load generator share them. Valkey "
        "is the largest part, and it runs commands on one thread. The limit column is the rate at which that thread "
        "runs nothing but the commands of one event, pipelined from valkey-cli. These are the ingest script's "
        "(de-duplication key, XADD), the two consumer groups' (group read, acknowledgement) and the apply script's "
        "(applied id, two rank counts and ZINCRBY on a board of a million athletes, where each touches memory far "
        "outside the CPU caches). When that limit is below the target, "
        "no client code reaches it with one Valkey and a ranked board this size. The next steps are then to give "
        "the servers and the services their own cores, and to spread boards over several Valkey instances, each "
        "with its own stream, rankers and persisters."
    ),
    "push": (
        "The gateway sends each subscription at most RANKSTREAM_WS_MAX_UPDATES_PER_S updates per second (50 by "
        "default), so under steady load a change waits up to 20 ms for the next push slot. The row measured "
        "through a second gateway with the limit at 10 shows what slower pacing adds. The rest is the time "
        "through ingest, the stream and the ranker: see the CPU line for the process that is short of a core."
    ),
    "reads": (
        "A read of the top takes two Valkey round trips and one athlete's rank with neighbours three "
        "(shared/standings.py), each a raw pipeline (shared/raw_commands.py), plus the HTTP handling. When the "
        "ingest process uses close to one core, the p99 is queueing behind that Python work: serve reads from more "
        "ingest processes, or read a standing with one script call. When it uses much less, the shared machine is "
        "the bound."
    ),
    "rebuild": (
        "The rebuild reads the events athlete by athlete, computes each final score in Python and writes it with "
        "bulk ZADD and HSET while it reads the next rows, so the bound is this process's CPU (row decoding, the "
        "fold, redis-py packing the commands) next to Valkey inserting two sorted-set members per event (the "
        "score and the applied event id). Where the profile shows the fold or the packing, fold disjoint sets of "
        "athletes in several processes."
    ),
    "fanout": (
        "A size counts as served when every client received the last update and the gateway closed none. The "
        "fan-out section below gives the delivery latency and the gateway's CPU at each size."
    ),
}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _profile_lines(profiles: dict | None, cpu_cores: dict | None) -> list[str]:
    lines = []
    if cpu_cores:
        used = ", ".join(f"{service} {cores:.2f}" for service, cores in cpu_cores.items())
        lines.append(f"  - CPU cores used during the phase (1.00 is one core kept busy; the machine has {os.cpu_count()}): {used}.")
    for service, summary in (profiles or {}).items():
        if "error" in summary:
            lines.append(f"  - {service}: not profiled ({summary['error']})")
            continue
        inclusive = ", ".join(f"{name} {share}%" for name, share in summary["inclusive"][:6])
        leaves = ", ".join(f"{name} {share}%" for name, share in summary["self"][:5])
        lines.append(f"  - {service} ({summary['samples']} samples): on the stack: {inclusive}. Own time: {leaves}.")
    return lines


def _cpu_per_event(run: dict) -> list[str]:
    """Return the CPU each process spent per accepted event, and the rate the machine's cores allow at that cost."""
    seconds, events = run.get("cpu_seconds"), run.get("events_accepted")
    if not seconds or not events:
        return []
    per_event_us = {service: 1e6 * used / events for service, used in seconds.items()}
    total_us = sum(per_event_us.values())
    spent = ", ".join(f"{service} {value:.1f}" for service, value in per_event_us.items())
    cores = os.cpu_count() or 1
    lines = [
        f"  - CPU per accepted event, in microseconds: {spent}; {total_us:.1f} in all. At that cost "
        f"{cores} cores carry at most {cores * 1e6 / total_us:,.0f} events/s, whatever the scheduling."
    ]
    commands = run.get("valkey_commands")
    if commands:
        spent_in = ", ".join(f"{cost['command']} {cost['us_per_event']:.1f} ({cost['calls_per_event']:g} calls)" for cost in commands)
        lines.append(
            f"  - Valkey's time in commands per accepted event, in microseconds, from INFO commandstats. EVALSHA is the "
            f"ingest and apply scripts, and it includes the commands they call, which have rows of their own: {spent_in}."
        )
    return lines


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times each"


def budget_lines(results: dict, target_per_s: float, cores: int) -> list[str]:
    """Return a line comparing the CPU time per event that the cores give at the target with what the raw limits alone take."""
    valkey = ((results.get("limits") or {}).get("valkey") or {}).get("ingest_consumers_and_ranker") or {}
    copy = (results.get("limits") or {}).get("postgres_copy") or {}
    if not valkey.get("events_per_s") or not copy.get("rows_per_s"):
        return []
    budget_us = cores * 1e6 / target_per_s
    valkey_us = 1e6 / valkey["events_per_s"]
    copy_us = 1e6 / copy["rows_per_s"]
    left_us = budget_us - valkey_us - copy_us
    rest = (
        f"That leaves about {left_us:.1f} µs for HTTP, validation, both consumers and the load generator."
        if left_us > 0
        else "That is already more than the budget, before any HTTP, validation or consumer work."
    )
    return [
        f"  - At {target_per_s:,.0f} events/s, {cores} cores give each event {budget_us:.1f} µs of CPU in all. The raw "
        f"limits alone take about {valkey_us:.1f} µs of Valkey's one thread (its commands for one event, pipelined, "
        f"without Lua) and {copy_us:.1f} µs of a COPY into PostgreSQL (one row, client and server). {rest} These are "
        "estimates from elapsed times of saturated runs. The CPU line above shows what the services take."
    ]


def _missed(results: dict, rows: list[Row]) -> list[str]:
    """Describe each missed target: by how much, what the profile shows and the next step."""
    out = []
    profiles = results.get("profiles", {})
    for row in rows:
        if row.met is not False:
            continue
        target_value = float(row.target.split()[-2].replace(",", "")) if row.target.split()[-1] in ("ms", "s") else float(row.target.split()[-1].replace(",", ""))
        if row.higher_is_better:
            gap = f"{row.measured:,.0f} {row.unit} against {row.target}: {1 - row.measured / target_value:.0%} short"
        else:
            gap = f"{row.measured:,.1f} {row.unit} against {row.target}: {row.measured / target_value:.1f} times the target"
        cpu = None
        if row.figure.startswith("HTTP ingest, one event"):
            key, profile = "single", profiles.get("ingest_single")
            cpu = (results.get("ingest_single") or {}).get("cpu_cores")
        elif row.figure.startswith("End to end"):
            key, profile = "e2e", profiles.get("end_to_end")
            cpu = (results.get("end_to_end") or {}).get("cpu_cores")
        elif row.figure.startswith("POST-to-push"):
            key, profile = "push", profiles.get("push_latency_2000")
            cpu = next((run.get("cpu_cores") for run in results.get("push_latency", []) if run["rate_per_s"] == 2000), None)
        elif row.figure.startswith("Read"):
            key, profile = "reads", profiles.get("reads")
            cpu = (results.get("reads") or {}).get("cpu_cores")
        elif row.figure.startswith("Rebuild"):
            key, profile = "rebuild", None
        else:
            key, profile = "fanout", None
        out.append(f"- **{row.figure}**: {gap}.")
        profile_lines = _profile_lines(profile, cpu)
        if profile_lines:
            out.append(
                "  What bounds it (py-spy at 100 Hz during the phase; `Runner.run` own time is the event loop itself, "
                "uvloop in C: polling, socket reads and writes, callbacks):"
            )
            out += ["  " + line for line in profile_lines]
        if key == "e2e":
            out += ["  " + line for line in _cpu_per_event(results.get("end_to_end") or {})]
            out += ["  " + line for line in budget_lines(results, target_value, os.cpu_count() or 1)]
        if key == "rebuild":
            profile_lines = _profile_lines({"rebuild (in the harness)": (results.get("rebuild") or {}).get("profile", {"error": "not recorded"})}, None)
            out.append("  What bounds it (py-spy at 100 Hz, the first seconds of the rebuild):")
            out += ["  " + line for line in profile_lines]
        out.append(f"  Next step: {NEXT_STEPS[key]}")
    return out or ["Every figure with a target met it in this run."]


def _pair(section: dict | None, name: str) -> str:
    values = (section or {}).get(name) or {}
    return f"{_fmt(values.get('p50_ms'))} | {_fmt(values.get('p99_ms'))}"


def _consumer_details(results: dict) -> list[str]:
    out = ["### Consumers alone (pre-filled stream)", "", "| Group | Consumers | Entries | Seconds | Events/s |", "|---|---:|---:|---:|---:|"]
    for run in results.get("consumers", []):
        out.append(f"| {run['service']} | {run['consumers']} | {_fmt(run['entries'])} | {_fmt(run['seconds'])} | {_fmt(run['events_per_s'])} |")
    return out


def _end_to_end_details(results: dict) -> list[str]:
    e2e = results.get("end_to_end") or {}
    backlog = ", ".join(str(count) for _second, count in e2e.get("backlog_samples", []))
    return [
        "### End to end with batches of 100",
        "",
        f"{_fmt(e2e.get('events_accepted'))} events accepted in a {_fmt(e2e.get('post_window_s'))} s posting window "
        f"({_fmt(e2e.get('ingest_events_per_s'))} events/s at ingest, POST p50 {_fmt(e2e.get('request_p50_ms'))} ms, "
        f"p99 {_fmt(e2e.get('request_p99_ms'))} ms); both groups had acknowledged the last one "
        f"{_fmt(e2e.get('end_to_end_s'))} s after the first POST. Backlog (lag plus pending of the slower group) "
        f"each second: {backlog}.",
    ]


def _push_details(results: dict) -> list[str]:
    out = [
        "### POST-to-push latency",
        "",
        "| Offered events/s | Achieved events/s | Probes pushed / sent | p50 ms | p95 ms | p99 ms | POST p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    paced = results.get("push_latency_paced")
    for run in [*results.get("push_latency", []), *([paced] if paced else [])]:
        offered = _fmt(run["rate_per_s"])
        if "max_updates_per_s" in run:
            offered += f" (pushes paced at {run['max_updates_per_s']}/s)"
        out.append(
            f"| {offered} | {_fmt(run['achieved_events_per_s'])} | {run['probes_pushed']} / {run['probes']} | "
            f"{_fmt(run['p50_ms'])} | {_fmt(run['p95_ms'])} | {_fmt(run['p99_ms'])} | {_fmt(run['post_p99_ms'])} |"
        )
    return out


def _baseline_details(results: dict) -> list[str]:
    naive = results.get("naive_postgres") or {}
    reads = results.get("reads")
    return [
        "### Reads against the naive PostgreSQL design",
        "",
        f"Same {_fmt(naive.get('rows'))} athletes. PostgreSQL table `(user_id primary key, score)` with an index on "
        f"score, built in {_fmt(naive.get('table_build_s'))} s from the events table.",
        "",
        "| Query | p50 ms | p99 ms |",
        "|---|---:|---:|",
        f"| Rankstream: one athlete's rank with neighbours, over HTTP | {_pair(reads, 'rank_with_neighbours')} |",
        f"| Rankstream: top-100, over HTTP | {_pair(reads, 'top_100')} |",
        f"| PostgreSQL: `count(*)` of better scores + 1 | {_pair(naive, 'count_better')} |",
        f"| PostgreSQL: `RANK() OVER (ORDER BY score DESC)`, one athlete | {_pair(naive, 'rank_window')} |",
        f"| PostgreSQL: top-100 with `RANK()` | {_pair(naive, 'top_100')} |",
    ]


def _memory_details(results: dict) -> list[str]:
    memory = results.get("memory") or {}
    return [
        "### Memory per item (Valkey `MEMORY USAGE`, all elements sampled)",
        "",
        f"- Board period sorted set: {_fmt(memory.get('bytes_per_athlete_scores'))} bytes per athlete ({_fmt(memory.get('athletes'))} athletes).",
        f"- Applied event ids of a board period: {_fmt(memory.get('bytes_per_applied_event_id'))} bytes per event ({_fmt(memory.get('applied_ids'))} ids).",
        f"- Events stream: {_fmt(memory.get('bytes_per_stream_entry_limit_payload'))} bytes per entry with the raw Valkey phase's event; "
        f"{_fmt(memory.get('bytes_per_stream_entry'))} bytes per entry in the live stream at the end ({_fmt(memory.get('stream_entries'))} entries).",
        f"- De-duplication key: {_fmt(memory.get('bytes_per_seen_key'))} bytes per accepted event id, kept for the TTL.",
    ]


def _limit_details(results: dict) -> list[str]:
    out = ["### Raw limits", ""]
    for name, item in ((results.get("limits") or {}).get("valkey") or {}).items():
        rate = item.get("events_per_s") or item.get("reads_per_s")
        if "commands" not in item:
            out.append(f"- Valkey, {name.replace('_', ' ')} for each event, one after the other on its one thread: {_fmt(rate)} events per second.")
            continue
        out.append(
            f"- Valkey, {name.replace('_', ' ')}: {_fmt(item['commands'])} commands in {_fmt(item['seconds'])} s "
            f"with `valkey-cli --pipe` = {_fmt(rate)} per second, {item['errors']} errors."
        )
    copy = (results.get("limits") or {}).get("postgres_copy") or {}
    out.append(
        f"- PostgreSQL COPY into the events table with its indexes: {_fmt(copy.get('rows'))} rows in "
        f"{_fmt(copy.get('seconds'))} s = {_fmt(copy.get('rows_per_s'))} rows/s."
    )
    fanout = results.get("fanout")
    if fanout is not None:
        out += ["", f"The WebSocket fan-out script `{fanout.get('script')}` exited with {fanout.get('exit_code', fanout.get('error'))}; its own section below has its figures."]
    return out


def _details(results: dict) -> list[str]:
    out: list[str] = []
    for part in (_consumer_details, _end_to_end_details, _push_details, _baseline_details, _memory_details, _limit_details):
        out += [*part(results), ""]
    return out


def write_page(results: dict, rows: list[Row], path: Path, plot: Path | None, json_path: Path) -> None:
    machine = results["machine"]
    sizes = results["sizes"]
    existing = path.read_text() if path.exists() else ""
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` ({results['mode']} mode) on {results['finished_at']}, commit {machine['commit']}, "
        f"in {results['duration_s']} s. Machine-readable results: [{json_path.name}]({json_path.name}).",
        "",
    ]
    if results["mode"] != "full":
        lines += ["**Quick mode: about a tenth of the data. These figures are for development, not for comparison.**", ""]
    lines += ["## Summary", "", markdown_table(rows), ""]
    if results.get("errors"):
        lines += ["Phases that failed in this run, so their figures show as '-':", ""]
        lines += [f"- `{name}`: {error}" for name, error in results["errors"].items()]
        lines += [""]
    if plot is not None:
        lines += [f"![Latency against load]({plot.name})", ""]
    lines += [
        "## Machine and sizes",
        "",
        f"- {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory_gib']} GiB memory, Python {machine['python']}, {machine['platform']}.",
        f"- Load average (1, 5, 15 minutes) just before the run: {', '.join(str(value) for value in machine.get('load_average_before', []))}; "
        "anything above zero is other work that shared the cores.",
        "- Everything runs on this one machine at once: embedded Valkey and PostgreSQL (from `rankstream up`), the four "
        "services and the load generator, so each figure includes the competition for the same cores. The one "
        "exception is the pair of ingest-alone rows, during which the ranker and the persister are paused.",
        f"- Board: {_fmt(sizes['athletes'])} athletes; COPY, rebuild and the naive baseline use {_fmt(sizes['athletes'])} events, one per athlete.",
        f"- Raw Valkey: {_fmt(sizes['pipe_events'])} events and {_fmt(sizes['pipe_reads'])} reads per command group.",
        f"- Single-event ingest: {sizes['single_concurrency']} connections for {sizes['single_s']} s. Batches: "
        f"{sizes['batch_concurrency']} connections posting {sizes['batch_size']} events each for {sizes['batch_s']} s.",
        f"- POST-to-push: {sizes['latency_s']} s per rate at {', '.join(f'{rate:,}' for rate in sizes['rates'])} events/s, open loop, with a probe event every 50 ms.",
        f"- Reads: {sizes['read_concurrency']} connections for {sizes['read_s']} s per query. Naive baseline: "
        f"{sizes['naive_count_queries']} `count(*)` and top-100 queries, {sizes['naive_rank_queries']} `RANK()` queries.",
        f"- Consumers alone: {_fmt(sizes['consumer_entries'])} entries per run with {', '.join(map(str, sizes['consumer_counts']))} consumers.",
        "- Rate limits and the backlog cap of ingest are lifted for the run (`bench/cluster.py`); durability and every "
        "other setting keep their defaults.",
        "",
        "## How each figure is measured",
        "",
        "- The load generator (`bench/http_load.py`) is a small asyncio HTTP/1.1 client on keep-alive connections; "
        "latency is from writing a request to reading its whole response.",
        "- Ingest alone: closed loop, one event per POST, with the ranker and the persister stopped by SIGSTOP for the "
        "phase, so the figure is what one ingest process takes; they work off the backlog before the next phase. The "
        "same load with them running is the row that says so.",
        "- End to end: closed loop, batches of 100, everything running. It divides the accepted events by the "
        "time from the first POST until both consumer groups had acknowledged the last entry: the rate the whole "
        "pipeline sustains. The backlog samples under Details show how far ingest ran ahead of the consumers.",
        f"- Ingest alone and end to end run {_times(sizes.get('repeats', 1))}. The figure, its CPU line and its "
        "details come from the median run, and the label lists every run.",
        "- `rankstream up` runs one process of each service, so every figure except \"consumers alone\" is for one "
        "ingest, one ranker, one persister and one gateway.",
        "- POST-to-push: a fixed schedule of POSTs (open loop) and a WebSocket subscribed to a probe athlete; each probe "
        "event is timed from its POST to the first push that shows the probe's new score.",
        "- Consumers alone: the stream is filled aside and renamed over the live key, so 1, 2 or 4 waiting consumers start "
        "on the whole backlog at once; the time runs until the group has acknowledged every entry.",
        "- Limits: `valkey-cli --pipe` sends the commands the ingest script, the consumer groups, the apply script, the "
        "rebuild and the read path issue, pipelined, to the same Valkey. The apply script's commands run on a copy of the board, for "
        "random athletes, because a sorted-set command costs more the larger the set and the more scattered the "
        "members it touches. The copy is laid out afresh in memory, so its commands may cost a little less than "
        "on the live board. COPY loads the same events table the persister writes.",
        "- Profiles: py-spy samples the service processes during the phases, and the harness itself during the rebuild, "
        "whose code runs inside the harness. For single-event ingest and end to end it samples one more, shorter "
        "run instead, because py-spy's own CPU would lower the figure. The harness also counts the CPU seconds each "
        "service used, with PostgreSQL's processes and Valkey's append-only file rewrites included.",
        "- Runs differ: on a shared virtual machine the same code can run markedly slower in one run than in the "
        "next. The CPU per event under the end-to-end figure tells a slower machine (every process costs more) "
        "from a slower part of the product.",
        "",
        "## Missed targets",
        "",
        *_missed(results, rows),
        "",
        "## Details",
        "",
        *_details(results),
        "",
        "## Reproduce",
        "",
        "```sh",
        "make bench            # full run, about five to six minutes on two cores",
        ".venv/bin/python -m bench --quick   # a tenth of the data, for development",
        "```",
        "",
    ]
    lines += foreign_sections(existing, OWN_HEADINGS)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")
