"""The dashboard's residency chart in Chromium (Playwright): on demo-like nodes that hold one
model at a time, three models sent one after the other show as bands in each node's lane, the
one evicted since too, and hovering the newest interval says which are loaded now."""

from __future__ import annotations

from collections import defaultdict

import httpx
import pytest

from sollol_serve.demo import MODELS
from sollol_serve.names import normalize_model
from tests.helpers import bound_s, nodes_of, side_app, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.browser]

NODE_ARGS = ["--models", MODELS, "--slots", "2", "--decode-tps", "200", "--load-s", "0.05", "--max-loaded", "1"]
SENT = ("llama3.2", "qwen2.5:7b", "qwen2.5-coder:1.5b")  # three models on two nodes of one each: one evicted

# The residency chart as the page holds it: its lanes (top first) and its bands' labels with
# how many intervals each is loaded in.
RESIDENCY_JS = """() => { const c = window.sollolDashboard.charts.residency; return c.u ? {
  lanes: c.lanes.map(lane => lane.name), axisLabels: c.u.axes.slice(1).map(a => a.label),
  bands: Object.fromEntries(c.u.series.slice(1).map((s, i) => [s.label, c.u.data[i + 1].filter(v => v != null).length])),
} : null; }"""

# The legend's value per band with the cursor over the newest interval.
HOVERED_JS = """() => Object.fromEntries([...document.querySelectorAll('#chart-residency .u-legend .u-series')].slice(1)
  .map(tr => [tr.querySelector('.u-label').textContent, tr.querySelector('.u-value').textContent]))"""


@pytest.fixture(scope="module")
def residency(gateway):
    with side_app(gateway, "dashresidency", NODE_ARGS, ("gpu-1", "gpu-2"), slots=2) as app:
        yield app


def _seen_loaded(url: str) -> dict[str, set[str]]:
    """Every model the timeline saw loaded, by node."""
    seen = defaultdict(set)
    for point in httpx.get(url + "/api/timeline", timeout=10).json()["points"]:
        for node, models in point["loaded"].items():
            seen[node].update(models)
    return seen


def test_residency_chart_shows_each_nodes_models_over_time(residency, open_dashboard):
    for model in SENT:  # each seen loaded by a sample before the next one may evict it
        r = httpx.post(residency.url + "/api/chat", timeout=60, json={
            "model": model, "stream": False, "messages": [{"role": "user", "content": f"resident {model}"}],
            "options": {"num_predict": 4}})
        assert r.status_code == 200, r.text[:300]
        wait_until(lambda: any(normalize_model(model) in models for models in _seen_loaded(residency.url).values()),
                   15, f"{model} seen loaded in the timeline")
    now = {name: node["loaded"] for name, node in nodes_of(residency.url).items()}
    seen = _seen_loaded(residency.url)
    expected = {f"{node} · {model}" for node, models in seen.items() for model in models}

    dashboard = open_dashboard(residency.url)
    page = dashboard.page
    page.wait_for_function(f"""() => {{ const c = window.sollolDashboard.charts.residency;
                                        return c.u && c.u.series.length > {len(expected)}; }}""",
                           timeout=bound_s(20) * 1000)
    chart = page.evaluate(RESIDENCY_JS)
    assert chart["lanes"] == ["gpu-1", "gpu-2"] and chart["axisLabels"] == ["node"], chart
    assert set(chart["bands"]) == expected and all(chart["bands"].values()), (chart, seen)
    # All three, though two nodes of one model each hold two of them now: a band is history too.
    assert {normalize_model(m) for m in SENT} == {label.split(" · ")[1] for label in chart["bands"]}, chart

    over = page.locator("#chart-residency .u-over")  # scrolled into view, then hovered at its right edge
    box = over.bounding_box()
    over.hover(position={"x": box["width"] - 2, "y": box["height"] / 2})
    page.wait_for_function(f"() => Object.values(({HOVERED_JS})()).includes('loaded')", timeout=bound_s(5) * 1000)
    hovered = page.evaluate(HOVERED_JS)
    loaded_now = {f"{node} · {model}" for node, models in now.items() for model in models}
    assert loaded_now and {band for band, value in hovered.items() if value == "loaded"} >= loaded_now, (hovered, now)
    assert dashboard.errors == [], dashboard.errors
