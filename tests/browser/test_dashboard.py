"""The live dashboard in a real browser (Debian's headless Chromium): after traffic it shows
every node and the routing decisions, every chart draws the last hour with axes and legends,
nothing is wider than an 800 px (or a phone's) window, there is no "Log out" without keys, and
its static files (uPlot, the page's script and style) come from the gateway itself."""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser

import httpx
import pytest

from tests.browser.conftest import CHROMIUM
from tests.helpers import bound_s, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.browser]


class Tables(HTMLParser):
    """Cell texts of each table row, by table id."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id")
        elif tag == "tr" and self._table:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.rows.setdefault(self._table, []).append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=10000", *args], capture_output=True, text=True, timeout=120)


def _chat(url: str, model: str, i: int, tokens: int = 12) -> None:
    r = httpx.post(url + "/api/chat", timeout=60, json={
        "model": model, "stream": False, "messages": [{"role": "user", "content": f"dash {model} {i}"}],
        "options": {"num_predict": tokens}})
    assert r.status_code == 200, r.text[:300]


def _timeline_has_everything(url: str) -> bool:
    points = httpx.get(url + "/api/timeline", timeout=10).json()["points"]
    return (any(p["requests"] and p["p50_ms"] is not None for p in points)
            and any(p["tokens_per_s"] for p in points) and any(p["load"] for p in points)
            and any(p["predicted_s"] is not None and p["actual_s"] is not None for p in points)
            and any(p["queue_waiting"] is not None for p in points)
            and any(any(p["loaded"].values()) for p in points))


@pytest.fixture(scope="module")
def traffic(gateway):
    """Requests on three of the nodes, some at once, and the timeline holding them."""
    jobs = [("llama3.2", i) for i in range(10)] + [("tiny-llama", i) for i in range(4)] + [("slowpoke", 0)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda job: _chat(gateway.url, *job), jobs))
    wait_until(lambda: _timeline_has_everything(gateway.url), 20, "the timeline has the traffic, load and accuracy")
    wait_until(lambda: httpx.get(gateway.url + "/api/routing/decisions", timeout=10).json()["decisions"], 10,
               "decisions recorded")
    return gateway


# What the page's uPlot charts hold (window.sollolDashboard.charts: uPlot instances).
CHARTS_JS = """() => Object.fromEntries(Object.entries(window.sollolDashboard.charts).map(([name, c]) => [name, c.u ? {
  width: c.u.width, height: c.u.height, container: c.plot.clientWidth,
  canvas: (cv => cv ? [cv.width, cv.height] : null)(c.u.root.querySelector("canvas")),
  axisLabels: c.u.axes.slice(1).map(a => a.label), axisElements: c.u.root.querySelectorAll(".u-axis").length,
  series: Object.fromEntries(c.u.series.slice(1).map((s, i) => [s.label, c.u.data[i + 1].filter(v => v != null).length])),
  points: c.u.data[0].length, legend: c.u.root.querySelectorAll(".u-legend .u-series").length,
} : {empty: c.emptyText.textContent}]))"""


def test_dashboard_renders_nodes_and_decisions_without_console_errors(traffic):
    """Plain `chromium --dump-dom` (no driver): the tables are filled by the page's own script."""
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    run = _chromium("--dump-dom", traffic.url + "/dashboard")
    assert run.returncode == 0, run.stderr[-2000:]
    tables = Tables()
    tables.feed(run.stdout)
    nodes = {row[0] for row in tables.rows.get("nodes", [])}
    assert nodes >= set(traffic.nodes), (nodes, run.stdout[-1500:])
    decisions = tables.rows.get("decisions", [])
    assert decisions and any(row[1] == "llama3.2" and row[2] in traffic.nodes for row in decisions), decisions
    shards = tables.rows.get("shards", [])
    assert shards == [["no shard groups configured or running"]], shards  # said, not bare headers
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "rror" in line], console


