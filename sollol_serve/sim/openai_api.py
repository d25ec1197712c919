"""A llama-server-like OpenAI-compatible API on top of the simulated engine.

Like llama-server it serves the models it was started with and reports `timings`
(prompt_n, prompt_ms, cache_n, predicted_n, predicted_ms) in every completion, streamed or not,
and lists its slots on `GET /slots`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sollol_serve.sim.engine import SimEngine, SimModel, Stats
from sollol_serve.sim.facade import BadRequest, guarded
from sollol_serve.sim.scripted import scripted

_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 503: "unavailable_error"}


def error(status: int, message: str) -> JSONResponse:
    kind = _ERROR_TYPES.get(status, "server_error")
    return JSONResponse({"error": {"code": status, "message": message, "type": kind}}, status_code=status)



def _timings(stats: Stats) -> dict:
    # llama-server: prompt_n/prompt_ms are the evaluated prompt tokens, cache_n those reused.
    return {
        "prompt_n": stats.prompt_n,
        "prompt_ms": stats.prompt_eval_ns / 1e6,
        "cache_n": stats.cache_n,
        "predicted_n": len(stats.tokens),
        "predicted_ms": stats.eval_ns / 1e6,
    }


def _usage(stats: Stats) -> dict:
    # prompt_tokens counts the whole prompt, cached part included (OpenAI's convention); the
    # details appear only when a prefix was reused, so a cold answer keeps its plain shape.
    usage: dict = {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": len(stats.tokens),
        "total_tokens": stats.prompt_tokens + len(stats.tokens),
    }
    if stats.cache_n:
        usage["prompt_tokens_details"] = {"cached_tokens": stats.cache_n}
    return usage


class OpenAISim:
    def __init__(self, engine: SimEngine):
        self.engine = engine

    def routes(self) -> list[Route]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/props", self.props, methods=["GET"]),
            Route("/slots", self.slots, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
        ]

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "simulator": True})

    async def props(self, request: Request) -> Response:
        first = next(iter(self.engine.models.values()))
        return JSONResponse(
            {
                "total_slots": self.engine.config.slots,
                "model_path": f"/simulated/{first.name}.gguf",
                "default_generation_settings": {"n_ctx": self.engine.context_of(first.name)},
                "build_info": "sollol_serve simulator (no real model)",
            }
        )

    async def slots(self, request: Request) -> Response:
        n_ctx = self.engine.context_of(next(iter(self.engine.models)))
        return JSONResponse([{"id": s.id, "n_ctx": n_ctx, "is_processing": s.busy} for s in self.engine.slots])

    async def models(self, request: Request) -> Response:
        data = [
            {"id": m.name, "object": "model", "created": int(time.time()), "owned_by": "sollol-sim"}
            for m in self.engine.models.values()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _guarded(self, request: Request, handler) -> Response:
        return await guarded(request, handler, error)

    def _model(self, body: dict) -> SimModel:
        name = body.get("model")
        # llama-server answers with its one model whatever the request names.
        model = self.engine.resolve(name) if isinstance(name, str) else None
        return model or next(iter(self.engine.models.values()))

    async def chat(self, request: Request) -> Response:
        return await self._guarded(request, lambda body: self._complete(body, chat=True))

    async def completions(self, request: Request) -> Response:
        return await self._guarded(request, lambda body: self._complete(body, chat=False))

    async def _complete(self, body: dict, chat: bool) -> Response:
        m = self._model(body)
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("'messages' must be a non-empty array")
            prompt = "\n".join(str(msg.get("content", "")) for msg in messages if isinstance(msg, dict))
        else:
            prompt = body.get("prompt", "")
            if isinstance(prompt, list):
                prompt = "".join(map(str, prompt))
            if not isinstance(prompt, str):
                raise BadRequest("'prompt' must be a string")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 0):
            raise BadRequest("'max_tokens' must be a non-negative integer")
        options = {"seed": body["seed"]} if "seed" in body else {}
        script = scripted(body, "openai") if chat else None
        plan = self.engine.plan(m.name, prompt, options, max_tokens=max_tokens, script=script.text if script else None)
        stats = Stats()
        tokens = self.engine.run(plan, None, stats, stream=bool(body.get("stream", False)))
        try:
            first: str | None = await anext(tokens)
        except StopAsyncIteration:
            first = None
        finish = "length" if plan.limited else "stop"
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        tool = script.tool if script is not None else None
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        if tool is not None and not plan.limited:
            finish = "tool_calls"

        if not body.get("stream", False):
            text = "".join(([first] if first is not None else []) + [t async for t in tokens])
            choice: dict = {"index": 0, "finish_reason": finish, "logprobs": None}
            if tool is not None:
                choice["message"] = {"role": "assistant", "content": None, "tool_calls": [
                    {"id": call_id, "type": "function", "function": {"name": tool, "arguments": text}}]}
            elif chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            return JSONResponse(
                {"id": ident, "object": obj, "created": created, "model": m.name, "choices": [choice],
                 "usage": _usage(stats), "timings": _timings(stats)}
            )

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunk_obj = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list, **extra) -> bytes:
            payload = {"id": ident, "object": chunk_obj, "created": created, "model": m.name, "choices": choices}
            payload.update(extra)
            return f"data: {json.dumps(payload)}\n\n".encode()

        def piece(token: str, finish_reason: str | None = None) -> dict:
            if tool is not None and token:
                return {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": token}}]},
                        "finish_reason": finish_reason}
            if chat:
                return {"index": 0, "delta": {"content": token} if token else {}, "finish_reason": finish_reason}
            return {"index": 0, "text": token, "finish_reason": finish_reason}

        async def events() -> AsyncIterator[bytes]:
            if chat:
                yield event([{"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None}])
            if tool is not None:  # llama-server: the call's id and name first, then its arguments in pieces
                yield event([{"index": 0, "delta": {"tool_calls": [
                    {"index": 0, "id": call_id, "type": "function", "function": {"name": tool, "arguments": ""}}]},
                    "finish_reason": None}])
            if first is not None:
                yield event([piece(first)])
                async for token in tokens:
                    yield event([piece(token)])
            yield event([piece("", finish)], timings=_timings(stats))
            if include_usage:
                yield event([], usage=_usage(stats))
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(self, request: Request) -> Response:
        async def handle(body: dict) -> Response:
            m = self._model(body)
            raw = body.get("input")
            texts = [raw] if isinstance(raw, str) else raw
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                raise BadRequest("'input' must be a string or a non-empty array of strings")
            vectors, _, tokens = await self.engine.embed(m, texts, None)
            return JSONResponse(
                {
                    "object": "list",
                    "model": m.name,
                    "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            )

        return await self._guarded(request, handle)
