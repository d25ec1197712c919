"""What a node sends back cannot hurt the gateway or leak through it: an oversized answer (or
stream line) is a clean 502 in the API's format, and no client-facing text carries a node's
URL or the credentials in it. One app of its own over a node whose URL has a password."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import FAST_HEALTH, deploy_app, nodes_of, wait_until

pytestmark = pytest.mark.integration
CAP = 64 * 1024


@pytest.fixture(scope="module")
def leaky(gateway):
    from sollol_serve.config import GatewayConfig
    from sollol_serve.local import delete_gateway
    from sollol_serve.sim.process import SimProcess

    node = SimProcess("b1", ["--kind", "ollama", "--models", "bloaty", "--slots", "2", "--decode-tps", "400",
                             "--load-s", "0"]).start()
    secret_url = node.url.replace("http://", "http://ops:hunter2@")
    config = GatewayConfig.model_validate({
        "nodes": [{"name": "b1", "url": secret_url}], "state_actor_name": "sollol_state_leaky",
        "health": FAST_HEALTH, "max_node_response_bytes": CAP})
    try:
        yield deploy_app(gateway.url, "leaky", config), node
    finally:
        delete_gateway("leaky", "sollol_state_leaky")
        node.stop()


def _chat(url: str, path: str = "/api/chat", **extra) -> httpx.Response:
    return httpx.post(url + path, timeout=60, json={"model": "bloaty", "messages": [{"role": "user", "content": "hi"}],
                                                    "stream": False, **extra})


def _leaks(text: str, node) -> list[str]:
    port = str(httpx.URL(node.url).port)
    return [s for s in ("hunter2", "ops:", port, node.url) if s in text]


def test_an_oversized_node_answer_is_a_clean_502(leaky):
    url, node = leaky
    node.faults(pad_bytes=4 * CAP)
    try:
        whole = _chat(url)
        assert whole.status_code == 502 and f"more than {CAP} bytes" in whole.json()["error"], whole.text
        streamed = _chat(url, stream=True)  # the one line is too long before anything reached the client
        assert streamed.status_code == 502 and "error" in streamed.json()
        openai = _chat(url, "/v1/chat/completions")
        assert openai.status_code == 502 and openai.json()["error"]["type"] == "server_error", openai.text
        assert not _leaks(whole.text + streamed.text + openai.text, node)
    finally:
        node.faults(pad_bytes=0)
    fine = _chat(url)
    assert fine.status_code == 200
    # Keyless on loopback every caller is admin: `host` is the node's address, never its credentials.
    assert fine.json()["_sollol_routing"]["host"] == f"127.0.0.1:{httpx.URL(node.url).port}"


def test_no_client_facing_error_names_a_node_url(leaky):
    url, node = leaky
    node.stop()
    wait_until(lambda: not nodes_of(url)["b1"]["healthy"], 20, "b1 seen down")
    for reply in (_chat(url), _chat(url, "/v1/chat/completions"), _chat(url, stream=True),
                  httpx.post(url + "/api/embed", json={"model": "bloaty", "input": "x"}, timeout=30)):
        assert reply.status_code == 503, reply.text
        assert "b1" in reply.text and not _leaks(reply.text, node), reply.text
