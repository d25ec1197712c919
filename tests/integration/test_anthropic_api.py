"""Anthropic's Messages API through the gateway, driven by the official `anthropic` client,
against an Ollama-kind model (llama3.2) and a llama-server-kind one (tiny-llama)."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from tests.conftest import USER

pytestmark = pytest.mark.integration

# The model, and the nodes of the kind that serve it.
KINDS = [("llama3.2", {"fast", "mid"}), ("tiny-llama", {"llamacpp"})]
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def client(gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)


@pytest.mark.parametrize("model, nodes", KINDS)
def test_create_text(client, model, nodes):
    r = client.messages.with_raw_response.create(model=model, max_tokens=6, messages=[
        {"role": "user", "content": "hello"}], system="be brief")
    message = r.parse()
    assert r.headers["x-sollol-node"] in nodes
    assert message.type == "message" and message.role == "assistant" and message.model == model
    assert [b.type for b in message.content] == ["text"] and len(message.content[0].text.split()) == 6
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 6 and message.usage.input_tokens > 0
    assert message.model_extra["_sollol_routing"]["node"] in nodes


@pytest.mark.parametrize("model, nodes", KINDS)
def test_stream_text(client, model, nodes):
    with client.messages.stream(model=model, max_tokens=8, messages=[{"role": "user", "content": "hi there"}]) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert len(pieces) == 8 and "".join(pieces) == final.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 8 and final.usage.input_tokens > 0


def test_stream_events_as_sent(gateway):
    """The raw events: named, in Anthropic's order, routing on the message_delta."""
    with httpx.stream("POST", gateway.url + "/v1/messages", timeout=30, json={
            "model": "llama3.2", "max_tokens": 3, "stream": True, "messages": ASK}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        names = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    assert names == ["message_start", "content_block_start", *["content_block_delta"] * 3, "content_block_stop",
                     "message_delta", "message_stop"]


@pytest.mark.parametrize("model, nodes", KINDS)
@pytest.mark.parametrize("streamed", [False, True])
def test_tool_use_round_trip(client, model, nodes, streamed):
    def ask(messages):
        if not streamed:
            return client.messages.create(model=model, max_tokens=40, messages=messages, tools=[WEATHER])
        with client.messages.stream(model=model, max_tokens=40, messages=messages, tools=[WEATHER]) as s:
            return s.get_final_message()

    first = ask(ASK)
    assert first.stop_reason == "tool_use"
    (call,) = [b for b in first.content if b.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input["city"], str) and call.id
    second = ask([*ASK, {"role": "assistant", "content": first.content},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}])
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in second.content] == ["text"] and second.content[0].text


def test_tool_choice_none_answers_in_words(client):
    r = client.messages.create(model="tiny-llama", max_tokens=5, messages=ASK, tools=[WEATHER],
                               tool_choice={"type": "none"})
    assert [b.type for b in r.content] == ["text"] and r.stop_reason == "max_tokens"


def test_unknown_model_is_anthropic_404(client):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model", max_tokens=5, messages=ASK)
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("body, words", [
    ({"model": "llama3.2", "messages": ASK}, "max_tokens"),  # required by the API
    ({"model": "llama3.2", "max_tokens": 5, "messages": ASK, "thinking": {"type": "enabled", "budget_tokens": 9}},
     "thinking"),
    ({"model": "llama3.2", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "data": "x"}}]}]}, "document"),
])
def test_malformed_or_unsupported_is_anthropic_400(gateway, body, words):
    r = httpx.post(gateway.url + "/v1/messages", json=body, timeout=30)
    assert r.status_code == 400
    error = r.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert words in error["error"]["message"]


def test_broken_json_is_anthropic_400(gateway):
    r = httpx.post(gateway.url + "/v1/messages", content=b"{not json", timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_keys_by_x_api_key(secure):
    with pytest.raises(anthropic.AuthenticationError) as caught:
        anthropic.Anthropic(base_url=secure, api_key="sk-wrong", max_retries=0).messages.create(
            model="llama3.2", max_tokens=5, messages=ASK)
    assert caught.value.status_code == 401
    assert caught.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                            "message": "invalid API key"}}
    ok = anthropic.Anthropic(base_url=secure, api_key=USER, max_retries=0).messages.create(
        model="llama3.2", max_tokens=5, messages=ASK)
    assert ok.usage.output_tokens == 5
