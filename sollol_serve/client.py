"""Python SDK: `connect(url, api_key=None)` gives a client for the gateway's Ollama API.

    from sollol_serve.client import Priority, connect
    sollol = connect("http://127.0.0.1:8000")
    answer = sollol.chat("llama3.2", [{"role": "user", "content": "hi"}], priority=Priority.HIGH)
    for chunk in sollol.chat("llama3.2", messages, stream=True): ...
    vectors = sollol.embed("nomic-embed-text", ["a", "b"])

    vectors = sollol.batch_embed("nomic-embed-text", many_texts, progress=print)  # a batch job

`AsyncSollolClient` (from `connect_async`) has the same methods as coroutines and async
iterators. Errors come back as `SollolError` with the HTTP status and the gateway's message.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from enum import IntEnum

import httpx

DEFAULT_TIMEOUT_S = 300.0
BATCH_POLL_S = 0.5
Progress = Callable[[dict], object]  # called with the job's status after every poll


class Priority(IntEnum):
    """The gateway's 1-10 priority levels (10 = most urgent; 9 and above are hedged)."""

    BATCH = 1
    LOW = 3
    NORMAL = 5
    HIGH = 8
    URGENT = 10


ROLE_PRIORITIES: dict[str, Priority] = {
    "batch": Priority.BATCH, "background": Priority.LOW, "analysis": Priority.NORMAL,
    "assistant": Priority.NORMAL, "interactive": Priority.HIGH, "realtime": Priority.URGENT,
}


def priority_for_role(role: str) -> Priority:
    """The priority a kind of caller should use (unknown roles get NORMAL)."""
    return ROLE_PRIORITIES.get(role.lower(), Priority.NORMAL)


