"""Assembly of a node's streamed answer into the answer it would have given unstreamed.

The gateway always asks nodes to stream chat/generate/completions so it can enforce
time-to-first-byte and idle timeouts; when the client asked for one whole answer, the chunks
are assembled here, in the node's own API (translation between APIs happens afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass, field


# ---------------------------------------------------------------------------------------
# Ollama: NDJSON chunks of /api/chat or /api/generate
# ---------------------------------------------------------------------------------------
class OllamaAssembler:
    """Feed every chunk; `result()` is the `stream: false` response."""

    def __init__(self) -> None:
        self.final: dict | None = None
        self.chat = False
        self.role: str | None = None
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.tool_calls: list[dict] = []
        self.images: list | None = None

    def feed(self, chunk: dict) -> None:
        if "message" in chunk:
            self.chat = True
            self._feed_message(chunk["message"] or {})
        else:
            self.text.append(chunk.get("response") or "")
            self.thinking.append(chunk.get("thinking") or "")
        if chunk.get("done"):
            self.final = chunk

    def _feed_message(self, message: dict) -> None:
        self.role = self.role or message.get("role")
        self.text.append(message.get("content") or "")
        self.thinking.append(message.get("thinking") or "")
        self.tool_calls += message.get("tool_calls") or []
        if message.get("images"):
            self.images = message["images"]

    def result(self) -> dict:
        if self.final is None:
            raise ValueError("stream ended before its final chunk")
        out = dict(self.final)
        thinking = "".join(self.thinking)
        if self.chat:
            out["message"] = self._message(thinking)
        else:
            out["response"] = "".join(self.text)
            # Ollama omits empty fields (Go's omitempty) from the unstreamed answer.
            if thinking:
                out["thinking"] = thinking
        return out

    def _message(self, thinking: str) -> dict:
        message: dict = {"role": self.role or "assistant", "content": "".join(self.text)}
        if thinking:
            message["thinking"] = thinking
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.images is not None:
            message["images"] = self.images
        return message


# ---------------------------------------------------------------------------------------
# OpenAI-compatible: SSE `data:` objects of /v1/chat/completions or /v1/completions
# ---------------------------------------------------------------------------------------
_HEADER_KEYS = ("id", "created", "model", "system_fingerprint")


@dataclass
class _Choice:
    role: str | None = None
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict] = field(default_factory=dict)
    finish_reason: str | None = None

    def feed_delta(self, delta: dict) -> None:
        self.role = self.role or delta.get("role")
        self.text.append(delta.get("content") or "")
        self.reasoning.append(delta.get("reasoning_content") or "")
        for call in delta.get("tool_calls") or []:
            self._merge_tool_call(call)

    def _merge_tool_call(self, call: dict) -> None:
        slot = self.tool_calls.setdefault(call.get("index", 0), {"id": None, "type": None,
                                                                  "function": {"name": None, "arguments": ""}})
        for key in ("id", "type"):
            slot[key] = slot[key] or call.get(key)
        fn = call.get("function") or {}
        slot["function"]["name"] = slot["function"]["name"] or fn.get("name")
        slot["function"]["arguments"] += fn.get("arguments") or ""

    def message(self) -> dict:
        content = "".join(self.text) or (None if self.tool_calls else "")
        message: dict = {"role": self.role or "assistant", "content": content}
        reasoning = "".join(self.reasoning)
        if reasoning:
            message["reasoning_content"] = reasoning
        if self.tool_calls:
            message["tool_calls"] = [{**call, "type": call["type"] or "function"}
                                     for _, call in sorted(self.tool_calls.items())]
        return message


class OpenAIAssembler:
    """Feed every parsed `data:` object (not `[DONE]`); `result()` is the `stream: false` response."""

    def __init__(self) -> None:
        self.header: dict = {}
        self.chat = False
        self.fed = False
        self.choices: dict[int, _Choice] = {}
        self.usage: dict | None = None
        self.timings: dict | None = None

    def feed(self, chunk: dict) -> None:
        self.fed = True
        for key in _HEADER_KEYS:
            if key in chunk:
                self.header.setdefault(key, chunk[key])
        self.chat = self.chat or chunk.get("object") == "chat.completion.chunk"
        self.usage = chunk.get("usage") or self.usage
        self.timings = chunk.get("timings") or self.timings
        for raw in chunk.get("choices") or []:
            choice = self.choices.setdefault(raw.get("index", 0), _Choice())
            if "delta" in raw:
                choice.feed_delta(raw["delta"] or {})
            else:
                choice.text.append(raw.get("text") or "")
            choice.finish_reason = raw.get("finish_reason") or choice.finish_reason

    def result(self) -> dict:
        if not self.fed:
            raise ValueError("stream ended before its first chunk")
        out = {"id": self.header.get("id"), "object": "chat.completion" if self.chat else "text_completion",
               "created": self.header.get("created"), "model": self.header.get("model")}
        if "system_fingerprint" in self.header:
            out["system_fingerprint"] = self.header["system_fingerprint"]
        out["choices"] = [self._choice(index, choice) for index, choice in sorted(self.choices.items())]
        if self.usage is not None:
            out["usage"] = self.usage
        if self.timings is not None:
            out["timings"] = self.timings
        return out

    def _choice(self, index: int, choice: _Choice) -> dict:
        body = {"message": choice.message()} if self.chat else {"text": "".join(choice.text)}
        return {"index": index, **body, "finish_reason": choice.finish_reason, "logprobs": None}
