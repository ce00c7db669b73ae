"""A billing admin in a real (headless) Chromium: sign in, find the failed job,
fix the cause on the panel, press Retry, watch the page until it succeeded.

Needs Debian's chromium package and Playwright for Python (no browser download):
skipped when either is missing, except with CI=true, where that fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from admin_helpers import admin_bridge, failed_at_database
from conftest import ADMIN_TOKEN, service_missing

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("BRIDGE_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser_or_skip() -> None:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        service_missing("Chromium", f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError as exc:
        service_missing("Playwright", str(exc))


async def test_admin_fixes_a_failed_order_in_the_browser(sqlite_url: str) -> None:
    _browser_or_skip()
    from playwright.async_api import async_playwright, expect

    ARTIFACTS.mkdir(exist_ok=True)
    async with admin_bridge(sqlite_url) as bridge:
        # The account's package allows no more databases: the order fails at create_database.
        job_id = await failed_at_database(bridge, service_id="8120", domain="shop.example.com")
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = await browser.new_context(viewport={"width": 390, "height": 844})  # a phone
                page = await context.new_page()
                page.set_default_timeout(10_000)

                await page.goto(str(bridge.client.make_url("/admin/")))
                await expect(page).to_have_url(str(bridge.client.make_url("/admin/login")))
                await page.screenshot(path=ARTIFACTS / "admin-1-sign-in.png", full_page=True)
                await page.fill("input[name=token]", ADMIN_TOKEN)
                await page.click("button[type=submit]")
                await expect(page.locator("table#jobs")).to_be_visible()

                await page.select_option("select[name=status]", "failed")
                await page.click("form.filters button[type=submit]")
                row = page.locator(f'tr[data-job-id="{job_id}"]')
                await expect(row).to_contain_text("failed")
                await expect(row).to_contain_text("8120")
                await page.screenshot(path=ARTIFACTS / "admin-2-jobs-failed.png", full_page=True)

                await row.locator("a").first.click()
                await expect(page.locator("#job-status")).to_have_text("failed")
                await expect(page.locator("table#compensations")).to_contain_text("remove domain shop.example.com")
                await expect(page.locator("table#panel-calls")).to_contain_text("Database limit exceeded.")
                await page.screenshot(path=ARTIFACTS / "admin-3-job-failed.png", full_page=True)

                # The admin raises the package's limit on the panel (the injected refusal is used up), then retries.
                bridge.sim.account("john").db_limit = 5
                bridge.sim.set_latency(0.8, "db_make")  # slow enough to see the page refresh while it runs
                await page.click("button#retry")
                await expect(page.locator("p.notice")).to_contain_text("Retry queued")
                await expect(page.locator("#job-status")).to_have_text("succeeded", timeout=15_000)
                await expect(page.locator('meta[http-equiv="refresh"]')).to_have_count(0)
                await page.screenshot(path=ARTIFACTS / "admin-4-job-succeeded.png", full_page=True)

                html = await page.content()
                assert "John-Panel-Pass-1" not in html and "db-Secret-Passw0rd!" not in html
                await context.close()
            finally:
                await browser.close()
        job = await bridge.job(job_id)
        assert job["status"] == "succeeded"
        assert bridge.sim.snapshot()["counters"]["add_domain"] == 1
