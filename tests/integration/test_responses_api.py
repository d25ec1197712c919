"""OpenAI's Responses API (stateless) and `/v1/models/{model}` through the gateway, driven by
the official `openai` client, against an Ollama-kind and a llama-server-kind model."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration

KINDS = [("llama3.2", {"fast", "mid"}), ("tiny-llama", {"llamacpp"})]
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("model, nodes", KINDS)
def test_create_not_streamed(client, model, nodes):
    r = client.responses.with_raw_response.create(model=model, input="hello", instructions="be brief",
                                                  max_output_tokens=6)
    response = r.parse()
    assert r.headers["x-sollol-node"] in nodes
    assert response.object == "response" and response.model == model and response.instructions == "be brief"
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert len(response.output_text.split()) == 6
    assert response.usage.output_tokens == 6 and response.usage.input_tokens > 0
    assert response.model_extra["_sollol_routing"]["node"] in nodes


@pytest.mark.parametrize("model, nodes", KINDS)
def test_create_streamed(client, model, nodes):
    events = list(client.responses.create(model=model, input=[{"role": "user", "content": "hi there"}],
                                          max_output_tokens=7, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 7
    final = events[-1].response
    assert final.output_text == "".join(deltas) and final.usage.output_tokens == 7
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].model_extra["_sollol_routing"]["node"] in nodes


@pytest.mark.parametrize("model, nodes", KINDS)
def test_function_call_round_trip_with_the_stream_helper(client, model, nodes):
    with client.responses.stream(model=model, input="Weather in Oslo?", tools=[WEATHER]) as stream:
        first = stream.get_final_response()
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    second = client.responses.create(model=model, tools=[WEATHER], max_output_tokens=9, input=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "rain"}])
    assert [item.type for item in second.output] == ["message"] and second.output_text


def test_json_schema_text_format(client):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}}, "required": ["n"],
              "additionalProperties": False}
    r = client.responses.create(model="llama3.2", input="a number", text={"format": {
        "type": "json_schema", "name": "number", "schema": schema, "strict": True}})
    assert json.loads(r.output_text) == {"n": 3}


def test_unknown_model_is_openai_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="no-such-model", input="hi")
    assert caught.value.body["type"] == "invalid_request_error" and caught.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("body, words", [
    ({"model": "llama3.2"}, "input"),
    ({"model": "llama3.2", "input": "hi", "previous_response_id": "resp_1"}, "stateless"),
    ({"model": "llama3.2", "input": "hi", "tools": [{"type": "web_search"}]}, "built-in"),
])
def test_malformed_or_unsupported_is_openai_400(gateway, body, words):
    r = httpx.post(gateway.url + "/v1/responses", json=body, timeout=30)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and words in error["message"]


def test_model_retrieve(client):
    assert client.models.retrieve("llama3.2").id == "llama3.2"
    assert client.models.retrieve("qwen2.5:0.5b").object == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
