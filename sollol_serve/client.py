"""Python SDK: `connect(url, api_key=None)` gives a client for the gateway's Ollama API.

    from sollol_serve.client import Priority, connect
    sollol = connect("http://127.0.0.1:8000")
    answer = sollol.chat("llama3.2", [{"role": "user", "content": "hi"}], priority=Priority.HIGH)
    for chunk in sollol.chat("llama3.2", messages, stream=True): ...
    vectors = sollol.embed("nomic-embed-text", ["a", "b"])

    vectors = sollol.batch_embed("nomic-embed-text", many_texts, progress=print)  # a batch job

The original SOLLOL's calls work too: `connect()` (the gateway from `SOLLOL_URL`, its key
from `SOLLOL_API_KEY`), then `chat("a prompt", priority=8)`, `embed("a text")` (one vector),
`batch_embed(documents, batch_size=50)`, `await chat_async("a prompt")`, with the model from
`connect(..., default_model=)`, `SOLLOL_MODEL`, or else the gateway's first chat model (and
`SOLLOL_EMBED_MODEL`, or its first embedding model, for embeddings).

`AsyncSollolClient` (from `connect_async`) has the same methods as coroutines and async
iterators. Errors come back as `SollolError` with the HTTP status and the gateway's message.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import httpx

from sollol_serve import __version__
from sollol_serve.priority_helpers import Priority, get_priority_for_role

__all__ = ["AsyncSollolClient", "Priority", "SOLLOLConfig", "SollolClient", "SollolError", "connect",
           "connect_async", "get_priority_for_role"]

DEFAULT_URL = "http://127.0.0.1:8000"  # where `serve run serve_config.yaml` and `sollol demo` listen
DEFAULT_TIMEOUT_S = 300.0
BATCH_POLL_S = 0.5
Progress = Callable[[dict], object]  # called with the job's status after every poll


@dataclass
class SOLLOLConfig:
    """How to reach the gateway; unset fields come from `SOLLOL_URL`, `SOLLOL_API_KEY`,
    `SOLLOL_MODEL` and `SOLLOL_EMBED_MODEL`, else the defaults."""

    base_url: str | None = None
    api_key: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    default_model: str | None = None
    default_embed_model: str | None = None
    app_name: str | None = None  # sent as X-SOLLOL-App: which application the requests are from

    def resolved(self) -> "SOLLOLConfig":
        env = os.environ.get
        return SOLLOLConfig(self.base_url or env("SOLLOL_URL") or DEFAULT_URL, self.api_key or env("SOLLOL_API_KEY"),
                            self.timeout, self.default_model or env("SOLLOL_MODEL"),
                            self.default_embed_model or env("SOLLOL_EMBED_MODEL"), self.app_name)


def is_embedding_model(tag: dict) -> bool:
    """Whether an /api/tags entry is an embedding model: Ollama's embedding models are BERT
    family (nomic-bert, bert) or say so in their name."""
    name = str(tag.get("name") or tag.get("model") or "").lower()
    family = str((tag.get("details") or {}).get("family") or "").lower()
    return "embed" in name or "bert" in family or "minilm" in name


def default_models(tags: list[dict]) -> tuple[str | None, str | None]:
    """The first chat model and the first embedding model the gateway lists."""
    names = [(str(t.get("name") or t.get("model")), is_embedding_model(t)) for t in tags]
    return (next((n for n, embeds in names if not embeds), None), next((n for n, embeds in names if embeds), None))


def chat_call(first: str | None, messages: list[dict] | None, model: str | None) -> tuple[str | None, list[dict]]:
    """`chat(model, messages)`, `chat(model=, messages=)` or the original's `chat("a prompt")`:
    the model (None: the default) and the messages."""
    if messages is None:
        if first is None:
            raise TypeError("chat() needs messages, or a prompt")
        return model, [{"role": "user", "content": first}]
    if first is not None and model is not None:
        raise TypeError("chat() got the model twice")
    return first if first is not None else model, messages


class SollolError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _headers(config: SOLLOLConfig) -> dict[str, str]:
    return {"User-Agent": f"sollol-client/{__version__}",
            **({"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}),
            **({"X-SOLLOL-App": config.app_name} if config.app_name else {})}


def _model(model: str | None, kind: str) -> str:
    if not model:
        raise SollolError(404, f"no {kind} model: name one, set SOLLOL_{'EMBED_' if kind == 'embedding' else ''}MODEL, "
                               f"or give the gateway a node that has one")
    return model


def _error(status: int, text: str) -> SollolError:
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        error = None
    message = error.get("message") if isinstance(error, dict) else error
    return SollolError(status, str(message or text[:500]))


def _body(model: str, priority: int, options: dict | None, **fields: object) -> dict:
    body = {"model": model, "priority": int(priority), **{k: v for k, v in fields.items() if v is not None}}
    if options:
        body["options"] = options
    return body


def _chunk(line: str) -> dict:
    chunk = json.loads(line)
    if "error" in chunk:  # a stream that broke after it started ends with an error chunk
        raise SollolError(502, str(chunk["error"]))
    return chunk


def _batch_finished(status: dict) -> bool:
    return status["state"] not in ("queued", "running")


def _batch_vectors(status: dict, results: list[dict]) -> list[list[float]]:
    """The job's embeddings in input order, or SollolError if it did not finish every item."""
    if status["state"] != "completed":
        raise SollolError(409, f"batch job {status['id']} ended {status['state']} "
                               f"({status['done']} of {status['total']} items done)")
    failed = [r for r in results if "error" in r]
    if failed:
        raise SollolError(502, f"{len(failed)} of {status['total']} items failed; "
                               f"item {failed[0]['index']}: {failed[0]['error']}")
    return [r["result"] for r in sorted(results, key=lambda r: r["index"])]


