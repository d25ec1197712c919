"""The browser tests' Chromium: Debian's package (`.ci/run` installs it; no browser download),
driven by Playwright, one browser per test module (torn down before the next module, so no
Playwright event loop outlives the browser tests)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Dashboard:
    """A page on the dashboard, with what its console said that was an error."""

    page: object
    errors: list[str] = field(default_factory=list)

    def wait_refreshed(self, timeout_ms: float = 20_000) -> None:
        """Until the page's script has refreshed every panel at least once."""
        self.page.wait_for_function("window.sollolDashboard && window.sollolDashboard.refreshes > 0",
                                    timeout=timeout_ms)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_dashboard(browser):
    """open_dashboard(url, width=1280, height=900, headers=None) -> Dashboard, its console
    errors (and uncaught exceptions) collected from the first byte on."""
    contexts = []

    def open_(url: str, width: int = 1280, height: int = 900, headers: dict | None = None) -> Dashboard:
        context = browser.new_context(viewport={"width": width, "height": height}, extra_http_headers=headers)
        contexts.append(context)
        page = context.new_page()
        dashboard = Dashboard(page)
        page.on("console", lambda m: dashboard.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: dashboard.errors.append(str(e)))
        response = page.goto(url + "/dashboard")
        assert response.status == 200, response.status
        dashboard.wait_refreshed()
        return dashboard

    yield open_
    for context in contexts:
        context.close()
