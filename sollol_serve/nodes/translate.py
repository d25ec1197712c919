"""Translation between the Ollama API and the OpenAI API, both directions.

A client speaking one API may be routed to a node speaking the other. Requests, whole
responses and stream chunks are translated here as pure functions of dicts; when client and
node speak the same API nothing is translated. Usage (the learning signal) is read from
either format.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from datetime import datetime, timezone

from sollol_serve.protocol import Operation, Usage

# Ollama `options` key -> OpenAI (llama-server / vLLM accept the non-standard ones too).
_OPTION_TO_OPENAI = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "num_predict": "max_tokens",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repeat_penalty",
}
_OPENAI_TO_OPTION = {v: k for k, v in _OPTION_TO_OPENAI.items()} | {"max_completion_tokens": "num_predict"}

OLLAMA_PATHS: dict[Operation, str] = {
    "chat": "/api/chat",
    "generate": "/api/generate",
    "embed": "/api/embed",
    "embeddings": "/api/embeddings",
}
OPENAI_PATHS: dict[Operation, str] = {
    "chat": "/v1/chat/completions",
    "generate": "/v1/completions",
    "embed": "/v1/embeddings",
    "embeddings": "/v1/embeddings",
}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------------------------------
# Ollama client -> OpenAI node
# ---------------------------------------------------------------------------------------
def _openai_message(message: dict) -> dict:
    out = {k: v for k, v in message.items() if k not in ("images", "tool_calls", "thinking")}
    images = message.get("images") or []
    if images:
        parts: list[dict] = [{"type": "text", "text": message.get("content", "")}]
        parts += [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{img}"}} for img in images]
        out["content"] = parts
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {
                "id": call.get("id") or new_id("call"),
                "type": "function",
                "function": {
                    "name": call.get("function", {}).get("name", ""),
                    "arguments": json.dumps(call.get("function", {}).get("arguments", {})),
                },
            }
            for call in message["tool_calls"]
        ]
    return out


def _response_format(fmt: object) -> dict | None:
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    return None


def ollama_to_openai_request(op: Operation, body: dict) -> dict:
    out: dict = {"model": body["model"]}
    if op in ("embed", "embeddings"):
        out["input"] = body.get("input", "") if op == "embed" else body.get("prompt", "")
        return out
    stream = body.get("stream", True) is not False
    out["stream"] = stream
    if stream:
        out["stream_options"] = {"include_usage": True}
    for key, value in (body.get("options") or {}).items():
        target = _OPTION_TO_OPENAI.get(key)
        if target == "max_tokens" and (not isinstance(value, int) or value < 0):
            continue  # -1 / -2 mean "no limit" / "fill the context" in Ollama
        if target:
            out[target] = value
    fmt = _response_format(body.get("format"))
    if fmt:
        out["response_format"] = fmt
    if op == "chat":
        out["messages"] = [_openai_message(m) for m in body.get("messages", [])]
        if body.get("tools"):
            out["tools"] = body["tools"]
    else:
        prompt = body.get("prompt", "")
        if body.get("system"):
            prompt = f"{body['system']}\n\n{prompt}"
        out["prompt"] = prompt
        if body.get("suffix"):
            out["suffix"] = body["suffix"]
    return out


def _tool_calls_to_ollama(calls: list[dict] | None) -> list[dict]:
    result = []
    for call in calls or []:
        fn = call.get("function") or {}
        args = fn.get("arguments") or "{}"
        try:
            parsed = json.loads(args) if isinstance(args, str) else args
        except json.JSONDecodeError:
            parsed = {"_raw": args}
        result.append({"function": {"name": fn.get("name", ""), "arguments": parsed}})
    return result


def _ollama_timing(usage: Usage) -> dict:
    return {
        "total_duration": int(usage.total_s * 1e9),
        "load_duration": int((usage.load_s or 0) * 1e9),
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": int((usage.prefill_s or 0) * 1e9),
        "eval_count": usage.completion_tokens,
        "eval_duration": int((usage.decode_s or 0) * 1e9),
    }


def openai_response_to_ollama(op: Operation, resp: dict, model: str, usage: Usage) -> dict:
    if op == "embed":
        vectors = [d["embedding"] for d in sorted(resp.get("data", []), key=lambda d: d.get("index", 0))]
        return {"model": model, "embeddings": vectors, "total_duration": int(usage.total_s * 1e9),
                "load_duration": 0, "prompt_eval_count": usage.prompt_tokens}
    if op == "embeddings":
        data = resp.get("data") or [{}]
        return {"embedding": data[0].get("embedding", [])}
    choice = (resp.get("choices") or [{}])[0]
    out: dict = {"model": model, "created_at": now_iso()}
    if op == "chat":
        message = choice.get("message") or {}
        out["message"] = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("tool_calls"):
            out["message"]["tool_calls"] = _tool_calls_to_ollama(message["tool_calls"])
    else:
        out["response"] = choice.get("text", "")
    out["done"] = True
    out["done_reason"] = _ollama_done_reason(choice.get("finish_reason"))
    out.update(_ollama_timing(usage))
    return out


def _ollama_done_reason(finish_reason: str | None) -> str:
    return "length" if finish_reason == "length" else "stop"


class OpenAIToOllamaStream:
    """Turns an OpenAI SSE chunk stream into Ollama NDJSON chunks (final one with timings)."""

    def __init__(self, op: Operation, model: str):
        self.op = op
        self.model = model
        self.finish_reason: str | None = None
        self.tool_calls: dict[int, dict] = {}

    def feed(self, chunk: dict) -> list[dict]:
        out = []
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            if self.op == "chat":
                delta = choice.get("delta") or {}
                for call in delta.get("tool_calls") or []:
                    self._merge_tool_call(call)
                text = delta.get("content")
            else:
                text = choice.get("text")
            if text:
                out.append(self._chunk(text, done=False))
        return out

    def _merge_tool_call(self, call: dict) -> None:
        slot = self.tool_calls.setdefault(call.get("index", 0), {"function": {"name": "", "arguments": ""}})
        fn = call.get("function") or {}
        slot["function"]["name"] += fn.get("name") or ""
        slot["function"]["arguments"] += fn.get("arguments") or ""

    def _chunk(self, text: str, done: bool) -> dict:
        payload: dict = {"model": self.model, "created_at": now_iso()}
        if self.op == "chat":
            payload["message"] = {"role": "assistant", "content": text}
        else:
            payload["response"] = text
        payload["done"] = done
        return payload

    def finish(self, usage: Usage) -> dict:
        final = self._chunk("", done=True)
        if self.tool_calls:
            final["message"]["tool_calls"] = _tool_calls_to_ollama(list(self.tool_calls.values()))
        final["done_reason"] = _ollama_done_reason(self.finish_reason)
        final.update(_ollama_timing(usage))
        return final


# ---------------------------------------------------------------------------------------
# OpenAI client -> Ollama node
# ---------------------------------------------------------------------------------------
class UnsupportedInput(ValueError):
    """OpenAI input an Ollama node cannot take (e.g. token-id arrays)."""


def _ollama_message(message: dict) -> dict:
    out = {k: v for k, v in message.items() if k not in ("content", "tool_calls", "name")}
    content = message.get("content")
    if isinstance(content, list):
        texts, images = [], []
        for part in content:
            if part.get("type") == "text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                images.append(url.split(",", 1)[1] if url.startswith("data:") else url)
        out["content"] = "\n".join(texts)
        if images:
            out["images"] = images
    else:
        out["content"] = content or ""
    if message.get("tool_calls"):
        out["tool_calls"] = _tool_calls_to_ollama(message["tool_calls"])
    return out


def _ollama_format(response_format: dict | None) -> object:
    if not response_format:
        return None
    if response_format.get("type") == "json_object":
        return "json"
    if response_format.get("type") == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema")
    return None


def _embedding_input(value: object) -> str | list[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise UnsupportedInput("this node takes text input only (a string or a list of strings)")


def openai_to_ollama_request(op: Operation, body: dict) -> dict:
    out: dict = {"model": body["model"]}
    if op in ("embed", "embeddings"):
        out["input"] = _embedding_input(body.get("input"))
        return out
    out["stream"] = bool(body.get("stream", False))
    options = {_OPENAI_TO_OPTION[k]: v for k, v in body.items() if k in _OPENAI_TO_OPTION and v is not None}
    if body.get("max_completion_tokens") is not None:  # the newer name wins over max_tokens
        options["num_predict"] = body["max_completion_tokens"]
    if options:
        out["options"] = options
    fmt = _ollama_format(body.get("response_format"))
    if fmt is not None:
        out["format"] = fmt
    if op == "chat":
        out["messages"] = [_ollama_message(m) for m in body.get("messages", [])]
        if body.get("tools"):
            out["tools"] = body["tools"]
    else:
        prompt = body.get("prompt", "")
        if isinstance(prompt, list):
            if not all(isinstance(p, str) for p in prompt) or len(prompt) != 1:
                raise UnsupportedInput("prompt must be a string (or a list of exactly one string)")
            prompt = prompt[0]
        out["prompt"] = prompt
        if body.get("suffix"):
            out["suffix"] = body["suffix"]
    return out


def _openai_finish_reason(done_reason: str | None, has_tools: bool) -> str:
    if has_tools:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def _openai_tool_calls(calls: list[dict]) -> list[dict]:
    return [
        {
            "id": new_id("call"),
            "type": "function",
            "function": {"name": c.get("function", {}).get("name", ""),
                         "arguments": json.dumps(c.get("function", {}).get("arguments", {}))},
        }
        for c in calls
    ]


def openai_usage(usage: Usage) -> dict:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def encode_embedding(vector: list[float], encoding_format: str | None) -> list[float] | str:
    """OpenAI's `encoding_format: base64` (the openai client's default): little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def ollama_response_to_openai(op: Operation, resp: dict, model: str, usage: Usage,
                              encoding_format: str | None = None) -> dict:
    if op in ("embed", "embeddings"):
        vectors = resp.get("embeddings") or ([resp["embedding"]] if "embedding" in resp else [])
        return {
            "object": "list",
            "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode_embedding(v, encoding_format)}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
        }
    created = int(time.time())
    if op == "chat":
        message = resp.get("message") or {}
        calls = message.get("tool_calls") or []
        out_msg: dict = {"role": "assistant", "content": message.get("content", "")}
        if calls:
            out_msg["tool_calls"] = _openai_tool_calls(calls)
        choice = {"index": 0, "message": out_msg, "logprobs": None,
                  "finish_reason": _openai_finish_reason(resp.get("done_reason"), bool(calls))}
        return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": created, "model": model,
                "choices": [choice], "usage": openai_usage(usage)}
    choice = {"index": 0, "text": resp.get("response", ""), "logprobs": None,
              "finish_reason": _openai_finish_reason(resp.get("done_reason"), False)}
    return {"id": new_id("cmpl"), "object": "text_completion", "created": created, "model": model,
            "choices": [choice], "usage": openai_usage(usage)}


