"""/metrics through the real gateway, parsed back with prometheus-client's parser: the counts
match the traffic sent, from whichever replica answers the scrape."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_count_the_traffic_sent(gateway):
    url = gateway.url
    ok = (("endpoint", "/api/generate"), ("model", "qwen2.5:0.5b"), ("node", "mid"), ("status", "200"))
    missing = (("endpoint", "/api/generate"), ("model", "unknown"), ("node", "none"), ("status", "404"))
    before = _scrape(url)
    for i in range(5):
        r = httpx.post(url + "/api/generate", timeout=30, json={
            "model": "qwen2.5:0.5b", "prompt": f"m{i}", "stream": False, "options": {"num_predict": 3}})
        assert r.status_code == 200
    with httpx.stream("POST", url + "/api/generate", timeout=30, json={
            "model": "qwen2.5:0.5b", "prompt": "streamed", "options": {"num_predict": 3}}) as streamed:
        assert len([line for line in streamed.iter_lines() if line]) >= 2
    assert httpx.post(url + "/api/generate", json={"model": "no-such-model", "prompt": "x"}, timeout=30).status_code == 404

    def counted() -> bool:
        now = _scrape(url)
        return (now.get(("sollol_requests_total", ok), 0) - before.get(("sollol_requests_total", ok), 0) == 6
                and now.get(("sollol_requests_total", missing), 0) - before.get(("sollol_requests_total", missing), 0) == 1)

    wait_until(counted, 10, "the requests sent show in /metrics")
    after = _scrape(url)
    hist = (("endpoint", "/api/generate"), ("model", "qwen2.5:0.5b"))
    ttft_before = before.get(("sollol_time_to_first_token_seconds_count", hist), 0)
    assert after[("sollol_time_to_first_token_seconds_count", hist)] - ttft_before == 1
    assert after[("sollol_node_healthy", (("node", "mid"),))] == 1
    assert after[("sollol_node_slots", (("node", "solo"),))] == 1
    assert ("sollol_queue_waiting", ()) in after


def test_a_model_and_its_latest_tag_count_as_one(gateway):
    url = gateway.url
    before = _scrape(url)
    for name in ("llama3.2", "llama3.2:latest"):
        r = httpx.post(url + "/api/generate", timeout=30, json={
            "model": name, "prompt": "same model", "stream": False, "options": {"num_predict": 1}})
        assert r.status_code == 200

    def served(scrape: dict) -> float:
        return sum(v for (metric, labels), v in scrape.items() if metric == "sollol_requests_total"
                   and ("endpoint", "/api/generate") in labels and ("model", "llama3.2:latest") in labels)

    wait_until(lambda: served(_scrape(url)) - served(before) == 2, 10, "both requests under llama3.2:latest")
    assert not [key for key in _scrape(url) if ("model", "llama3.2") in key[1]]
