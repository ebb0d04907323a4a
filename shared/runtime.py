"""Finding the servers: environment URLs first, else those of a running ``rankstream up``.

``rankstream up`` writes ``runtime.json`` into the data directory with the URLs
of the embedded servers it started and its own process id, so a command run in
another terminal with the same ``RANKSTREAM_DATA_DIR`` finds them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec

from shared.settings import Settings, SettingsError

RUNTIME_FILE = "runtime.json"


class RuntimeInfo(msgspec.Struct, kw_only=True):
    redis_url: str
    database_url: str
    pid: int
    http_url: str | None = None
    ws_url: str | None = None


def runtime_path(data_dir: Path) -> Path:
    return data_dir / RUNTIME_FILE


def write_runtime(data_dir: Path, info: RuntimeInfo) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    temporary = runtime_path(data_dir).with_suffix(".tmp")
    temporary.write_bytes(msgspec.json.encode(info))
    temporary.replace(runtime_path(data_dir))


def remove_runtime(data_dir: Path) -> None:
    runtime_path(data_dir).unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_runtime(data_dir: Path) -> RuntimeInfo | None:
    """Return the runtime info of a live ``rankstream up`` in ``data_dir``, or None."""
    try:
        info = msgspec.json.decode(runtime_path(data_dir).read_bytes(), type=RuntimeInfo)
    except (FileNotFoundError, msgspec.DecodeError, json.JSONDecodeError):
        return None
    return info if _pid_alive(info.pid) else None


def resolve_servers(settings: Settings) -> Settings:
    """Return settings with both server URLs set, or raise SettingsError saying how to provide them."""
    if settings.redis_url and settings.database_url:
        return settings
    info = read_runtime(settings.data_dir)
    if info is None:
        missing = [name for name, value in (("RANKSTREAM_REDIS_URL", settings.redis_url), ("RANKSTREAM_DATABASE_URL", settings.database_url)) if not value]
        raise SettingsError(
            f"{' and '.join(missing)} not set and no running 'rankstream up' found in {settings.data_dir}; "
            "set the URL or start 'rankstream up' with the same RANKSTREAM_DATA_DIR"
        )
    return settings.with_servers(settings.redis_url or info.redis_url, settings.database_url or info.database_url)


def http_base_url(settings: Settings, env: dict[str, str] | None = None) -> str:
    """Return the ingest URL: from RANKSTREAM_HTTP_PORT when set, else that of a running ``rankstream up``."""
    env = dict(os.environ) if env is None else env
    if not env.get("RANKSTREAM_HTTP_PORT"):
        info = read_runtime(settings.data_dir)
        if info is not None and info.http_url:
            return info.http_url
    return f"http://{settings.http_host}:{settings.http_port}"
