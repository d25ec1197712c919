"""Applications and the timeline through the real gateway: requests from the official clients
and a named application are attributed to each, in /api/applications and /metrics, and the
last hour's timeline holds the traffic and the Router's load samples."""

from __future__ import annotations

import time
import uuid

import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def _apps(url: str) -> dict[str, dict]:
    r = httpx.get(url + "/api/applications", timeout=10)
    assert r.status_code == 200
    return {a["name"]: a for a in r.json()["applications"]}


def _app_requests(url: str) -> dict[tuple, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "sollol_application_requests_total"}


def test_requests_are_attributed_to_their_applications(gateway):
    url = gateway.url
    name = f"flock-{uuid.uuid4().hex[:6]}"  # new to this gateway: its counts are this test's alone
    before = _apps(url)
    for i in range(3):
        r = httpx.post(url + "/api/chat", timeout=30, headers={"X-SOLLOL-App": name}, json={
            "model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": f"app {i}"}],
            "options": {"num_predict": 4}})
        assert r.status_code == 200
    assert httpx.post(url + "/api/chat", timeout=30, headers={"X-SOLLOL-App": name},
                      json={"model": "no-such-model", "messages": []}).status_code == 404
    ollama.Client(host=url).chat(model="llama3.2", messages=[{"role": "user", "content": "from ollama-python"}],
                                 options={"num_predict": 3})
    openai.OpenAI(base_url=url + "/v1", api_key="unused").chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "from openai-python"}], max_tokens=3)

    def attributed() -> dict | None:
        apps = _apps(url)
        grew = all(apps.get(family, {}).get("requests", 0) > before.get(family, {}).get("requests", 0)
                   for family in ("ollama-python", "openai-python"))
        return apps if grew and apps.get(name, {}).get("requests") == 4 else None

    wait_until(attributed, 15, "requests attributed")
    mine = _apps(url)[name]
    assert mine["source"] == "header" and mine["errors"] == 1 and mine["active"] is True
    assert mine["models"] == {"llama3.2:latest": 3, "unknown": 1}
    assert mine["tokens_out"] == 12 and mine["tokens_in"] > 0  # 3 answers of 4 tokens
    assert mine["last_minute"]["requests"] == 4 and mine["p95_ms"] >= mine["p50_ms"] > 0
    assert _apps(url)["openai-python"]["source"] == "user-agent"
    counted = _app_requests(url)
    served = {labels: n for labels, n in counted.items() if dict(labels)["application"] == name}
    assert sum(served.values()) == 4
    assert sum(n for labels, n in served.items() if dict(labels)["status"] == "200") == 3
    assert {dict(labels)["node"] for labels, n in served.items() if dict(labels)["status"] == "200"} <= set(gateway.nodes)


def test_the_timeline_has_the_traffic_and_the_nodes_load(gateway):
    url = gateway.url
    since = time.time() - 1
    for i in range(4):
        assert httpx.post(url + "/api/generate", timeout=30, json={
            "model": "llama3.2", "prompt": f"timeline {i}", "stream": False,
            "options": {"num_predict": 5}}).status_code == 200

    def charted() -> list | None:
        r = httpx.get(url + "/api/timeline", params={"since": since}, timeout=10)
        assert r.status_code == 200 and r.json()["interval_s"] == 10
        points = r.json()["points"]
        ok = (sum(p["requests"] for p in points) >= 4 and any(p["load"] for p in points)
              and any(p["actual_s"] is not None for p in points))
        return points if ok else None

    wait_until(charted, 20, "a timeline with requests, samples and accuracy")
    points = charted()
    loads = [p["load"] for p in points if p["load"]]
    assert set(gateway.nodes) <= set(loads[-1]) and all(v["slots"] >= 1 for v in loads[-1].values())
    assert any(sum(p["tokens_per_s"].values()) > 0 for p in points)
    assert any(p["predicted_s"] and p["least_conn_predicted_s"] for p in points)
    assert httpx.get(url + "/api/timeline", params={"since": "nan"}, timeout=10).status_code == 400
