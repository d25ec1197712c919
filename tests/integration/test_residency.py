"""Which models stay loaded where, through the real gateway: an operator's pin is loaded on its
nodes ahead of any request and kept for good, and a model in demand is sent with a keep_alive
longer than the nodes' default (so a full node evicts a less wanted one first)."""

from __future__ import annotations

from datetime import datetime, timezone

import httpx
import pytest

from tests.helpers import side_app, wait_until

pytestmark = pytest.mark.integration

# Three Ollama nodes that hold one model each; `pinned` is installed on all of them.
NODE_ARGS = ["--kind", "ollama", "--models", "pinned,hot,other", "--slots", "2", "--decode-tps", "400",
             "--load-s", "0.2", "--max-loaded", "1"]
YEAR_S = 365 * 86400


def _expiry_s(node, model: str) -> float | None:
    """Seconds until the node unloads `model` (its /api/ps), None if not loaded."""
    for entry in httpx.get(node.url + "/api/ps", timeout=5).json()["models"]:
        if entry["name"] == model:
            return (datetime.fromisoformat(entry["expires_at"]) - datetime.now(timezone.utc)).total_seconds()
    return None


def test_a_pinned_model_is_kept_loaded_on_its_nodes_and_a_wanted_one_longer_than_the_default(gateway):
    with side_app(gateway, "residency", NODE_ARGS, ("r1", "r2", "r3"), slots=2,
                  models={"pinned": {"min_nodes": 2}}) as app:
        def pinned_on() -> list[str]:
            return [name for name, node in app.nodes.items() if _expiry_s(node, "pinned:latest") is not None]

        # Loaded ahead of any request for it, on two of the three nodes, one at a time; kept for good.
        wait_until(lambda: len(pinned_on()) == 2, 30, "the pinned model loaded on two nodes")
        assert all(_expiry_s(app.nodes[n], "pinned:latest") > YEAR_S for n in pinned_on())

        def hot_on() -> list[str]:
            return [name for name, node in app.nodes.items() if _expiry_s(node, "hot:latest") is not None]

        # `hot` is sent with a keep_alive above the nodes' 300 s default: 8 requests within
        # seconds are 8/60 per second, +80 s. Nothing tells the router the nodes hold one model
        # each (as shipped: no max_loaded), so it may evict a pin once to learn it (and `hot`
        # may land on the third node too); the pin is loaded again on a second node, and `hot`
        # keeps the other. Which copy of `hot` gives way, if it had two, is the router's choice.
        for n in range(8):
            r = httpx.post(app.url + "/api/generate", json={"model": "hot", "prompt": f"hello {n}", "stream": False,
                                                            "options": {"num_predict": 4}}, timeout=30)
            assert r.status_code == 200, r.text
        last = r.json()["_sollol_routing"]["node"]
        expiry = _expiry_s(app.nodes[last], "hot:latest")
        assert expiry is not None and 330 < expiry < 3600, expiry
        wait_until(lambda: len(pinned_on()) == 2 and len(hot_on()) == 1, 30,
                   "the pin back on two nodes and `hot` on the third")
        assert _expiry_s(app.nodes[hot_on()[0]], "hot:latest") > 300  # still the longer keep_alive

        # A client's own keep_alive is the client's.
        r = httpx.post(app.url + "/api/generate", json={"model": "hot", "prompt": "hi", "stream": False,
                                                        "keep_alive": "10s", "options": {"num_predict": 4}}, timeout=30)
        assert r.status_code == 200 and r.json()["done"]
        assert _expiry_s(app.nodes[r.json()["_sollol_routing"]["node"]], "hot:latest") <= 10
        assert len(pinned_on()) == 2
