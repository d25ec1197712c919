"""Anthropic's Messages API (`POST /v1/messages`) translated to and from OpenAI chat.

Translated: system (string or text blocks), text and base64 image blocks, tool_use and
tool_result blocks, tools (custom ones) and tool_choice (auto, any, tool, none), max_tokens,
temperature, top_p, top_k, stop_sequences, stream. The answer: a `message` with text and
tool_use blocks, stop_reason end_turn / max_tokens / tool_use, usage; streamed, Anthropic's
events (message_start, content_block_start/delta/stop with text_delta and input_json_delta,
message_delta, message_stop). Refused with a 400 rather than ignored: extended thinking,
server tools (web search, code execution...), documents, images by URL, and any field the
API doesn't have. `cache_control` marks are accepted and have no effect (there is no prompt
cache to steer); thinking blocks in the history are dropped (the model's own notes).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from sollol_serve.api.dialects.chat import (
    ChatStream,
    arguments_object,
    choose_tools,
    first_choice,
    function_tool,
    new_id,
    token_counts,
)
from sollol_serve.protocol import BadRequest

_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: StrictStr | list[dict[str, Any]]


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(min_length=1, max_length=128)
    description: StrictStr | None = None
    input_schema: dict[str, Any]
    type: StrictStr | None = None  # "custom" (or absent); server tools have their own types
    cache_control: dict[str, Any] | None = None


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["auto", "any", "tool", "none"]
    name: StrictStr | None = None
    disable_parallel_tool_use: StrictBool | None = None


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr = Field(min_length=1, max_length=512)
    max_tokens: StrictInt = Field(ge=1)
    messages: list[Message] = Field(min_length=1)
    system: StrictStr | list[dict[str, Any]] | None = None
    stream: StrictBool = False
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=0)
    stop_sequences: list[StrictStr] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    metadata: dict[str, Any] | None = None  # user_id: nothing here uses it
    thinking: dict[str, Any] | None = None
    service_tier: StrictStr | None = None
    priority: StrictInt | None = Field(default=None, ge=1, le=10)  # SOLLOL's own, as on the other APIs


def chat_request(body: dict) -> dict:
    """The OpenAI chat body for a validated Messages body."""
    request = MessagesRequest.model_validate(body)
    if request.thinking and request.thinking.get("type") != "disabled":
        raise BadRequest("extended thinking is not supported by this gateway: send no `thinking` (or type disabled)")
    messages = [{"role": "system", "content": _system_text(request.system)}] if request.system else []
    for message in request.messages:
        messages += _chat_messages(message)
    out: dict = {"model": request.model, "messages": messages, "max_tokens": request.max_tokens,
                 "stream": request.stream}
    if request.stream:
        out["stream_options"] = {"include_usage": True}  # the closing message_delta reports usage
    for key in ("temperature", "top_p", "top_k"):
        if getattr(request, key) is not None:
            out[key] = getattr(request, key)
    if request.stop_sequences:
        out["stop"] = request.stop_sequences
    tools = [_tool(t) for t in request.tools or []]
    choice = request.tool_choice
    mode = {"any": "required", "tool": None}.get(choice.type, choice.type) if choice else None
    choose_tools(out, tools, mode, choice.name if choice and choice.type == "tool" else None)
    return out


def _system_text(system: str | list[dict]) -> str:
    if isinstance(system, str):
        return system
    for block in system:
        if block.get("type") != "text":
            raise BadRequest(f"system: block type '{block.get('type')}' is not supported (text only)")
    return "\n".join(str(block.get("text", "")) for block in system)


def _tool(tool: Tool) -> dict:
    if tool.type not in (None, "custom"):
        raise BadRequest(f"tools: '{tool.type}' is a server tool, which this gateway does not run")
    return function_tool(tool.name, tool.description, tool.input_schema)


def _chat_messages(message: Message) -> list[dict]:
    """One Anthropic message as chat messages: a user turn's tool results become tool
    messages (before its other content, as they answer the turn before it)."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    results, parts, calls = [], [], []
    for block in message.content:
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": _string(block, "text")})
        elif kind == "image":
            parts.append(_image(block))
        elif kind == "tool_use" and message.role == "assistant":
            calls.append({"id": _string(block, "id"), "type": "function",
                          "function": {"name": _string(block, "name"), "arguments": json.dumps(block.get("input", {}))}})
        elif kind == "tool_result" and message.role == "user":
            results.append({"role": "tool", "tool_call_id": _string(block, "tool_use_id"),
                            "content": _tool_result(block)})
        elif kind in ("thinking", "redacted_thinking") and message.role == "assistant":
            continue
        else:
            raise BadRequest(f"messages: a {message.role} block of type '{kind}' is not supported by this gateway")
    out = list(results)
    if parts or calls:
        text_only = all(p["type"] == "text" for p in parts)
        content: str | list | None = "".join(p["text"] for p in parts) if text_only else parts
        turn: dict = {"role": message.role, "content": content or (None if calls else "")}
        if calls:
            turn["tool_calls"] = calls
        out.append(turn)
    return out


