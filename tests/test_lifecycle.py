"""Background loops keep running after unexpected errors."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from shared.lifecycle import keep_running


async def test_keep_running_restarts_after_error() -> None:
    """A loop that raises is logged and started again; one that returns is not restarted."""
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")

    with capture_logs() as logs:
        await asyncio.wait_for(keep_running("flaky", flaky, restart_delay_s=0.01), timeout=5)
    assert calls == 2
    events = [(entry["event"], entry["task"]) for entry in logs]
    assert events == [("background task failed, restarting", "flaky"), ("background task ended", "flaky")]


async def test_keep_running_stops_on_cancel() -> None:
    """Cancelling the wrapper cancels the loop and is not treated as a failure."""
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    with capture_logs() as logs:
        task = asyncio.create_task(keep_running("forever", forever))
        await asyncio.wait_for(started.wait(), timeout=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert logs == []
