"""OpenAI's Responses API (`POST /v1/responses`), stateless, translated to and from OpenAI chat.

Translated: `input` (a string, or message items with input_text / output_text / input_image
by data URL, function_call and function_call_output items), instructions, function tools
and tool_choice, text.format (json_schema, json_object), max_output_tokens, temperature,
top_p, stream. The answer: a `response` with message and function_call output items and
usage; streamed, the response.* events (created, in_progress, output_item.added/done,
content_part.added/done, output_text.delta/done, function_call_arguments.delta/done,
completed or incomplete). Nothing is stored (`store` is answered false), so
`previous_response_id`, `conversation`, `background` and built-in tools (web search, file
search, ...) are a 400; settings that only tune OpenAI's own service (include, truncation,
reasoning, metadata, ...) are accepted and have no effect.
"""

from __future__ import annotations

import json
import time
from typing import Any

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

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_STATELESS = ("previous_response_id", "conversation", "prompt")


class ResponsesRequest(BaseModel):
    # The SDKs send many settings of OpenAI's own service; the ones that would change the
    # answer and can't be honoured here are refused in `chat_request`.
    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(min_length=1, max_length=512)
    input: StrictStr | list[dict[str, Any]]
    instructions: StrictStr | None = None
    max_output_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    stream: StrictBool = False
    background: StrictBool | None = None
    priority: StrictInt | None = Field(default=None, ge=1, le=10)


def chat_request(body: dict) -> dict:
    """The OpenAI chat body for a validated Responses body."""
    request = ResponsesRequest.model_validate(body)
    for key in _STATELESS:
        if body.get(key) is not None:
            raise BadRequest(f"{key} is not supported: this gateway's Responses API is stateless (send the whole input)")
    if request.background:
        raise BadRequest("background responses are not supported: nothing is stored")
    messages = [{"role": "system", "content": request.instructions}] if request.instructions else []
    messages += _messages(request.input)
    if not messages:
        raise BadRequest("input must not be empty")
    out: dict = {"model": request.model, "messages": messages, "stream": request.stream}
    if request.stream:
        out["stream_options"] = {"include_usage": True}  # response.completed reports usage
    if request.max_output_tokens is not None:
        out["max_tokens"] = request.max_output_tokens
    for key in ("temperature", "top_p"):
        if getattr(request, key) is not None:
            out[key] = getattr(request, key)
    fmt = _response_format(request.text)
    if fmt is not None:
        out["response_format"] = fmt
    tools = [_tool(t) for t in request.tools or []]
    choice = request.tool_choice
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise BadRequest("tool_choice: only a function tool may be named ({\"type\": \"function\", \"name\": ...})")
        choose_tools(out, tools, None, choice["name"])
    else:
        if choice not in (None, "auto", "none", "required"):
            raise BadRequest(f"tool_choice: '{choice}' is not one of auto, none, required")
        choose_tools(out, tools, choice)
    return out


def _tool(tool: dict) -> dict:
    if tool.get("type") != "function":
        raise BadRequest(f"tools: '{tool.get('type')}' is a built-in tool, which this gateway does not run "
                         "(function tools only)")
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise BadRequest("tools: a function tool needs a name")
    return function_tool(tool["name"], tool.get("description"), tool.get("parameters"))


def _response_format(text: dict | None) -> dict | None:
    fmt = (text or {}).get("format") or {}
    kind = fmt.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise BadRequest("text.format: a json_schema format needs a schema")
        schema = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
        if fmt.get("strict") is not None:
            schema["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": schema}
    raise BadRequest(f"text.format: type '{kind}' is not supported")


def _messages(items: str | list[dict]) -> list[dict]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict] = []
    for i, item in enumerate(items):
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = _ROLES.get(item.get("role"))
            if role is None:
                raise BadRequest(f"input[{i}]: role '{item.get('role')}' is not one of {', '.join(_ROLES)}")
            out.append({"role": role, "content": _content(item.get("content"), i)})
        elif kind == "function_call":
            call = {"id": _field(item, "call_id", i), "type": "function",
                    "function": {"name": _field(item, "name", i), "arguments": item.get("arguments") or "{}"}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and (last.get("tool_calls") or not last["content"]):
                last.setdefault("tool_calls", []).append(call)  # parallel calls: one assistant turn
                last["content"] = last["content"] or None
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            out.append({"role": "tool", "tool_call_id": _field(item, "call_id", i),
                        "content": output if isinstance(output, str) else _text_of(output, i)})
        elif kind == "reasoning":
            continue  # the model's notes from an earlier turn: nothing a chat model takes back
        else:
            raise BadRequest(f"input[{i}]: item type '{kind}' is not supported by this gateway")
    return out


def _field(item: dict, key: str, i: int) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"input[{i}]: a {item.get('type')} item needs a string '{key}'")
    return value


def _content(content: object, i: int) -> str | list[dict]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"input[{i}]: content must be a string or a list of parts")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "input_image" and str(part.get("image_url", "")).startswith("data:"):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        elif kind == "input_image":
            raise BadRequest(f"input[{i}]: images must be data URLs (a URL or file_id is not fetched by this gateway)")
        else:
            raise BadRequest(f"input[{i}]: content part type '{kind}' is not supported by this gateway")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _text_of(parts: object, i: int) -> str:
    content = _content(parts, i)
    if not isinstance(content, str):
        raise BadRequest(f"input[{i}]: a function_call_output carries text only")
    return content


