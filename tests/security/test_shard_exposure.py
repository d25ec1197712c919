"""A running shard group exposes nothing beyond the gateway: llama-server wants the key only the
gateway knows (401 without it), llama-server and the rpc-servers listen on loopback addresses
only, llama-server's log is private (0600, under the gateway's data dir) and holds no prompt,
a model name that climbs out of the model store is a 400, and a chat through the gateway still
works. Real llama.cpp processes on a three-raylet local cluster, as in tests/shard."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path
from urllib.parse import quote

import httpx
import psutil
import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster

from sollol_serve.app import build_gateway
from sollol_serve.config import GatewayConfig
from sollol_serve.processes import free_port
from sollol_serve.shard.build import cache_dir, ensure_binaries
from sollol_serve.shard.tiny_model import write_ollama_store, write_tiny_llama
from tests.helpers import bound_s

pytestmark = [pytest.mark.integration, pytest.mark.own_ray, pytest.mark.llamacpp]

MODEL = "tiny-llama"
NODE = "shard:tiny-llama:latest"
CANARY = "canary-prompt-7f3a9c"


@pytest.fixture(scope="module")
def exposed(tmp_path_factory):
    """(gateway url, data dir, the running group's status after one chat)."""
    ensure_binaries()
    vocab = cache_dir() / "ggml-vocab-llama-spm.gguf"
    tmp = tmp_path_factory.mktemp("shard-exposure")
    store, data = tmp / "ollama-models", tmp / "data"
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
            "batch": {"data_dir": str(data)},
            "shard": {"models": [MODEL], "ollama_models_dir": str(store), "backends": 2, "ctx_size": 256,
                      "parallel": 1, "start_timeout_s": bound_s(120), "idle_stop_s": 600},
        })
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        serve.run(build_gateway(config), name="sollol", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        r = httpx.post(url + "/api/chat", timeout=bound_s(180), json={  # starts the group
            "model": MODEL, "stream": False, "messages": [{"role": "user", "content": CANARY}],
            "options": {"num_predict": 8}})
        assert r.status_code == 200, r.text
        assert r.json()["_sollol_routing"]["node"] == NODE
        group = next(g for g in httpx.get(url + "/api/shards", timeout=10).json()["shards"] if g["node"] == NODE)
        yield url, data, group
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def test_chat_through_the_gateway_works(exposed):
    url, _, group = exposed
    assert group["state"] == "running"
    r = httpx.post(url + "/v1/chat/completions", timeout=bound_s(120), json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


def test_llama_server_wants_the_key_the_gateway_holds(exposed):
    _, _, group = exposed
    assert group["url"].startswith("http://127.0.0.1:")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with httpx.Client(timeout=30, trust_env=False) as client:
        assert client.post(group["url"] + "/v1/chat/completions", json=body).status_code == 401
        assert client.post(group["url"] + "/completion", json={"prompt": "hi", "n_predict": 2}).status_code == 401
        assert client.get(group["url"] + "/slots").status_code == 401
        assert client.get(group["url"] + "/metrics").status_code == 401
        wrong = {"Authorization": "Bearer not-the-key"}
        assert client.post(group["url"] + "/v1/chat/completions", json=body, headers=wrong).status_code == 401
    assert "api_key" not in str(group) and "Bearer" not in str(group)


def _listening(pid: int) -> list[str]:
    return [c.laddr.ip for c in psutil.net_connections(kind="inet")
            if c.pid == pid and c.status == psutil.CONN_LISTEN]


def test_llama_server_and_rpc_servers_listen_on_loopback_only(exposed):
    _, _, group = exposed
    pids = [group["pid"], *(b["pid"] for b in group["backends"])]
    assert len(pids) == 3 and all(pids)
    for pid in pids:
        addresses = _listening(pid)
        assert addresses, f"pid {pid} listens on nothing"
        assert all(ipaddress.ip_address(a).is_loopback for a in addresses), (pid, addresses)
    assert _listening(group["pid"]) == ["127.0.0.1"]
    # and so no other address of this host reaches them
    others = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family.name == "AF_INET" and not ipaddress.ip_address(a.address).is_loopback}
    ports = [int(group["url"].rsplit(":", 1)[1]), *(int(b["address"].rsplit(":", 1)[1]) for b in group["backends"])]
    for address in others:
        for port in ports:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://{address}:{port}/health", timeout=2, trust_env=False)


def test_llama_server_log_is_private_and_holds_no_prompt(exposed):
    _, data, group = exposed
    log = Path(group["log"]["path"])
    assert log.parent == data / "shard" and log.is_file()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text(errors="replace")
    assert "verbosity = 3" in text and "load_model" in text  # info level: the load and requests, no prompts
    assert "prompt eval time" in text  # the chat was logged (its timings)...
    assert CANARY not in text  # ...not its prompt
    assert all(0 < b["layer_share"] < 1 for b in group["backends"]), group


def test_llama_server_holds_a_connection_to_each_rpc_server(exposed):
    _, _, group = exposed
    llama = {c.raddr for c in psutil.net_connections(kind="inet")
             if c.pid == group["pid"] and c.status == psutil.CONN_ESTABLISHED and c.raddr}
    for backend in group["backends"]:
        ip, port = backend["address"].rsplit(":", 1)
        assert any(r.ip == ip and r.port == int(port) for r in llama), (backend, llama)


def test_a_model_name_that_leaves_the_store_is_a_400(exposed):
    url, _, _ = exposed
    r = httpx.post(url + f"/api/shards/{quote('../../..:.bash_history', safe='')}/start", timeout=30)
    assert r.status_code == 400, r.text
    assert "invalid model name" in r.text
