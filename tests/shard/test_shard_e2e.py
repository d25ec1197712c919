"""A model served by a real llama.cpp RPC shard group, end to end.

The tests write a tiny llama-architecture GGUF (random weights) into a temporary Ollama-style
model store; a local Ray cluster of three raylets (two of them, on 127.0.0.2 and 127.0.0.3,
carry the `sollol-rpc` label) hosts one `ggml-rpc-server` on each labelled raylet; the
gateway starts `llama-server --rpc ... -ngl 99` over them on the first request and serves the
model through both APIs, streaming included. Needs the llama.cpp binaries
(`sollol build-llamacpp`, cached; built here if missing: minutes). Marker `llamacpp`.
"""

from __future__ import annotations

import os
import signal

import httpx
import ollama
import openai
import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster

from sollol_serve.app import build_gateway
from sollol_serve.config import GatewayConfig
from sollol_serve.processes import free_port
from sollol_serve.shard.build import cache_dir, ensure_binaries
from sollol_serve.shard.tiny_model import write_ollama_store, write_tiny_llama
from tests.helpers import bound_s, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.own_ray, pytest.mark.llamacpp]

MODEL = "tiny-llama"
NODE = "shard:tiny-llama:latest"


def _group(url: str) -> dict:
    groups = httpx.get(url + "/api/shards", timeout=10).json()["shards"]
    return next((g for g in groups if g["node"] == NODE), {})


@pytest.fixture(scope="module")
def shard_gateway(tmp_path_factory):
    ensure_binaries()
    vocab = cache_dir() / "ggml-vocab-llama-spm.gguf"
    tmp = tmp_path_factory.mktemp("shard")
    store = tmp / "ollama-models"
    write_ollama_store(store, MODEL, write_tiny_llama(tmp / "tiny.gguf", vocab))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        for ip in ("127.0.0.2", "127.0.0.3"):
            cluster.add_node(num_cpus=0, resources={"sollol-rpc": 1}, node_ip_address=ip)
        ray.init(address=cluster.address, log_to_driver=False)
        config = GatewayConfig.model_validate({
            "routing": {"snapshot_interval_s": 0.2},
            "health": {"probe_interval_s": 1.0, "probe_min_s": 0.5, "probe_max_s": 2.0},
            "discovery": {"ray_nodes": False},
            "shard": {"models": [MODEL], "ollama_models_dir": str(store), "backends": 2, "ctx_size": 256,
                      "parallel": 1, "restart_backoff_s": 0.5, "start_timeout_s": bound_s(120), "idle_stop_s": 15},
        })
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        serve.run(build_gateway(config), name="sollol", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def test_chat_through_a_shard_group_over_two_rpc_servers(shard_gateway):
    url = shard_gateway
    r = httpx.post(url + "/api/chat", timeout=bound_s(180), json={  # the first request starts the group
        "model": MODEL, "stream": False, "messages": [{"role": "user", "content": "hello"}],
        "options": {"num_predict": 8}})
    assert r.status_code == 200, r.text
    assert r.json()["_sollol_routing"]["node"] == NODE and r.headers["x-sollol-node"] == NODE
    assert r.json()["eval_count"] >= 1

    client = ollama.Client(host=url, timeout=bound_s(180))
    answer = client.chat(model=MODEL, messages=[{"role": "user", "content": "again"}], options={"num_predict": 8})
    assert answer.done and answer.eval_count >= 1

    chunks = list(client.chat(model=MODEL, messages=[{"role": "user", "content": "stream"}],
                              options={"num_predict": 8}, stream=True))
    assert chunks[-1].done and len(chunks) >= 2

    oa = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=60)
    completion = oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert completion.usage.completion_tokens >= 1

    group = _group(url)
    assert group["state"] == "running" and group["layers"] == 4
    hosts = {b["address"].split(":")[0] for b in group["backends"]}
    assert hosts == {"127.0.0.2", "127.0.0.3"}, group
    # layers on both RPC backends (llama-server logs at info level, which says no buffer sizes)
    assert all(0 < b["layer_share"] < 1 for b in group["backends"]), group
    assert sum(b["layer_share"] for b in group["backends"]) == pytest.approx(1, abs=1e-3)


def test_killed_rpc_server_restarts_the_group_and_the_next_request_succeeds(shard_gateway):
    url = shard_gateway
    before = _group(url)
    assert before.get("state") == "running", before
    os.kill(before["backends"][0]["pid"], signal.SIGKILL)
    wait_until(lambda: _group(url).get("restarts", 0) >= 1 and _group(url)["state"] == "running", 120,
                "the group restarted")
    client = ollama.Client(host=url, timeout=bound_s(180))

    def answered() -> bool:
        try:
            return client.generate(model=MODEL, prompt="again", options={"num_predict": 4}).done
        except (ollama.ResponseError, httpx.HTTPError):
            return False

    wait_until(answered, 60, "a request succeeds after the restart")
    after = _group(url)
    assert {b["pid"] for b in after["backends"]} != {b["pid"] for b in before["backends"]}


def test_admin_stops_and_starts_a_group(shard_gateway):
    url = shard_gateway
    stopped = httpx.post(url + f"/api/shards/{MODEL}/stop", timeout=60)
    assert stopped.status_code == 200 and stopped.json()["shard"]["state"] == "stopped"
    wait_until(lambda: NODE not in {n["name"] for n in httpx.get(url + "/api/nodes", timeout=10).json()["nodes"]},
               15, "the stopped group's node leaves")
    started = httpx.post(url + f"/api/shards/{MODEL}/start", timeout=bound_s(180))
    assert started.status_code == 200 and started.json()["shard"]["state"] == "running", started.text
    assert started.json()["shard"]["start_s"] > 0
    assert httpx.post(url + "/api/shards/no-such-model/stop", timeout=30).status_code == 404


def test_idle_group_stops_and_the_next_request_starts_it_again(shard_gateway):
    url = shard_gateway
    wait_until(lambda: _group(url).get("state") == "stopped", 60, "the idle group stopped (idle_stop_s 15)")
    r = httpx.post(url + "/api/generate", timeout=bound_s(180), json={
        "model": MODEL, "prompt": "wake up", "stream": False, "options": {"num_predict": 3}})
    assert r.status_code == 200 and r.json()["_sollol_routing"]["node"] == NODE, r.text
    assert _group(url)["state"] == "running"
