"""Writing streamed answers: Ollama's NDJSON and OpenAI's SSE, a batch of chunks per write,
with `_sollol_routing` on the last chunk and an error chunk if the stream breaks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from sollol_serve.api.recorder import StreamAccount
from sollol_serve.protocol import StreamEnd, error_message


def dumps(payload: dict) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _as_is(routing: dict) -> dict:
    return routing


async def ndjson(items: AsyncIterator[object], account: StreamAccount,
                 view: Callable[[dict], dict] = _as_is) -> AsyncIterator[str]:
    """Ollama stream: chunks as they come; the final `done` chunk gets `_sollol_routing` (as
    `view` shows it to this caller)."""
    final: dict | None = None
    try:
        async for item in items:
            if isinstance(item, StreamEnd):
                account.end(item)
                if final is not None:
                    yield dumps({**final, "_sollol_routing": view(item.routing)}) + "\n"
                return
            account.chunk(len(item))
            if item[-1].get("done"):
                final = item.pop()  # held only until the StreamEnd that follows at once
            if item:
                yield "".join(dumps(chunk) + "\n" for chunk in item)
    except Exception as exc:
        account.broken()
        yield dumps({"error": error_message(exc), "done": True, "done_reason": "error"}) + "\n"
    finally:
        account.close()
        await items.aclose()


async def sse(items: AsyncIterator[object], account: StreamAccount,
              view: Callable[[dict], dict] = _as_is) -> AsyncIterator[str]:
    """OpenAI stream: `data:` events; a last chunk carries `_sollol_routing`, then [DONE]."""
    last: dict = {}
    try:
        async for item in items:
            if isinstance(item, StreamEnd):
                account.end(item)
                tail = {k: last[k] for k in ("id", "object", "created", "model") if k in last}
                yield f"data: {dumps({**tail, 'choices': [], '_sollol_routing': view(item.routing)})}\n\n"
                yield "data: [DONE]\n\n"
                return
            account.chunk(len(item))
            last = item[-1]
            yield "".join(f"data: {dumps(chunk)}\n\n" for chunk in item)
    except Exception as exc:
        account.broken()
        error = {"message": error_message(exc), "type": "server_error", "code": "stream_broken"}
        yield f"data: {dumps({'error': error})}\n\n"
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
