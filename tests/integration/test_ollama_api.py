"""The gateway driven by the official `ollama` client, against Ollama and llama-server nodes."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

pytestmark = pytest.mark.integration

# llama3.2 lives on the Ollama-flavoured nodes, tiny-llama only on the llama-server node:
# the same client calls go through both backends (and the translation for the second).
MODELS = ["llama3.2", "tiny-llama"]


@pytest.fixture
def client(gateway) -> ollama.Client:
    return ollama.Client(host=gateway.url)


@pytest.mark.parametrize("model", MODELS)
def test_chat_not_streamed_honours_num_predict(client, model):
    r = client.chat(model=model, messages=[{"role": "user", "content": "Say something."}],
                    options={"num_predict": 7}, stream=False)
    assert r.message.role == "assistant"
    assert len(r.message.content.split()) == 7
    assert r.eval_count == 7
    assert r.done and r.done_reason == "length"


@pytest.mark.parametrize("model", MODELS)
def test_chat_streams_in_several_chunks(client, model):
    chunks = list(client.chat(model=model, messages=[{"role": "user", "content": "Tell a story."}],
                              options={"num_predict": 12}, stream=True))
    text_chunks = [c for c in chunks if c.message.content]
    assert len(text_chunks) >= 6
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    assert chunks[-1].eval_count == 12
    assert len("".join(c.message.content for c in chunks).split()) == 12


@pytest.mark.parametrize("model", MODELS)
def test_generate_streamed_and_not_agree(client, model):
    whole = client.generate(model=model, prompt="Why is the sky blue?", options={"num_predict": 9, "seed": 3})
    parts = list(client.generate(model=model, prompt="Why is the sky blue?", options={"num_predict": 9, "seed": 3},
                                 stream=True))
    assert len(parts) > 3
    assert "".join(p.response for p in parts) == whole.response
    assert len(whole.response.split()) == 9


@pytest.mark.parametrize("model", ["nomic-embed-text", "tiny-llama"])
def test_embed_with_a_list(client, model):
    r = client.embed(model=model, input=["first text", "second text", "first text"])
    assert len(r.embeddings) == 3
    assert r.embeddings[0] == r.embeddings[2] != r.embeddings[1]
    assert len(r.embeddings[0]) == 64


@pytest.mark.parametrize("model", ["nomic-embed-text", "tiny-llama"])
def test_legacy_embeddings(client, model):
    single = client.embeddings(model=model, prompt="first text")
    batch = client.embed(model=model, input="first text")
    assert single.embedding == pytest.approx(batch.embeddings[0])


def test_list_is_the_union_of_the_nodes(client):
    names = {m.model for m in client.list().models}
    assert {"llama3.2:latest", "nomic-embed-text:latest", "qwen2.5:0.5b", "tiny-llama"} <= names


def test_ps_says_which_node(gateway, client):
    client.generate(model="qwen2.5:0.5b", prompt="load me", options={"num_predict": 1})
    raw = httpx.get(gateway.url + "/api/ps").json()["models"]
    qwen = [m for m in raw if m["name"] == "qwen2.5:0.5b"]
    assert qwen and qwen[0]["node"] == "mid"
    assert "qwen2.5:0.5b" in {m.model for m in client.ps().models}


def test_show(client):
    r = client.show("llama3.2")
    assert r.details.family == "llama"
    assert "completion" in r.capabilities


def test_unknown_model_is_404_in_ollama_format(gateway, client):
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404
    raw = httpx.post(gateway.url + "/api/generate", json={"model": "no-such-model", "prompt": "x"})
    assert raw.status_code == 404
    assert set(raw.json()) == {"error"} and "no-such-model" in raw.json()["error"]


def test_routing_metadata_and_headers(gateway):
    r = httpx.post(gateway.url + "/api/chat", json={"model": "llama3.2", "stream": False,
                   "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 2}})
    assert r.status_code == 200
    assert r.headers["x-powered-by"] == "SOLLOL"
    routing = r.json()["_sollol_routing"]
    assert r.headers["x-sollol-node"] == routing["node"] in {"fast", "mid"}
    assert {c["node"] for c in routing["candidates"]} == {"fast", "mid"}
    for key in ("host", "strategy", "task_type", "complexity", "score", "reasoning", "attempts",
                "queue_wait_ms", "routing_ms"):
        assert key in routing


def test_routing_metadata_on_final_stream_chunk_only(gateway):
    with httpx.stream("POST", gateway.url + "/api/generate",
                      json={"model": "tiny-llama", "prompt": "hi", "options": {"num_predict": 5}}) as r:
        assert r.headers["x-sollol-node"] == "llamacpp"
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert all("_sollol_routing" not in c for c in lines[:-1])
    assert lines[-1]["done"] and lines[-1]["_sollol_routing"]["node"] == "llamacpp"


def test_fields_pass_through_untouched(gateway):
    """The node sees the request as the client sent it: unknown fields included."""
    body = {"model": "qwen2.5:0.5b", "prompt": "x", "stream": False, "keep_alive": 0, "think": False,
            "options": {"num_predict": 1}}
    r = httpx.post(gateway.url + "/api/generate", json=body)
    assert r.status_code == 200
    # keep_alive 0 with a prompt runs, then the sim keeps it loaded only ~0 s: it must have seen keep_alive.
    assert "qwen2.5:0.5b" not in gateway.nodes["mid"].state()["loaded"]


def test_root_and_version(gateway):
    assert httpx.get(gateway.url + "/").text == "Ollama is running"
    version = httpx.get(gateway.url + "/api/version").json()
    assert version["version"] == "0.0.0-sollol-sim"  # the oldest Ollama node's version
    assert version["sollol_serve"]
