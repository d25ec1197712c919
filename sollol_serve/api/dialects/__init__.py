"""Client APIs the gateway translates at its edge into OpenAI chat, which every node kind
takes: Anthropic Messages (`/v1/messages`) and OpenAI Responses (`/v1/responses`).

A `Dialect` is what the inference path needs of one: the schema its body is checked against,
the chat body it becomes, the answer turned back, and the event stream a chat stream becomes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from sollol_serve.api.dialects import anthropic, responses


class DialectEvents(Protocol):
    """One stream's events, each a dict whose `type` is also its SSE event name."""

    def feed(self, chunk: dict) -> list[dict]: ...

    def finish(self, routing: dict) -> list[dict]: ...

    def failed(self, message: str) -> list[dict]: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    schema: type[BaseModel]
    chat_request: Callable[[dict], dict]
    answer: Callable[[dict, dict], dict]  # (the chat answer, the client's body) -> the dialect's answer
    events: Callable[[dict], DialectEvents]  # the client's body -> a stream's events


ANTHROPIC = Dialect(anthropic.MessagesRequest, anthropic.chat_request, anthropic.message, anthropic.MessageEvents)
RESPONSES = Dialect(responses.ResponsesRequest, responses.chat_request, responses.response, responses.ResponseEvents)
