"""Ollama's HTTP API on top of the simulated engine (NDJSON streaming, Ollama's errors)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from sollol_serve.sim.engine import (
    SimEngine,
    SimModel,
    Stats,
    parse_keep_alive,
    requested_context,
)
from sollol_serve.sim.facade import BadRequest, guarded
from sollol_serve.sim.scripted import scripted

SIM_VERSION = "0.0.0-sollol-sim"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _digest(model: SimModel) -> str:
    return "sha256:" + hashlib.sha256(model.name.encode()).hexdigest()


def _details(model: SimModel) -> dict:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": model.family,
        "families": [model.family],
        "parameter_size": model.parameter_size,
        "quantization_level": model.quantization_level,
    }


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)



def _prompt_of_chat(body: dict) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    parts = []
    for m in messages:
        if not isinstance(m, dict):
            raise BadRequest("each message must be an object")
        content = m.get("content", "")
        parts.append(content if isinstance(content, str) else json.dumps(content))
    return "\n".join(parts)


def _keep_alive(body: dict) -> float | None:
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise BadRequest(f"invalid keep_alive: {exc}") from exc


def _num_ctx(body: dict) -> int | None:
    """An embedding request's options.num_ctx: it loads the model with it, as a generation does."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("options must be an object")
    return requested_context(options)


def _timing_fields(stats: Stats) -> dict:
    # Ollama counts only the prompt tokens it evaluated: those the slot had cached are skipped.
    return {
        "total_duration": stats.total_ns,
        "load_duration": stats.load_ns,
        "prompt_eval_count": stats.prompt_n,
        "prompt_eval_duration": stats.prompt_eval_ns,
        "eval_count": len(stats.tokens),
        "eval_duration": stats.eval_ns,
    }