class OllamaToOpenAIStream:
    """Turns Ollama NDJSON chunks into OpenAI chunks (role first, finish reason last)."""

    def __init__(self, op: Operation, model: str, include_usage: bool):
        self.op = op
        self.model = model
        self.include_usage = include_usage
        self.id = new_id("chatcmpl" if op == "chat" else "cmpl")
        self.created = int(time.time())
        self.started = False
        self.tool_calls_sent = 0  # numbering runs across chunks; also decides the finish reason

    def _event(self, choices: list[dict], **extra: object) -> dict:
        obj = "chat.completion.chunk" if self.op == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def _choice(self, text: str | None, finish: str | None = None, **delta_extra: object) -> dict:
        if self.op == "chat":
            delta = ({"content": text} if text else {}) | delta_extra
            return {"index": 0, "delta": delta, "finish_reason": finish}
        return {"index": 0, "text": text or "", "finish_reason": finish}

    def feed(self, chunk: dict, usage: Usage | None = None) -> list[dict]:
        """`usage` is given with the final (done) chunk."""
        out = []
        if self.op == "chat" and not self.started:
            out.append(self._event([self._choice(None, role="assistant")]))
        self.started = True
        text = (chunk.get("message") or {}).get("content") if self.op == "chat" else chunk.get("response")
        calls = (chunk.get("message") or {}).get("tool_calls") if self.op == "chat" else None
        if calls:
            numbered = [{"index": self.tool_calls_sent + i, **c} for i, c in enumerate(_openai_tool_calls(calls))]
            self.tool_calls_sent += len(numbered)
            out.append(self._event([self._choice(None, tool_calls=numbered)]))
        if text:
            out.append(self._event([self._choice(text)]))
        if chunk.get("done"):
            finish = _openai_finish_reason(chunk.get("done_reason"), self.tool_calls_sent > 0)
            out.append(self._event([self._choice(None, finish)]))
            if self.include_usage and usage is not None:
                out.append(self._event([], usage=openai_usage(usage)))
        return out