class SollolError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


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
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=_headers(api_key), timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "SollolClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, path: str, body: dict) -> dict:
        return self._call("POST", path, json=body)

    def _stream(self, path: str, body: dict) -> Iterator[dict]:
        return self._lines(path, {**body, "stream": True}, _chunk)

    def _lines(self, path: str, body: dict, parse: Callable[[str], dict]) -> Iterator[dict]:
        with self.http.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                raise _error(response.status_code, response.read().decode("utf-8", "replace"))
            for line in response.iter_lines():
                if line.strip():
                    yield parse(line)

    def chat(self, model: str, messages: list[dict], *, stream: bool = False, priority: int = Priority.NORMAL,
             options: dict | None = None, **fields: object) -> dict | Iterator[dict]:
        body = _body(model, priority, options, messages=messages, **fields)
        return self._stream("/api/chat", body) if stream else self._post("/api/chat", {**body, "stream": False})

    def generate(self, model: str, prompt: str, *, stream: bool = False, priority: int = Priority.NORMAL,
                 options: dict | None = None, **fields: object) -> dict | Iterator[dict]:
        body = _body(model, priority, options, prompt=prompt, **fields)
        return self._stream("/api/generate", body) if stream else self._post("/api/generate", {**body, "stream": False})

    def embed(self, model: str, inputs: str | list[str], *, priority: int = Priority.NORMAL) -> list[list[float]]:
        return self._post("/api/embed", _body(model, priority, None, input=inputs))["embeddings"]

    def _call(self, method: str, path: str, **kwargs: object) -> dict:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _error(response.status_code, response.text)
        return response.json()

    def nodes(self) -> list[dict]:
        return self._call("GET", "/api/nodes")["nodes"]

    def warm(self, model: str, *, nodes: list[str] | None = None,
             keep_alive: str | int | None = None) -> Iterator[dict]:
        """Load a model on nodes now (admin): an event as each node finishes, then a summary."""
        body = {"model": model, **({"nodes": nodes} if nodes else {}),
                **({"keep_alive": keep_alive} if keep_alive is not None else {})}
        return self._lines("/api/admin/warm", body, json.loads)

    # -- batch jobs ---------------------------------------------------------------------
    def submit_batch_embed(self, model: str, inputs: list[str], *, priority: int = Priority.BATCH,
                           **fields: object) -> dict:
        """Start a batch job; returns its status (`id`, `state`, `progress`, ...) at once."""
        return self._post("/api/batch/embed", _body(model, priority, None, input=inputs, **fields))

    def batch_job(self, job_id: str) -> dict:
        return self._call("GET", f"/api/batch/jobs/{job_id}")

    def batch_jobs(self) -> list[dict]:
        return self._call("GET", "/api/batch/jobs")["jobs"]

    def cancel_batch(self, job_id: str) -> dict:
        return self._call("DELETE", f"/api/batch/jobs/{job_id}")

    def batch_results(self, job_id: str) -> list[dict]:
        results, offset = [], 0
        while offset is not None:
            page = self._call("GET", f"/api/batch/results/{job_id}", params={"offset": offset})
            results += page["results"]
            offset = page["next_offset"]
        return results

    def batch_embed(self, model: str, inputs: list[str], *, priority: int = Priority.BATCH,
                    progress: Progress | None = None, poll_s: float = BATCH_POLL_S,
                    timeout_s: float | None = None, **fields: object) -> list[list[float]]:
        """Embed many texts as a batch job and wait for it; `progress(status)` after every poll."""
        status = self.submit_batch_embed(model, inputs, priority=priority, **fields)
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
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=_headers(api_key), timeout=timeout_s)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncSollolClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _post(self, path: str, body: dict) -> dict:
        return await self._call("POST", path, json=body)

    async def _stream(self, path: str, body: dict) -> AsyncIterator[dict]:
        async with self.http.stream("POST", path, json={**body, "stream": True}) as response:
            if response.status_code >= 400:
                raise _error(response.status_code, (await response.aread()).decode("utf-8", "replace"))
            async for line in response.aiter_lines():
                if line.strip():
                    yield _chunk(line)

    async def chat(self, model: str, messages: list[dict], *, priority: int = Priority.NORMAL,
                   options: dict | None = None, **fields: object) -> dict:
        return await self._post("/api/chat", {**_body(model, priority, options, messages=messages, **fields),
                                              "stream": False})

    def chat_stream(self, model: str, messages: list[dict], *, priority: int = Priority.NORMAL,
                    options: dict | None = None, **fields: object) -> AsyncIterator[dict]:
        return self._stream("/api/chat", _body(model, priority, options, messages=messages, **fields))

    async def generate(self, model: str, prompt: str, *, priority: int = Priority.NORMAL,
                       options: dict | None = None, **fields: object) -> dict:
        return await self._post("/api/generate", {**_body(model, priority, options, prompt=prompt, **fields),
                                                  "stream": False})

    def generate_stream(self, model: str, prompt: str, *, priority: int = Priority.NORMAL,
                        options: dict | None = None, **fields: object) -> AsyncIterator[dict]:
        return self._stream("/api/generate", _body(model, priority, options, prompt=prompt, **fields))

    async def embed(self, model: str, inputs: str | list[str], *, priority: int = Priority.NORMAL) -> list[list[float]]:
        return (await self._post("/api/embed", _body(model, priority, None, input=inputs)))["embeddings"]

    async def _call(self, method: str, path: str, **kwargs: object) -> dict:
        response = await self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _error(response.status_code, response.text)
        return response.json()

    async def submit_batch_embed(self, model: str, inputs: list[str], *, priority: int = Priority.BATCH,
                                 **fields: object) -> dict:
        return await self._post("/api/batch/embed", _body(model, priority, None, input=inputs, **fields))

    async def batch_job(self, job_id: str) -> dict:
        return await self._call("GET", f"/api/batch/jobs/{job_id}")

    async def cancel_batch(self, job_id: str) -> dict:
        return await self._call("DELETE", f"/api/batch/jobs/{job_id}")

    async def batch_results(self, job_id: str) -> list[dict]:
        results, offset = [], 0
        while offset is not None:
            page = await self._call("GET", f"/api/batch/results/{job_id}", params={"offset": offset})
            results += page["results"]
            offset = page["next_offset"]
        return results

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


def connect(url: str = "http://127.0.0.1:8000", api_key: str | None = None,
            timeout_s: float = DEFAULT_TIMEOUT_S) -> SollolClient:
    return SollolClient(url, api_key, timeout_s)


def connect_async(url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> AsyncSollolClient:
    return AsyncSollolClient(url, api_key, timeout_s)
