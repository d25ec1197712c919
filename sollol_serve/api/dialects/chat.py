"""What both translated dialects share: the OpenAI chat side of the translation.

Anthropic Messages and OpenAI Responses requests become OpenAI chat requests at the gateway's
edge (every node kind takes those, tools included, the workers translating for Ollama nodes);
the answers and the chunk streams come back as OpenAI chat and are read here.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Literal

from sollol_serve.protocol import BadRequest


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def function_tool(name: str, description: str | None, parameters: dict | None) -> dict:
    return {"type": "function", "function": {"name": name, "description": description or "",
                                             "parameters": parameters or {"type": "object", "properties": {}}}}


def choose_tools(body: dict, tools: list[dict], choice: Literal["auto", "none", "required"] | str | None,
                 named: str | None = None) -> None:
    """Sets the chat body's tools as the client chose them. "none" sends no tools, and a named
    tool is the only one sent: that holds on Ollama nodes too, which ignore `tool_choice`."""
    if not tools or choice == "none":
        return
    if named is not None:
        tools = [t for t in tools if t["function"]["name"] == named]
        if not tools:
            raise BadRequest(f"tool_choice names the tool '{named}', which is not among the tools")
        body["tools"] = tools
        body["tool_choice"] = {"type": "function", "function": {"name": named}}
        return
    body["tools"] = tools
    if choice == "required":
        body["tool_choice"] = "required"


def arguments_object(arguments: str | dict | None) -> dict:
    """A tool call's arguments as the object both dialects carry (a node's broken JSON is kept
    as a string under `arguments` rather than dropped)."""
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return {"arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"arguments": parsed}


def first_choice(answer: dict) -> tuple[dict, str | None]:
    choice = (answer.get("choices") or [{}])[0]
    return choice.get("message") or {}, choice.get("finish_reason")


def token_counts(usage: dict | None) -> tuple[int, int]:
    usage = usage or {}
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


@dataclass(slots=True)
class Piece:
    """One step of a chat stream: text, the start of a tool call, or more of its arguments."""

    kind: Literal["text", "call", "arguments"]
    text: str = ""
    index: int = 0
    id: str = ""
    name: str = ""


@dataclass
class ChatStream:
    """Reads the OpenAI chat chunks of a routed stream as pieces, and keeps what the end of
    the dialect's stream needs: the finish reason, the usage, the tool calls made."""

    finish_reason: str | None = None
    usage: dict = field(default_factory=dict)
    calls: dict[int, dict] = field(default_factory=dict)  # index -> id, name, arguments so far

    def pieces(self, chunk: dict) -> list[Piece]:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out = []
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out.append(Piece("text", delta["content"]))
            for call in delta.get("tool_calls") or []:
                out += self._call(call)
        return out

    def _call(self, call: dict) -> list[Piece]:
        index, fn = call.get("index", 0), call.get("function") or {}
        out = []
        if index not in self.calls:
            self.calls[index] = {"id": call.get("id") or new_id("call"), "name": fn.get("name") or "", "arguments": ""}
            out.append(Piece("call", index=index, id=self.calls[index]["id"], name=self.calls[index]["name"]))
        if fn.get("arguments"):
            self.calls[index]["arguments"] += fn["arguments"]
            out.append(Piece("arguments", fn["arguments"], index=index))
        return out

    def tokens(self) -> tuple[int, int]:
        return token_counts(self.usage)