class OllamaSim:
    def __init__(self, engine: SimEngine):
        self.engine = engine

    def routes(self) -> list[Route]:
        return [
            Route("/", self.root, methods=["GET", "HEAD"]),
            Route("/api/version", self.version, methods=["GET"]),
            Route("/api/tags", self.tags, methods=["GET"]),
            Route("/api/ps", self.ps, methods=["GET"]),
            Route("/api/show", self.show, methods=["POST"]),
            Route("/api/chat", self.chat, methods=["POST"]),
            Route("/api/generate", self.generate, methods=["POST"]),
            Route("/api/embed", self.embed, methods=["POST"]),
            Route("/api/embeddings", self.embeddings, methods=["POST"]),
        ]

    async def root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running (sollol_serve simulator: no real model)")

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": SIM_VERSION, "simulator": True})

    async def tags(self, request: Request) -> Response:
        models = [
            {
                "name": m.name,
                "model": m.name,
                "modified_at": _now(),
                "size": m.size_bytes,
                "digest": _digest(m),
                "details": _details(m),
            }
            for m in self.engine.models.values()
        ]
        return JSONResponse({"models": models})

    async def ps(self, request: Request) -> Response:
        now = datetime.now(timezone.utc)
        entries = []
        mono = time.monotonic()
        for name, expiry in self.engine.loaded_models().items():
            m = self.engine.models[name]
            entries.append(
                {
                    "name": m.name,
                    "model": m.name,
                    "size": m.size_bytes,
                    "digest": _digest(m),
                    "details": _details(m),
                    "expires_at": (now + timedelta(seconds=expiry - mono)).isoformat(),
                    "size_vram": m.size_bytes,
                    "context_length": self.engine.context_of(m.name),
                }
            )
        return JSONResponse({"models": entries})

    def _model(self, body: dict) -> SimModel:
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("model is required")
        model = self.engine.resolve(name)
        if model is None:
            raise LookupError(f'model "{name}" not found, try pulling it first')
        return model

    async def _guarded(self, request: Request, handler) -> Response:
        return await guarded(request, handler, error)

    async def show(self, request: Request) -> Response:
        async def handle(body: dict) -> Response:
            m = self._model(body)
            embed_only = "embed" in m.name
            return JSONResponse(
                {
                    "modelfile": f"# simulated model {m.name}\nFROM {m.name}\n",
                    "parameters": "stop \"<|eot|>\"",
                    "template": "{{ .Prompt }}",
                    "details": _details(m),
                    "model_info": {
                        "general.architecture": m.family,
                        "general.parameter_count": 3_000_000_000,
                        f"{m.family}.context_length": m.context_length,
                        f"{m.family}.embedding_length": m.embedding_dim,
                    },
                    "capabilities": ["embedding"] if embed_only else ["completion", "tools"],
                    "modified_at": _now(),
                }
            )

        return await self._guarded(request, handle)

    async def chat(self, request: Request) -> Response:
        return await self._guarded(request, lambda body: self._complete(body, chat=True))

    async def generate(self, request: Request) -> Response:
        return await self._guarded(request, lambda body: self._complete(body, chat=False))

    async def _complete(self, body: dict, chat: bool) -> Response:
        m = self._model(body)
        if chat:
            prompt = _prompt_of_chat(body)
        else:
            prompt = body.get("prompt", "")
            if not isinstance(prompt, str):
                raise BadRequest("prompt must be a string")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise BadRequest("options must be an object")
        keep_alive = _keep_alive(body)
        if keep_alive == 0 and (not prompt or chat and not body.get("messages")):
            self.engine.unload(m.name)
            return JSONResponse(self._final(m, chat, Stats(), "unload", ""))
        if not chat and not prompt:
            # Ollama: an empty prompt only loads the model.
            await self.engine.check_faults()
            seconds = await self.engine.ensure_loaded(m.name, keep_alive, requested_context(options))
            return JSONResponse({**self._final(m, chat, Stats(load_ns=int(seconds * 1e9)), "load", "")})

        script = scripted(body, "ollama")
        plan = self.engine.plan(m.name, prompt, options, script=script.text if script else None)
        stats = Stats()
        tokens = self.engine.run(plan, keep_alive, stats, stream=body.get("stream", True) is not False)
        first: str | None
        try:
            first = await anext(tokens)
        except StopAsyncIteration:
            first = None
        done_reason = "length" if plan.limited else "stop"
        if script is not None and script.tool is not None:
            return await self._tool_call(m, body, script.tool, first, tokens, stats, done_reason)

        if body.get("stream", True) is False:
            text = "".join(([first] if first is not None else []) + [t async for t in tokens])
            return JSONResponse(self._final(m, chat, stats, done_reason, text))

        async def lines() -> AsyncIterator[bytes]:
            if first is not None:
                yield self._chunk(m, chat, first)
                async for token in tokens:
                    yield self._chunk(m, chat, token)
            final = self._final(m, chat, stats, done_reason, "")
            yield (json.dumps(final) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def _tool_call(self, m: SimModel, body: dict, tool: str, first: str | None, tokens: AsyncIterator[str],
                         stats: Stats, done_reason: str) -> Response:
        """A tool call as Ollama sends it: decoded in full (its tokens take their time), then one
        message carrying `tool_calls`; streamed, a chunk with the call before the final one."""
        arguments = "".join(([first] if first is not None else []) + [t async for t in tokens])
        try:
            message = {"role": "assistant", "content": "",
                       "tool_calls": [{"id": f"call_{uuid.uuid4().hex[:8]}",
                                       "function": {"index": 0, "name": tool, "arguments": json.loads(arguments)}}]}
        except json.JSONDecodeError:  # cut by num_predict: like a model, it answers what it wrote
            message = {"role": "assistant", "content": arguments}
        final = {**self._final(m, True, stats, done_reason, ""), "message": message}
        if body.get("stream", True) is False:
            return JSONResponse(final)
        call = {"model": m.name, "created_at": _now(), "message": message, "done": False}
        lines = [json.dumps(call), json.dumps({**final, "message": {"role": "assistant", "content": ""}})]
        return Response("".join(line + "\n" for line in lines), media_type="application/x-ndjson")

    def _chunk(self, m: SimModel, chat: bool, token: str) -> bytes:
        payload: dict = {"model": m.name, "created_at": _now()}
        if chat:
            payload["message"] = {"role": "assistant", "content": token}
        else:
            payload["response"] = token
        payload["done"] = False
        return (json.dumps(payload) + "\n").encode()

    def _final(self, m: SimModel, chat: bool, stats: Stats, reason: str, text: str) -> dict:
        payload: dict = {"model": m.name, "created_at": _now()}
        if chat:
            payload["message"] = {"role": "assistant", "content": text}
        else:
            payload["response"] = text
        payload.update({"done": True, "done_reason": reason})
        if not chat and reason not in ("load", "unload"):
            payload["context"] = [1, 2, 3]
        payload.update(_timing_fields(stats))
        return payload

    async def embed(self, request: Request) -> Response:
        async def handle(body: dict) -> Response:
            m = self._model(body)
            raw = body.get("input", "")
            texts = [raw] if isinstance(raw, str) else raw
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise BadRequest("input must be a string or a list of strings")
            vectors, stats, tokens = await self.engine.embed(m, texts, _keep_alive(body), _num_ctx(body))
            return JSONResponse(
                {
                    "model": m.name,
                    "embeddings": vectors,
                    "total_duration": stats.total_ns,
                    "load_duration": stats.load_ns,
                    "prompt_eval_count": tokens,
                }
            )

        return await self._guarded(request, handle)

    async def embeddings(self, request: Request) -> Response:
        async def handle(body: dict) -> Response:
            m = self._model(body)
            prompt = body.get("prompt", "")
            if not isinstance(prompt, str):
                raise BadRequest("prompt must be a string")
            vectors, _, _ = await self.engine.embed(m, [prompt], _keep_alive(body), _num_ctx(body))
            return JSONResponse({"embedding": vectors[0]})

        return await self._guarded(request, handle)
