"""The dashboard's applications and alerts panels in Chromium (Playwright): two applications
sending traffic under different keys are listed with their own counts, and an alert appears
while a node's breaker is open and moves to "recently ended" once it has closed."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ADMIN, PAIR, USER
from tests.helpers import FAST_HEALTH, bound_s, nodes_of, side_app, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# The table's cells as the page shows them: a cell's first text is its main value (the total),
# a second line (the last minute) is a span after it.
ROWS_JS = """id => [...document.querySelectorAll(`#${id} tbody tr`)].map(tr =>
  [...tr.cells].map(td => (td.firstChild ? td.firstChild.textContent : "").trim()))"""


def test_applications_panel_lists_two_applications_by_their_keys(secure, open_dashboard):
    sent = {"app": (USER, 3), "pair": (PAIR, 2)}  # key names of the `secure` app -> (key, requests)
    for name, (key, count) in sent.items():
        for i in range(count):
            r = httpx.post(secure + "/api/chat", headers={"X-API-Key": key}, timeout=30, json={
                "model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": f"{name} {i}"}],
                "options": {"num_predict": 4}})
            assert r.status_code == 200, r.text[:300]

    def counted() -> dict:  # each replica flushes its counts every second
        apps = httpx.get(secure + "/api/applications", headers={"X-API-Key": ADMIN}, timeout=10).json()
        return {a["name"]: a for a in apps["applications"] if a["name"] in sent}

    wait_until(lambda: all(counted().get(name, {}).get("requests", 0) >= count for name, (_, count) in sent.items()),
               10, "both applications' requests counted")
    dashboard = open_dashboard(secure, headers={"X-API-Key": ADMIN})
    page = dashboard.page
    page.wait_for_function("""() => { const names = [...document.querySelectorAll('#applications tbody tr td:first-child')]
                                        .map(td => td.textContent); return names.includes('app') && names.includes('pair'); }""",
                           timeout=bound_s(20) * 1000)
    rows = {row[0]: row for row in page.evaluate(ROWS_JS, "applications")}
    api = counted()
    for name, (_, count) in sent.items():
        # name, source, requests, errors, tokens in / out, models, p50 / p95, fair share, last seen
        row = rows[name]
        assert row[1] == "key", row
        shown = int(row[2].replace(",", ""))
        assert count <= shown <= api[name]["requests"], (row, api[name])  # other tests may use the key too
        assert "llama3.2" in row[5] and row[6].endswith("ms") and row[8] not in ("", "-"), row
        assert row[7] == "share 1, 0 waiting", row  # nobody flooded
        live = page.inner_text(f"#applications tbody tr:nth-child({list(rows).index(name) + 1}) td:nth-child(3) .sub")
        assert live.endswith("last min") and int(live.split()[0]) >= count, live  # all sent within the minute
        queued = page.inner_text(f"#applications tbody tr:nth-child({list(rows).index(name) + 1}) td:nth-child(8) .sub")
        assert queued.startswith("0 refused (429), queued ") and queued.endswith(" on average"), queued
    assert page.locator("#logout button").is_visible()  # keys on: the session can be ended
    assert page.get_attribute("body", "data-auth") == "true"
    assert dashboard.errors == [], dashboard.errors


NODE_ARGS = ["--kind", "ollama", "--models", "alerting", "--slots", "2", "--decode-tps", "200", "--load-s", "0"]


@pytest.fixture(scope="module")
def alerting(gateway):
    """An app of its own over two nodes (a breaker opened here disturbs no other test), round
    robin so that every other request meets the broken node; alerts end 1 s after they clear."""
    with side_app(gateway, "dashalerts", NODE_ARGS, ("a1", "a2"), slots=2,
                  routing={"strategy": "round_robin", "snapshot_interval_s": 0.2},
                  health={**FAST_HEALTH, "breaker_open_s": 2.0}, alerts={"clear_after_s": 1.0}) as app:
        yield app


def _chat(url: str, i: int) -> httpx.Response:
    return httpx.post(url + "/api/chat", timeout=30, json={
        "model": "alerting", "stream": False, "messages": [{"role": "user", "content": f"alert {i}"}],
        "options": {"num_predict": 4}})


BREAKER_ALERT = "#alerts li[data-kind=breaker_open][data-subject=a1]"


def test_an_alert_appears_while_a_breaker_is_open_and_ends_when_it_closes(alerting, open_dashboard):
    dashboard = open_dashboard(alerting.url)
    page = dashboard.page
    assert page.inner_text("#alerts") == "no alerts"  # said, not an empty list
    broken = alerting.nodes["a1"]
    try:
        broken.faults(mode="error", error_status=500)
        for i in range(8):  # retried on a2: every request is answered
            assert _chat(alerting.url, i).status_code == 200
        # open for 2 s (breaker_open_s), then half-open until a trial: a slow poll may see either
        wait_until(lambda: nodes_of(alerting.url)["a1"]["breaker"] in ("open", "half_open"), 10,
                   "a1's breaker open after 500s")
        page.wait_for_selector(f"{BREAKER_ALERT}[data-state=active]", timeout=bound_s(20) * 1000)
        active = page.inner_text(f"{BREAKER_ALERT}[data-state=active]")
        assert "since" in active and "a1" in active, active
    finally:
        broken.faults(mode="none")
    wait_until(lambda: nodes_of(alerting.url)["a1"]["breaker"] == "half_open", 15, "a1's breaker half-open")
    wait_until(lambda: _chat(alerting.url, 100).status_code == 200
               and nodes_of(alerting.url)["a1"]["breaker"] == "closed", 15, "a1's breaker closed by a trial request")
    page.wait_for_selector(f"{BREAKER_ALERT}[data-state=ended]", timeout=bound_s(30) * 1000)
    assert page.locator(f"{BREAKER_ALERT}[data-state=active]").count() == 0
    ended = page.inner_text(f"{BREAKER_ALERT}[data-state=ended]")
    assert "ended" in ended and "started" in ended, ended
    assert dashboard.errors == [], dashboard.errors
