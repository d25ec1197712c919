"""Cluster model management through the real gateway: a Serve app of its own ("models") over
three simulated Ollama nodes and one llama-server node, driven with the official `ollama`
client, httpx and `sollol pull`.

The app's routers refresh their snapshot only every 10 s and its workers probe every 30 s:
a model that routes right after its pull ended got there through the pull itself (the
worker's re-probe and the router's sync), not through the background refresh.
"""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

from sollol_serve.cli import main as sollol
from tests.conftest import USER
from tests.helpers import deploy_app

pytestmark = pytest.mark.integration

APP = "models"
OLLAMA_NODES = ("o1", "o2", "o3")
SIM = ["--slots", "2", "--decode-tps", "400", "--prefill-tps", "4000", "--load-s", "0", "--pull-s", "0.3"]
SLOW_REFRESH = {"routing": {"snapshot_interval_s": 10.0},
                "health": {"probe_interval_s": 30.0, "probe_min_s": 0.5, "probe_max_s": 60.0}}


@pytest.fixture(scope="module")
def cluster(gateway):
    from sollol_serve.config import GatewayConfig
    from sollol_serve.local import delete_gateway
    from sollol_serve.sim.process import SimProcess
    from tests.conftest import Gateway

    nodes = {n: SimProcess(n, ["--kind", "ollama", "--models", "llama3.2", *SIM]) for n in OLLAMA_NODES}
    nodes["cpp"] = SimProcess("cpp", ["--kind", "openai", "--models", "tiny-llama", *SIM])
    try:
        for node in nodes.values():
            node.start()
        config = GatewayConfig.model_validate({
            "nodes": [{"name": n.name, "url": n.url} for n in nodes.values()],
            "state_actor_name": f"sollol_state_{APP}", **SLOW_REFRESH})
        yield Gateway(url=deploy_app(gateway.url, APP, config), nodes=nodes, config=config)
    finally:
        delete_gateway(APP, f"sollol_state_{APP}")
        for node in nodes.values():
            node.stop()


def node_models(cluster, name: str) -> set[str]:
    """What the node itself lists, asked directly (not through the gateway)."""
    return {m["name"] for m in httpx.get(cluster.nodes[name].url + "/api/tags", timeout=10).json()["models"]}


def gateway_models(cluster) -> set[str]:
    return {m["name"] for m in httpx.get(cluster.url + "/api/tags", timeout=10).json()["models"]}


def chat(cluster, model: str) -> httpx.Response:
    return httpx.post(cluster.url + "/api/chat", timeout=60, json={
        "model": model, "stream": False, "messages": [{"role": "user", "content": "hello"}]})


def pull_lines(cluster, body: dict) -> list[dict]:
    with httpx.stream("POST", cluster.url + "/api/pull", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        return [json.loads(line) for line in response.iter_lines() if line.strip()]


def test_a_pull_lands_on_every_ollama_node_and_routes_at_once(cluster):
    model = "qwen3:0.6b"
    assert chat(cluster, model).status_code == 404  # nowhere yet

    progress = list(ollama.Client(host=cluster.url).pull(model, stream=True))

    statuses = [p.status for p in progress]
    assert statuses[0].startswith(("pulling manifest", "skipped: "))
    assert "pulling manifest" in statuses and "verifying sha256 digest" in statuses
    assert any(p.digest and p.total and p.completed == p.total for p in progress)
    assert statuses[-1] == "success"
    for name in OLLAMA_NODES:
        assert model in node_models(cluster, name), name
    assert model in gateway_models(cluster)  # listed the moment the stream ended
    answer = chat(cluster, model)
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] is True and answer.json()["_sollol_routing"]["node"] in OLLAMA_NODES


def test_every_line_names_its_node_and_the_llama_server_node_is_skipped(cluster):
    lines = pull_lines(cluster, {"model": "smollm2:135m"})
    *per_node, summary = lines
    assert all(line.get("node") in (*OLLAMA_NODES, "cpp") for line in per_node)
    skipped = [line for line in per_node if line["node"] == "cpp"]
    assert len(skipped) == 1 and skipped[0]["status"].startswith("skipped: llama-server")
    for name in OLLAMA_NODES:
        own = [line["status"] for line in per_node if line["node"] == name]
        assert own[0] == "pulling manifest" and own[-1] == "success", (name, own)
    assert summary == {"status": "success", "model": "smollm2:135m", "nodes": list(OLLAMA_NODES), "skipped": ["cpp"]}


def test_an_unstreamed_pull_to_named_nodes_answers_once(cluster):
    response = httpx.post(cluster.url + "/api/pull", timeout=60,
                          json={"model": "gemma3:270m", "stream": False, "nodes": ["o1", "o3"]})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "success" and response.json()["nodes"] == ["o1", "o3"]
    assert "gemma3:270m" in node_models(cluster, "o1") and "gemma3:270m" not in node_models(cluster, "o2")


