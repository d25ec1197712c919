"""An Ollama node's model management, as its worker speaks it: pull, push and create stream
Ollama's progress lines; delete and copy answer with a status; blobs are checked (HEAD) or
uploaded (POST, passed on piece by piece). Failures are `NodeError`s, never retried on another
node: a model change is meant for the node it was sent to."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Literal

from sollol_serve.config import TimeoutConfig
from sollol_serve.nodes.http import NodeHTTP, error_message
from sollol_serve.protocol import BadRequest, NodeError, StreamBroken

Streamed = Literal["pull", "push", "create"]
Change = Literal["delete", "copy"]

STREAMED_PATHS: dict[str, str] = {"pull": "/api/pull", "push": "/api/push", "create": "/api/create"}
CHANGES: dict[str, tuple[str, str]] = {"delete": ("DELETE", "/api/delete"), "copy": ("POST", "/api/copy")}
# What Ollama accepts in /api/blobs/:digest; checked here too, since it becomes part of the node's URL.
BLOB_DIGEST = re.compile(r"^sha256[:-][0-9a-f]{64}$")

# A pull of a large model runs for hours, and Ollama is silent while it verifies a digest of
# many GB: a day in all, ten minutes between lines, instead of an answer's limits.
LONGEST_S = 24 * 3600.0
SILENT_S = 600.0


def management_timeouts(base: TimeoutConfig) -> TimeoutConfig:
    return base.model_copy(update={"total_s": max(base.total_s, LONGEST_S), "idle_s": max(base.idle_s, SILENT_S)})


def check_digest(digest: str) -> str:
    if not BLOB_DIGEST.match(digest):
        raise BadRequest("invalid digest format")
    return digest


async def progress(http: NodeHTTP, url: str, op: Streamed, body: dict, timeouts: TimeoutConfig) -> AsyncIterator[dict]:
    """The node's progress lines of a pull, push or create; an `error` line (Ollama streams
    its failures after the 200) raises."""
    async for line in http.post_lines(url + STREAMED_PATHS[op], {**body, "stream": True}, management_timeouts(timeouts)):
        try:
            event = json.loads(line)
        except ValueError:
            raise StreamBroken(f"node {http.node} sent a progress line that is not JSON") from None
        if not isinstance(event, dict):
            raise StreamBroken(f"node {http.node} sent a progress line that is not an object")
        if event.get("error"):
            raise NodeError(str(event["error"])[:500], status=502, retryable=False)
        yield event


async def change(http: NodeHTTP, url: str, op: Change, body: dict, timeouts: TimeoutConfig) -> None:
    """A delete or copy; the node's error (a 404 for a model it lacks) raises with its status."""
    method, path = CHANGES[op]
    status, text = await http.request(method, url + path, json_body=body, timeouts=timeouts)
    if status >= 400:
        raise NodeError(error_message(text, f"HTTP {status}"), status=status, retryable=False)


async def has_blob(http: NodeHTTP, url: str, digest: str, timeouts: TimeoutConfig) -> int:
    """Ollama's HEAD /api/blobs/:digest: 200 if the node has the blob, 404 if not."""
    status, text = await http.request("HEAD", f"{url}/api/blobs/{check_digest(digest)}", timeouts=timeouts)
    if status >= 400 and status != 404:
        raise NodeError(error_message(text, f"HTTP {status}"), status=status, retryable=False)
    return status


class BlobUpload:
    """A blob on its way to the node in the pieces the gateway receives, never held whole (a
    GGUF is many GB): the node's POST runs while pieces arrive. A piece not given within
    SILENT_S (the gateway's side went away) ends the upload."""

    def __init__(self, http: NodeHTTP, url: str, digest: str, timeouts: TimeoutConfig):
        self._pieces: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=2)  # a little read-ahead, no more
        self.answer = asyncio.ensure_future(http.request(
            "POST", f"{url}/api/blobs/{check_digest(digest)}", content=self._body(), timeouts=management_timeouts(timeouts)))

    async def _body(self) -> AsyncIterator[bytes]:
        while (piece := await asyncio.wait_for(self._pieces.get(), SILENT_S)) is not None:
            yield piece

    async def send(self, piece: bytes | None) -> None:
        """Pass a piece on (None: the end of the body); once the node has answered (it had the
        blob, or refused it) the rest is dropped and `finish` tells."""
        put = asyncio.ensure_future(self._pieces.put(piece))
        await asyncio.wait((put, self.answer), return_when=asyncio.FIRST_COMPLETED)
        put.cancel()

    async def finish(self) -> int:
        """201 stored, 200 the node had it already; the node's refusal (a digest mismatch) raises."""
        await self.send(None)
        status, text = await self.answer
        if status >= 400:
            raise NodeError(error_message(text, f"HTTP {status}"), status=status, retryable=False)
        return status

    def abort(self) -> None:
        self.answer.cancel()
        if self.answer.done() and not self.answer.cancelled():
            self.answer.exception()  # retrieved: an abandoned upload's failure is no one's news


class BlobUploads:
    """A worker's uploads under way, by id: begun, given piece by piece, ended. The node's
    answer waits for the end (it may come before the last piece: the node had the blob, or
    refused it); an upload no one ends is dropped SILENT_S after its answer."""

    def __init__(self, node: str):
        self.node = node
        self._open: dict[str, BlobUpload] = {}

    def begin(self, http: NodeHTTP, url: str, digest: str, timeouts: TimeoutConfig) -> str:
        upload_id = uuid.uuid4().hex
        upload = self._open[upload_id] = BlobUpload(http, url, digest, timeouts)

        def answered(answer: asyncio.Future) -> None:
            if not answer.cancelled():
                answer.exception()  # retrieved here (for no warning), raised again by `end`
            asyncio.get_running_loop().call_later(SILENT_S, self._open.pop, upload_id, None)

        upload.answer.add_done_callback(answered)
        return upload_id

    def _get(self, upload_id: str, end: bool = False) -> BlobUpload:
        upload = self._open.pop(upload_id, None) if end else self._open.get(upload_id)
        if upload is None:
            raise NodeError(f"no upload {upload_id} to node {self.node} (it sat idle too long)", 502, retryable=False)
        return upload

    async def part(self, upload_id: str, piece: bytes) -> None:
        await self._get(upload_id).send(piece)

    async def end(self, upload_id: str, complete: bool) -> int | None:
        """The node's answer to the whole blob; None for an upload given up (`complete` False)."""
        upload = self._get(upload_id, end=True)
        if not complete:
            upload.abort()
            return None
        return await upload.finish()
