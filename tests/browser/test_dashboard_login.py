"""With keys on, a browser logs in to the dashboard with an admin key (Debian's chromium, driven
by Playwright): the login form, a refusal for a key without the permission, the live page
after login on a session cookie, and a cookie that authorizes reads only."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import ADMIN, USER
from tests.helpers import bound_s

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_login_then_the_live_dashboard_on_a_session_cookie(secure):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            first = page.goto(secure + "/dashboard")
            assert first.status == 401 and page.locator("form#login").is_visible()

            page.fill("#key", USER)
            page.click("button[type=submit]")
            assert "lacks the admin permission" in page.inner_text("#message")

            errors: list[str] = []  # from here on, none may appear
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.fill("#key", ADMIN)
            page.click("button[type=submit]")
            page.wait_for_url(secure + "/dashboard")
            page.wait_for_function("document.querySelectorAll('#nodes tbody tr').length > 0",
                                   timeout=bound_s(20) * 1000)
            assert page.inner_text("#nodes tbody tr td") == "fast"
            assert errors == [], errors

            cookie = next(c for c in page.context.cookies() if c["name"] == "sollol_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and ADMIN not in cookie["value"]
            assert page.request.get(secure + "/api/stats").status == 200  # reads go with the session
            denied = page.request.post(secure + "/api/admin/warm", data={"model": "llama3.2"})
            assert denied.status == 401  # a session never authorizes a write

            assert page.get_attribute("body", "data-auth") == "true"
            assert page.locator("#logout button").is_visible()  # keys on: a session to end
            page.click("#logout button")
            page.wait_for_selector("form#login")
            assert page.request.get(secure + "/api/stats").status == 401
        finally:
            browser.close()
