"""Anthropic Messages <-> OpenAI chat, pure: requests, answers and streams, hand-computed."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from sollol_serve.api.dialects.anthropic import MessageEvents, MessagesRequest, chat_request, message
from sollol_serve.protocol import BadRequest

WEATHER = {"name": "get_weather", "description": "weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CLOCK = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}


def body(**extra) -> dict:
    return {"model": "llama3.2", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_plain_request():
    assert chat_request(body(system="be brief", temperature=0.2, top_k=5, stop_sequences=["\n\n"])) == {
        "model": "llama3.2", "max_tokens": 64, "stream": False, "temperature": 0.2, "top_k": 5, "stop": ["\n\n"],
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}


def test_streamed_request_asks_for_usage_and_system_blocks_join():
    out = chat_request(body(stream=True, system=[{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
                                                 {"type": "text", "text": "b"}]))
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert out["messages"][0] == {"role": "system", "content": "a\nb"}


def test_tool_round_trip_request():
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": "sunny"}]},
                                     {"type": "text", "text": "and tomorrow?"}]},
    ]
    out = chat_request(body(messages=messages, tools=[WEATHER]))
    assert out["messages"] == [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "user", "content": "and tomorrow?"},
    ]
    assert out["tools"] == [{"type": "function", "function": {"name": "get_weather", "description": "weather in a city",
                                                              "parameters": WEATHER["input_schema"]}}]
    assert "tool_choice" not in out


def test_assistant_with_only_a_tool_call_has_no_content_and_images_become_data_urls():
    messages = [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                                                          "data": "AAAA"}},
                                             {"type": "text", "text": "what is it?"}]},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "x"},
                                                  {"type": "tool_use", "id": "t", "name": "get_time", "input": {}}]}]
    out = chat_request(body(messages=messages))["messages"]
    assert out[0] == {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}, {"type": "text", "text": "what is it?"}]}
    assert out[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}


@pytest.mark.parametrize("choice, tools, expected", [
    ({"type": "auto"}, ["get_weather", "get_time"], None),
    ({"type": "any"}, ["get_weather", "get_time"], "required"),
    ({"type": "tool", "name": "get_time"}, ["get_time"], {"type": "function", "function": {"name": "get_time"}}),
    ({"type": "none"}, None, None),
])
def test_tool_choice(choice, tools, expected):
    out = chat_request(body(tools=[WEATHER, CLOCK], tool_choice=choice))
    names = [t["function"]["name"] for t in out["tools"]] if "tools" in out else None
    assert names == tools
    assert out.get("tool_choice") == expected


@pytest.mark.parametrize("extra, words", [
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "extended thinking"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search", "input_schema": {}}]}, "server tool"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "'document'"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x"}}]}]},
     "base64"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "'nope'"),
])
def test_unsupported_features_are_refused_by_name(extra, words):
    with pytest.raises(BadRequest, match=words):
        chat_request(body(**extra))


@pytest.mark.parametrize("broken", [{"max_tokens": None}, {"messages": []}, {"mcp_servers": []},
                                    {"messages": [{"role": "system", "content": "x"}]}])
def test_schema_refuses_what_the_api_does(broken):
    with pytest.raises(ValidationError):
        MessagesRequest.model_validate({k: v for k, v in body(**broken).items() if v is not None})


def test_answer_with_text_and_tool_call():
    answer = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}
    out = message(answer, body())
    assert out["id"].startswith("msg_") and out["type"] == "message" and out["role"] == "assistant"
    assert out["model"] == "llama3.2" and out["stop_reason"] == "tool_use" and out["stop_sequence"] is None
    assert out["content"] == [{"type": "text", "text": "Checking."},
                              {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}]
    assert out["usage"] == {"input_tokens": 12, "output_tokens": 7}


@pytest.mark.parametrize("finish, reason", [("stop", "end_turn"), ("length", "max_tokens"), (None, "end_turn")])
def test_stop_reasons(finish, reason):
    answer = {"choices": [{"finish_reason": finish, "message": {"role": "assistant", "content": "x"}}]}
    assert message(answer, body())["stop_reason"] == reason


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    return {"id": "c", "object": "chat.completion.chunk", "choices": [] if delta is None else
            [{"index": 0, "delta": delta, "finish_reason": finish}], **({"usage": usage} if usage else {})}


def test_stream_text_then_tool_call():
    events = MessageEvents(body())
    out = []
    for c in (chunk({"role": "assistant", "content": None}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
              chunk({"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                                     "function": {"name": "get_time", "arguments": ""}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"zone"'}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "UTC"}'}}]}),
              chunk({}, "tool_calls"), chunk(usage={"prompt_tokens": 5, "completion_tokens": 3})):
        out += events.feed(c)
    out += events.finish({"node": "fast"})
    assert [e["type"] for e in out] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    assert out[0]["message"]["content"] == [] and out[0]["message"]["model"] == "llama3.2"
    assert out[1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert out[3] == {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}
    assert out[5]["index"] == 1 and out[5]["content_block"] == {"type": "tool_use", "id": "call_9", "name": "get_time",
                                                                "input": {}}
    assert "".join(e["delta"]["partial_json"] for e in out[6:8]) == '{"zone": "UTC"}'
    assert out[9] == {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                      "usage": {"input_tokens": 5, "output_tokens": 3}, "_sollol_routing": {"node": "fast"}}
    json.dumps(out)  # every event is plain JSON


def test_stream_with_no_chunk_still_starts_and_ends():
    events = MessageEvents(body())
    assert [e["type"] for e in events.finish({})] == ["message_start", "message_delta", "message_stop"]
    assert events.failed("node broke") == [{"type": "error", "error": {"type": "api_error", "message": "node broke"}}]
