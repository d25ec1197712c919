"""Nodes added, drained and removed at run time through /api/admin/nodes."""

from __future__ import annotations

import threading

import httpx
import ollama
import pytest

from sollol_serve.protocol import NOT_PROBED
from sollol_serve.sim.process import SimProcess
from tests.helpers import nodes_of, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def extra():
    node = SimProcess("extra", ["--kind", "ollama", "--models", "extra-model", "--slots", "2",
                                "--decode-tps", "50", "--load-s", "0"]).start()
    try:
        yield node
    finally:
        node.stop()


def test_bad_admin_requests_are_clear_4xx(gateway):
    url = gateway.url + "/api/admin/nodes"
    assert httpx.post(url, json={"name": "x"}, timeout=10).status_code == 400
    assert httpx.post(url, json={"name": "bad name!", "url": "http://127.0.0.1:1"}, timeout=10).status_code == 400
    r = httpx.post(url, json={"name": "fast2", "url": gateway.nodes["fast"].url}, timeout=10)
    assert r.status_code == 409 and "already" in r.json()["error"]
    assert httpx.post(url + "/nope/drain", timeout=10).status_code == 404
    assert httpx.delete(url + "/nope", timeout=10).status_code == 404


def test_node_added_at_run_time_serves_then_drains_then_goes(gateway, extra):
    client = ollama.Client(host=gateway.url, timeout=30)
    r = httpx.post(gateway.url + "/api/admin/nodes", json={"name": "extra", "url": extra.url}, timeout=30)
    # The answer waits (bounded) for the first probe: a busy machine may start the node's
    # worker too late for it, and the answer then says so.
    assert r.status_code == 201 and (r.json()["healthy"] or r.json()["error"] == NOT_PROBED), r.text

    def routable() -> bool:
        node = nodes_of(gateway.url, "/api/admin/nodes").get("extra", {})
        return node.get("healthy", False) and any(m.startswith("extra-model") for m in node["models"])

    wait_until(routable, 30, "routers see the added node and its model")
    assert "extra-model:latest" in [m.model for m in client.list().models]
    answer = client.chat(model="extra-model", messages=[{"role": "user", "content": "hi"}],
                         options={"num_predict": 3})
    assert answer.message.content

    # A long stream in flight while the node is drained finishes; new work is refused.
    finished, flowing = {}, threading.Event()

    def long_stream() -> None:
        chunks = []
        for chunk in client.chat(model="extra-model", messages=[{"role": "user", "content": "long"}],
                                 options={"num_predict": 100}, stream=True):
            chunks.append(chunk)
            flowing.set()
        finished["done"] = chunks[-1].done and len(chunks) > 50

    streaming = threading.Thread(target=long_stream)
    streaming.start()
    assert flowing.wait(30), "the long stream never started"
    r = httpx.post(gateway.url + "/api/admin/nodes/extra/drain", timeout=10)
    assert r.status_code == 200 and r.json()["node"]["draining"]
    wait_until(lambda: nodes_of(gateway.url, "/api/admin/nodes")["extra"]["draining"], 5, "drain seen by the router")
    refused = httpx.post(gateway.url + "/api/chat", timeout=30, json={
        "model": "extra-model", "stream": False, "messages": [{"role": "user", "content": "new"}]})
    assert refused.status_code == 503 and "draining" in refused.json()["error"], refused.text
    streaming.join(30)
    assert finished.get("done"), "the stream in flight on the draining node did not finish"

    assert httpx.post(gateway.url + "/api/admin/nodes/extra/undrain", timeout=10).status_code == 200
    wait_until(lambda: not nodes_of(gateway.url, "/api/admin/nodes")["extra"]["draining"], 5, "undrain seen")
    assert client.generate(model="extra-model", prompt="back", options={"num_predict": 2}).response

    r = httpx.delete(gateway.url + "/api/admin/nodes/extra", timeout=10)
    assert r.status_code == 202
    wait_until(lambda: "extra" not in nodes_of(gateway.url, "/api/admin/nodes"), 15, "removed node gone")
    gone = httpx.post(gateway.url + "/api/chat", timeout=30, json={
        "model": "extra-model", "stream": False, "messages": [{"role": "user", "content": "after"}]})
    assert gone.status_code == 404, gone.text
