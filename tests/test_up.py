"""`rankstream up` with embedded servers, other commands finding it, and a clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import psutil

from shared.embedded import free_port
from tests.helpers import wait_for, wait_healthy


def cli(*args: str, env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services", *args], env=env, capture_output=True, text=True, timeout=timeout_s)


def up_env(tmp_path: Path, http_port: int, ws_port: int) -> dict[str, str]:
    env = {
        key: value for key, value in os.environ.items()
        if key not in ("RANKSTREAM_REDIS_URL", "RANKSTREAM_DATABASE_URL")
    }
    env.update(
        RANKSTREAM_DATA_DIR=str(tmp_path / "data"),
        RANKSTREAM_HTTP_PORT=str(http_port),
        RANKSTREAM_WS_PORT=str(ws_port),
        RANKSTREAM_BOARDS_FILE=str(Path(__file__).resolve().parent.parent / "deploy" / "boards.toml"),
        RANKSTREAM_LOG_FORMAT="json",
    )
    return env


async def banner_printed(log_path: Path) -> bool:
    return "Rankstream is running." in log_path.read_text()


async def test_up_stops_on_hangup(tmp_path: Path) -> None:
    """Closing the terminal (SIGHUP) stops the servers and services too."""
    http_port, ws_port = free_port(), free_port()
    env = up_env(tmp_path, http_port, ws_port)
    with open(tmp_path / "up.log", "wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "services", "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        await wait_healthy(f"http://127.0.0.1:{ws_port}/healthz", timeout_s=60)
        await wait_healthy(f"http://127.0.0.1:{http_port}/healthz", timeout_s=60)
        descendants = psutil.Process(up.pid).children(recursive=True)
        assert len(descendants) >= 6
    finally:
        up.send_signal(signal.SIGHUP)
        code = up.wait(timeout=60)
    assert code == 0
    gone, alive = psutil.wait_procs(descendants, timeout=10)
    assert [process.pid for process in alive] == []
    assert not (tmp_path / "data" / "runtime.json").exists()


async def test_up_runs_and_stops_cleanly(tmp_path: Path) -> None:
    """up starts servers and services; keys and simulate find them; SIGINT stops every process."""
    http_port, ws_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    env = up_env(tmp_path, http_port, ws_port)
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "services", "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        await wait_for(lambda: banner_printed(log_path), timeout_s=60, what="the 'Rankstream is running.' banner")
        # The banner comes only once both probes return 200, so one request each must succeed now.
        async with aiohttp.ClientSession() as http:
            for port in (http_port, ws_port):
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    assert response.status == 200
        runtime = json.loads((data_dir / "runtime.json").read_text())
        assert runtime["pid"] == up.pid
        assert runtime["http_url"] == f"http://127.0.0.1:{http_port}"
        assert runtime["ws_url"] == f"ws://127.0.0.1:{ws_port}/v1/ws"
        descendants = psutil.Process(up.pid).children(recursive=True)

        created = cli("keys", "create", "--name", "up-test", env=env)
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip().splitlines()[-1]
        assert key.startswith("rsk_")
        assert key not in log_path.read_text()

        simulated = cli("simulate", "--athletes", "5", "--rate", "40", "--duration", "1.5", "--seed", "7", "--key", key, env=env)
        assert simulated.returncode == 0, simulated.stderr
        accepted = int(simulated.stdout.split("accepted ")[1].split(",")[0])
        assert accepted > 0

        async def board_has_athletes() -> bool:
            async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{http_port}/v1/boards/pushups-weekly/top?limit=100"
            ) as response:
                return (await response.json())["participants"] > 0

        await wait_for(board_has_athletes, what="simulated athletes on pushups-weekly")
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=60)
    assert code == 0, log_path.read_text()[-3000:]
    assert not (data_dir / "runtime.json").exists()
    still_running = [process.pid for process in descendants if process.is_running() and process.status() != psutil.STATUS_ZOMBIE]
    assert still_running == []
    assert (data_dir / "valkey" / "appendonlydir").is_dir()
    assert (data_dir / "postgres" / "PG_VERSION").is_file()


def test_bad_setting_named_in_error(tmp_path: Path) -> None:
    """A bad environment variable stops the command with its name and the fix."""
    env = {**os.environ, "RANKSTREAM_HTTP_PORT": "eighty", "RANKSTREAM_DATA_DIR": str(tmp_path)}
    result = cli("ingest", env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == "rankstream: RANKSTREAM_HTTP_PORT='eighty' is not a whole number; set it to a whole number from 0 to 65535"


def test_missing_servers_explained(tmp_path: Path) -> None:
    """Without URLs and without a running up, a service explains how to provide the servers."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RANKSTREAM_")}
    env["RANKSTREAM_DATA_DIR"] = str(tmp_path)
    result = cli("ranker", env=env)
    assert result.returncode == 2
    assert "RANKSTREAM_REDIS_URL and RANKSTREAM_DATABASE_URL not set and no running 'rankstream up' found" in result.stderr


def test_up_server_failure_is_one_line(tmp_path: Path) -> None:
    """A server that cannot start ends up with one clear line, and what did start is stopped."""
    env = up_env(tmp_path, free_port(), free_port())
    broken = tmp_path / "data" / "postgres"
    broken.mkdir(parents=True)
    (broken / "PG_VERSION").write_text("not a cluster\n")
    result = cli("up", env=env)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == f"rankstream: postgres exited with code 2; see {broken / 'postgres.log'}"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "runtime.json").exists()


async def test_readiness_probe_of_up(tmp_path: Path) -> None:
    """up's probe counts 200 as ready, and 503 or a listener that is not HTTP as not ready, without raising."""
    from aiohttp import web

    from services.supervisor import _probe_url, _ready

    async def not_http(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-not-http\r\n")
        await writer.drain()
        writer.close()

    statuses = {"/readyz": 200}

    async def readyz(_request: web.Request) -> web.Response:
        return web.Response(status=statuses["/readyz"])

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app)
    await runner.setup()
    http_port, other_port = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    garbage = await asyncio.start_server(not_http, "127.0.0.1", other_port)
    try:
        ready = await asyncio.to_thread(_ready, _probe_url("0.0.0.0", http_port))
        statuses["/readyz"] = 503
        not_ready = await asyncio.to_thread(_ready, _probe_url("0.0.0.0", http_port))
        not_http_ready = await asyncio.to_thread(_ready, _probe_url("127.0.0.1", other_port))
    finally:
        garbage.close()
        await garbage.wait_closed()
        await runner.cleanup()

    assert (ready, not_ready, not_http_ready) == (True, False, False)
