"""The gateway driven by the official `openai` client, against Ollama and llama-server nodes."""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration

MODELS = ["llama3.2", "tiny-llama"]


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_chat_not_streamed(client, model):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=6)
    assert r.object == "chat.completion"
    assert len(r.choices[0].message.content.split()) == 6
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 6
    assert r.model_extra["_sollol_routing"]["node"]


@pytest.mark.parametrize("model", MODELS)
def test_chat_streamed(client, model):
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}],
                                            max_tokens=10, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 10
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    usage = [c.usage for c in chunks if c.usage]
    assert usage and usage[-1].completion_tokens == 10
    assert chunks[-1].model_extra["_sollol_routing"]["task_type"] == "generation"


@pytest.mark.parametrize("model", MODELS)
def test_completions(client, model):
    r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=5)
    assert len(r.choices[0].text.split()) == 5
    assert r.usage.completion_tokens == 5


@pytest.mark.parametrize("model", ["nomic-embed-text", "tiny-llama"])
def test_embeddings(client, model):
    r = client.embeddings.create(model=model, input=["alpha", "beta"])
    assert [d.index for d in r.data] == [0, 1]
    assert len(r.data[0].embedding) == 64
    assert r.data[0].embedding != r.data[1].embedding


def test_embeddings_float_format(gateway):
    r = httpx.post(gateway.url + "/v1/embeddings", json={"model": "nomic-embed-text", "input": "alpha",
                                                         "encoding_format": "float"})
    assert isinstance(r.json()["data"][0]["embedding"][0], float)


def test_models(client):
    ids = {m.id for m in client.models.list()}
    assert {"llama3.2:latest", "tiny-llama", "nomic-embed-text:latest"} <= ids


def test_unknown_model_is_404_in_openai_format(gateway, client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404
    body = httpx.post(gateway.url + "/v1/embeddings", json={"model": "no-such-model", "input": "x"}).json()
    assert body["error"]["code"] == "model_not_found" and "no-such-model" in body["error"]["message"]


def test_bad_request_in_openai_format(gateway):
    r = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "llama3.2", "messages": []})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