# -- answers ----------------------------------------------------------------------------
def _usage(prompt: int, completion: int) -> dict:
    return {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str, status: str = "completed") -> dict:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [_text_part(text)] if status == "completed" else []}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def response_object(body: dict, response_id: str, created: int, status: str, output: list[dict],
                    usage: dict | None) -> dict:
    """The `response` object: what was asked echoed back, as OpenAI's API does."""
    request = ResponsesRequest.model_validate(body)
    text_format = (request.text or {}).get("format") or {"type": "text"}
    tools = [{"type": "function", "name": t.get("name"), "description": t.get("description"),
              "parameters": t.get("parameters"), "strict": t.get("strict")} for t in request.tools or []]
    return {
        "id": response_id, "object": "response", "created_at": created, "status": status,
        "completed_at": int(time.time()) if status != "in_progress" else None,
        "error": None, "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": request.instructions, "max_output_tokens": request.max_output_tokens,
        "model": request.model, "output": output, "parallel_tool_calls": True, "previous_response_id": None,
        "reasoning": None, "store": False, "temperature": request.temperature if request.temperature is not None else 1.0,
        "text": {"format": text_format}, "tool_choice": request.tool_choice or "auto", "tools": tools,
        "top_p": request.top_p if request.top_p is not None else 1.0, "truncation": "disabled",
        "usage": usage, "metadata": {}, "background": False, "service_tier": "default",
    }


def _status(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def response(answer: dict, body: dict) -> dict:
    """An OpenAI chat completion as a Responses `response`."""
    reply, finish = first_choice(answer)
    output = []
    if reply.get("content"):
        output.append(_message_item(new_id("msg"), reply["content"]))
    for call in reply.get("tool_calls") or []:
        fn = call.get("function") or {}
        arguments = fn.get("arguments")
        output.append(_call_item(new_id("fc"), call.get("id") or new_id("call"), fn.get("name", ""),
                                 arguments if isinstance(arguments, str) else json.dumps(arguments_object(arguments))))
    if not output:
        output.append(_message_item(new_id("msg"), ""))
    return response_object(body, new_id("resp"), int(time.time()), _status(finish), output,
                           _usage(*token_counts(answer.get("usage"))))


class ResponseEvents:
    """An OpenAI chat chunk stream as the Responses stream events, numbered in order."""

    def __init__(self, body: dict):
        self.body = body
        self.id = new_id("resp")
        self.created = int(time.time())
        self.chat = ChatStream()
        self.sequence = 0
        self.output: list[dict] = []  # the items finished, in output order
        self.text: dict | None = None  # the message item open now: id, index, text so far
        self.call: dict | None = None  # the function_call item open now: id, index, call index, name, call_id
        self.started = False

    def feed(self, chunk: dict) -> list[dict]:
        out = self._start()
        for piece in self.chat.pieces(chunk):
            if piece.kind == "text":
                if self.text is None:
                    out += self._close_call()
                    out += self._open_text()
                self.text["text"] += piece.text
                out.append(self._event("response.output_text.delta", item_id=self.text["id"],
                                       output_index=self.text["index"], content_index=0, delta=piece.text,
                                       logprobs=[]))
            elif piece.kind == "call":
                out += self._close_text() + self._close_call()
                self.call = {"id": new_id("fc"), "index": len(self.output), "call": piece.index,
                             "call_id": piece.id, "name": piece.name}
                out.append(self._event("response.output_item.added", output_index=self.call["index"],
                                       item=_call_item(self.call["id"], piece.id, piece.name, "", "in_progress")))
            elif self.call is not None and self.call["call"] == piece.index:
                out.append(self._event("response.function_call_arguments.delta", item_id=self.call["id"],
                                       output_index=self.call["index"], delta=piece.text))
        return out

    def finish(self, routing: dict) -> list[dict]:
        out = [*self._start(), *self._close_text(), *self._close_call()]
        status = _status(self.chat.finish_reason)
        final = response_object(self.body, self.id, self.created, status, self.output, _usage(*self.chat.tokens()))
        name = "response.completed" if status == "completed" else "response.incomplete"
        return [*out, {**self._event(name, response=final), "_sollol_routing": routing}]

    def failed(self, message: str) -> list[dict]:
        return [self._event("error", code="stream_broken", message=message, param=None)]

    def _event(self, kind: str, **data: Any) -> dict:
        self.sequence += 1
        return {"type": kind, "sequence_number": self.sequence - 1, **data}

    def _start(self) -> list[dict]:
        if self.started:
            return []
        self.started = True
        shell = response_object(self.body, self.id, self.created, "in_progress", [], None)
        return [self._event("response.created", response=shell), self._event("response.in_progress", response=shell)]

    def _open_text(self) -> list[dict]:
        self.text = {"id": new_id("msg"), "index": len(self.output), "text": ""}
        where = {"item_id": self.text["id"], "output_index": self.text["index"], "content_index": 0}
        return [self._event("response.output_item.added", output_index=self.text["index"],
                            item=_message_item(self.text["id"], "", "in_progress")),
                self._event("response.content_part.added", **where, part=_text_part(""))]

    def _close_text(self) -> list[dict]:
        if self.text is None:
            return []
        text, item = self.text, _message_item(self.text["id"], self.text["text"])
        self.text = None
        self.output.append(item)
        where = {"item_id": text["id"], "output_index": text["index"], "content_index": 0}
        return [self._event("response.output_text.done", **where, text=text["text"], logprobs=[]),
                self._event("response.content_part.done", **where, part=_text_part(text["text"])),
                self._event("response.output_item.done", output_index=text["index"], item=item)]

    def _close_call(self) -> list[dict]:
        if self.call is None:
            return []
        call, self.call = self.call, None
        arguments = self.chat.calls[call["call"]]["arguments"]
        item = _call_item(call["id"], call["call_id"], call["name"], arguments)
        self.output.append(item)
        return [self._event("response.function_call_arguments.done", item_id=call["id"],
                            output_index=call["index"], arguments=arguments),
                self._event("response.output_item.done", output_index=call["index"], item=item)]
