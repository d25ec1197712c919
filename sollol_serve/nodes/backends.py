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

import httpx

from sollol_serve.api import translate
from sollol_serve.protocol import NodeError, NodeRequest, StreamBroken, Usage


@dataclass(slots=True)
class NodeInventory:
    """What a node has: installed models, models loaded now, slots if it says."""

    kind: str
    version: str | None
    models: list[dict]  # Ollama /api/tags entries (synthesised for OpenAI nodes)
    loaded: list[dict] = field(default_factory=list)  # Ollama /api/ps entries
    slots: int | None = None


def _error_message(response: httpx.Response, text: str) -> str:
    try:
        payload = json.loads(text)
    except ValueError:
        return text.strip()[:500] or response.reason_phrase
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err or payload)[:500]


async def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    text = (await response.aread()).decode("utf-8", "replace")
    status = response.status_code
    # A 404 means the node lost the model since we last listed it: another node may have it.
    retryable = status >= 500 or status in (404, 408, 429)
    raise NodeError(_error_message(response, text), status=status, retryable=retryable)


def _transport_error(exc: httpx.HTTPError, url: str) -> NodeError:
    if isinstance(exc, httpx.TimeoutException):
        return NodeError(f"node {url} timed out ({type(exc).__name__})", status=504)
    return NodeError(f"cannot reach node {url}: {type(exc).__name__}: {exc}", status=503)


class NodeBackend(ABC):
    kind = "?"

    def __init__(self, url: str, http: httpx.AsyncClient):
        self.url = url
        self.http = http

    @abstractmethod
    async def call(self, req: NodeRequest, node_model: str) -> tuple[dict, Usage]: ...

    @abstractmethod
    def stream(self, req: NodeRequest, node_model: str) -> AsyncIterator[dict | Usage]: ...

    @abstractmethod
    async def inventory(self) -> NodeInventory: ...

    async def _post_json(self, path: str, body: dict) -> dict:
        try:
            response = await self.http.post(self.url + path, json=body)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self.url) from exc
        await _raise_for_status(response)
        return response.json()

    async def _lines(self, path: str, body: dict) -> AsyncIterator[str]:
        """POST and yield the response's lines as they arrive. Errors before the first line
        are NodeError (retryable elsewhere); after it, StreamBroken."""
        started = False
        try:
            async with self.http.stream("POST", self.url + path, json=body) as response:
                await _raise_for_status(response)
                async for line in response.aiter_lines():
                    if line:
                        started = True
                        yield line
        except httpx.HTTPError as exc:
            if started:
                raise StreamBroken(f"node {self.url} broke the stream: {type(exc).__name__}") from exc
            raise _transport_error(exc, self.url) from exc


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
        try:
            version = (await self.http.get(self.url + "/api/version")).json().get("version")
            tags = await self.http.get(self.url + "/api/tags")
            ps = await self.http.get(self.url + "/api/ps")
            tags.raise_for_status()
            ps.raise_for_status()
            return NodeInventory("ollama", version, tags.json().get("models", []), ps.json().get("models", []))
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self.url) from exc
        except ValueError as exc:
            raise NodeError(f"bad answer from {self.url}: {exc}", status=502) from exc


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
        try:
            response = await self.http.get(self.url + "/v1/models")
            response.raise_for_status()
            ids = [m["id"] for m in response.json().get("data", [])]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise NodeError(f"cannot list models of {self.url}: {exc}", status=503) from exc
        slots = await self._slots()
        entries = [{"name": i, "model": i, "modified_at": translate.now_iso(), "size": 0, "digest": "",
                    "details": {"format": "gguf"}} for i in ids]
        return NodeInventory("openai", None, entries, entries, slots)

    async def _slots(self) -> int | None:
        """llama-server tells its parallel slots on /props; other servers don't."""
        try:
            response = await self.http.get(self.url + "/props")
            if response.status_code == 200:
                value = response.json().get("total_slots")
                return int(value) if value else None
        except (httpx.HTTPError, ValueError):
            pass
        return None


def translate_error(err: object) -> str:
    return str(err.get("message", err)) if isinstance(err, dict) else str(err)


async def detect_kind(http: httpx.AsyncClient, url: str) -> str | None:
    """'ollama' if the node answers Ollama's /api/version, 'openai' if it answers /v1/models."""
    try:
        response = await http.get(url + "/api/version")
        if response.status_code == 200 and "version" in response.json():
            return "ollama"
    except (httpx.HTTPError, ValueError):
        pass
    try:
        response = await http.get(url + "/v1/models")
        if response.status_code == 200 and "data" in response.json():
            return "openai"
    except (httpx.HTTPError, ValueError):
        pass
    return None


BACKENDS: dict[str, type[NodeBackend]] = {"ollama": OllamaBackend, "openai": OpenAIBackend}
