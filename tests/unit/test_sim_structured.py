"""The simulator's structured answers: `format`/`response_format` JSON that validates against
the schema, and tool calls with valid arguments, in both APIs, streamed and not."""

from __future__ import annotations

import json
import math

import jsonschema
import pytest

from sollol_serve.sim.scripted import Script, scripted
from tests.unit.test_sim import chat_body, fast_config, run

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 1},
                                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "weather in a city",
                                            "parameters": {"type": "object", "required": ["city"],
                                                           "properties": {"city": {"type": "string"}}}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC"]}}, "required": ["zone"]}}}
AFTER_CALL = [{"role": "user", "content": "weather in Paris?"},
              {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                                "arguments": {"city": "Paris"}}}]},
              {"role": "tool", "content": "sunny"}]


def test_scripted_decisions():
    assert scripted(chat_body(), "ollama") is None
    assert scripted(chat_body(format="json"), "ollama") == Script('{"answer": "sim"}')
    assert json.loads(scripted(chat_body(format=SCHEMA), "ollama").text) == {"name": "sim", "age": 1, "tags": ["a"]}
    assert scripted(chat_body(tools=[WEATHER, CLOCK]), "ollama") == Script('{"city": "sim"}', tool="get_weather")
    assert scripted({**chat_body(tools=[WEATHER]), "messages": AFTER_CALL}, "ollama") is None
    openai = {**chat_body(tools=[WEATHER, CLOCK])}
    assert scripted({**openai, "tool_choice": "none"}, "openai") is None
    named = {"type": "function", "function": {"name": "get_time"}}
    assert scripted({**openai, "tool_choice": named}, "openai") == Script('{"zone": "UTC"}', tool="get_time")
    assert scripted(chat_body(response_format={"type": "json_object"}), "openai") == Script('{"answer": "sim"}')
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    assert scripted(chat_body(response_format=fmt), "openai").tool is None


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_sim_format_schema_answer_validates(stream):
    async def go(client):
        r = await client.post("/api/chat", json=chat_body(format=SCHEMA, stream=stream))
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.text.splitlines()]
        return "".join(line["message"]["content"] for line in lines), lines[-1]

    text, final = run(go, fast_config())
    jsonschema.validate(json.loads(text), SCHEMA)
    assert final["done"] and final["eval_count"] == math.ceil(len(text) / 4)  # the JSON's tokens, timed as any


def test_ollama_sim_generate_format_json():
    async def go(client):
        return (await client.post("/api/generate", json={"model": "llama3.2", "prompt": "hi", "format": "json",
                                                         "stream": False})).json()

    assert json.loads(run(go, fast_config())["response"]) == {"answer": "sim"}


def test_ollama_sim_format_cut_by_num_predict_is_cut_like_a_model():
    async def go(client):
        return (await client.post("/api/chat", json=chat_body(format=SCHEMA, stream=False,
                                                              options={"num_predict": 2}))).json()

    answer = run(go, fast_config())
    assert answer["done_reason"] == "length" and answer["message"]["content"] == '{"name":'


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_sim_tool_call_then_text_after_the_result(stream):
    async def go(client):
        first = await client.post("/api/chat", json=chat_body(tools=[WEATHER], stream=stream))
        after = await client.post("/api/chat", json={**chat_body(tools=[WEATHER], stream=False),
                                                     "messages": AFTER_CALL})
        return [json.loads(line) for line in first.text.splitlines()], after.json()

    lines, after = run(go, fast_config())
    calls = [c for line in lines for c in line["message"].get("tool_calls") or []]
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"
    assert calls[0]["function"]["arguments"] == {"city": "sim"}
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "stop"
    assert after["message"]["content"] and not after["message"].get("tool_calls")


def test_openai_sim_tool_call_not_streamed():
    async def go(client):
        body = chat_body(tools=[WEATHER, CLOCK], tool_choice={"type": "function", "function": {"name": "get_time"}})
        return (await client.post("/v1/chat/completions", json=body)).json()

    choice = run(go, fast_config(kind="openai"))["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_time" and json.loads(call["function"]["arguments"]) == {"zone": "UTC"}


def test_openai_sim_tool_call_streamed_as_deltas():
    async def go(client):
        r = await client.post("/v1/chat/completions", json=chat_body(tools=[WEATHER], stream=True))
        return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]

    events = run(go, fast_config(kind="openai"))
    deltas = [c["delta"]["tool_calls"][0] for e in events for c in e["choices"] if c["delta"].get("tool_calls")]
    assert deltas[0]["id"].startswith("call_") and deltas[0]["function"]["name"] == "get_weather"
    assert {d["index"] for d in deltas} == {0} and len(deltas) > 2
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == {"city": "sim"}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("fmt", [{"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}},
                                 {"type": "json_object"}])
def test_openai_sim_response_format_validates(fmt):
    async def go(client):
        return (await client.post("/v1/chat/completions", json=chat_body(response_format=fmt))).json()

    answer = json.loads(run(go, fast_config(kind="openai"))["choices"][0]["message"]["content"])
    jsonschema.validate(answer, fmt.get("json_schema", {}).get("schema", {"type": "object"}))
