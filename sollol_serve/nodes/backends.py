"""HTTP adapters for the two kinds of node: Ollama and OpenAI-compatible (llama-server, vLLM).

Each adapter takes a `NodeRequest` in the client's API, speaks the node's own API (translating
when the two differ) and gives back the response, or the stream of chunks, in the client's
API, ending with the `Usage` the node reported.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from sollol_serve.cluster.state import loaded_contexts
from sollol_serve.config import TimeoutConfig
from sollol_serve.nodes import translate
from sollol_serve.nodes.assemble import OllamaAssembler, OpenAIAssembler
from sollol_serve.nodes.context import LoadedContexts, positive_int
from sollol_serve.nodes.http import NodeHTTP
from sollol_serve.protocol import NodeError, NodeRequest, StreamBroken, Usage

Assembler = OllamaAssembler | OpenAIAssembler


@dataclass(slots=True)
class NodeInventory:
    """What a node has: installed models, models loaded now, slots if it says."""

    kind: str
    version: str | None
    models: list[dict]  # Ollama /api/tags entries (synthesised for OpenAI nodes)
    loaded: list[dict] = field(default_factory=list)  # Ollama /api/ps entries
    slots: int | None = None


class NodeBackend(ABC):
    """Chat and generate always stream from the node, also when the client wants one
    answer: the stream is assembled here, and so the first-byte and idle timeouts catch a
    hung node on every request, and the time to first byte is measured on every request."""

    kind = "?"

    def __init__(self, url: str, http: NodeHTTP):
        self.url = url
        self.http = http

    @abstractmethod
    async def call(self, req: NodeRequest, node_model: str, timeouts: TimeoutConfig,
                   on_first: Callable[[], None] | None = None) -> tuple[dict, Usage]: ...

    @abstractmethod
    def stream(self, req: NodeRequest, node_model: str, timeouts: TimeoutConfig) -> AsyncIterator[dict | Usage]: ...

    @abstractmethod
    async def inventory(self) -> NodeInventory: ...

    async def load(self, node_model: str, keep_alive: str | int | None, timeouts: TimeoutConfig) -> float | None:
        """Load the model into memory now; the seconds loading took, or None if the node
        has no such step (a llama-server holds its one model from the start)."""
        return None

    async def _assemble(self, chunks: AsyncIterator[dict], assembler: Assembler,
                        on_first: Callable[[], None] | None) -> tuple[dict, float | None]:
        """The node's stream as the one answer it stands for, and the time to its first chunk."""
        started = time.monotonic()
        ttfb = None
        try:
            async for chunk in chunks:
                if ttfb is None:
                    ttfb = time.monotonic() - started
                    if on_first is not None:
                        on_first()
                assembler.feed(chunk)
            return assembler.result(), ttfb
        except StreamBroken as exc:  # nothing has reached the client: another node may answer
            raise NodeError(exc.message, status=502) from None
        except ValueError as exc:
            raise NodeError(f"node {self.http.node} sent a broken answer: {exc}", status=502) from None