def _check_deadline(deadline: float | None, status: dict) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise SollolError(504, f"batch job {status['id']} not finished in time "
                               f"({status['done'] + status['failed']} of {status['total']} items)")


class SollolClient:
    def __init__(self, url: str | SOLLOLConfig | None = None, api_key: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, *, default_model: str | None = None,
                 default_embed_model: str | None = None, app_name: str | None = None):
        given = url if isinstance(url, SOLLOLConfig) else SOLLOLConfig(url, api_key, timeout_s, default_model,
                                                                        default_embed_model, app_name)
        self.config = given.resolved()
        self.http = httpx.Client(base_url=self.config.base_url.rstrip("/"), headers=_headers(self.config),
                                 timeout=self.config.timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "SollolClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def post(self, path: str, body: dict, *, timeout: float | None = None) -> dict:
        """Any gateway endpoint that takes a JSON body and answers one JSON object."""
        return self._call("POST", path, json=body, **({"timeout": timeout} if timeout else {}))

    def _stream(self, path: str, body: dict) -> Iterator[dict]:
        return self._lines(path, {**body, "stream": True}, _chunk)

    def _lines(self, path: str, body: dict, parse: Callable[[str], dict]) -> Iterator[dict]:
        with self.http.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                raise _error(response.status_code, response.read().decode("utf-8", "replace"))
            for line in response.iter_lines():
                if line.strip():
                    yield parse(line)

    def default_models(self) -> tuple[str | None, str | None]:
        """The chat and embedding models used when a call names none."""
        chat, embed = self.config.default_model, self.config.default_embed_model
        if chat is None or embed is None:
            listed = default_models(self._call("GET", "/api/tags")["models"])
            chat, embed = chat or listed[0], embed or listed[1]
            self.config.default_model, self.config.default_embed_model = chat, embed
        return chat, embed

    def chat(self, first: str | None = None, /, messages: list[dict] | None = None, *, model: str | None = None,
             stream: bool = False, priority: int = Priority.NORMAL, options: dict | None = None,
             **fields: object) -> dict | Iterator[dict]:
        """`chat(model, messages)`, or the original's `chat("a prompt")` with the default model."""
        model, messages = chat_call(first, messages, model)
        body = _body(_model(model or self.default_models()[0], "chat"), priority, options,
                     messages=messages, **fields)
        return self._stream("/api/chat", body) if stream else self.post("/api/chat", {**body, "stream": False})

    async def chat_async(self, first: str | None = None, /, messages: list[dict] | None = None, *,
                         model: str | None = None, **kwargs: object) -> dict:
        """The original SOLLOL client's `await sollol.chat_async("a prompt", priority=6)`."""
        model, messages = chat_call(first, messages, model)
        model = _model(model or self.default_models()[0], "chat")
        # A client per call: an async client belongs to one event loop, and this sync
        # client's callers may run each coroutine on a loop of its own (asyncio.run).
        async with AsyncSollolClient(self.config) as client:
            return await client.chat(model, messages, **kwargs)

    def generate(self, model: str, prompt: str, *, stream: bool = False, priority: int = Priority.NORMAL,
                 options: dict | None = None, **fields: object) -> dict | Iterator[dict]:
        body = _body(model, priority, options, prompt=prompt, **fields)
        return self._stream("/api/generate", body) if stream else self.post("/api/generate", {**body, "stream": False})

    def embed(self, first: str | list[str], /, inputs: str | list[str] | None = None, *, model: str | None = None,
              priority: int = Priority.NORMAL) -> list[list[float]] | list[float]:
        """`embed(model, inputs)`: a vector per input. The original's `embed("a text")`, with
        the default embedding model: that text's vector (a vector per text for a list)."""
        if inputs is not None:
            return self.post("/api/embed", _body(model or first, priority, None, input=inputs))["embeddings"]
        model = _model(model or self.default_models()[1], "embedding")
        vectors = self.post("/api/embed", _body(model, priority, None, input=first))["embeddings"]
        return vectors[0] if isinstance(first, str) else vectors

    def _call(self, method: str, path: str, **kwargs: object) -> dict:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _error(response.status_code, response.text)
        return response.json()

    def nodes(self) -> list[dict]:
        return self._call("GET", "/api/nodes")["nodes"]

    def stats(self) -> dict:
        return self._call("GET", "/api/stats")

    def warm(self, model: str, *, nodes: list[str] | None = None,
             keep_alive: str | int | None = None) -> Iterator[dict]:
        """Load a model on nodes now (admin): an event as each node finishes, then a summary."""
        body = {"model": model, **({"nodes": nodes} if nodes else {}),
                **({"keep_alive": keep_alive} if keep_alive is not None else {})}
        return self._lines("/api/admin/warm", body, json.loads)

    def pull(self, model: str, *, nodes: list[str] | None = None) -> Iterator[dict]:
        """Pull a model onto every Ollama node, or `nodes` (admin): Ollama's progress lines,
        each naming its `node`, then the cluster's summary; SollolError if a node failed."""
        return self._lines("/api/pull", {"model": model, "stream": True, **({"nodes": nodes} if nodes else {})},
                           _chunk)

    # -- batch jobs ---------------------------------------------------------------------
    def submit_batch_embed(self, model: str, inputs: list[str], *, priority: int = Priority.BATCH,
                           **fields: object) -> dict:
        """Start a batch job; returns its status (`id`, `state`, `progress`, ...) at once."""
        return self.post("/api/batch/embed", _body(model, priority, None, input=inputs, **fields))

    def batch_job(self, job_id: str) -> dict:
        return self._call("GET", f"/api/batch/jobs/{job_id}")

    def batch_jobs(self) -> list[dict]:
        return self._call("GET", "/api/batch/jobs")["jobs"]

    def cancel_batch(self, job_id: str) -> dict:
        """Cancel a job that runs, delete one that ended (`action` says which)."""
        return self._call("DELETE", f"/api/batch/jobs/{job_id}")

    def batch_results(self, job_id: str) -> list[dict]:
        items, offset = [], 0
        while offset is not None:
            page = self._call("GET", f"/api/batch/results/{job_id}", params={"offset": offset})
            items += page["items"]
            offset = page["next_offset"]
        return items

    def batch_embed(self, first: str | list[str], /, inputs: list[str] | None = None, *, model: str | None = None,
                    priority: int = Priority.BATCH, progress: Progress | None = None, poll_s: float = BATCH_POLL_S,
                    timeout_s: float | None = None, batch_size: int | None = None,
                    **fields: object) -> list[list[float]]:
        """Embed many texts as a batch job and wait for it; `progress(status)` after every poll.
        `batch_embed(model, texts)`, or the original's `batch_embed(documents)` with the default
        embedding model. `batch_size` is the original's and changes nothing: the gateway
        chooses how many texts go to a node per call."""
        del batch_size
        model, texts = (model or first, inputs) if inputs is not None else (model, first)
        model = _model(model or self.default_models()[1], "embedding")
        status = self.submit_batch_embed(model, texts, priority=priority, **fields)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not _batch_finished(status):
            if progress:
                progress(status)
            _check_deadline(deadline, status)
            time.sleep(poll_s)
            status = self.batch_job(status["id"])
        if progress:
            progress(status)
        return _batch_vectors(status, self.batch_results(status["id"]))

    def health(self) -> dict:
        response = self.http.get("/health")
        return {**response.json(), "http_status": response.status_code}


class AsyncSollolClient:
    def __init__(self, url: str | SOLLOLConfig | None = None, api_key: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, *, app_name: str | None = None):
        given = url if isinstance(url, SOLLOLConfig) else SOLLOLConfig(url, api_key, timeout_s, app_name=app_name)
        self.config = given.resolved()
        self.http = httpx.AsyncClient(base_url=self.config.base_url.rstrip("/"), headers=_headers(self.config),
                                      timeout=self.config.timeout)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncSollolClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def post(self, path: str, body: dict, *, timeout: float | None = None) -> dict:
        """Any gateway endpoint that takes a JSON body and answers one JSON object."""
        return await self._call("POST", path, json=body, **({"timeout": timeout} if timeout else {}))

    async def _stream(self, path: str, body: dict) -> AsyncIterator[dict]:
        async with self.http.stream("POST", path, json={**body, "stream": True}) as response:
            if response.status_code >= 400:
                raise _error(response.status_code, (await response.aread()).decode("utf-8", "replace"))
            async for line in response.aiter_lines():
                if line.strip():
                    yield _chunk(line)

    async def chat(self, model: str, messages: list[dict], *, priority: int = Priority.NORMAL,
                   options: dict | None = None, **fields: object) -> dict:
        return await self.post("/api/chat", {**_body(model, priority, options, messages=messages, **fields),
                                             "stream": False})

    def chat_stream(self, model: str, messages: list[dict], *, priority: int = Priority.NORMAL,
                    options: dict | None = None, **fields: object) -> AsyncIterator[dict]:
        return self._stream("/api/chat", _body(model, priority, options, messages=messages, **fields))

    async def generate(self, model: str, prompt: str, *, priority: int = Priority.NORMAL,
                       options: dict | None = None, **fields: object) -> dict:
        return await self.post("/api/generate", {**_body(model, priority, options, prompt=prompt, **fields),
                                                 "stream": False})

    def generate_stream(self, model: str, prompt: str, *, priority: int = Priority.NORMAL,
                        options: dict | None = None, **fields: object) -> AsyncIterator[dict]:
        return self._stream("/api/generate", _body(model, priority, options, prompt=prompt, **fields))

    async def embed(self, model: str, inputs: str | list[str], *, priority: int = Priority.NORMAL) -> list[list[float]]:
        return (await self.post("/api/embed", _body(model, priority, None, input=inputs)))["embeddings"]

    async def _call(self, method: str, path: str, **kwargs: object) -> dict:
        response = await self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _error(response.status_code, response.text)
        return response.json()

    async def stats(self) -> dict:
        return await self._call("GET", "/api/stats")

    async def submit_batch_embed(self, model: str, inputs: list[str], *, priority: int = Priority.BATCH,
                                 **fields: object) -> dict:
        return await self.post("/api/batch/embed", _body(model, priority, None, input=inputs, **fields))

    async def batch_job(self, job_id: str) -> dict:
        return await self._call("GET", f"/api/batch/jobs/{job_id}")

    async def cancel_batch(self, job_id: str) -> dict:
        return await self._call("DELETE", f"/api/batch/jobs/{job_id}")

    async def batch_results(self, job_id: str) -> list[dict]:
        items, offset = [], 0
        while offset is not None:
            page = await self._call("GET", f"/api/batch/results/{job_id}", params={"offset": offset})
            items += page["items"]
            offset = page["next_offset"]
        return items

    async def batch_embed(self, model: str, inputs: list[str], *, priority: int = Priority.BATCH,
                          progress: Progress | None = None, poll_s: float = BATCH_POLL_S,
                          timeout_s: float | None = None, **fields: object) -> list[list[float]]:
        status = await self.submit_batch_embed(model, inputs, priority=priority, **fields)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not _batch_finished(status):
            if progress:
                progress(status)
            _check_deadline(deadline, status)
            await asyncio.sleep(poll_s)
            status = await self.batch_job(status["id"])
        if progress:
            progress(status)
        return _batch_vectors(status, await self.batch_results(status["id"]))


def connect(url: str | SOLLOLConfig | None = None, api_key: str | None = None,
            timeout_s: float = DEFAULT_TIMEOUT_S, **defaults: str | None) -> SollolClient:
    """A client of the gateway at `url` (or a `SOLLOLConfig`; none: `SOLLOL_URL`, else the
    local default). `defaults`: `default_model`, `default_embed_model`, `app_name`."""
    return SollolClient(url, api_key, timeout_s, **defaults)


def connect_async(url: str | SOLLOLConfig | None = None, api_key: str | None = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> AsyncSollolClient:
    return AsyncSollolClient(url, api_key, timeout_s)
