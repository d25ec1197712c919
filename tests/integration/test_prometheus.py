"""A real Prometheus (Debian's `prometheus` package) scraping the gateway every second: the
deploy/ files pass promtool, known traffic from two applications shows in PromQL by
application and by node, the latency histograms give finite quantiles, the queue gauges are
there; every alert rule of deploy/alerts.rules.yml loads and evaluates with health "ok" and
every part of its expression before the threshold returns series; every query of
deploy/grafana-dashboard.json, its variables substituted as Grafana would, returns series.

Nothing is installed here: .ci/run installs the package, and without it the tests skip."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import httpx
import ollama
import openai
import pytest
import yaml

from sollol_serve.processes import free_port
from tests.helpers import wait_until

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (PROMETHEUS and PROMTOOL),
                       reason="Debian's prometheus package (prometheus, promtool) is not installed: "
                              "apt-get install prometheus (.ci/run does)"),
]
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES, CONFIG, DASHBOARD = DEPLOY / "alerts.rules.yml", DEPLOY / "prometheus.yml", DEPLOY / "grafana-dashboard.json"
APP_A, APP_B = (f"prom-{x}-{uuid.uuid4().hex[:6]}" for x in "ab")  # new to the gateway: counts are this test's alone
# Each model is served by one node of the shared gateway, so each request's node is known.
EXPECTED = {(APP_A, "mid"): 4, (APP_A, "llamacpp"): 2, (APP_B, "solo"): 4, (APP_B, "fast"): 2}
TTFT_COUNT = 'sum(sollol_time_to_first_token_seconds_count{endpoint="/api/generate", model="qwen2.5:0.5b"})'


def test_promtool_accepts_the_deploy_files():
    for args in (["check", "config", str(CONFIG)], ["check", "rules", str(RULES)]):
        done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def prometheus(gateway, tmp_path_factory):
    """Prometheus on a loopback port, scraping the shared gateway every second, with the rules."""
    root = tmp_path_factory.mktemp("prometheus")
    config = root / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "sollol", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [urlparse(gateway.url).netloc]}]}],
    }))
    port = free_port()
    with open(root / "prometheus.log", "w") as log:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert process.poll() is None, (root / "prometheus.log").read_text()
            try:
                return httpx.get(url + "/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 30, "prometheus ready")
        wait_until(lambda: _values(url, 'up{job="sollol"}') == {(): 1.0}, 30, "the gateway scraped")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _query(prometheus: str, expr: str) -> list[dict]:
    r = httpx.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def _values(prometheus: str, expr: str, *labels: str) -> dict[tuple, float]:
    """An instant vector as {(label values...): value}."""
    return {tuple(s["metric"].get(k, "") for k in labels): float(s["value"][1]) for s in _query(prometheus, expr)}


def _scraped_since(prometheus: str, since: float) -> bool:
    return any(v >= since for v in _values(prometheus, 'timestamp(up{job="sollol"})').values())


def _stream(url: str, headers: dict) -> None:
    with httpx.stream("POST", url + "/api/generate", headers=headers, timeout=30, json={
            "model": "qwen2.5:0.5b", "prompt": "streamed", "options": {"num_predict": 3}}) as streamed:
        assert len([line for line in streamed.iter_lines() if line]) >= 2  # a time to first token


def _send_traffic(url: str, prometheus: str) -> None:
    a = {"X-SOLLOL-App": APP_A}
    for i in range(2):  # mid is the only node with qwen2.5:0.5b
        r = httpx.post(url + "/api/generate", headers=a, timeout=30, json={
            "model": "qwen2.5:0.5b", "prompt": f"prometheus {i}", "stream": False, "options": {"num_predict": 3}})
        assert r.status_code == 200 and r.headers["x-sollol-node"] == "mid"
    # Two streams, scraped apart: rate() counts no increase into a series' first sample, so the
    # second one is what gives the time-to-first-token histogram a rate.
    before = _values(prometheus, TTFT_COUNT).get((), 0.0)
    _stream(url, a)
    wait_until(lambda: _values(prometheus, TTFT_COUNT).get((), 0.0) > before, 15, "the first stream scraped")
    _stream(url, a)
    chat = openai.OpenAI(base_url=url + "/v1", api_key="unused", default_headers=a)
    for i in range(2):  # llamacpp is the only node with tiny-llama
        chat.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": f"p{i}"}], max_tokens=3)
    b = ollama.Client(host=url, headers={"X-SOLLOL-App": APP_B})
    # solo (one slot) is the only node with slowpoke: four at once, so some wait in the queue
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: b.generate(model="slowpoke", prompt=f"queued {i}", options={"num_predict": 8}),
                      range(4)))
    for _ in range(2):  # fast is the only node with nomic-embed-text; the second answer is a cache hit
        b.embed(model="nomic-embed-text", input="the same text twice")


@pytest.fixture(scope="module")
def traffic(prometheus, gateway):
    """Send the known traffic; the baseline Prometheus saw before it, by node and priority."""
    # Earlier tests' counts may still be on their way to the metrics book: they can only add to
    # what is seen after the baseline, and the checks below are "at least".
    since = time.time()
    wait_until(lambda: _scraped_since(prometheus, since), 10, "a scrape after the earlier traffic")
    before = {"nodes": _values(prometheus, "sum by (node) (sollol_requests_total)", "node"),
              "waits": _values(prometheus, 'sum(sollol_queue_wait_seconds_count{priority="5"})')}
    _send_traffic(gateway.url, prometheus)
    by_app = f'sum by (application, node) (sollol_application_requests_total{{application=~"{APP_A}|{APP_B}"}})'
    wait_until(lambda: _values(prometheus, by_app, "application", "node") == EXPECTED, 30,
               "Prometheus has scraped the traffic by application and node")
    return before


def test_prometheus_counts_the_traffic_by_application_and_node(prometheus, traffic):
    apps = _values(prometheus, 'sum by (application) (sollol_application_requests_total{application=~"prom-.*"})',
                   "application")
    assert apps[(APP_A,)] == 6 and apps[(APP_B,)] == 6
    statuses = _values(prometheus, f'sum by (status) (sollol_application_requests_total{{application="{APP_A}"}})',
                       "status")
    assert statuses == {("200",): 6}
    # every request counted by node too (the raw counter is the whole gateway's: at least ours since the baseline)
    nodes = _values(prometheus, "sum by (node) (sollol_requests_total)", "node")
    for node in ("mid", "llamacpp", "solo", "fast"):
        sent = sum(n for (_, on), n in EXPECTED.items() if on == node)
        assert nodes[(node,)] - traffic["nodes"].get((node,), 0) >= sent, node
    tokens = _values(prometheus, f'sum by (direction) (sollol_application_tokens_total{{application="{APP_A}"}})',
                     "direction")
    assert tokens[("out",)] >= 6 * 3 - 1 and tokens[("in",)] > 0  # six answers of (about) 3 tokens


def test_latency_quantiles_are_finite_and_the_queue_gauges_are_there(prometheus, traffic):
    for histogram in ("sollol_request_latency_seconds", "sollol_time_to_first_token_seconds"):
        [p95] = _values(prometheus, f"histogram_quantile(0.95, sum by (le) (rate({histogram}_bucket[1m])))").values()
        assert math.isfinite(p95) and p95 > 0, histogram
    assert len(_values(prometheus, "sollol_queue_waiting")) == 1
    waits = _values(prometheus, 'sum(sollol_queue_wait_seconds_count{priority="5"})')
    assert waits[()] - traffic["waits"].get((), 0) >= 1  # the slowpoke burst queued
    assert _values(prometheus, 'sollol_queue_wait_seconds_sum{priority="5"}')
    assert _values(prometheus, "sollol_node_slots", "node")[("solo",)] == 1


# -- the rules and the dashboard -------------------------------------------------------
def _masked(expr: str) -> str:
    """The expression with what is inside (), {}, [] and quoted strings blanked out (the
    outermost brackets kept): what is left is its top level."""
    out, depth, quote = [], 0, None
    for i, ch in enumerate(expr):
        inside = depth > 0 or quote is not None
        if quote:
            if ch == quote and expr[i - 1] != "\\":
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
            inside = depth > 0
        out.append(" " if inside or quote is not None else ch)
    return "".join(out)


def rule_parts(expr: str) -> list[str]:
    """Each operand of the expression's top-level `and`/`unless`, without its final threshold
    comparison (`X > 0.9` -> `X`): the vectors a rule compares, which must return series."""
    masked = _masked(expr)
    cuts = [m.span() for m in re.finditer(r"\b(and|unless)\b(\s+(on|ignoring)\s*\(\s*\))?", masked)]
    bounds = [0, *[p for span in cuts for p in span], len(expr)]
    parts = []
    for start, end in zip(bounds[::2], bounds[1::2]):
        found = [m.start() for m in re.finditer(r"==|!=|>=|<=|>|<", masked[start:end])]
        parts.append(expr[start:start + found[-1]].strip() if found else expr[start:end].strip())
    return parts


def test_rule_parts_cut_top_level_comparisons_only():
    assert rule_parts('up{job="sollol"} == 0') == ['up{job="sollol"}']
    assert rule_parts('sum(rate(x{status=~"5.."}[5m])) / sum(y{a!="b"}) > 0.05') == [
        'sum(rate(x{status=~"5.."}[5m])) / sum(y{a!="b"})']
    assert rule_parts("(a > 1) < 0.9\nand on (node)\n(b + c) >= 10") == ["(a > 1)", "(b + c)"]


def test_every_alert_rule_loads_evaluates_and_its_parts_return_series(prometheus, traffic):
    """Both checks, explicitly: Prometheus evaluated every rule of the file with health "ok",
    and each vector a rule compares with its threshold, queried alone, returns series (so no
    rule is silently empty against a running gateway)."""
    declared = {r["alert"]: r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}

    def evaluated() -> dict | None:
        groups = httpx.get(prometheus + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        return rules if set(rules) == set(declared) and all(r["health"] != "unknown" for r in rules.values()) else None

    wait_until(evaluated, 15, "every rule evaluated")
    for name, rule in evaluated().items():
        assert rule["health"] == "ok" and not rule.get("lastError"), (name, rule)
    for name, expr in declared.items():
        for part in rule_parts(expr):
            assert _query(prometheus, part), f"{name}: no series for {part}"


def _grafana_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    values = {"__rate_interval": "1m", "__interval": "1m"}
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            values[var["name"]] = var["allValue"]  # "All", as a dashboard opens

    def substituted(expr: str) -> str:
        expr = re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)
        assert "$" not in expr, expr
        return expr

    panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
    return [(p["title"], substituted(t["expr"])) for p in panels for t in p.get("targets", []) if t.get("expr")]


def test_every_grafana_panel_query_returns_series(prometheus, traffic):
    exprs = _grafana_exprs()
    assert len({title for title, _ in exprs}) >= 20
    # Scraped every second with a 1 s timeout: on a busy machine one scrape may time out, and
    # its series read as stale until the next one, so the check is repeated for a while.
    deadline, empty = time.monotonic() + 20, exprs
    while empty and time.monotonic() < deadline:
        empty = [(title, expr) for title, expr in exprs if not _query(prometheus, expr)]
        if empty:
            time.sleep(1)
    assert not empty, empty
