"""sollol_serve.nodes.assemble: a node's streamed answer assembled into its unstreamed answer."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from sollol_serve.nodes.assemble import OllamaAssembler, OpenAIAssembler
from sollol_serve.sim.engine import SimNodeConfig
from sollol_serve.sim.server import build_sim_app

STATS = {"total_duration": 900, "load_duration": 100, "prompt_eval_count": 12, "prompt_eval_duration": 200,
         "eval_count": 5, "eval_duration": 500}


def ollama(chunks: list[dict]) -> dict:
    assembler = OllamaAssembler()
    for chunk in chunks:
        assembler.feed(chunk)
    return assembler.result()


def openai(chunks: list[dict]) -> dict:
    assembler = OpenAIAssembler()
    for chunk in chunks:
        assembler.feed(chunk)
    return assembler.result()


def chat_chunk(done: bool = False, **message) -> dict:
    return {"model": "m", "created_at": "t", "message": {"role": "assistant", "content": "", **message}, "done": done}


def gen_chunk(response: str, done: bool = False, **extra) -> dict:
    return {"model": "m", "created_at": "t", "response": response, "done": done, **extra}


def final_chat(**message) -> dict:
    return {**chat_chunk(done=True, **message), "done_reason": "stop", **STATS}


# =======================================================================================
# Ollama
# =======================================================================================
def test_ollama_chat_content_concatenated_final_stats_kept():
    out = ollama([chat_chunk(content="Hel"), chat_chunk(content="lo"), chat_chunk(content=" world"), final_chat()])
    assert out == {"model": "m", "created_at": "t", "message": {"role": "assistant", "content": "Hello world"},
                   "done": True, "done_reason": "stop", **STATS}


def test_ollama_chat_thinking_concatenated():
    out = ollama([chat_chunk(thinking="Let me "), chat_chunk(thinking="think."), chat_chunk(content="42"),
                  final_chat()])
    assert out["message"] == {"role": "assistant", "content": "42", "thinking": "Let me think."}


def test_ollama_chat_tool_calls_from_every_chunk():
    first = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    second = {"function": {"name": "get_time", "arguments": {"tz": "CET"}}}
    out = ollama([chat_chunk(tool_calls=[first]), chat_chunk(tool_calls=[second]), final_chat()])
    assert out["message"] == {"role": "assistant", "content": "", "tool_calls": [first, second]}
    assert out["done_reason"] == "stop"


def test_ollama_chat_role_default_and_images_kept():
    chunks = [{"message": {"content": "a", "images": ["aW1n"]}, "done": False},
              {"message": {"content": "b"}, "done": True, "done_reason": "stop"}]
    assert ollama(chunks)["message"] == {"role": "assistant", "content": "ab", "images": ["aW1n"]}


def test_ollama_chat_no_empty_optional_fields():
    message = ollama([chat_chunk(content="x"), final_chat()])["message"]
    assert set(message) == {"role", "content"}


def test_ollama_generate_response_thinking_context():
    chunks = [gen_chunk("", thinking="hmm "), gen_chunk("", thinking="ok"), gen_chunk("The "), gen_chunk("answer"),
              gen_chunk("", done=True, done_reason="length", context=[1, 2, 3], **STATS)]
    assert ollama(chunks) == {"model": "m", "created_at": "t", "response": "The answer", "thinking": "hmm ok",
                              "done": True, "done_reason": "length", "context": [1, 2, 3], **STATS}


def test_ollama_generate_without_thinking_has_no_thinking_key():
    assert "thinking" not in ollama([gen_chunk("a"), gen_chunk("", done=True, **STATS)])


@pytest.mark.parametrize("chunks", [[], [chat_chunk(content="cut off")], [gen_chunk("a"), gen_chunk("b")]])
def test_ollama_missing_final_chunk_raises(chunks):
    with pytest.raises(ValueError, match="stream ended before its final chunk"):
        ollama(chunks)


# =======================================================================================
# OpenAI-compatible
# =======================================================================================
def chunk(choices: list[dict], obj: str = "chat.completion.chunk", **extra) -> dict:
    return {"id": "chatcmpl-1", "object": obj, "created": 1700, "model": "tiny", "system_fingerprint": "b1",
            "choices": choices, **extra}


def delta(index: int = 0, finish: str | None = None, **fields) -> dict:
    return {"index": index, "delta": fields, "finish_reason": finish}


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
TIMINGS = {"prompt_n": 7, "prompt_ms": 1.5, "predicted_n": 3, "predicted_ms": 9.0}


def test_openai_chat_content_usage_chunk_and_timings():
    out = openai([
        chunk([delta(role="assistant", content=None)]),
        chunk([delta(content="Hel")]),
        chunk([delta(content="lo")]),
        chunk([delta(finish="stop")], timings=TIMINGS),
        chunk([], usage=USAGE, timings=TIMINGS),
    ])
    assert out == {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1700, "model": "tiny", "system_fingerprint": "b1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop",
                     "logprobs": None}],
        "usage": USAGE, "timings": TIMINGS,
    }


def test_openai_chat_reasoning_content_concatenated():
    out = openai([chunk([delta(role="assistant", reasoning_content="Think")]), chunk([delta(reasoning_content="ing")]),
                  chunk([delta(content="Done")]), chunk([delta(finish="stop")])])
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Done", "reasoning_content": "Thinking"}


def test_openai_chat_two_tool_calls_with_split_arguments():
    def call(index: int, **fields) -> dict:
        return {"index": index, **fields}

    out = openai([
        chunk([delta(role="assistant", content=None)]),
        chunk([delta(tool_calls=[call(0, id="call_a", type="function",
                                      function={"name": "weather", "arguments": ""})])]),
        chunk([delta(tool_calls=[call(0, function={"arguments": '{"ci'})])]),
        chunk([delta(tool_calls=[call(0, function={"arguments": 'ty": "Paris"}'})])]),
        chunk([delta(tool_calls=[call(1, id="call_b", type="function", function={"name": "time", "arguments": "{"})])]),
        chunk([delta(tool_calls=[call(1, function={"arguments": '"tz": "CET"}'})])]),
        chunk([delta(finish="tool_calls")]),
        chunk([], usage=USAGE),
    ])
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": '{"tz": "CET"}'}},
        ],
    }
    assert out["usage"] == USAGE


def test_openai_chat_without_content_or_tools_has_empty_content():
    out = openai([chunk([delta(role="assistant", content=None)]), chunk([delta(finish="length")])])
    assert out["choices"][0]["message"] == {"role": "assistant", "content": ""}
    assert out["choices"][0]["finish_reason"] == "length"
    assert "usage" not in out and "timings" not in out


def test_openai_completions_text_concatenated():
    out = openai([
        chunk([{"index": 0, "text": "Once", "finish_reason": None}], obj="text_completion", id="cmpl-9"),
        chunk([{"index": 0, "text": " upon", "finish_reason": None}], obj="text_completion", id="cmpl-9"),
        chunk([{"index": 0, "text": "", "finish_reason": "length"}], obj="text_completion", id="cmpl-9",
              timings=TIMINGS),
        chunk([], obj="text_completion", id="cmpl-9", usage=USAGE),
    ])
    assert out == {
        "id": "cmpl-9", "object": "text_completion", "created": 1700, "model": "tiny", "system_fingerprint": "b1",
        "choices": [{"index": 0, "text": "Once upon", "finish_reason": "length", "logprobs": None}],
        "usage": USAGE, "timings": TIMINGS,
    }


def test_openai_n_choices_ordered_by_index():
    out = openai([
        chunk([delta(1, role="assistant", content="B"), delta(0, role="assistant", content="A")]),
        chunk([delta(2, content="C")]),
        chunk([delta(1, content="b", finish="stop")]),
        chunk([delta(0, content="a", finish="length"), delta(2, finish="stop")]),
    ])
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in out["choices"]] == [
        (0, "Aa", "length"), (1, "Bb", "stop"), (2, "C", "stop")]


def test_openai_header_without_system_fingerprint():
    out = openai([{"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
                   "choices": [delta(content="hi", finish="stop")]}])
    assert "system_fingerprint" not in out
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "hi"}


def test_openai_no_chunk_raises():
    with pytest.raises(ValueError):
        OpenAIAssembler().result()


# =======================================================================================
# The simulated nodes: streamed answer assembled == unstreamed answer
# =======================================================================================
FAST = dict(decode_tps=20_000.0, prefill_tps=1_000_000.0, load_s=0.0)


def sim_pair(kind: str, path: str, body: dict) -> tuple[list[dict], dict]:
    """(parsed chunks of the streamed answer, the unstreamed answer) from an in-process sim node."""

    async def main():
        transport = httpx.ASGITransport(app=build_sim_app(SimNodeConfig(kind=kind, **FAST)))
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            streamed = await client.post(path, json={**body, "stream": True})
            whole = await client.post(path, json={**body, "stream": False})
        return streamed, whole

    streamed, whole = asyncio.run(main())
    assert streamed.status_code == whole.status_code == 200
    lines = streamed.text.splitlines()
    if kind == "ollama":
        return [json.loads(line) for line in lines if line], whole.json()
    data = [line[5:].strip() for line in lines if line.startswith("data:")]
    return [json.loads(d) for d in data if d != "[DONE]"], whole.json()


OLLAMA_KEYS = ("model", "done", "done_reason", "prompt_eval_count", "eval_count")


@pytest.mark.parametrize(("path", "body", "keys"), [
    ("/api/chat", {"messages": [{"role": "user", "content": "hello there"}]}, ("message",)),
    ("/api/generate", {"prompt": "tell me a story", "options": {"num_predict": 9}}, ("response", "context")),
])
def test_sim_ollama_streamed_assembles_to_unstreamed(path, body, keys):
    chunks, whole = sim_pair("ollama", path, {"model": "llama3.2", **body})
    out = ollama(chunks)
    assert len(chunks) > 2
    assert {k: out[k] for k in OLLAMA_KEYS + keys} == {k: whole[k] for k in OLLAMA_KEYS + keys}
    assert set(out) == set(whole)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello there"}]}),
    ("/v1/completions", {"prompt": "tell me a story", "max_tokens": 9}),
])
def test_sim_openai_streamed_assembles_to_unstreamed(path, body):
    chunks, whole = sim_pair("openai", path, {"model": "llama3.2:latest", "stream_options": {"include_usage": True},
                                              **body})
    out = openai(chunks)
    assert len(chunks) > 2
    for key in ("object", "model", "choices", "usage"):
        assert out[key] == whole[key]
    for key in ("prompt_n", "predicted_n"):
        assert out["timings"][key] == whole["timings"][key]
    assert set(out) == set(whole)
