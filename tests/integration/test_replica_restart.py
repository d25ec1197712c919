"""Shared state outlives the replicas that use it: two Router replicas share one node state,
and killing every Router and Ingress replica loses neither what was learned nor a node added
at run time."""

from __future__ import annotations

import httpx
import pytest
import ray
from ray import serve

from sollol_serve.app import build_gateway
from sollol_serve.config import GatewayConfig
from sollol_serve.local import delete_gateway
from sollol_serve.sim.process import SimProcess
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

APP = "replicas"


def _replicas(deployment: str) -> list[str]:
    """Names of the app's live replica actors of one deployment (Serve's named actors)."""
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{APP}#{deployment}#")]


def _chat(url: str, model: str) -> httpx.Response:
    return httpx.post(url + "/api/chat", timeout=30, json={
        "model": model, "stream": False, "options": {"num_predict": 5},
        "messages": [{"role": "user", "content": "after the restart"}]})


@pytest.fixture(scope="module")
def app(gateway):
    sims = {name: SimProcess(name, ["--models", f"{name}-model,common", "--slots", "2", "--load-s", "0",
                                    "--decode-tps", "300"]).start() for name in ("r1", "r2")}
    config = GatewayConfig.model_validate({
        "nodes": [{"name": "r1", "url": sims["r1"].url, "slots": 2}],
        "state_actor_name": "sollol_state_replicas",
        "routing": {"snapshot_interval_s": 0.2},
        "sizing": {"router_replicas": 2, "ingress_replicas": 1},
        "discovery": {"ray_nodes": False},
    })
    serve.run(build_gateway(config), name=APP, route_prefix="/" + APP)
    try:
        yield gateway.url + "/" + APP, sims
    finally:
        delete_gateway(APP, "sollol_state_replicas")
        for sim in sims.values():
            sim.stop()


def test_killed_routers_and_ingress_come_back_with_the_shared_state(app):
    url, sims = app
    assert len(_replicas("Router")) == 2
    added = httpx.post(url + "/api/admin/nodes", json={"name": "r2", "url": sims["r2"].url}, timeout=30)
    assert added.status_code == 201, added.text
    for _ in range(12):  # both router replicas learn r1's speed and merge it in the state actor
        assert _chat(url, "common").status_code == 200
    wait_until(lambda: all(_chat(url, "r2-model").status_code == 200 for _ in range(2)), 10, "r2 routable")

    for name in _replicas("Router") + _replicas("Ingress"):
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)

    def answered() -> bool:
        try:
            return _chat(url, "r1-model").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answered, 60, "the app answers again after its replicas were killed")
    r = _chat(url, "common")
    assert r.status_code == 200
    candidates = {c["node"]: c for c in r.json()["_sollol_routing"]["candidates"]}
    assert "unmeasured" not in candidates["r1"]["factors"], "what was learned did not survive"
    assert _chat(url, "r2-model").status_code == 200  # the node added at run time is still there
    # Serve starts the replacements one by one: the app answers once the first is up
    wait_until(lambda: len(_replicas("Router")) == 2, 60, "Serve restored both router replicas")