def test_copy_then_delete_change_every_node_that_has_the_model(cluster):
    client = ollama.Client(host=cluster.url)
    client.pull("tinyllama", stream=False)
    assert client.copy("tinyllama", "tinyllama-copy").status == "success"
    for name in OLLAMA_NODES:
        assert {"tinyllama:latest", "tinyllama-copy:latest"} <= node_models(cluster, name), name
    assert chat(cluster, "tinyllama-copy").status_code == 200

    assert client.delete("tinyllama").status == "success"
    assert client.delete("tinyllama-copy").status == "success"
    for name in OLLAMA_NODES:
        assert not {"tinyllama:latest", "tinyllama-copy:latest"} & node_models(cluster, name), name
    assert not {"tinyllama:latest", "tinyllama-copy:latest"} & gateway_models(cluster)
    assert chat(cluster, "tinyllama-copy").status_code == 404  # the routers forgot it too


def test_deleting_a_model_no_node_has_is_ollamas_404(cluster):
    response = httpx.request("DELETE", cluster.url + "/api/delete", json={"model": "no-such-model"}, timeout=30)
    assert response.status_code == 404 and response.json() == {"error": "model 'no-such-model' not found"}
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=cluster.url).delete("no-such-model")
    assert caught.value.status_code == 404


def test_a_node_that_fails_its_pull_is_named_and_the_stream_ends_in_an_error(cluster):
    cluster.nodes["o2"].faults(mode="error", error_status=500)
    try:
        lines = pull_lines(cluster, {"model": "phi4-mini"})
        with pytest.raises(ollama.ResponseError, match="o2"):
            list(ollama.Client(host=cluster.url).pull("phi4-mini", stream=True))
    finally:
        cluster.nodes["o2"].faults(mode="none")
    failed = [line for line in lines if line.get("node") == "o2"]
    assert failed and failed[-1]["status"].startswith("failed: ")
    assert "o2" in lines[-1]["error"] and lines[-1]["failed"] == ["o2"]
    assert lines[-1]["nodes"] == ["o1", "o3"]
    assert "phi4-mini:latest" in node_models(cluster, "o1") and "phi4-mini:latest" not in node_models(cluster, "o2")


def test_create_from_an_uploaded_blob_on_one_node(cluster, tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(4096))
    client = ollama.Client(host=cluster.url)
    digest = client.create_blob(gguf)  # no node named: the first healthy Ollama node, o1
    progress = list(client.create(model="homemade", files={"model.gguf": digest}, stream=True))
    assert progress[-1].status == "success"
    assert "homemade:latest" in node_models(cluster, "o1") and "homemade:latest" not in node_models(cluster, "o2")
    assert chat(cluster, "homemade").status_code == 200

    named = httpx.post(cluster.url + "/api/create", timeout=60,
                       json={"model": "terse", "from": "llama3.2", "system": "One word.", "node": "o3",
                             "stream": False})
    assert named.status_code == 200 and named.json() == {"status": "success", "node": "o3"}
    assert "terse:latest" in node_models(cluster, "o3") and "terse:latest" not in node_models(cluster, "o1")
    refused = httpx.post(cluster.url + "/api/create", json={"model": "x", "from": "llama3.2", "node": "cpp"}, timeout=30)
    assert refused.status_code == 400 and "llama-server" in refused.json()["error"]


def test_sollol_pull_prints_a_line_per_node(cluster, capsys):
    sollol(["pull", "qwen2.5:0.5b", "--url", cluster.url, "--nodes", "o2,o3,cpp"])
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("o2: pulling ") and "%" in line for line in out)
    assert "o2: success" in out and "o3: success" in out
    assert any(line.startswith("cpp: skipped: ") for line in out)
    assert out[-1] == "pulled qwen2.5:0.5b on 2 node(s): o2, o3 (skipped: cpp)"
    assert "qwen2.5:0.5b" in node_models(cluster, "o3") and "qwen2.5:0.5b" not in node_models(cluster, "o1")


def test_sollol_pull_errors_are_one_line_on_stderr(cluster, capsys):
    with pytest.raises(SystemExit) as exited:
        sollol(["pull", "qwen2.5:0.5b", "--url", cluster.url, "--nodes", "nope"])
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sollol pull: node 'nope' not found (HTTP 404)"]


def test_a_user_key_may_not_manage_models(secure):
    headers = {"Authorization": f"Bearer {USER}"}
    assert httpx.post(secure + "/api/pull", json={"model": "qwen3"}, headers=headers, timeout=30).status_code == 403
    assert httpx.request("DELETE", secure + "/api/delete", json={"model": "llama3.2"}, headers=headers,
                         timeout=30).status_code == 403
    assert httpx.post(secure + "/api/pull", json={"model": "qwen3"}, timeout=30).status_code == 401
