"""``rankstream up``: embedded servers, migrations and the four services on one machine."""

from __future__ import annotations

import asyncio
import http.client
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

import structlog

from shared.database import migrate_url
from shared.embedded import EmbeddedPostgres, EmbeddedValkey
from shared.runtime import RuntimeInfo, read_runtime, remove_runtime, write_runtime
from shared.settings import Settings, SettingsError

log = structlog.get_logger(__name__)

SERVICES = ("ingest", "ranker", "persister", "gateway")
STOP_TIMEOUT_S = 15.0
RESTART_DELAY_S = 1.0
# Starting the four services takes a few seconds, and a slow machine may take longer.
READY_TIMEOUT_S = 120.0


@dataclass
class Child:
    service: str
    process: subprocess.Popen
    started_at: float = field(default_factory=time.monotonic)


def _spawn(service: str, env: dict[str, str]) -> Child:
    process = subprocess.Popen([sys.executable, "-m", "services", service], env=env, start_new_session=True)
    log.info("service started", child=service, pid=process.pid)
    return Child(service, process)


def _stop_children(children: list[Child]) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            child.process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            log.warning("service did not stop in time, killing it", child=child.service, pid=child.process.pid)
            child.process.kill()
            child.process.wait(timeout=5)
        log.info("service stopped", child=child.service, pid=child.process.pid, code=child.process.returncode)


def _probe_url(host: str, port: int) -> str:
    """Return the readiness URL of a server that listens on ``host``, as reached from this machine."""
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://[{host}]:{port}/readyz" if ":" in host else f"http://{host}:{port}/readyz"


# No proxy from the environment: the probes go to this machine's own services.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _ready(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=1) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):
        # Refused, timed out, an error status, or something that is not HTTP on the port.
        return False


def services_ready(settings: Settings) -> bool:
    """Return whether the readiness probes of ingest and the gateway both return 200 now."""
    return all(_ready(_probe_url(host, port)) for host, port in ((settings.http_host, settings.http_port), (settings.ws_host, settings.ws_port)))


def print_banner(settings: Settings) -> None:
    http = f"http://{settings.http_host}:{settings.http_port}"
    ws = f"ws://{settings.ws_host}:{settings.ws_port}/v1/ws"
    print(
        f"""
Rankstream is running.
  HTTP API   {http}   (GET {http}/v1/boards)
  WebSocket  {ws}
  Live page  {http}/
  Data dir   {settings.data_dir.resolve()}

Create a key in another terminal (same directory, or the same RANKSTREAM_DATA_DIR):
  KEY=$(.venv/bin/rankstream keys create --name demo | tail -n 1)
Post a first event:
  curl -X POST {http}/v1/events -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
    -d '{{"event_id":"w-1","user_id":"ada","display_name":"Ada","metric":"pushups","value":25,"occurred_at":"'$(date -u +%Y-%m-%dT%H:%M:%SZ)'"}}'
Press Ctrl-C to stop.
""",
        flush=True,
    )


def run_up(settings: Settings) -> int:
    """Start everything and supervise it until SIGINT/SIGTERM; return the exit code."""
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    if read_runtime(data_dir) is not None:
        raise SettingsError(f"a 'rankstream up' is already running with data dir {data_dir}; stop it first or set RANKSTREAM_DATA_DIR")

    stop_requested = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        if stop_requested:
            log.warning("second stop signal, exiting now")
            os._exit(1)
        stop_requested = True
        log.info("stop requested", signal=signal.Signals(signum).name)

    # SIGHUP too: the servers and services run in sessions of their own, so
    # closing the terminal reaches only this process, which must stop them.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)

    valkey = postgres = None
    children: list[Child] = []
    try:
        redis_url = settings.redis_url
        if redis_url is None:
            valkey = EmbeddedValkey(data_dir / "valkey")
            redis_url = valkey.start()
        database_url = settings.database_url
        if database_url is None:
            postgres = EmbeddedPostgres(data_dir / "postgres")
            database_url = postgres.start()
        asyncio.run(migrate_url(database_url))
        write_runtime(
            data_dir,
            RuntimeInfo(
                redis_url=redis_url,
                database_url=database_url,
                pid=os.getpid(),
                http_url=f"http://{settings.http_host}:{settings.http_port}",
                ws_url=f"ws://{settings.ws_host}:{settings.ws_port}/v1/ws",
            ),
        )
        env = {**os.environ, "RANKSTREAM_REDIS_URL": redis_url, "RANKSTREAM_DATABASE_URL": database_url}
        children = [_spawn(service, env) for service in SERVICES]
        # The banner invites a first request, so it waits until ingest and the
        # gateway take one, even when a service had to be restarted first.
        banner_shown = False
        ready_by = time.monotonic() + READY_TIMEOUT_S
        while not stop_requested:
            time.sleep(0.2)
            if not banner_shown and services_ready(settings):
                print_banner(settings)
                banner_shown = True
            elif not banner_shown and time.monotonic() > ready_by:
                log.warning("services not ready yet, still waiting", waited_s=READY_TIMEOUT_S)
                ready_by = math.inf
            for index, child in enumerate(children):
                code = child.process.poll()
                if code is None or stop_requested:
                    continue
                log.error("service exited, restarting it", child=child.service, code=code, delay_s=RESTART_DELAY_S)
                time.sleep(RESTART_DELAY_S)
                children[index] = _spawn(child.service, env)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        _stop_children(children)
        remove_runtime(data_dir)
        if postgres is not None:
            postgres.stop()
        if valkey is not None:
            valkey.stop()
        log.info("rankstream stopped")
    return 0
