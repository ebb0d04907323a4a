"""The live page in real headless Chromium: it loads, shows a posted event with its rank, and resumes after a reconnect."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.gateway_harness import event
from tests.helpers import new_key, wait_for, wait_healthy
from tests.processes import service_processes

CHROMIUM = os.environ.get("RANKSTREAM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STEP_TIMEOUT_MS = 15_000

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason="Chromium not found; install it with 'apt-get install -y chromium' (Debian) or set RANKSTREAM_CHROMIUM to its path",
)


async def test_live_page_shows_event_and_resumes(settings: Settings, redis_client, tmp_path: Path) -> None:
    """A posted event appears with its rank; after the gateway restarts the page resumes and keeps updating."""
    from playwright.async_api import async_playwright, expect

    key = await new_key(settings)
    base = f"http://127.0.0.1:{settings.http_port}"
    headers = {"Authorization": f"Bearer {key}"}
    with service_processes(settings, tmp_path / "logs") as services:
        for service in ("ingest", "ranker", "gateway"):
            services.start(service, service)
        await wait_healthy(f"{base}/healthz")
        await wait_healthy(f"http://127.0.0.1:{settings.ws_port}/v1/gateway/stats")

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch_persistent_context(
                tempfile.mkdtemp(dir=tmp_path, prefix="chromium-"),
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 390, "height": 844},
            )
            try:
                page = browser.pages[0] if browser.pages else await browser.new_page()
                page.set_default_timeout(STEP_TIMEOUT_MS)
                response = await page.goto(f"{base}/?board=pushups-weekly&athlete=u2")
                assert response is not None and response.status == 200
                status = page.locator("#status")
                await expect(status).to_have_attribute("data-state", "live")
                await expect(page.locator("#top-empty")).to_be_visible()

                # A posted event appears with the right rank.
                api = playwright.request
                context = await api.new_context(base_url=base, extra_http_headers=headers)
                posted = await context.post("/v1/events", data=[event("e1", "u1", 40, display_name="Ada"), event("e2", "u2", 25)])
                assert posted.status == 202
                ada = page.locator('#top li[data-user-id="u1"]')
                await expect(ada).to_have_attribute("data-rank", "1")
                await expect(ada.locator(".name")).to_have_text("Ada")
                await expect(page.locator('#top li[data-user-id="u2"]')).to_have_attribute("data-rank", "2")
                await expect(page.locator("#me")).to_have_attribute("data-rank", "2")

                # The gateway goes away; the page reconnects to its replacement and resumes.
                assert services.stop("gateway") == 0
                await expect(status).to_have_attribute("data-state", "reconnecting")
                services.start("gateway", "gateway")
                await expect(status).to_have_attribute("data-state", "live", timeout=30_000)
                await expect(status).to_have_attribute("data-resumed", "true")

                posted = await context.post("/v1/events", data=event("e3", "u2", 30))
                assert posted.status == 202
                await expect(page.locator('#top li[data-user-id="u2"]')).to_have_attribute("data-rank", "1")
                await expect(page.locator('#top li[data-user-id="u1"]')).to_have_attribute("data-rank", "2")
                await expect(page.locator("#me")).to_have_attribute("data-rank", "1")
                await expect(page.locator("#overtakes li").first).to_have_text("u2 passed u1: rank 2 → 1")
                await context.dispose()
            finally:
                await browser.close()

        async def gateway_log_has_resume() -> bool:
            return "connection opened" in services.log_text("gateway")

        await wait_for(gateway_log_has_resume, what="the restarted gateway to log the page's connection")
        for service in ("ingest", "ranker", "gateway"):
            assert services.stop(service) == 0, services.log_text(service)
