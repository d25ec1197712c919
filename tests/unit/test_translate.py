"""sollol_serve.nodes.translate: Ollama <-> OpenAI requests, responses, streams and usage."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from sollol_serve.nodes.translate import (
    OllamaToOpenAIStream,
    OpenAIToOllamaStream,
    UnsupportedInput,
    encode_embedding,
    ollama_response_to_openai,
    ollama_to_openai_request,
    openai_response_to_ollama,
    openai_to_ollama_request,
    openai_usage,
    usage_from_ollama,
    usage_from_openai,
)
from sollol_serve.protocol import Usage


# =======================================================================================
# Ollama request -> OpenAI request
# =======================================================================================
def test_ollama_chat_to_openai_options_mapped():
    body = {
        "model": "llama3.2",
        "stream": False,
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"num_predict": 64, "temperature": 0.2, "seed": 7, "stop": ["\n", "END"],
                    "top_p": 0.9, "top_k": 40, "repeat_penalty": 1.1, "num_ctx": 4096, "mirostat": 1},
        "keep_alive": "5m",
    }
    out = ollama_to_openai_request("chat", body)
    assert out == {
        "model": "llama3.2",
        "stream": False,
        "max_tokens": 64,
        "temperature": 0.2,
        "seed": 7,
        "stop": ["\n", "END"],
        "top_p": 0.9,
        "top_k": 40,
        "repeat_penalty": 1.1,
        "messages": [{"role": "user", "content": "hi"}],
    }


@pytest.mark.parametrize("value", [-1, -2, "64", 3.5, None])
def test_ollama_to_openai_negative_or_non_int_num_predict_dropped(value):
    out = ollama_to_openai_request("chat", {"model": "m", "messages": [], "stream": False,
                                            "options": {"num_predict": value, "temperature": 1}})
    assert "max_tokens" not in out
    assert out["temperature"] == 1


def test_ollama_to_openai_num_predict_zero_kept():
    out = ollama_to_openai_request("generate", {"model": "m", "prompt": "p", "options": {"num_predict": 0}})
    assert out["max_tokens"] == 0


def test_ollama_to_openai_stream_default_true_with_include_usage():
    out = ollama_to_openai_request("chat", {"model": "m", "messages": []})
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}


def test_ollama_to_openai_no_stream_options_when_not_streaming():
    out = ollama_to_openai_request("chat", {"model": "m", "messages": [], "stream": False})
    assert out["stream"] is False
    assert "stream_options" not in out


def test_ollama_to_openai_format_json():
    out = ollama_to_openai_request("chat", {"model": "m", "messages": [], "format": "json"})
    assert out["response_format"] == {"type": "json_object"}


def test_ollama_to_openai_format_schema():
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    out = ollama_to_openai_request("chat", {"model": "m", "messages": [], "format": schema})
    assert out["response_format"] == {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}


def test_ollama_to_openai_no_format_no_response_format():
    out = ollama_to_openai_request("chat", {"model": "m", "messages": [], "format": ""})
    assert "response_format" not in out


def test_ollama_to_openai_images_become_image_url_parts():
    body = {"model": "llava", "stream": False, "messages": [
        {"role": "user", "content": "what is this?", "images": ["QUJD", "REVG"]}]}
    out = ollama_to_openai_request("chat", body)
    assert out["messages"] == [{
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,REVG"}},
        ],
    }]


def test_ollama_to_openai_message_tool_calls_and_tools():
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    body = {"model": "m", "stream": False, "tools": tools, "messages": [
        {"role": "assistant", "content": "", "thinking": "hmm",
         "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
    ]}
    out = ollama_to_openai_request("chat", body)
    assert out["tools"] == tools
    msg = out["messages"][0]
    assert "thinking" not in msg
    call = msg["tool_calls"][0]
    assert call["type"] == "function"
    assert call["id"].startswith("call-")
    assert call["function"] == {"name": "weather", "arguments": '{"city": "Oslo"}'}


def test_ollama_generate_to_openai_system_prepended_and_suffix():
    body = {"model": "m", "prompt": "Write a poem", "system": "You are terse.", "suffix": "END", "stream": False}
    out = ollama_to_openai_request("generate", body)
    assert out == {"model": "m", "stream": False, "prompt": "You are terse.\n\nWrite a poem", "suffix": "END"}


def test_ollama_generate_to_openai_without_system():
    out = ollama_to_openai_request("generate", {"model": "m", "prompt": "p", "stream": True})
    assert out["prompt"] == "p"
    assert out["stream_options"] == {"include_usage": True}
    assert "messages" not in out


def test_ollama_embed_to_openai():
    assert ollama_to_openai_request("embed", {"model": "e", "input": ["a", "b"], "options": {"seed": 1}}) == {
        "model": "e", "input": ["a", "b"]}
    assert ollama_to_openai_request("embeddings", {"model": "e", "prompt": "hello"}) == {"model": "e", "input": "hello"}


# =======================================================================================
# OpenAI request -> Ollama request
# =======================================================================================
def test_openai_chat_to_ollama_options():
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50,
            "temperature": 0.5, "seed": 3, "stop": "x", "top_p": None, "user": "bob", "n": 1}
    out = openai_to_ollama_request("chat", body)
    assert out == {
        "model": "llama3.2",
        "stream": False,
        "options": {"num_predict": 50, "temperature": 0.5, "seed": 3, "stop": "x"},
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_openai_to_ollama_max_completion_tokens():
    out = openai_to_ollama_request("chat", {"model": "m", "messages": [], "max_completion_tokens": 12, "stream": True})
    assert out["options"] == {"num_predict": 12}
    assert out["stream"] is True


def test_openai_to_ollama_no_options_key_when_none_given():
    out = openai_to_ollama_request("chat", {"model": "m", "messages": []})
    assert "options" not in out
    assert "format" not in out


def test_openai_to_ollama_max_completion_tokens_wins_over_max_tokens():
    body = {"model": "m", "messages": [], "max_completion_tokens": 10, "max_tokens": 20}
    assert openai_to_ollama_request("chat", body)["options"]["num_predict"] == 10


@pytest.mark.parametrize(
    ("response_format", "fmt"),
    [
        ({"type": "json_object"}, "json"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}, {"type": "object"}),
    ],
)
def test_openai_to_ollama_response_format(response_format, fmt):
    out = openai_to_ollama_request("chat", {"model": "m", "messages": [], "response_format": response_format})
    assert out["format"] == fmt


def test_openai_to_ollama_response_format_text_gives_no_format():
    out = openai_to_ollama_request("chat", {"model": "m", "messages": [], "response_format": {"type": "text"}})
    assert "format" not in out


def test_format_round_trip_both_ways():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    for fmt in ("json", schema):
        openai = ollama_to_openai_request("chat", {"model": "m", "messages": [], "format": fmt})
        back = openai_to_ollama_request("chat", openai)
        assert back["format"] == fmt


def test_openai_to_ollama_content_parts_become_content_and_images():
    body = {"model": "m", "messages": [{"role": "user", "name": "bob", "content": [
        {"type": "text", "text": "first"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
        {"type": "text", "text": "second"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]}]}
    out = openai_to_ollama_request("chat", body)
    assert out["messages"] == [{"role": "user", "content": "first\nsecond",
                                "images": ["QUJD", "https://example.com/cat.png"]}]


def test_openai_to_ollama_null_content_and_tool_calls():
    body = {"model": "m", "tools": [{"type": "function"}], "messages": [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "not json"}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]}
    out = openai_to_ollama_request("chat", body)
    assert out["tools"] == [{"type": "function"}]
    assert out["messages"] == [
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "f", "arguments": {"x": 1}}},
            {"function": {"name": "g", "arguments": {"_raw": "not json"}}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]


def test_openai_completion_to_ollama_generate():
    out = openai_to_ollama_request("generate", {"model": "m", "prompt": ["only one"], "suffix": "s", "max_tokens": 3})
    assert out == {"model": "m", "stream": False, "options": {"num_predict": 3}, "prompt": "only one", "suffix": "s"}


@pytest.mark.parametrize("prompt", [["a", "b"], [[1, 2, 3]], [1, 2, 3], []])
def test_openai_completion_prompt_lists_unsupported(prompt):
    with pytest.raises(UnsupportedInput):
        openai_to_ollama_request("generate", {"model": "m", "prompt": prompt})


@pytest.mark.parametrize("value", ["hi", ["a", "b"], []])
def test_openai_embedding_text_input(value):
    assert openai_to_ollama_request("embed", {"model": "e", "input": value}) == {"model": "e", "input": value}


@pytest.mark.parametrize("value", [[1, 2, 3], [[1, 2], [3]], None, 5, ["a", 1]])
def test_openai_embedding_token_input_unsupported(value):
    with pytest.raises(UnsupportedInput) as exc:
        openai_to_ollama_request("embed", {"model": "e", "input": value})
    assert isinstance(exc.value, ValueError)
    assert "text input only" in str(exc.value)


# =======================================================================================
# Responses
# =======================================================================================
USAGE = Usage(prompt_tokens=11, completion_tokens=7, prefill_s=0.25, decode_s=1.5, load_s=0.5, total_s=2.5)


def test_openai_chat_response_to_ollama():
    resp = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "length"}]}
    out = openai_response_to_ollama("chat", resp, "llama3.2", USAGE)
    assert out["model"] == "llama3.2"
    assert out["message"] == {"role": "assistant", "content": "Hello"}
    assert out["done"] is True
    assert out["done_reason"] == "length"
    assert out["total_duration"] == 2_500_000_000
    assert out["load_duration"] == 500_000_000
    assert out["prompt_eval_count"] == 11
    assert out["prompt_eval_duration"] == 250_000_000
    assert out["eval_count"] == 7
    assert out["eval_duration"] == 1_500_000_000
    assert out["created_at"].endswith("+00:00")


def test_openai_chat_response_tool_calls_to_ollama():
    resp = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
        "finish_reason": "tool_calls"}]}
    out = openai_response_to_ollama("chat", resp, "m", Usage())
    assert out["message"] == {"role": "assistant", "content": "",
                              "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]}
    assert out["done_reason"] == "stop"
    assert out["load_duration"] == 0 and out["eval_duration"] == 0


def test_openai_completion_response_to_ollama_generate():
    resp = {"choices": [{"text": "abc", "finish_reason": "stop"}]}
    out = openai_response_to_ollama("generate", resp, "m", USAGE)
    assert out["response"] == "abc"
    assert "message" not in out
    assert out["done_reason"] == "stop"


def test_openai_embedding_response_to_ollama_sorted_by_index():
    resp = {"data": [{"index": 1, "embedding": [0.2]}, {"index": 0, "embedding": [0.1]}]}
    out = openai_response_to_ollama("embed", resp, "e", Usage(prompt_tokens=4, total_s=0.125))
    assert out == {"model": "e", "embeddings": [[0.1], [0.2]], "total_duration": 125_000_000,
                   "load_duration": 0, "prompt_eval_count": 4}
    legacy = openai_response_to_ollama("embeddings", {"data": [{"index": 0, "embedding": [0.5, 0.6]}]}, "e", Usage())
    assert legacy == {"embedding": [0.5, 0.6]}


@pytest.mark.parametrize(("done_reason", "finish"), [("stop", "stop"), ("length", "length"), (None, "stop"), ("load", "stop")])
def test_ollama_chat_response_to_openai_finish_reason(done_reason, finish):
    resp = {"message": {"role": "assistant", "content": "Hi"}, "done": True, "done_reason": done_reason}
    out = ollama_response_to_openai("chat", resp, "llama3.2", USAGE)
    assert out["object"] == "chat.completion"
    assert out["id"].startswith("chatcmpl-")
    assert out["model"] == "llama3.2"
    assert out["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "logprobs": None,
                               "finish_reason": finish}]
    assert out["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def test_ollama_chat_response_tool_calls_to_openai():
    resp = {"message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]}, "done": True, "done_reason": "stop"}
    out = ollama_response_to_openai("chat", resp, "m", Usage())
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["id"].startswith("call-")
    assert call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}


def test_ollama_generate_response_to_openai():
    out = ollama_response_to_openai("generate", {"response": "xyz", "done": True, "done_reason": "length"}, "m", USAGE)
    assert out["object"] == "text_completion"
    assert out["id"].startswith("cmpl-")
    assert out["choices"] == [{"index": 0, "text": "xyz", "logprobs": None, "finish_reason": "length"}]


def test_ollama_embed_response_to_openai_float_and_base64():
    resp = {"embeddings": [[0.5, -1.0], [0.25, 2.0]]}
    out = ollama_response_to_openai("embed", resp, "e", Usage(prompt_tokens=6))
    assert out == {"object": "list", "model": "e", "data": [
        {"object": "embedding", "index": 0, "embedding": [0.5, -1.0]},
        {"object": "embedding", "index": 1, "embedding": [0.25, 2.0]}],
        "usage": {"prompt_tokens": 6, "total_tokens": 6}}
    b64 = ollama_response_to_openai("embeddings", {"embedding": [0.5, -1.0]}, "e", Usage(), encoding_format="base64")
    assert b64["data"][0]["embedding"] == base64.b64encode(struct.pack("<2f", 0.5, -1.0)).decode()


def test_encode_embedding_base64_round_trip():
    vector = [0.1, -0.5, 3.25, 0.0, 1e-3]
    encoded = encode_embedding(vector, "base64")
    assert isinstance(encoded, str)
    raw = base64.b64decode(encoded)
    assert len(raw) == 4 * len(vector)
    decoded = struct.unpack(f"<{len(vector)}f", raw)
    assert decoded == pytest.approx(vector, rel=1e-6, abs=1e-7)
    assert decoded[2] == 3.25  # exactly representable, exact after the round trip
    assert encode_embedding([1.0], "base64") == "AACAPw=="  # 1.0f little-endian: 00 00 80 3f


@pytest.mark.parametrize("fmt", [None, "float"])
def test_encode_embedding_float_is_identity(fmt):
    vector = [0.1, 0.2]
    assert encode_embedding(vector, fmt) is vector


def test_openai_usage_sums():
    assert openai_usage(Usage(prompt_tokens=3, completion_tokens=4)) == {
        "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


# =======================================================================================
# Streams
# =======================================================================================
def test_openai_to_ollama_stream_chat():
    s = OpenAIToOllamaStream("chat", "llama3.2")
    assert s.feed({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}) == []
    out = s.feed({"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]})
    assert len(out) == 1
    assert out[0]["model"] == "llama3.2"
    assert out[0]["message"] == {"role": "assistant", "content": "Hel"}
    assert out[0]["done"] is False
    assert s.feed({"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]})[0]["message"]["content"] == "lo"
    assert s.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}) == []
    assert s.feed({"choices": [], "usage": {"prompt_tokens": 1}}) == []
    final = s.finish(USAGE)
    assert final["done"] is True
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["done_reason"] == "length"
    assert final["total_duration"] == 2_500_000_000
    assert final["load_duration"] == 500_000_000
    assert final["prompt_eval_count"] == 11
    assert final["prompt_eval_duration"] == 250_000_000
    assert final["eval_count"] == 7
    assert final["eval_duration"] == 1_500_000_000


def test_openai_to_ollama_stream_generate():
    s = OpenAIToOllamaStream("generate", "m")
    out = s.feed({"choices": [{"index": 0, "text": "abc", "finish_reason": None}]})
    assert [(c["response"], c["done"]) for c in out] == [("abc", False)]
    assert "message" not in out[0]
    s.feed({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    final = s.finish(Usage(prompt_tokens=2, completion_tokens=1, total_s=0.5))
    assert final["response"] == ""
    assert final["done_reason"] == "stop"
    assert final["total_duration"] == 500_000_000
    assert final["prompt_eval_duration"] == 0


def test_openai_to_ollama_stream_tool_calls_accumulated():
    s = OpenAIToOllamaStream("chat", "m")
    s.feed({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "c1", "type": "function", "function": {"name": "weath", "arguments": ""}}]}}]})
    s.feed({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"name": "er", "arguments": '{"city": '}}]}}]})
    s.feed({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 1, "function": {"name": "time", "arguments": "{}"}},
        {"index": 0, "function": {"arguments": '"Oslo"}'}}]}}]})
    s.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    final = s.finish(Usage())
    assert final["message"]["tool_calls"] == [
        {"function": {"name": "weather", "arguments": {"city": "Oslo"}}},
        {"function": {"name": "time", "arguments": {}}},
    ]
    assert final["done_reason"] == "stop"


def _texts(events: list[dict]) -> list:
    return [e["choices"][0]["delta"].get("content") if e["choices"] else None for e in events]


def test_ollama_to_openai_stream_chat_with_usage():
    s = OllamaToOpenAIStream("chat", "llama3.2", include_usage=True)
    first = s.feed({"message": {"role": "assistant", "content": "Hel"}, "done": False})
    assert len(first) == 2
    assert first[0]["choices"] == [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]
    assert first[1]["choices"] == [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]
    second = s.feed({"message": {"role": "assistant", "content": "lo"}, "done": False})
    assert [e["choices"][0]["delta"] for e in second] == [{"content": "lo"}]  # no second role chunk
    assert s.feed({"message": {"role": "assistant", "content": ""}, "done": False}) == []
    last = s.feed({"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "length"}, USAGE)
    assert len(last) == 2
    assert last[0]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert last[1]["choices"] == []
    assert last[1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    every = first + second + last
    assert {e["id"] for e in every} == {s.id}
    assert s.id.startswith("chatcmpl-")
    assert {e["object"] for e in every} == {"chat.completion.chunk"}
    assert {e["model"] for e in every} == {"llama3.2"}


def test_ollama_to_openai_stream_no_usage_chunk_without_include_usage():
    s = OllamaToOpenAIStream("chat", "m", include_usage=False)
    s.feed({"message": {"content": "a"}, "done": False})
    last = s.feed({"message": {"content": ""}, "done": True, "done_reason": "stop"}, USAGE)
    assert len(last) == 1
    assert last[0]["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in last[0]


def test_ollama_to_openai_stream_done_chunk_with_text_and_no_usage_given():
    s = OllamaToOpenAIStream("chat", "m", include_usage=True)
    out = s.feed({"message": {"content": "all"}, "done": True, "done_reason": "stop"}, None)
    assert _texts(out) == [None, "all", None]
    assert out[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert out[2]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in e for e in out)


def test_ollama_to_openai_stream_generate():
    s = OllamaToOpenAIStream("generate", "m", include_usage=True)
    out = s.feed({"response": "ab", "done": False})
    assert [e["choices"] for e in out] == [[{"index": 0, "text": "ab", "finish_reason": None}]]
    assert out[0]["object"] == "text_completion"
    assert s.id.startswith("cmpl-")
    last = s.feed({"response": "", "done": True, "done_reason": "stop"}, Usage(prompt_tokens=1, completion_tokens=2))
    assert last[0]["choices"] == [{"index": 0, "text": "", "finish_reason": "stop"}]
    assert last[1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


def test_ollama_to_openai_stream_tool_calls_in_done_chunk():
    s = OllamaToOpenAIStream("chat", "m", include_usage=False)
    out = s.feed({"message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": {"a": 1}}}, {"function": {"name": "g", "arguments": {}}}]},
        "done": True, "done_reason": "stop"})
    assert len(out) == 3
    calls = out[1]["choices"][0]["delta"]["tool_calls"]
    assert [(c["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        (0, "f", '{"a": 1}'), (1, "g", "{}")]
    assert out[2]["choices"][0]["finish_reason"] == "tool_calls"


def test_ollama_to_openai_stream_tool_calls_before_done_finish_reason():
    s = OllamaToOpenAIStream("chat", "m", include_usage=False)
    s.feed({"message": {"role": "assistant", "content": "",
                        "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}, "done": False})
    last = s.feed({"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"})
    assert last[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_ollama_to_openai_stream_tool_calls_in_separate_chunks_get_distinct_indexes():
    s = OllamaToOpenAIStream("chat", "m", include_usage=False)
    a = s.feed({"message": {"content": "", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}, "done": False})
    b = s.feed({"message": {"content": "", "tool_calls": [{"function": {"name": "g", "arguments": {}}}]}, "done": False})
    idx = [c["index"] for e in a + b if e["choices"] for c in e["choices"][0]["delta"].get("tool_calls", [])]
    assert idx == [0, 1]


# =======================================================================================
# Usage
# =======================================================================================
def test_usage_from_ollama_nanoseconds_to_seconds():
    final = {"prompt_eval_count": 26, "eval_count": 290, "prompt_eval_duration": 130_079_000,
             "eval_duration": 4_232_710_000, "load_duration": 1_019_500, "total_duration": 5_043_500_667}
    u = usage_from_ollama(final, wall_s=9.0)
    assert u.prompt_tokens == 26
    assert u.completion_tokens == 290
    assert u.prefill_s == pytest.approx(0.130079)
    assert u.decode_s == pytest.approx(4.23271)
    assert u.load_s == pytest.approx(0.0010195)
    assert u.total_s == pytest.approx(5.043500667)


def test_usage_from_ollama_missing_or_zero_durations():
    u = usage_from_ollama({"eval_count": 3, "load_duration": 0, "prompt_eval_duration": "x"}, wall_s=1.25)
    assert (u.prompt_tokens, u.completion_tokens) == (0, 3)
    assert u.prefill_s is None and u.decode_s is None and u.load_s is None
    assert u.total_s == 1.25  # falls back to wall clock


def test_usage_from_openai_timings_ms_to_s():
    u = usage_from_openai({"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
                          {"prompt_n": 99, "prompt_ms": 250.0, "predicted_n": 99, "predicted_ms": 1500.0}, wall_s=2.0)
    assert (u.prompt_tokens, u.completion_tokens) == (10, 20)  # usage wins over timings counts
    assert u.prefill_s == pytest.approx(0.25)
    assert u.decode_s == pytest.approx(1.5)
    assert u.load_s is None
    assert u.total_s == 2.0


def test_usage_from_openai_counts_from_timings_when_no_usage():
    u = usage_from_openai(None, {"prompt_n": 5, "predicted_n": 8, "prompt_ms": 0}, wall_s=0.5)
    assert (u.prompt_tokens, u.completion_tokens) == (5, 8)
    assert u.prefill_s is None and u.decode_s is None
    assert u.total_s == 0.5


def test_usage_from_openai_nothing():
    u = usage_from_openai(None, None, wall_s=3.0)
    assert (u.prompt_tokens, u.completion_tokens, u.prefill_s, u.decode_s, u.total_s) == (0, 0, None, None, 3.0)
