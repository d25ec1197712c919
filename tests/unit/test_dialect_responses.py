"""OpenAI Responses <-> OpenAI chat, pure: requests, answers and streams, hand-computed."""

from __future__ import annotations

import pytest

from sollol_serve.api.dialects.responses import ResponseEvents, chat_request, response
from sollol_serve.protocol import BadRequest
from tests.unit.test_dialect_anthropic import chunk

TOOL = {"type": "function", "name": "get_weather", "description": "weather", "strict": None,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def body(**extra) -> dict:
    return {"model": "llama3.2", "input": "hi", **extra}


def test_string_input_with_instructions_and_settings():
    assert chat_request(body(instructions="be brief", max_output_tokens=32, temperature=0.5, top_p=0.9,
                             store=True, include=[], truncation="auto")) == {
        "model": "llama3.2", "stream": False, "max_tokens": 32, "temperature": 0.5, "top_p": 0.9,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}


def test_items_with_a_function_call_round_trip():
    items = [{"role": "developer", "content": "use tools"},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather in "},
                                                             {"type": "input_text", "text": "Oslo?"}]},
             {"type": "reasoning", "summary": []},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
             {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Bergen"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": "rain"},
             {"type": "function_call_output", "call_id": "call_2",
              "output": [{"type": "input_text", "text": "sun"}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Rain, sun."}]}]
    out = chat_request(body(input=items, tools=[TOOL], stream=True))
    assert out["messages"] == [
        {"role": "system", "content": "use tools"},
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Bergen"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
        {"role": "tool", "tool_call_id": "call_2", "content": "sun"},
        {"role": "assistant", "content": "Rain, sun."},
    ]
    assert out["tools"] == [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                                              "parameters": TOOL["parameters"]}}]
    assert out["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("fmt, expected", [
    ({"type": "json_schema", "name": "count", "schema": SCHEMA, "strict": True},
     {"type": "json_schema", "json_schema": {"name": "count", "schema": SCHEMA, "strict": True}}),
    ({"type": "json_object"}, {"type": "json_object"}),
    ({"type": "text"}, None),
])
def test_text_format(fmt, expected):
    assert chat_request(body(text={"format": fmt})).get("response_format") == expected


def test_tool_choice_named_narrows_the_tools():
    other = {**TOOL, "name": "other"}
    out = chat_request(body(tools=[TOOL, other], tool_choice={"type": "function", "name": "other"}))
    assert [t["function"]["name"] for t in out["tools"]] == ["other"]
    assert "tools" not in chat_request(body(tools=[TOOL], tool_choice="none"))
    assert chat_request(body(tools=[TOOL], tool_choice="required"))["tool_choice"] == "required"


@pytest.mark.parametrize("extra, words", [
    ({"previous_response_id": "resp_1"}, "stateless"),
    ({"conversation": "conv_1"}, "stateless"),
    ({"background": True}, "background"),
    ({"tools": [{"type": "web_search"}]}, "built-in tool"),
    ({"input": [{"type": "input_file", "file_id": "f"}]}, "'input_file'"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]}, "data URL"),
    ({"input": []}, "empty"),
    ({"tool_choice": "sometimes"}, "sometimes"),
])
def test_unsupported_features_are_refused_by_name(extra, words):
    with pytest.raises(BadRequest, match=words):
        chat_request(body(**extra))


def test_answer_with_text_and_call():
    answer = {"choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant", "content": "ok", "tool_calls": [
        {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4}}
    out = response(answer, body(tools=[TOOL], instructions="x"))
    assert out["object"] == "response" and out["id"].startswith("resp_") and out["status"] == "completed"
    assert out["model"] == "llama3.2" and out["instructions"] == "x" and out["store"] is False
    message, call = out["output"]
    assert message["type"] == "message" and message["content"] == [
        {"type": "output_text", "text": "ok", "annotations": [], "logprobs": []}]
    assert {k: call[k] for k in ("type", "status", "call_id", "name", "arguments")} == {
        "type": "function_call", "status": "completed", "call_id": "call_7", "name": "get_weather",
        "arguments": '{"city":"Rome"}'}
    assert out["usage"] == {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13,
                            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}
    assert out["tools"] == [{"type": "function", "name": "get_weather", "description": "weather",
                             "parameters": TOOL["parameters"], "strict": None}]


def test_answer_cut_by_the_cap_is_incomplete():
    answer = {"choices": [{"finish_reason": "length", "message": {"role": "assistant", "content": "trunc"}}]}
    out = response(answer, body(max_output_tokens=2))
    assert out["status"] == "incomplete" and out["incomplete_details"] == {"reason": "max_output_tokens"}


def test_stream_text_then_call_events_in_order_and_numbered():
    events = ResponseEvents(body())
    out = []
    for c in (chunk({"role": "assistant", "content": None}), chunk({"content": "Hi"}), chunk({"content": "!"}),
              chunk({"tool_calls": [{"index": 0, "id": "call_3", "type": "function",
                                     "function": {"name": "get_weather", "arguments": '{"city":'}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
              chunk({}, "tool_calls"), chunk(usage={"prompt_tokens": 3, "completion_tokens": 6})):
        out += events.feed(c)
    out += events.finish({"node": "mid"})
    assert [e["type"] for e in out] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    assert out[0]["response"]["status"] == "in_progress" and out[0]["response"]["output"] == []
    assert out[6]["text"] == "Hi!" and out[6]["output_index"] == 0
    assert out[9]["output_index"] == 1 and out[9]["item"]["status"] == "in_progress"
    assert out[12]["arguments"] == '{"city":"Oslo"}'
    final = out[-1]
    assert final["_sollol_routing"] == {"node": "mid"}
    assert [i["type"] for i in final["response"]["output"]] == ["message", "function_call"]
    assert final["response"]["usage"]["total_tokens"] == 9 and final["response"]["status"] == "completed"
    assert final["response"]["id"] == out[0]["response"]["id"]


def test_stream_error_event():
    events = ResponseEvents(body())
    assert events.failed("gone") == [{"type": "error", "sequence_number": 0, "code": "stream_broken",
                                      "message": "gone", "param": None}]
