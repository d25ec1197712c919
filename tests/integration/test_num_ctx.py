"""No reload by accident through the real gateway: once a model is loaded on an Ollama node with
a larger context than the default, requests that ask for none or for less are sent with that
context (Ollama would reload for any other, `needsReload`); one that asks for more reloads."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import nodes_of, side_app, wait_until

pytestmark = pytest.mark.integration

# One Ollama node, default context 8192; a load takes long enough that a reload would show.
NODE_ARGS = ["--kind", "ollama", "--models", "llama3.2", "--slots", "2", "--decode-tps", "400",
             "--load-s", "0.5", "--context-length", "8192"]
MODEL = "llama3.2:latest"


def _generate(url: str, **options: object) -> dict:
    r = httpx.post(url + "/api/generate", json={"model": "llama3.2", "prompt": "hello", "stream": False,
                                                "options": {"num_predict": 4, **options}}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _context(url: str) -> int | None:
    """The model's context as /api/ps tells (through the gateway: it asks the node's worker)."""
    return next((m["context_length"] for m in httpx.get(url + "/api/ps", timeout=10).json()["models"]
                 if m["name"] == MODEL), None)


def test_requests_for_no_or_less_context_keep_the_loaded_one_and_more_reloads(gateway):
    with side_app(gateway, "numctx", NODE_ARGS, ("ctx1",), slots=2) as app:
        node = app.nodes["ctx1"]
        # Another client loads the model straight on the node with twice the default context.
        httpx.post(node.url + "/api/generate", json={"model": "llama3.2", "options": {"num_ctx": 16384}},
                   timeout=30).raise_for_status()
        assert node.state()["loads"] == {MODEL: 1}
        wait_until(lambda: _context(app.url) == 16384, 15, "the gateway sees the loaded context")
        wait_until(lambda: MODEL in nodes_of(app.url)["ctx1"]["loaded"], 15, "the router sees it loaded")

        plain, smaller = _generate(app.url), _generate(app.url, num_ctx=4096)
        r = httpx.post(app.url + "/v1/chat/completions", timeout=30,
                       json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 200, r.text
        assert plain["load_duration"] < 1e8 and smaller["load_duration"] < 1e8
        assert node.state()["loads"] == {MODEL: 1}  # none of them reloaded it
        assert _context(app.url) == 16384

        # More than it is loaded with: the reload it needs. And a plain request right after,
        # before any probe has seen that load, keeps the new context.
        assert _generate(app.url, num_ctx=32768)["load_duration"] >= 5e8
        assert node.state()["loads"] == {MODEL: 2}
        _generate(app.url)
        assert node.state()["loads"] == {MODEL: 2}
        assert _context(app.url) == 32768
