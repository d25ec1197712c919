"""`sollol warm MODEL`: a model is loaded on the chosen nodes before traffic needs it."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from sollol_serve.client import SollolError, connect
from tests.helpers import nodes_of, wait_until

pytestmark = pytest.mark.integration

MODEL = "qwen2.5:0.5b"  # only on the `mid` node


def test_warm_loads_the_model_and_the_router_sees_it(gateway):
    mid = gateway.nodes["mid"]
    httpx.post(mid.url + "/api/generate", json={"model": MODEL, "keep_alive": 0}, timeout=10).raise_for_status()
    assert MODEL not in mid.state()["loaded"]
    wait_until(lambda: MODEL not in nodes_of(gateway.url)["mid"]["loaded"], 15, "the router sees it unloaded")

    run = subprocess.run([sys.executable, "-m", "sollol_serve.cli", "warm", MODEL, "--nodes", "mid",
                          "--keep-alive", "10m", "--url", gateway.url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"loading {MODEL} on 1 node(s): mid" and lines[1].startswith("[1/1] mid: loaded in ")
    assert MODEL in mid.state()["loaded"]
    wait_until(lambda: MODEL in nodes_of(gateway.url)["mid"]["loaded"], 15, "the router sees it resident")


def test_warm_every_node_with_the_model_through_the_sdk(gateway):
    with connect(gateway.url) as sollol:
        events = list(sollol.warm("llama3.2"))
        assert events[0]["status"] == "loading" and sorted(events[0]["nodes"]) == ["fast", "mid"]
        assert sorted(e["node"] for e in events if e.get("status") == "loaded") == ["fast", "mid"]
        assert events[-1] == {"status": "done", "model": "llama3.2", "loaded": 2, "failed": 0}
        served = list(sollol.warm("tiny-llama"))  # a llama-server: its one model is always resident
        assert served[1] == {"node": "llamacpp", "status": "loaded", "load_s": None}


def test_warm_refuses_what_it_cannot_do(gateway):
    with connect(gateway.url) as sollol:
        for model, nodes, status in (("no-such-model", None, 404), ("llama3.2", ["nowhere"], 404),
                                     (MODEL, ["fast"], 400)):
            with pytest.raises(SollolError) as info:
                list(sollol.warm(model, nodes=nodes))
            assert info.value.status == status, info.value
    bad = httpx.post(gateway.url + "/api/admin/warm", json={"model": "llama3.2", "nodes": "fast"}, timeout=10)
    assert bad.status_code == 400 and "error" in bad.json()
