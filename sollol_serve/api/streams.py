"""Writing streamed answers: Ollama's NDJSON, OpenAI's SSE and the translated dialects' named
events, a batch of chunks per write, with `_sollol_routing` at the end and an error event if
the stream breaks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from sollol_serve.api.dialects import DialectEvents
from sollol_serve.api.recorder import StreamAccount
from sollol_serve.protocol import StreamEnd, error_message


def dumps(payload: dict) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _as_is(routing: dict) -> dict:
    return routing


class NDJSON:
    """Ollama stream: chunks as they come; the final `done` chunk is held for `_sollol_routing`."""

    def __init__(self) -> None:
        self.final: dict | None = None

    def chunks(self, chunks: list[dict]) -> str:
        if chunks[-1].get("done"):
            self.final = chunks.pop()  # held only until the StreamEnd that follows at once
        return "".join(dumps(chunk) + "\n" for chunk in chunks)

    def end(self, routing: dict) -> str:
        return "" if self.final is None else dumps({**self.final, "_sollol_routing": routing}) + "\n"

    def error(self, message: str) -> str:
        return dumps({"error": message, "done": True, "done_reason": "error"}) + "\n"


class OpenAISSE:
    """OpenAI stream: `data:` events; a last chunk carries `_sollol_routing`, then [DONE]."""

    def __init__(self) -> None:
        self.last: dict = {}

    def chunks(self, chunks: list[dict]) -> str:
        self.last = chunks[-1]
        return "".join(f"data: {dumps(chunk)}\n\n" for chunk in chunks)

    def end(self, routing: dict) -> str:
        tail = {k: self.last[k] for k in ("id", "object", "created", "model") if k in self.last}
        return f"data: {dumps({**tail, 'choices': [], '_sollol_routing': routing})}\n\ndata: [DONE]\n\n"

    def error(self, message: str) -> str:
        return f"data: {dumps({'error': {'message': message, 'type': 'server_error', 'code': 'stream_broken'}})}\n\n"


class DialectSSE:
    """A translated dialect's stream (Anthropic, Responses): named events made from the chat chunks."""

    def __init__(self, events: DialectEvents):
        self.events = events

    def chunks(self, chunks: list[dict]) -> str:
        return _named([event for chunk in chunks for event in self.events.feed(chunk)])

    def end(self, routing: dict) -> str:
        return _named(self.events.finish(routing))

    def error(self, message: str) -> str:
        return _named(self.events.failed(message))


def _named(events: list[dict]) -> str:
    return "".join(f"event: {event['type']}\ndata: {dumps(event)}\n\n" for event in events)


async def relay(items: AsyncIterator[object], account: StreamAccount, encoder: NDJSON | OpenAISSE | DialectSSE,
                view: Callable[[dict], dict] = _as_is) -> AsyncIterator[str]:
    """A routed stream written as `encoder` writes it, a batch of chunks per write, with
    `_sollol_routing` (as `view` shows it to this caller) at its end and an error event if it breaks."""
    try:
        async for item in items:
            if isinstance(item, StreamEnd):
                account.end(item)
                text = encoder.end(view(item.routing))
                if text:
                    yield text
                return
            account.chunk(len(item))
            text = encoder.chunks(item)
            if text:
                yield text
    except Exception as exc:
        account.broken()
        yield encoder.error(error_message(exc))
    finally:
        account.close()
        await items.aclose()


async def events(first: dict, rest) -> AsyncIterator[str]:
    """A progress stream of our own (model warm-up): a JSON line per event, an error line if it breaks."""
    yield dumps(first) + "\n"
    try:
        async for event in rest:
            yield dumps(event) + "\n"
    except Exception as exc:
        yield dumps({"status": "error", "error": error_message(exc)}) + "\n"
    finally:
        rest.cancel()
