"""``make bench``: start a fresh ``rankstream up``, run every phase, print the table, write the page, JSON and plot.

Usage: ``python -m bench [--quick]``. ``--quick`` runs every phase with about a
tenth of the data for development; published figures come from a full run.
Every load loop is bounded in count and time, and every process the harness
starts is stopped by its own process id.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import redis.asyncio as redis

from bench import consumer_phases, data_phases, ingest_phases, limits, profile
from bench.cluster import ROOT, Cluster, start_cluster, stop_cluster
from bench.common import median_run
from bench.page import write_page
from bench.report import console_table, plot_latency, summary_rows, write_json

SIZES = {
    "full": {
        "athletes": 1_000_000,
        "pipe_events": 200_000,
        "pipe_reads": 20_000,
        "naive_count_queries": 30,
        "naive_rank_queries": 5,
        "read_concurrency": 4,
        "read_s": 5.0,
        "single_concurrency": 128,
        "single_s": 10.0,
        "batch_size": 100,
        "batch_concurrency": 16,
        "batch_s": 10.0,
        "latency_s": 6.0,
        "rates": [500, 2000, 10000],
        "consumer_entries": 60_000,
        "consumer_counts": [1, 2, 4],
        "profile_s": 5,
        "repeats": 3,
        "drain_timeout_s": 180.0,
    },
    "quick": {
        "athletes": 100_000,
        "pipe_events": 20_000,
        "pipe_reads": 2_000,
        "naive_count_queries": 10,
        "naive_rank_queries": 3,
        "read_concurrency": 4,
        "read_s": 2.0,
        "single_concurrency": 32,
        "single_s": 3.0,
        "batch_size": 100,
        "batch_concurrency": 8,
        "batch_s": 3.0,
        "latency_s": 3.0,
        "rates": [500, 2000, 10000],
        "consumer_entries": 10_000,
        "consumer_counts": [1, 2, 4],
        "profile_s": 2,
        "repeats": 1,
        "drain_timeout_s": 60.0,
    },
}
FANOUT_TIMEOUT_S = 420
# A second gateway paces pushes at a fifth of the default rate, to show what slower pacing costs in latency.
PACED_UPDATES_PER_S = 10


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip() or None
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit,
    }


def log(message: str) -> None:
    print(f"[bench {datetime.now(timezone.utc).strftime('%H:%M:%S')}] {message}", flush=True)


SERVICES = ("ingest", "ranker", "persister", "gateway")
CONSUMERS = ("ranker", "persister")


def _cpu_seconds(pids: dict[str, int | None]) -> dict[str, float]:
    used = {}
    for service, pid in pids.items():
        if pid is None:
            continue
        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
            used[service] = times.user + times.system
            if service in ("postgres", "valkey"):
                # PostgreSQL works in one process per connection and in helper
                # processes, and Valkey forks a child for each rewrite of its
                # append-only file: count the live ones and those that have exited.
                used[service] += times.children_user + times.children_system
                for child in process.children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child_times = child.cpu_times()
                        used[service] += child_times.user + child_times.system
        except psutil.NoSuchProcess:
            continue
    return used


async def _profiled(cluster: Cluster, services: list[str], seconds: int, work) -> tuple[dict, dict]:
    """Run ``work`` while py-spy samples ``services`` for ``seconds``; return its result and the profiles.

    The result gains ``cpu_cores``: CPU seconds each service, Valkey,
    PostgreSQL and this harness (the load generator) used per second of the
    phase, where 1.0 is one core kept busy, and ``cpu_seconds``, the totals.
    """
    pids = {service: cluster.service_pid(service) for service in SERVICES}
    pids["valkey"] = cluster.valkey_pid()
    pids["postgres"] = cluster.postgres_pid()
    pids["load generator"] = os.getpid()
    recorders = {service: asyncio.create_task(profile.record(pids[service], seconds)) for service in services if pids.get(service)}
    # Let py-spy attach before the phase starts, so its start-up is not part of the phase.
    await asyncio.sleep(0.5 if recorders else 0)
    cpu_before, wall_before = _cpu_seconds(pids), time.perf_counter()
    result = await work
    cpu_after, wall = _cpu_seconds(pids), time.perf_counter() - wall_before
    result["cpu_seconds"] = {service: round(cpu_after[service] - cpu_before[service], 3) for service in cpu_after if service in cpu_before}
    result["cpu_cores"] = {service: round(seconds / wall, 2) for service, seconds in result["cpu_seconds"].items()}
    profiles = {service: await task for service, task in recorders.items()}
    return result, profiles


async def _rebuild_profiled(cluster: Cluster, seconds: int) -> dict:
    """Rebuild while py-spy samples this process, where the rebuild code runs."""
    recorder = asyncio.create_task(profile.record(os.getpid(), seconds))
    result = await data_phases.rebuild_board(cluster)
    result["profile"] = await recorder
    return result


class Phases:
    """Runs phases in order; a phase that fails is logged and recorded, and the run goes on without its figures."""

    def __init__(self) -> None:
        self.results: dict = {"profiles": {}, "errors": {}}

    async def run(self, name: str, awaitable, default=None):
        try:
            return await awaitable
        except Exception as error:  # noqa: BLE001 - one broken phase must not lose the figures of the others
            log(f"phase {name} failed: {error!r}")
            self.results["errors"][name] = repr(error)[:500]
            return default


async def run_phases(cluster: Cluster, sizes: dict, work_dir: Path) -> dict:
    phases = Phases()
    results = phases.results
    athletes = sizes["athletes"]
    drain_s = sizes["drain_timeout_s"]
    no_profile = (None, {})

    log(f"COPY of {athletes:,} events into PostgreSQL")
    results["limits"] = {"postgres_copy": await phases.run("copy", data_phases.copy_events(cluster, athletes=athletes))}

    log("rebuild of the board from PostgreSQL")
    results["rebuild"] = await phases.run("rebuild", _rebuild_profiled(cluster, sizes["profile_s"]))
    results["board"] = await data_phases.fill_board(cluster, athletes=athletes)
    scores_key = results["board"]["key"]

    log("raw Valkey throughput with valkey-cli --pipe")
    results["limits"]["valkey"] = await phases.run(
        "valkey",
        asyncio.to_thread(
            limits.raw_valkey, cluster.redis_port, events=sizes["pipe_events"], reads=sizes["pipe_reads"], athletes=athletes,
            scores_key=scores_key, names_key="rs:users:names",
        ),
    )
    limit_stream_bytes = await _limit_stream_bytes(cluster)
    await _remove_limit_keys(cluster)

    log("naive PostgreSQL baseline")
    results["naive_postgres"] = await phases.run(
        "naive_postgres",
        data_phases.naive_postgres(cluster, count_queries=sizes["naive_count_queries"], rank_queries=sizes["naive_rank_queries"], athletes=athletes),
    )

    log("HTTP reads on the large board")
    results["reads"], results["profiles"]["reads"] = await phases.run(
        "reads",
        _profiled(
            cluster, ["ingest"], sizes["profile_s"],
            data_phases.http_reads(cluster, athletes=athletes, concurrency=sizes["read_concurrency"], duration_s=sizes["read_s"]),
        ),
        no_profile,
    )

    # The ingest figures are for the ingest process: the consumers are paused,
    # so they do not share its cores, and work off the backlog afterwards.
    log("HTTP ingest, one event per request, ranker and persister paused")
    async with cluster.paused(CONSUMERS):
        # The same code runs markedly faster in one run than in the next on a
        # shared machine, so the figure is the median of a few runs.
        runs = []
        for number in range(1, sizes["repeats"] + 1):
            run, _profiles = await phases.run(
                f"ingest_single_{number}",
                _profiled(
                    cluster, [], sizes["profile_s"],
                    ingest_phases.single_events(cluster, concurrency=sizes["single_concurrency"], duration_s=sizes["single_s"], athletes=athletes, tag=f"single{number}"),
                ),
                no_profile,
            )
            if run is not None:
                runs.append(run)
        results["ingest_single"] = median_run(runs, "requests_per_s")
        # py-spy takes CPU from the two cores while it samples, so the profile
        # comes from a second, shorter run whose figures are not reported.
        _run, results["profiles"]["ingest_single"] = await phases.run(
            "ingest_single_profile",
            _profiled(
                cluster, ["ingest"], sizes["profile_s"],
                ingest_phases.single_events(cluster, concurrency=sizes["single_concurrency"], duration_s=sizes["profile_s"] + 1, athletes=athletes, tag="profile"),
            ),
            no_profile,
        )
    await ingest_phases.settle(cluster, drain_s)

    log("HTTP ingest, one event per request, second ingest process with RANKSTREAM_DURABILITY=relaxed, ranker and persister paused")
    async with cluster.paused(CONSUMERS):
        results["ingest_single_relaxed"] = await phases.run(
            "ingest_single_relaxed",
            ingest_phases.single_events_relaxed(cluster, concurrency=sizes["single_concurrency"], duration_s=sizes["single_s"], athletes=athletes, log_dir=work_dir),
        )
    await ingest_phases.settle(cluster, drain_s)

    log("HTTP ingest, one event per request, ranker and persister running")
    results["ingest_single_shared"], _profiles = await phases.run(
        "ingest_single_shared",
        _profiled(
            cluster, [], sizes["profile_s"],
            ingest_phases.single_events(cluster, concurrency=sizes["single_concurrency"], duration_s=sizes["single_s"], athletes=athletes, tag="shared"),
        ),
        no_profile,
    )
    await ingest_phases.settle(cluster, drain_s)

    log("batches of 100, end to end")
    runs = []
    for number in range(1, sizes["repeats"] + 1):
        run, _profiles = await phases.run(
            f"end_to_end_{number}",
            _profiled(
                cluster, [], sizes["profile_s"],
                ingest_phases.batches_end_to_end(
                    cluster, batch_size=sizes["batch_size"], concurrency=sizes["batch_concurrency"], duration_s=sizes["batch_s"],
                    athletes=athletes, drain_timeout_s=drain_s, tag=f"e2e{number}",
                ),
            ),
            no_profile,
        )
        if run is not None:
            runs.append(run)
        await ingest_phases.settle(cluster, drain_s)
    results["end_to_end"] = median_run(runs, "end_to_end_events_per_s")
    # As for single events, py-spy would take CPU from the measured runs, so it samples one more, shorter run.
    _run, results["profiles"]["end_to_end"] = await phases.run(
        "end_to_end_profile",
        _profiled(
            cluster, ["ingest", "ranker", "persister"], sizes["profile_s"],
            ingest_phases.batches_end_to_end(
                cluster, batch_size=sizes["batch_size"], concurrency=sizes["batch_concurrency"], duration_s=sizes["profile_s"] + 1,
                athletes=athletes, drain_timeout_s=drain_s, tag="e2e-profile",
            ),
        ),
        no_profile,
    )
    await ingest_phases.settle(cluster, drain_s)

    results["push_latency"] = []
    for rate in sizes["rates"]:
        log(f"POST-to-push latency at {rate:,} events/s")
        run, profiles = await phases.run(
            f"push_latency_{rate}",
            _profiled(
                cluster, ["gateway"] if rate == 2000 else [], sizes["profile_s"],
                ingest_phases.push_latency(cluster, rate_per_s=rate, duration_s=sizes["latency_s"], athletes=athletes, tag=f"lat{rate}"),
            ),
            no_profile,
        )
        if run is not None:
            results["push_latency"].append(run)
        if profiles:
            results["profiles"]["push_latency_2000"] = profiles
        await ingest_phases.settle(cluster, drain_s)

    log(f"POST-to-push latency at 2,000 events/s through a gateway with RANKSTREAM_WS_MAX_UPDATES_PER_S={PACED_UPDATES_PER_S}")
    results["push_latency_paced"] = await phases.run(
        "push_latency_paced",
        ingest_phases.push_latency_paced(
            cluster, updates_per_s=PACED_UPDATES_PER_S, rate_per_s=2000, duration_s=sizes["latency_s"], athletes=athletes, log_dir=work_dir
        ),
    )
    await ingest_phases.settle(cluster, drain_s)

    results["memory"] = await phases.run("memory", data_phases.memory_sizing(cluster, scores_key), {})
    results["memory"]["bytes_per_stream_entry_limit_payload"] = limit_stream_bytes

    results["consumers"] = []
    for service in ("ranker", "persister"):
        for count in sizes["consumer_counts"]:
            log(f"{service} alone with {count} consumer(s)")
            run = await phases.run(
                f"{service}_{count}",
                consumer_phases.drain_run(
                    cluster, service=service, consumers=count, entries=sizes["consumer_entries"], athletes=athletes, log_dir=work_dir, timeout_s=drain_s
                ),
            )
            if run is not None:
                results["consumers"].append(run)
    return results


async def _limit_stream_bytes(cluster: Cluster) -> float | None:
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        stream = limits.Names(limits.LIMIT_NAMESPACE).events_stream
        entries = await client.xlen(stream)
        size = await client.memory_usage(stream, samples=0)
        return round(size / entries, 1) if entries and size else None
    finally:
        await client.aclose()


async def _remove_limit_keys(cluster: Cluster) -> None:
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        batch = []
        async for key in client.scan_iter(match=f"{limits.LIMIT_NAMESPACE}:*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                await client.unlink(*batch)
                batch = []
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


def run_fanout(quick: bool) -> dict | None:
    """Run the WebSocket fan-out script of bench/ when it exists; return what it reported, or None."""
    candidates = sorted((ROOT / "bench").glob("*fanout*.py")) + sorted((ROOT / "bench").glob("*fan_out*.py"))
    if not candidates:
        return None
    script = candidates[0]
    command = [sys.executable, str(script.relative_to(ROOT))]
    usage = subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    if quick and "--quick" in usage:
        command.append("--quick")
    log(f"WebSocket fan-out: {' '.join(command[1:])}")
    try:
        completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=FANOUT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"script": str(script.relative_to(ROOT)), "error": f"did not finish within {FANOUT_TIMEOUT_S} s"}
    runs = []
    for line in completed.stdout.splitlines():
        if line.startswith("{"):
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    # A size counts as served when every client got the last update and none was closed by the server.
    served = [run for run in runs if run.get("clients_up_to_date") == run.get("clients") and run.get("closed_by_server") == 0]
    return {
        "script": str(script.relative_to(ROOT)),
        "exit_code": completed.returncode,
        "runs": runs,
        "max_clients_one_gateway": max((run["clients"] for run in served), default=None),
        "stderr_tail": completed.stderr[-1500:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Benchmark Rankstream against a fresh 'rankstream up'.")
    parser.add_argument("--quick", action="store_true", help="about a tenth of the data and time, for development; not for publishing")
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "benchmarks.md", help="Markdown page to write (default docs/benchmarks.md)")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks.json", help="JSON results to write (default docs/benchmarks.json)")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "benchmarks-latency.png", help="PNG plot to write (default docs/benchmarks-latency.png)")
    parser.add_argument("--skip-fanout", action="store_true", help="do not run the WebSocket fan-out script")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    sizes = SIZES[mode]
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    started = time.monotonic()
    work_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"rankstream-bench-logs-{os.getpid()}"
    work_dir.mkdir(parents=True, exist_ok=True)

    async def everything() -> dict:
        log(f"starting rankstream up ({mode} mode); logs in {work_dir}")
        cluster = await start_cluster(work_dir / "up.log")
        try:
            return await run_phases(cluster, sizes, work_dir)
        finally:
            log("stopping rankstream up")
            await asyncio.to_thread(stop_cluster, cluster)

    load_before = [round(value, 2) for value in os.getloadavg()]
    results = runner(everything())
    results["fanout"] = None if args.skip_fanout else run_fanout(args.quick)
    results["mode"] = mode
    results["sizes"] = sizes
    results["machine"] = machine()
    # Other work on the machine slows every figure; the load average before the run shows how much there was.
    results["machine"]["load_average_before"] = load_before
    results["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results["duration_s"] = round(time.monotonic() - started, 1)

    rows = summary_rows(results)
    print(console_table(rows), flush=True)
    write_json(results, args.json)
    plotted = plot_latency(results, args.plot)
    write_page(results, rows, args.page, args.plot if plotted else None, args.json)
    log(f"wrote {args.page}, {args.json}" + (f" and {args.plot}" if plotted else "") + f" in {results['duration_s']} s")
