"""Sampling a running service with py-spy to say what bounds a phase that missed its target."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import tempfile
from pathlib import Path

# Frames that every sample of a service passes through, so they show nothing about where time goes.
_ENTRY_FRAMES = {
    "<frozen runpy>", "services/__main__.py", "services/cli.py", "shared/lifecycle.py", "__init__.py", "runners.py",
    # The harness's own frames, on the stack when it profiles the rebuild it runs.
    "run.py", "__main__.py", "data_phases.py",
}
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def py_spy() -> str | None:
    """Return the py-spy executable next to this interpreter, or on PATH, or None."""
    local = Path(sys.executable).with_name("py-spy")
    if local.exists():
        return str(local)
    return shutil.which("py-spy")


def summarize(raw: str, top: int = 10) -> dict:
    """Aggregate py-spy raw output (``frame;frame;... count`` lines) by leaf function and by top-level package.

    Returns the share of samples per leaf function (self time) and per package
    anywhere on the stack (inclusive time), largest first.
    """
    leaves: dict[str, int] = {}
    packages: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaf = _FRAME.match(frames[-1])
        leaf_name = f"{leaf.group('function')} ({Path(leaf.group('file')).name})" if leaf else frames[-1]
        leaves[leaf_name] = leaves.get(leaf_name, 0) + count
        seen: set[str] = set()
        for frame in frames:
            match = _FRAME.match(frame)
            if match is None:
                continue
            package = _package_of(match.group("file"))
            if package not in seen and package not in _ENTRY_FRAMES:
                seen.add(package)
                packages[package] = packages.get(package, 0) + count
    if total == 0:
        return {"samples": 0, "self": [], "inclusive": []}

    def share(table: dict[str, int]) -> list[list]:
        ordered = sorted(table.items(), key=lambda item: item[1], reverse=True)[:top]
        return [[name, round(100 * count / total, 1)] for name, count in ordered]

    return {"samples": total, "self": share(leaves), "inclusive": share(packages)}


def _package_of(file: str) -> str:
    parts = Path(file).parts
    if "site-packages" in parts:
        index = parts.index("site-packages")
        return parts[index + 1] if index + 1 < len(parts) else file
    for marker in ("services", "shared"):
        if marker in parts:
            index = parts.index(marker)
            return "/".join(parts[index : index + 2])
    return Path(file).name


async def record(pid: int, duration_s: int) -> dict:
    """Sample ``pid`` for ``duration_s`` seconds at 100 Hz; return :func:`summarize` of it, or the reason it failed."""
    executable = py_spy()
    if executable is None:
        return {"error": "py-spy is not installed; run 'make bench', which installs it"}
    with tempfile.TemporaryDirectory(prefix="rankstream-profile-") as directory:
        output = Path(directory) / "profile.txt"
        process = await asyncio.create_subprocess_exec(
            executable, "record", "--pid", str(pid), "--duration", str(duration_s), "--rate", "100", "--nonblocking",
            "--format", "raw", "--output", str(output),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            text, _ = await asyncio.wait_for(process.communicate(), timeout=duration_s + 30)
        except TimeoutError:
            process.kill()
            await process.wait()
            return {"error": "py-spy did not finish in time"}
        if process.returncode != 0 or not output.exists():
            return {"error": f"py-spy failed with code {process.returncode}: {text.decode(errors='replace')[-300:]}"}
        return summarize(output.read_text())
