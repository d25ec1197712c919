"""Ollama's model management on the simulated node: pull, delete, copy, create, push, blobs.

Request and progress formats are Ollama's (server/routes.go, server/images.go): a pull streams
`pulling manifest`, `pulling <digest[7:19]>` lines with `digest`/`total`/`completed`,
`verifying sha256 digest`, `writing manifest`, `success`; `stream: false` answers once. The
registry is simulated: every well-formed name pulls, in `pull_s` seconds, and what a node
pulls, copies or creates joins its `/api/tags` and can be chatted with. Blobs are checked
against their digest and only their size is kept (no bytes are held).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sollol_serve.sim.engine import SimEngine, SimModel
from sollol_serve.sim.facade import BadRequest, guarded

# Ollama's names: [host/][namespace/]model[:tag], no spaces or control characters.
_NAME = re.compile(r"^([A-Za-z0-9.-]+:[0-9]+/)?[A-Za-z0-9][A-Za-z0-9._/-]{0,250}(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$")
_DIGEST = re.compile(r"^sha256[:-][0-9a-f]{64}$")
PROGRESS_STEPS = 4  # progress lines per layer: enough to watch it move, few enough to be fast


def sim_model(name: str, size_bytes: int | None = None) -> SimModel:
    """The simulated model a name stands for (embedding models by their name, as Ollama's library)."""
    fields: dict = {"name": name}
    if size_bytes is not None:
        fields["size_bytes"] = size_bytes
    if "embed" in name:
        fields.update(family="bert", parameter_size="137M")
    return SimModel(**fields)


def full_name(name: object) -> str:
    """`llama3.2` -> `llama3.2:latest`; BadRequest for what Ollama calls an invalid name."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadRequest(f"invalid model name {name!r}" if name else "model is required")
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _layers(model: SimModel) -> list[tuple[str, int]]:
    """(digest, size) of a model's layers: the GGUF, then its template and parameters."""
    return [(_digest_of(f"{model.name}/model"), model.size_bytes), (_digest_of(f"{model.name}/template"), 1_400),
            (_digest_of(f"{model.name}/params"), 120)]


def _line(payload: dict) -> bytes:
    return (json.dumps(payload) + "\n").encode()


class ModelStoreSim:
    def __init__(self, engine: SimEngine, pull_s: float):
        self.engine = engine
        self.pull_s = pull_s
        self.blobs: dict[str, int] = {}  # digest (sha256:<hex>) -> size

    def routes(self) -> list[Route]:
        return [
            Route("/api/pull", self.pull, methods=["POST"]),
            Route("/api/push", self.push, methods=["POST"]),
            Route("/api/create", self.create, methods=["POST"]),
            Route("/api/copy", self.copy, methods=["POST"]),
            Route("/api/delete", self.delete, methods=["DELETE"]),
            Route("/api/blobs/{digest}", self.blob, methods=["HEAD", "POST"]),
        ]

    async def _guarded(self, request: Request, handler) -> Response:
        return await guarded(request, handler, _error)

    async def _progress(self, body: dict, steps: AsyncIterator[dict]) -> Response:
        """Ollama's two answers to a long operation: its progress lines, or (`stream: false`) the last."""
        if body.get("stream", True) is False:
            last: dict = {}
            async for last in steps:
                pass
            return JSONResponse(last)
        return StreamingResponse((_line(step) async for step in steps), media_type="application/x-ndjson")

    async def _pause(self, lines: int) -> None:
        await asyncio.sleep(self.pull_s / max(lines, 1))

    # -- pull / push: the simulated registry ------------------------------------------
    async def pull(self, request: Request) -> Response:
        async def handle(body: dict) -> Response:
            name = full_name(body.get("model") or body.get("name"))
            await self.engine.check_faults()
            existing = self.engine.models.get(name)
            return await self._progress(body, self._pulling(existing or sim_model(name)))

        return await self._guarded(request, handle)

    async def _pulling(self, model: SimModel) -> AsyncIterator[dict]:
        layers = _layers(model)
        lines = len(layers) * PROGRESS_STEPS + 4
        yield {"status": "pulling manifest"}
        for digest, size in layers:
            for step in range(1, PROGRESS_STEPS + 1):
                await self._pause(lines)
                yield {"status": f"pulling {digest[7:19]}", "digest": digest, "total": size,
                       "completed": size * step // PROGRESS_STEPS}
        await self._pause(lines)
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        self.engine.models[model.name] = model
        yield {"status": "success"}

    async def push(self, request: Request) -> Response:
        async def handle(body: dict) -> Response:
            model = self._existing(body.get("model") or body.get("name"))
            await self.engine.check_faults()
            return await self._progress(body, self._pushing(model))

        return await self._guarded(request, handle)

    async def _pushing(self, model: SimModel) -> AsyncIterator[dict]:
        yield {"status": "retrieving manifest"}
        for digest, size in _layers(model):
            await self._pause(len(_layers(model)))
            yield {"status": f"pushing {digest[7:19]}", "digest": digest, "total": size, "completed": size}
        yield {"status": "pushing manifest"}
        yield {"status": "success"}

    # -- local changes ----------------------------------------------------------------
    def _existing(self, name: object) -> SimModel:
        model = self.engine.resolve(full_name(name)) if isinstance(name, str) else None
        if model is None:
            full_name(name)  # a malformed name is a 400 before it is a 404
            raise LookupError(f"model '{name}' not found")
        return model

    async def delete(self, request: Request) -> Response:
        async def handle(body: dict) -> Response:
            model = self._existing(body.get("model") or body.get("name"))
            await self.engine.check_faults()
            del self.engine.models[model.name]
            self.engine.unload(model.name)
            return Response(status_code=200)

        return await self._guarded(request, handle)

    async def copy(self, request: Request) -> Response:
        async def handle(body: dict) -> Response:
            source, destination = body.get("source"), body.get("destination")
            target = full_name(destination)
            model = self.engine.resolve(full_name(source))
            if model is None:
                raise LookupError(f'model "{source}" not found')
            await self.engine.check_faults()
            self.engine.models[target] = model.model_copy(update={"name": target})
            return Response(status_code=200)

        return await self._guarded(request, handle)

    async def create(self, request: Request) -> Response:
        async def handle(body: dict) -> Response:
            name = full_name(body.get("model") or body.get("name"))
            base, files = body.get("from"), body.get("files")
            if files is not None and (not isinstance(files, dict)
                                      or not all(isinstance(d, str) and _DIGEST.match(d) for d in files.values())):
                raise BadRequest("invalid digest format")
            if not base and not files:
                raise BadRequest("neither 'from' or 'files' was specified")
            if base:
                source = self._existing(base)
                layers, size = [d for d, _ in _layers(source)], source.size_bytes
            else:
                missing = [d for d in files.values() if _blob_key(d) not in self.blobs]
                if missing:
                    raise BadRequest(f"blob {missing[0]} not found: upload it to /api/blobs first")
                layers = [_blob_key(d) for d in files.values()]
                size = sum(self.blobs[d] for d in layers)
            await self.engine.check_faults()
            extra = [k for k in ("system", "template", "parameters", "messages", "license") if body.get(k)]
            return await self._progress(body, self._creating(sim_model(name, size), layers, extra, bool(files)))

        return await self._guarded(request, handle)

    async def _creating(self, model: SimModel, layers: list[str], extra: list[str], from_files: bool) -> AsyncIterator[dict]:
        if from_files:
            yield {"status": "parsing GGUF"}
        for digest in layers:
            yield {"status": f"using existing layer {digest}"}
        for what in extra:
            await self._pause(len(extra))
            yield {"status": f"creating new layer {_digest_of(model.name + '/' + what)}"}
        yield {"status": "writing manifest"}
        self.engine.models[model.name] = model
        yield {"status": "success"}

    async def blob(self, request: Request) -> Response:
        digest = request.path_params["digest"]
        if not _DIGEST.match(digest):
            return _error(400, "invalid digest format")
        key = _blob_key(digest)
        if request.method == "HEAD":
            return Response(status_code=200 if key in self.blobs else 404)
        if key in self.blobs:
            return Response(status_code=200)
        hasher, size = hashlib.sha256(), 0
        async for piece in request.stream():
            hasher.update(piece)
            size += len(piece)
        got = "sha256:" + hasher.hexdigest()
        if got != key:
            return _error(400, f'digest mismatch, expected "{digest}", got "{got}"')
        self.blobs[key] = size
        return Response(status_code=201)


def _blob_key(digest: str) -> str:
    """Ollama accepts `sha256:<hex>` and its file name's `sha256-<hex>` for the same blob."""
    return "sha256:" + digest[7:]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)

