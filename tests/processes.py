"""Running Rankstream services as separate processes, as operators do."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.settings import Settings
from tests.conftest import service_env


class ServiceProcesses:
    """Started service processes; each writes its log to a file in the test's directory."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, service: str, **extra_env: str) -> subprocess.Popen:
        env = {**service_env(self.settings), **extra_env}
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        process = subprocess.Popen([sys.executable, "-m", "services", service], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.processes[name] = process
        return process

    def stop(self, name: str, timeout_s: float = 15.0) -> int:
        process = self.processes.pop(name)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
                raise AssertionError(f"{name} did not stop within {timeout_s} s of SIGTERM") from None
        return process.returncode

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.kill()
        process.wait(timeout=5)

    def log_text(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)


@contextmanager
def service_processes(settings: Settings, log_dir: Path) -> Iterator[ServiceProcesses]:
    log_dir.mkdir(parents=True, exist_ok=True)
    processes = ServiceProcesses(settings, log_dir)
    try:
        yield processes
    finally:
        for name in list(processes.processes):
            try:
                processes.stop(name)
            except AssertionError:
                pass
