"""The simulated node's model management, in Ollama's formats: pull, delete, copy, create,
push and blobs, in process via ASGITransport (each test runs its own event loop)."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest

from sollol_serve.sim.engine import SimNodeConfig
from sollol_serve.sim.models_api import full_name
from sollol_serve.sim.server import arg_parser, build_sim_app

FAST = dict(decode_tps=20_000.0, prefill_tps=1_000_000.0, load_s=0.0)


def run(coro_fn, kind: str = "ollama", pull_s: float = 0.0):
    async def main():
        app = build_sim_app(SimNodeConfig(kind=kind, **FAST), pull_s)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as client:
            return await coro_fn(client)

    return asyncio.run(main())


async def names(client: httpx.AsyncClient) -> set[str]:
    return {m["name"] for m in (await client.get("/api/tags")).json()["models"]}


def lines(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def test_pull_streams_ollamas_progress_and_adds_the_model():
    async def go(client):
        response = await client.post("/api/pull", json={"model": "qwen3:0.6b"})
        after = await names(client)
        chat = await client.post("/api/chat", json={"model": "qwen3:0.6b", "stream": False,
                                                    "messages": [{"role": "user", "content": "hi"}]})
        return response, after, chat

    response, after, chat = run(go)
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    events = lines(response)
    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [e for e in events if e["status"].startswith("pulling ") and "digest" in e]
    assert layers and all(e["status"] == f"pulling {e['digest'][7:19]}" for e in layers)
    first_layer = [e for e in layers if e["digest"] == layers[0]["digest"]]
    assert [e["completed"] for e in first_layer] == sorted(e["completed"] for e in first_layer)
    assert first_layer[-1]["completed"] == first_layer[-1]["total"] > 0
    assert "qwen3:0.6b" in after
    assert chat.status_code == 200 and chat.json()["done"] is True


def test_pull_unstreamed_answers_once_and_names_get_latest():
    async def go(client):
        response = await client.post("/api/pull", json={"name": "phi4", "stream": False})
        return response, await names(client)

    response, after = run(go)
    assert response.status_code == 200 and response.json() == {"status": "success"}
    assert "phi4:latest" in after


def test_pull_of_a_malformed_name_or_on_a_faulted_node_is_an_ollama_error():
    async def go(client):
        bad = await client.post("/api/pull", json={"model": "no spaces allowed"})
        missing = await client.post("/api/pull", json={})
        await client.post("/_sim/faults", json={"mode": "error", "error_status": 500})
        faulted = await client.post("/api/pull", json={"model": "phi4"})
        return bad, missing, faulted, await client.get("/api/version")

    bad, missing, faulted, _ = run(go)
    assert bad.status_code == 400 and "invalid model name" in bad.json()["error"]
    assert missing.status_code == 400 and missing.json() == {"error": "model is required"}
    assert faulted.status_code == 500 and "error" in faulted.json()


def test_the_pull_takes_about_pull_s():
    async def go(client):
        loop = asyncio.get_running_loop()
        started = loop.time()
        await client.post("/api/pull", json={"model": "phi4", "stream": False})
        return loop.time() - started

    took = run(go, pull_s=0.3)
    # It waits between its progress lines (without them it answers in milliseconds); asyncio may
    # wake a timer a clock tick early, so half of pull_s, and no upper bound: these machines are noisy.
    assert took >= 0.15


def test_copy_then_delete():
    async def go(client):
        copied = await client.post("/api/copy", json={"source": "llama3.2", "destination": "mine"})
        with_copy = await names(client)
        deleted = await client.request("DELETE", "/api/delete", json={"model": "mine"})
        again = await client.request("DELETE", "/api/delete", json={"model": "mine"})
        absent_source = await client.post("/api/copy", json={"source": "nope", "destination": "x"})
        return copied, with_copy, deleted, again, absent_source, await names(client)

    copied, with_copy, deleted, again, absent_source, final = run(go)
    assert copied.status_code == 200 and {"mine:latest", "llama3.2:latest"} <= with_copy
    assert deleted.status_code == 200
    assert again.status_code == 404 and again.json() == {"error": "model 'mine' not found"}
    assert absent_source.status_code == 404 and absent_source.json() == {"error": 'model "nope" not found'}
    assert "mine:latest" not in final and "llama3.2:latest" in final


def test_create_from_a_model_and_from_an_uploaded_blob():
    payload = b"GGUF" + bytes(1000)
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()

    async def go(client):
        from_model = await client.post("/api/create", json={"model": "terse", "from": "llama3.2",
                                                            "system": "Answer in one word."})
        head_before = await client.head(f"/api/blobs/{digest}")
        wrong = await client.post(f"/api/blobs/sha256:{'0' * 64}", content=payload)
        uploaded = await client.post(f"/api/blobs/{digest}", content=payload)
        head_after = await client.head(f"/api/blobs/{digest}")
        from_blob = await client.post("/api/create", json={"model": "custom", "files": {"m.gguf": digest},
                                                           "stream": False})
        neither = await client.post("/api/create", json={"model": "x"})
        unknown_blob = await client.post("/api/create", json={"model": "y", "files": {"a.gguf": "sha256:" + "1" * 64}})
        return from_model, head_before, wrong, uploaded, head_after, from_blob, neither, unknown_blob, await names(client)

    from_model, head_before, wrong, uploaded, head_after, from_blob, neither, unknown_blob, after = run(go)
    statuses = [e["status"] for e in lines(from_model)]
    assert statuses[0].startswith("using existing layer sha256:")
    assert any(s.startswith("creating new layer sha256:") for s in statuses)
    assert statuses[-2:] == ["writing manifest", "success"]
    assert head_before.status_code == 404
    assert wrong.status_code == 400 and "digest mismatch" in wrong.json()["error"]
    assert uploaded.status_code == 201 and head_after.status_code == 200
    assert from_blob.status_code == 200 and from_blob.json() == {"status": "success"}
    assert neither.status_code == 400 and unknown_blob.status_code == 400
    assert {"terse:latest", "custom:latest"} <= after


def test_push_of_a_model_it_has_and_of_one_it_lacks():
    async def go(client):
        return (await client.post("/api/push", json={"model": "llama3.2"}),
                await client.post("/api/push", json={"model": "nope"}))

    pushed, lacking = run(go)
    statuses = [e["status"] for e in lines(pushed)]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
    assert lacking.status_code == 404


def test_a_llama_server_sim_has_no_model_management():
    async def go(client):
        return await client.post("/api/pull", json={"model": "phi4"})

    assert run(go, kind="openai").status_code in (404, 405)


@pytest.mark.parametrize(("name", "full"), [("phi4", "phi4:latest"), ("qwen3:0.6b", "qwen3:0.6b"),
                                            ("hf.co/org/repo", "hf.co/org/repo:latest"),
                                            ("registry:5000/m", "registry:5000/m:latest")])
def test_full_name(name, full):
    assert full_name(name) == full


def test_pull_s_flag():
    assert arg_parser().parse_args(["--pull-s", "0.05"]).pull_s == 0.05