def _string(block: dict, key: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise BadRequest(f"messages: a '{block.get('type')}' block needs a string '{key}'")
    return value


def _image(block: dict) -> dict:
    source = block.get("source") or {}
    if source.get("type") != "base64":
        raise BadRequest("messages: images must be base64 (a URL source is not fetched by this gateway)")
    return {"type": "image_url", "image_url": {"url": f"data:{source.get('media_type', 'image/png')};base64,"
                                                      f"{source.get('data', '')}"}}


def _tool_result(block: dict) -> str:
    content = block.get("content", "")
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or any(not isinstance(b, dict) or b.get("type") != "text" for b in content):
        raise BadRequest("messages: a tool_result's content must be a string or text blocks")
    return "".join(str(b.get("text", "")) for b in content)


# -- answers ----------------------------------------------------------------------------
def stop_reason(finish_reason: str | None, called: bool) -> str:
    return "tool_use" if called else _STOP_REASONS.get(finish_reason or "stop", "end_turn")


def message(answer: dict, body: dict) -> dict:
    """An OpenAI chat completion as an Anthropic `message`."""
    reply, finish = first_choice(answer)
    content: list[dict] = [{"type": "text", "text": reply["content"]}] if reply.get("content") else []
    for call in reply.get("tool_calls") or []:
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or new_id("toolu"), "name": fn.get("name", ""),
                        "input": arguments_object(fn.get("arguments"))})
    input_tokens, output_tokens = token_counts(answer.get("usage"))
    return {"id": new_id("msg"), "type": "message", "role": "assistant", "model": body["model"], "content": content,
            "stop_reason": stop_reason(finish, bool(reply.get("tool_calls"))), "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}


class MessageEvents:
    """An OpenAI chat chunk stream as Anthropic's stream events (each event's name is its `type`)."""

    def __init__(self, body: dict):
        self.model = body["model"]
        self.chat = ChatStream()
        self.started = False
        self.index = -1  # of the content block last opened
        self.open: tuple[str, int] | None = None  # the block open now: ("text", 0) or ("tool", call index)

    def feed(self, chunk: dict) -> list[dict]:
        out = self._start()
        for piece in self.chat.pieces(chunk):
            if piece.kind == "text":
                if self.open is None or self.open[0] != "text":
                    out += self._open(("text", 0), {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": piece.text}))
            elif piece.kind == "call":
                out += self._open(("tool", piece.index), {"type": "tool_use", "id": piece.id, "name": piece.name,
                                                          "input": {}})
            elif self.open == ("tool", piece.index):  # calls stream one after another
                out.append(self._delta({"type": "input_json_delta", "partial_json": piece.text}))
        return out

    def finish(self, routing: dict) -> list[dict]:
        input_tokens, output_tokens = self.chat.tokens()
        return [*self._start(), *self._close(),
                {"type": "message_delta", "delta": {"stop_reason": stop_reason(self.chat.finish_reason,
                                                                               bool(self.chat.calls)),
                                                    "stop_sequence": None},
                 "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
                 "_sollol_routing": routing},
                {"type": "message_stop"}]

    def failed(self, message: str) -> list[dict]:
        return [{"type": "error", "error": {"type": "api_error", "message": message}}]

    def _start(self) -> list[dict]:
        if self.started:
            return []
        self.started = True
        return [{"type": "message_start", "message": {
            "id": new_id("msg"), "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}}]

    def _open(self, block: tuple[str, int], content_block: dict) -> list[dict]:
        out = self._close()
        self.index += 1
        self.open = block
        return [*out, {"type": "content_block_start", "index": self.index, "content_block": content_block}]

    def _close(self) -> list[dict]:
        if self.open is None:
            return []
        self.open = None
        return [{"type": "content_block_stop", "index": self.index}]

    def _delta(self, delta: dict) -> dict:
        return {"type": "content_block_delta", "index": self.index, "delta": delta}
