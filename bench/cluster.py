"""A fresh ``rankstream up`` in a temporary data directory, on free ports, stopped by its own process id."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import psutil

from shared.api_keys import KeyKind, create_key
from shared.embedded import free_port
from shared.runtime import read_runtime

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0

# Limits that protect a production deployment from one client would measure the
# limiter, not the pipeline, so the benchmark lifts them.
BENCH_ENV = {
    "RANKSTREAM_RATE_LIMIT_PER_MINUTE": "6000000",
    "RANKSTREAM_RATE_LIMIT_BURST_REQUESTS": "1000000",
    "RANKSTREAM_MAX_BACKLOG": "50000000",
    "RANKSTREAM_LOG_LEVEL": "warning",
    "RANKSTREAM_LOG_FORMAT": "json",
}


@dataclass
class Cluster:
    """One running ``rankstream up`` and what the phases need to reach it."""

    process: subprocess.Popen
    data_dir: Path
    http_port: int
    ws_port: int
    redis_url: str
    database_url: str
    api_key: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def redis_port(self) -> int:
        return int(self.redis_url.rsplit(":", 1)[1].split("/", 1)[0])

    def service_pid(self, service: str) -> int | None:
        """Return the process id of one service started by ``rankstream up``, or None."""
        for child in psutil.Process(self.process.pid).children(recursive=False):
            try:
                command = child.cmdline()
            except psutil.NoSuchProcess:
                continue
            if command[-2:] == ["services", service]:
                return child.pid
        return None

    def valkey_pid(self) -> int | None:
        """Return the process id of the embedded valkey-server, or None."""
        for child in psutil.Process(self.process.pid).children(recursive=False):
            try:
                if child.name().startswith("valkey-server"):
                    return child.pid
            except psutil.NoSuchProcess:
                continue
        return None

    def postgres_pid(self) -> int | None:
        """Return the process id of the embedded PostgreSQL server (the postmaster), or None."""
        for child in psutil.Process(self.process.pid).children(recursive=False):
            try:
                if child.name() == "postgres":
                    return child.pid
            except psutil.NoSuchProcess:
                continue
        return None

    @contextlib.asynccontextmanager
    async def paused(self, services: tuple[str, ...]) -> AsyncIterator[None]:
        """Stop ``services`` with SIGSTOP for the block, then let them go on with SIGCONT.

        A paused consumer reads nothing, so a phase measures the process under
        test without the consumers sharing the cores. The backlog it leaves
        is worked off after the block.
        """
        pids = [pid for pid in (self.service_pid(service) for service in services) if pid is not None]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def child_env(self, **extra: str) -> dict[str, str]:
        """Environment for an extra service process next to the cluster (own ports, same servers)."""
        return {**self.env, "RANKSTREAM_REDIS_URL": self.redis_url, "RANKSTREAM_DATABASE_URL": self.database_url, **extra}


async def wait_ready(url: str, timeout_s: float) -> None:
    """Poll ``url`` until it returns 200; raise RuntimeError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} was not ready within {timeout_s} s")


async def start_cluster(log_path: Path) -> Cluster:
    """Start ``rankstream up`` with embedded servers and wait until ingest and gateway are ready."""
    data_dir = Path(tempfile.mkdtemp(prefix="rankstream-bench-"))
    http_port, ws_port = free_port(), free_port()
    env = {
        **os.environ,
        **BENCH_ENV,
        "RANKSTREAM_DATA_DIR": str(data_dir),
        "RANKSTREAM_HTTP_PORT": str(http_port),
        "RANKSTREAM_WS_PORT": str(ws_port),
        "RANKSTREAM_BOARDS_FILE": str(ROOT / "deploy" / "boards.toml"),
    }
    for name in ("RANKSTREAM_REDIS_URL", "RANKSTREAM_DATABASE_URL", "RANKSTREAM_METRICS_PORT", "RANKSTREAM_NAMESPACE"):
        env.pop(name, None)
    log_file = open(log_path, "ab")  # noqa: SIM115 - the child process owns it
    process = subprocess.Popen(
        [sys.executable, "-m", "services", "up"], env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
    )
    log_file.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        info = None
        while info is None and time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"rankstream up exited with code {process.returncode}; see {log_path}")
            info = read_runtime(data_dir)
            await asyncio.sleep(0.2)
        if info is None:
            raise RuntimeError(f"rankstream up wrote no runtime.json within {START_TIMEOUT_S} s; see {log_path}")
        await wait_ready(f"http://127.0.0.1:{http_port}/readyz", max(1.0, deadline - time.monotonic()))
        await wait_ready(f"http://127.0.0.1:{ws_port}/readyz", max(1.0, deadline - time.monotonic()))
        connection = await asyncpg.connect(info.database_url)
        try:
            _key, text = await create_key(connection, "bench", KeyKind.SERVER)
        finally:
            await connection.close()
    except BaseException:
        stop_cluster_process(process, data_dir)
        raise
    return Cluster(process, data_dir, http_port, ws_port, info.redis_url, info.database_url, text, env)


def stop_cluster_process(process: subprocess.Popen, data_dir: Path) -> None:
    """Stop ``rankstream up`` by its process id (it stops its services and servers), then remove the data."""
    if process.poll() is None:
        children = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # It did not stop its services and servers in time: kill each of them by its own process id.
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            process.kill()
            process.wait(timeout=10)
    shutil.rmtree(data_dir, ignore_errors=True)


def stop_cluster(cluster: Cluster) -> None:
    stop_cluster_process(cluster.process, cluster.data_dir)


@contextlib.asynccontextmanager
async def extra_service(cluster: Cluster, service: str, ready_url: str, log_path: Path, **env: str) -> AsyncIterator[subprocess.Popen]:
    """Run one more service process next to the cluster with extra settings, stopped by its process id."""
    log_file = open(log_path, "ab")  # noqa: SIM115 - the child process owns it
    process = subprocess.Popen(
        [sys.executable, "-m", "services", service], env=cluster.child_env(**env), stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT
    )
    log_file.close()
    try:
        await wait_ready(ready_url, START_TIMEOUT_S)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
