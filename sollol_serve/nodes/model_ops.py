"""An Ollama node's model management, as its worker speaks it: pull, push and create stream
Ollama's progress lines; delete and copy answer with a status; blobs are checked (HEAD) or
uploaded (POST). Failures are `NodeError`s naming the node, never retried on another node:
a model change is meant for the node it was sent to."""

from __future__ import annotations

import json
import re
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


async def blob(http: NodeHTTP, url: str, digest: str, content: bytes | None, timeouts: TimeoutConfig) -> int:
    """HEAD (content None: 200 has it, 404 lacks it) or POST (201 stored, 200 had it) a blob."""
    method = "HEAD" if content is None else "POST"
    status, text = await http.request(method, f"{url}/api/blobs/{check_digest(digest)}", content=content,
                                      timeouts=management_timeouts(timeouts))
    if status >= 400 and not (content is None and status == 404):
        raise NodeError(error_message(text, f"HTTP {status}"), status=status, retryable=False)
    return status