class OllamaBackend(NodeBackend):
    kind = "ollama"

    def __init__(self, url: str, http: NodeHTTP):
        super().__init__(url, http)
        self.contexts = LoadedContexts()  # sent with each request: no reload by accident

    def _native(self, req: NodeRequest, node_model: str) -> dict:
        if req.api == "ollama":
            body = req.body
        else:
            try:
                body = translate.openai_to_ollama_request(req.op, req.body)
            except translate.UnsupportedInput as exc:
                raise NodeError(str(exc), status=400, retryable=False) from exc
        if req.keep_alive is not None and "keep_alive" not in body:  # the client's own wins
            body = {**body, "keep_alive": req.keep_alive}
        return self.contexts.sending(node_model, body, time.monotonic())

    async def _chunks(self, path: str, body: dict, timeouts: TimeoutConfig) -> AsyncIterator[dict]:
        async for line in self.http.post_lines(self.url + path, {**body, "stream": True}, timeouts):
            chunk = json.loads(line)
            if "error" in chunk:
                raise StreamBroken(f"node error mid-stream: {chunk['error']}")
            yield chunk

    async def call(self, req: NodeRequest, node_model: str, timeouts: TimeoutConfig,
                   on_first: Callable[[], None] | None = None) -> tuple[dict, Usage]:
        started = time.monotonic()
        body = self._native(req, node_model)
        path = translate.OLLAMA_PATHS[self._op(req)]
        ttfb = None
        if req.op in ("chat", "generate"):
            resp, ttfb = await self._assemble(self._chunks(path, body, timeouts), OllamaAssembler(), on_first)
        else:
            resp = await self.http.post_json(self.url + path, body, timeouts)
        usage = translate.usage_from_ollama(resp, time.monotonic() - started)
        usage.ttfb_s = ttfb
        if req.api == "ollama":
            return resp, usage
        return translate.ollama_response_to_openai(req.op, resp, req.model, usage, req.body.get("encoding_format")), usage

    async def load(self, node_model: str, keep_alive: str | int | None, timeouts: TimeoutConfig) -> float | None:
        # Ollama loads a model on a generate request without a prompt.
        body: dict = {"model": node_model, "prompt": "", "stream": False}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        body = self.contexts.sending(node_model, body, time.monotonic())
        answer = await self.http.post_json(self.url + "/api/generate", body, timeouts)
        return (answer.get("load_duration") or 0) / 1e9

    @staticmethod
    def _op(req: NodeRequest):
        # OpenAI clients have one embeddings endpoint; /api/embed serves it.
        return "embed" if req.api == "openai" and req.op == "embeddings" else req.op

    async def stream(self, req: NodeRequest, node_model: str, timeouts: TimeoutConfig) -> AsyncIterator[dict | Usage]:
        started = time.monotonic()
        include_usage = bool((req.body.get("stream_options") or {}).get("include_usage"))
        to_openai = translate.OllamaToOpenAIStream(req.op, req.model, include_usage) if req.api == "openai" else None
        usage = Usage()
        ttfb = None
        async for chunk in self._chunks(translate.OLLAMA_PATHS[req.op], self._native(req, node_model), timeouts):
            ttfb = time.monotonic() - started if ttfb is None else ttfb
            if chunk.get("done"):
                usage = translate.usage_from_ollama(chunk, time.monotonic() - started)
            if to_openai is None:
                yield chunk
            else:
                for out in to_openai.feed(chunk, usage if chunk.get("done") else None):
                    yield out
        usage.ttfb_s = ttfb
        yield usage

    async def inventory(self) -> NodeInventory:
        _, version = await self.http.get_json(self.url + "/api/version")
        tags = await self._get_object("/api/tags")
        asked = time.monotonic()
        ps = await self._get_object("/api/ps")
        self.contexts.polled_at(asked, loaded_contexts(ps.get("models") or []))
        return NodeInventory("ollama", (version or {}).get("version") if isinstance(version, dict) else None,
                             tags.get("models") or [], ps.get("models") or [])

    async def _get_object(self, path: str) -> dict:
        status, payload = await self.http.get_json(self.url + path)
        if status != 200 or not isinstance(payload, dict):
            raise NodeError(f"node {self.http.node}: {path} answered {status}", status=503)
        return payload