# ---------------------------------------------------------------------------------------
# Usage: the learning signal, from either format
# ---------------------------------------------------------------------------------------
def usage_from_ollama(final: dict, wall_s: float) -> Usage:
    def seconds(key: str) -> float | None:
        value = final.get(key)
        return value / 1e9 if isinstance(value, (int, float)) and value > 0 else None

    total, prefill, decode, load = (seconds(k) for k in
                                    ("total_duration", "prompt_eval_duration", "eval_duration", "load_duration"))
    # Ollama's total covers the whole request inside the node: what its parts don't is the
    # wait for a free slot. (Ollama counts only evaluated prompt tokens, cached ones skipped.)
    queued = max(0.0, total - (load or 0.0) - prefill - decode) if total and prefill and decode else None
    return Usage(
        prompt_tokens=int(final.get("prompt_eval_count") or 0),
        completion_tokens=int(final.get("eval_count") or 0),
        prefill_s=prefill,
        decode_s=decode,
        load_s=load,
        total_s=total or wall_s,
        queued_s=queued,
    )


def usage_from_openai(usage: dict | None, timings: dict | None, wall_s: float) -> Usage:
    usage = usage or {}
    timings = timings or {}
    prompt_ms = timings.get("prompt_ms")
    predicted_ms = timings.get("predicted_ms")
    evaluated = timings.get("prompt_n")  # llama-server: the prompt tokens not in its cache
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or timings.get("prompt_n") or 0),
        completion_tokens=int(usage.get("completion_tokens") or timings.get("predicted_n") or 0),
        prefill_s=prompt_ms / 1000 if prompt_ms else None,
        decode_s=predicted_ms / 1000 if predicted_ms else None,
        total_s=wall_s,
        prefill_tokens=evaluated if isinstance(evaluated, int) and evaluated >= 0 else None,
    )
