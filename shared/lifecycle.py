"""Process lifecycle: signal handling and the event loop every service runs in."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)


def freeze_startup_objects() -> None:
    """Leave what startup created out of every later garbage collection.

    Modules, clients, pools and boards live as long as the process, and a
    frozen object is never scanned again, so each collection scans only what
    requests and batches allocate. Collecting first keeps garbage that is
    already there from being frozen with them.
    """
    gc.collect()
    gc.freeze()


def install_stop_signals(stop: Callable[[], None]) -> None:
    """Call ``stop`` on the first SIGINT or SIGTERM; exit at once on the second."""
    loop = asyncio.get_running_loop()
    received = 0

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        if received == 1:
            log.info("stop requested", signal=signal.Signals(signum).name)
            stop()
        else:
            log.warning("second stop signal, exiting now", signal=signal.Signals(signum).name)
            os._exit(1)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)


def run_until_stopped(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on uvloop when available, else on the default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def stop_on(stop: asyncio.Event | None, callback: Callable[[], None]) -> asyncio.Task | None:
    """Call ``callback`` on SIGINT/SIGTERM, or when ``stop`` is set if one is given (tests run services in-process)."""
    if stop is None:
        install_stop_signals(callback)
        return None

    async def wait_then_stop() -> None:
        await stop.wait()
        callback()

    return asyncio.get_running_loop().create_task(wait_then_stop())


async def keep_running(name: str, run: Callable[[], Coroutine[Any, Any, None]], *, restart_delay_s: float = 1.0) -> None:
    """Run a background loop, restarting it after an unexpected exception.

    A loop that died silently would leave a service up but no longer pushing
    or closing periods, so every failure is logged and the loop starts again
    after ``restart_delay_s``. Cancellation stops it. A loop that returns on
    its own is not restarted.
    """
    while True:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task failed, restarting", task=name, delay_s=restart_delay_s)
            await asyncio.sleep(restart_delay_s)
        else:
            log.info("background task ended", task=name)
            return
