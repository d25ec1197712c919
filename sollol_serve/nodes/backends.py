"""HTTP adapters for the two kinds of node: Ollama and OpenAI-compatible (llama-server, vLLM).

Each adapter takes a `NodeRequest` in the client's API, speaks the node's own API (translating
when the two differ) and gives back the response, or the stream of chunks, in the client's
API, ending with the `Usage` the node reported.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sollol_serve.api import translate
from sollol_serve.nodes.http import NodeHTTP
from sollol_serve.protocol import NodeError, NodeRequest, StreamBroken, Usage


@dataclass(slots=True)
class NodeInventory:
    """What a node has: installed models, models loaded now, slots if it says."""

    kind: str
    version: str | None
    models: list[dict]  # Ollama /api/tags entries (synthesised for OpenAI nodes)
    loaded: list[dict] = field(default_factory=list)  # Ollama /api/ps entries
    slots: int | None = None


class NodeBackend(ABC):
    kind = "?"

    def __init__(self, url: str, http: NodeHTTP):
        self.url = url
        self.http = http

    @abstractmethod
    async def call(self, req: NodeRequest, node_model: str) -> tuple[dict, Usage]: ...

    @abstractmethod
    def stream(self, req: NodeRequest, node_model: str) -> AsyncIterator[dict | Usage]: ...

    @abstractmethod
    async def inventory(self) -> NodeInventory: ...

    async def _post_json(self, path: str, body: dict) -> dict:
        return await self.http.post_json(self.url + path, body)

    def _lines(self, path: str, body: dict) -> AsyncIterator[str]:
        return self.http.post_lines(self.url + path, body)


class OllamaBackend(NodeBackend):
    kind = "ollama"

    def _native(self, req: NodeRequest) -> dict:
        if req.api == "ollama":
            return req.body
        try:
            return translate.openai_to_ollama_request(req.op, req.body)
        except translate.UnsupportedInput as exc:
            raise NodeError(str(exc), status=400, retryable=False) from exc

    async def call(self, req: NodeRequest, node_model: str) -> tuple[dict, Usage]:
        started = time.monotonic()
        body = self._native(req)
        if req.op in ("chat", "generate"):
            body = {**body, "stream": False}
        resp = await self._post_json(translate.OLLAMA_PATHS[self._op(req)], body)
        usage = translate.usage_from_ollama(resp, time.monotonic() - started)
        if req.api == "ollama":
            return resp, usage
        return translate.ollama_response_to_openai(req.op, resp, req.model, usage, req.body.get("encoding_format")), usage

    @staticmethod
    def _op(req: NodeRequest):
        # OpenAI clients have one embeddings endpoint; /api/embed serves it.
        return "embed" if req.api == "openai" and req.op == "embeddings" else req.op

    async def stream(self, req: NodeRequest, node_model: str) -> AsyncIterator[dict | Usage]:
        started = time.monotonic()
        body = {**self._native(req), "stream": True}
        include_usage = bool((req.body.get("stream_options") or {}).get("include_usage"))
        to_openai = translate.OllamaToOpenAIStream(req.op, req.model, include_usage) if req.api == "openai" else None
        usage = Usage()
        async for line in self._lines(translate.OLLAMA_PATHS[req.op], body):
            chunk = json.loads(line)
            if "error" in chunk:
                raise StreamBroken(f"node error mid-stream: {chunk['error']}")
            if chunk.get("done"):
                usage = translate.usage_from_ollama(chunk, time.monotonic() - started)
            if to_openai is None:
                yield chunk
            else:
                for out in to_openai.feed(chunk, usage if chunk.get("done") else None):
                    yield out
        yield usage

    async def inventory(self) -> NodeInventory:
        _, version = await self.http.get_json(self.url + "/api/version")
        tags = await self._get_object("/api/tags")
        ps = await self._get_object("/api/ps")
        return NodeInventory("ollama", (version or {}).get("version") if isinstance(version, dict) else None,
                             tags.get("models") or [], ps.get("models") or [])

    async def _get_object(self, path: str) -> dict:
        status, payload = await self.http.get_json(self.url + path)
        if status != 200 or not isinstance(payload, dict):
            raise NodeError(f"node {self.url}{path} answered {status}", status=503)
        return payload


class OpenAIBackend(NodeBackend):
    kind = "openai"

    def _native(self, req: NodeRequest, node_model: str, stream: bool) -> dict:
        body = dict(req.body) if req.api == "openai" else translate.ollama_to_openai_request(req.op, req.body)
        body["model"] = node_model
        body.pop("priority", None)
        if req.op in ("chat", "generate"):
            body["stream"] = stream
            if stream:
                body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body

    async def call(self, req: NodeRequest, node_model: str) -> tuple[dict, Usage]:
        started = time.monotonic()
        resp = await self._post_json(translate.OPENAI_PATHS[req.op], self._native(req, node_model, False))
        usage = translate.usage_from_openai(resp.get("usage"), resp.get("timings"), time.monotonic() - started)
        if req.api == "openai":
            return {**resp, "model": req.model}, usage
        return translate.openai_response_to_ollama(req.op, resp, req.model, usage), usage

    async def stream(self, req: NodeRequest, node_model: str) -> AsyncIterator[dict | Usage]:
        started = time.monotonic()
        client_wants_usage = bool((req.body.get("stream_options") or {}).get("include_usage"))
        to_ollama = translate.OpenAIToOllamaStream(req.op, req.model) if req.api == "ollama" else None
        usage_raw: dict | None = None
        timings: dict | None = None
        async for line in self._lines(translate.OPENAI_PATHS[req.op], self._native(req, node_model, True)):
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise StreamBroken(f"node error mid-stream: {translate_error(chunk['error'])}")
            usage_raw = chunk.get("usage") or usage_raw
            timings = chunk.get("timings") or timings
            if to_ollama is not None:
                for out in to_ollama.feed(chunk):
                    yield out
            elif chunk.get("choices") or client_wants_usage:
                yield {**chunk, "model": req.model}
        usage = translate.usage_from_openai(usage_raw, timings, time.monotonic() - started)
        if to_ollama is not None:
            yield to_ollama.finish(usage)
        yield usage

    async def inventory(self) -> NodeInventory:
        status, payload = await self.http.get_json(self.url + "/v1/models")
        data = payload.get("data") if isinstance(payload, dict) else None
        if status != 200 or not isinstance(data, list):
            raise NodeError(f"cannot list models of {self.url}: HTTP {status}", status=503)
        ids = [m["id"] for m in data if isinstance(m, dict) and "id" in m]
        entries = [{"name": i, "model": i, "modified_at": translate.now_iso(), "size": 0, "digest": "",
                    "details": {"format": "gguf"}} for i in ids]
        return NodeInventory("openai", None, entries, entries, await self._slots())

    async def _slots(self) -> int | None:
        """llama-server tells its parallel slots on /props; other servers don't."""
        try:
            status, payload = await self.http.get_json(self.url + "/props")
        except NodeError:
            return None
        value = payload.get("total_slots") if status == 200 and isinstance(payload, dict) else None
        return int(value) if isinstance(value, int) and value > 0 else None


def translate_error(err: object) -> str:
    return str(err.get("message", err)) if isinstance(err, dict) else str(err)


async def detect_kind(http: NodeHTTP, url: str) -> str | None:
    """'ollama' if the node answers Ollama's /api/version, 'openai' if it answers /v1/models."""
    for kind, path, key in (("ollama", "/api/version", "version"), ("openai", "/v1/models", "data")):
        try:
            status, payload = await http.get_json(url + path)
        except NodeError:
            return None  # unreachable: try again at the next probe
        if status == 200 and isinstance(payload, dict) and key in payload:
            return kind
    return None


BACKENDS: dict[str, type[NodeBackend]] = {"ollama": OllamaBackend, "openai": OpenAIBackend}