def test_every_chart_draws_the_last_hour_with_axes_and_legends(traffic, open_dashboard):
    dashboard = open_dashboard(traffic.url)
    page = dashboard.page
    page.wait_for_function("Object.values(window.sollolDashboard.charts).every(c => c.u)", timeout=bound_s(20) * 1000)
    charts = page.evaluate(CHARTS_JS)
    assert set(charts) == {"load", "tokens", "latency", "queue", "residency", "accuracy"}
    for name, chart in charts.items():
        assert "empty" not in chart, (name, chart)
        assert chart["width"] >= 200 and chart["height"] >= 150 and chart["width"] <= chart["container"], (name, chart)
        assert chart["canvas"] and min(chart["canvas"]) > 0, (name, chart)
        assert chart["points"] > 0 and chart["series"], (name, chart)
        assert chart["axisElements"] >= 2 and all(chart["axisLabels"]), (name, chart)  # x and y, y labelled
        assert chart["legend"] == len(chart["series"]) + 1, (name, chart)  # one row per series, and the time

    nodes = set(traffic.nodes)
    load = charts["load"]["series"]
    assert {f"{n} in flight" for n in nodes} | {f"{n} slots" for n in nodes} <= set(load), load
    assert all(load[f"{n} in flight"] and load[f"{n} slots"] for n in nodes), load
    tokens = charts["tokens"]["series"]
    assert set(tokens) <= nodes and {"llamacpp", "solo"} <= set(tokens) and all(tokens.values()), tokens
    latency = charts["latency"]
    assert latency["axisLabels"] == ["latency (ms)", "requests/s"], latency
    assert all(latency["series"][s] for s in ("p50", "p95", "p99", "requests/s")), latency
    queue = charts["queue"]
    assert queue["axisLabels"] == ["requests waiting", "wait (ms)"] and queue["series"]["waiting"], queue
    residency = charts["residency"]["series"]  # "node · model" bands, of the Ollama nodes only
    assert residency and {label.split(" · ")[0] for label in residency} <= nodes - {"llamacpp"}, residency
    accuracy = charts["accuracy"]["series"]
    assert accuracy["actual"] and accuracy["predicted (chosen node)"], accuracy
    assert accuracy["predicted (least-connections' node)"], accuracy  # the counterfactual
    assert "off by" in page.inner_text("#accuracy-note")
    assert [page.inner_text(f"#chart-{name} figcaption .unit") for name in charts]  # units in every caption
    assert dashboard.errors == [], dashboard.errors


@pytest.mark.parametrize("width", [800, 375])
def test_nothing_is_wider_than_the_window(traffic, open_dashboard, width):
    dashboard = open_dashboard(traffic.url, width=width, height=900)
    page = dashboard.page
    page.wait_for_function("Object.values(window.sollolDashboard.charts).every(c => c.u)", timeout=bound_s(20) * 1000)
    page.wait_for_timeout(500)  # the charts' ResizeObserver has run
    scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll <= inner, (width, scroll, inner)
    # Each chart fits its card; tables too wide for the window scroll inside their wrapper.
    for name, chart in page.evaluate(CHARTS_JS).items():
        assert chart["width"] <= chart["container"], (name, chart)
    wrappers = page.evaluate("""[...document.querySelectorAll('.table-wrap')].map(w =>
        [w.querySelector('table').id, w.getBoundingClientRect().right, getComputedStyle(w).overflowX])""")
    assert all(right <= inner and overflow == "auto" for _, right, overflow in wrappers), wrappers
    assert dashboard.errors == [], dashboard.errors


def test_no_log_out_button_without_keys(traffic, open_dashboard):
    dashboard = open_dashboard(traffic.url)
    assert dashboard.page.get_attribute("body", "data-auth") == "false"
    assert dashboard.page.locator("#logout").count() == 0
    assert dashboard.page.locator("#nodes tbody tr").count() >= len(traffic.nodes)
    assert dashboard.errors == [], dashboard.errors


def test_static_files_come_from_the_gateway_with_their_types_and_long_caching(gateway):
    page = httpx.get(gateway.url + "/dashboard", timeout=10)
    linked = dict(re.findall(r'/dashboard/static/([\w.]+)\?v=([0-9a-f]{16})', page.text))
    assert set(linked) == {"uPlot.min.css", "dashboard.css", "uPlot.iife.min.js", "dashboard.js"}, linked
    assert page.headers["cache-control"] == "no-store"  # the page itself is always fetched again
    types = {"uPlot.iife.min.js": "text/javascript", "dashboard.js": "text/javascript", "uPlot.min.css": "text/css",
             "dashboard.css": "text/css", "uPlot.LICENSE": "text/plain"}
    for name, kind in types.items():
        r = httpx.get(f"{gateway.url}/dashboard/static/{name}", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), (name, r.headers)
        assert "immutable" in r.headers["cache-control"] and "max-age=31536000" in r.headers["cache-control"]
        assert r.headers["x-content-type-options"] == "nosniff"
        if name in linked:
            assert r.headers["etag"] == f'"{linked[name]}"'  # the page links this very content
        again = httpx.get(f"{gateway.url}/dashboard/static/{name}", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and not again.content
    assert "uPlot" in httpx.get(gateway.url + "/dashboard/static/uPlot.iife.min.js").text
    assert "MIT License" in httpx.get(gateway.url + "/dashboard/static/uPlot.LICENSE").text
    for name in ("login.html", "..%2Fdashboard.html", "dashboard.html", "nope.js"):
        assert httpx.get(f"{gateway.url}/dashboard/static/{name}", timeout=10).status_code == 404, name
