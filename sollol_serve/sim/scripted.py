"""What the simulator answers when a request asks for structure instead of prose.

A request with tools (and `tool_choice` not "none") whose last message is not a tool result
gets one call of the named tool, else of the first one, with arguments valid against its
parameters; after a tool result it answers in words, so an agent loop ends. A request with
a `format` (Ollama: "json" or a schema) or a `response_format` (OpenAI: json_object or
json_schema) gets JSON that validates against the schema. Everything else: pseudo-words.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from sollol_serve.sim.schema_instance import instance

# `format: "json"` and `json_object` name no schema: any JSON object is a right answer.
_ANY_JSON = {"type": "object", "properties": {"answer": {"type": "string"}}}


@dataclass(frozen=True, slots=True)
class Script:
    text: str  # the answer's text; for a tool call, its arguments as JSON
    tool: str | None = None  # the tool called, if the answer is a tool call


def scripted(body: dict, api: Literal["ollama", "openai"]) -> Script | None:
    call = _tool_call(body, api)
    if call is not None:
        return call
    schema = _ollama_schema(body) if api == "ollama" else _openai_schema(body)
    if schema is None:
        return None
    return Script(json.dumps(instance(schema)))


def _ollama_schema(body: dict) -> object:
    fmt = body.get("format")
    if fmt == "json":
        return _ANY_JSON
    return fmt if isinstance(fmt, dict) else None


def _openai_schema(body: dict) -> object:
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return _ANY_JSON
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema") or {}
    return None


def _tool_call(body: dict, api: str) -> Script | None:
    tools = [t.get("function") for t in body.get("tools") or [] if isinstance(t, dict)]
    tools = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    messages = body.get("messages") or []
    if not tools or (messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"):
        return None
    choice = body.get("tool_choice") if api == "openai" else None
    if choice == "none":
        return None
    named = ((choice.get("function") or {}).get("name") if isinstance(choice, dict) else None)
    tool = next((t for t in tools if t["name"] == named), tools[0])
    return Script(json.dumps(instance(tool.get("parameters") or {"type": "object"})), tool=tool["name"])