class OpenAIBackend(NodeBackend):
    kind = "openai"

    def _native(self, req: NodeRequest, node_model: str) -> dict:
        body = dict(req.body) if req.api == "openai" else translate.ollama_to_openai_request(req.op, req.body)
        body["model"] = node_model
        body.pop("priority", None)
        if req.op in ("chat", "generate"):
            body["stream"] = True
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body

    async def _chunks(self, path: str, body: dict, timeouts: TimeoutConfig) -> AsyncIterator[dict]:
        async for line in self.http.post_lines(self.url + path, body, timeouts):
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:
                raise StreamBroken(f"node error mid-stream: {translate_error(chunk['error'])}")
            yield chunk

    async def call(self, req: NodeRequest, node_model: str, timeouts: TimeoutConfig,
                   on_first: Callable[[], None] | None = None) -> tuple[dict, Usage]:
        started = time.monotonic()
        path = translate.OPENAI_PATHS[req.op]
        ttfb = None
        if req.op in ("chat", "generate"):
            resp, ttfb = await self._assemble(self._chunks(path, self._native(req, node_model), timeouts),
                                              OpenAIAssembler(), on_first)
        else:
            resp = await self.http.post_json(self.url + path, self._native(req, node_model), timeouts)
        usage = translate.usage_from_openai(resp.get("usage"), resp.get("timings"), time.monotonic() - started)
        usage.ttfb_s = ttfb
        if req.api == "openai":
            return {**resp, "model": req.model}, usage
        return translate.openai_response_to_ollama(req.op, resp, req.model, usage), usage

    async def stream(self, req: NodeRequest, node_model: str, timeouts: TimeoutConfig) -> AsyncIterator[dict | Usage]:
        started = time.monotonic()
        client_wants_usage = bool((req.body.get("stream_options") or {}).get("include_usage"))
        to_ollama = translate.OpenAIToOllamaStream(req.op, req.model) if req.api == "ollama" else None
        usage_raw: dict | None = None
        timings: dict | None = None
        ttfb = None
        async for chunk in self._chunks(translate.OPENAI_PATHS[req.op], self._native(req, node_model), timeouts):
            ttfb = time.monotonic() - started if ttfb is None else ttfb
            usage_raw = chunk.get("usage") or usage_raw
            timings = chunk.get("timings") or timings
            if to_ollama is not None:
                for out in to_ollama.feed(chunk):
                    yield out
            elif chunk.get("choices") or client_wants_usage:
                yield {**chunk, "model": req.model}
        usage = translate.usage_from_openai(usage_raw, timings, time.monotonic() - started)
        usage.ttfb_s = ttfb
        if to_ollama is not None:
            yield to_ollama.finish(usage)
        yield usage

    async def inventory(self) -> NodeInventory:
        status, payload = await self.http.get_json(self.url + "/v1/models")
        data = payload.get("data") if isinstance(payload, dict) else None
        if status != 200 or not isinstance(data, list):
            raise NodeError(f"cannot list models of node {self.http.node}: HTTP {status}", status=503)
        ids = [m["id"] for m in data if isinstance(m, dict) and "id" in m]
        slots, n_ctx = await self._props()
        entries = [{"name": i, "model": i, "modified_at": translate.now_iso(), "size": 0, "digest": "",
                    "details": {"format": "gguf"}, **({"context_length": n_ctx} if n_ctx else {})} for i in ids]
        return NodeInventory("openai", None, entries, entries, slots)

    async def _props(self) -> tuple[int | None, int | None]:
        """llama-server tells its parallel slots and their context on /props (else /slots);
        other servers tell neither."""
        props = await self._get_optional("/props")
        settings = props.get("default_generation_settings") if isinstance(props, dict) else None
        slots = positive_int(props.get("total_slots")) if isinstance(props, dict) else None
        n_ctx = positive_int(settings.get("n_ctx")) if isinstance(settings, dict) else None
        if slots is None:
            listed = await self._get_optional("/slots")
            if isinstance(listed, list) and listed:
                slots = len(listed)
                n_ctx = n_ctx or (positive_int(listed[0].get("n_ctx")) if isinstance(listed[0], dict) else None)
        return slots, n_ctx

    async def _get_optional(self, path: str) -> object:
        try:
            status, payload = await self.http.get_json(self.url + path)
        except NodeError:
            return None
        return payload if status == 200 else None


def translate_error(err: object) -> str:
    return str(err.get("message", err)) if isinstance(err, dict) else str(err)


# How a server shows its kind: the path it answers and a key its JSON answer has.
KIND_PROBES: tuple[tuple[str, str, str], ...] = (("ollama", "/api/version", "version"), ("openai", "/v1/models", "data"))


async def detect_kind(http: NodeHTTP, url: str) -> str | None:
    """'ollama' if the node answers Ollama's /api/version, 'openai' if it answers /v1/models."""
    for kind, path, key in KIND_PROBES:
        try:
            status, payload = await http.get_json(url + path)
        except NodeError:
            return None  # unreachable: try again at the next probe
        if status == 200 and isinstance(payload, dict) and key in payload:
            return kind
    return None


BACKENDS: dict[str, type[NodeBackend]] = {"ollama": OllamaBackend, "openai": OpenAIBackend}
