"""Cluster model management, the pure part: which nodes a pull, delete, copy, create, push
or blob goes to, and how the nodes' progress becomes one Ollama-format stream.

Every line of the stream is Ollama's own progress line with the node it came from added
(`"node": "gpu-1"`); a node skipped or failed is a line of its own, and the last line, which
names no node, is the cluster's answer: `{"status": "success", ...}` when every node
succeeded, else `{"error": ...}` naming the nodes that failed (an Ollama client raises it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sollol_serve.names import normalize_model
from sollol_serve.protocol import (
    BadRequest,
    ModelNotFound,
    NodeStatus,
    NoNodeAvailable,
    NotFound,
    error_message,
)

NO_MANAGEMENT = "llama-server (OpenAI-compatible) node: it serves the model it was started with, no pull or delete"


@dataclass(slots=True)
class Targets:
    """The nodes an operation goes to (node -> the model's name there) and those left out, with why."""

    nodes: dict[str, str]
    skipped: dict[str, str] = field(default_factory=dict)


def _why_not(node: NodeStatus) -> str | None:
    """Why a node takes no model management now (None: it does)."""
    if node.kind == "openai":
        return NO_MANAGEMENT
    if not node.healthy:
        return f"node is down: {node.error or 'not reachable'}"
    if node.kind != "ollama":
        return "node's kind is not known yet (not probed)"
    return None


def _named(nodes: list[NodeStatus], names: list[str] | None) -> list[NodeStatus]:
    """The nodes named (each must exist), or every node except shard groups (not installed models)."""
    if names is None:
        return [n for n in nodes if not n.name.startswith("shard:")]
    by_name = {n.name: n for n in nodes}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise NotFound(f"node '{unknown[0]}' not found")
    return [by_name[n] for n in dict.fromkeys(names)]


def pull_targets(nodes: list[NodeStatus], model: str, names: list[str] | None = None) -> Targets:
    """Every Ollama node (or the ones named) gets the pull; the others are skipped with a reason."""
    targets = Targets({})
    for node in _named(nodes, names):
        reason = _why_not(node)
        if reason is None:
            targets.nodes[node.name] = model
        else:
            targets.skipped[node.name] = reason
    if not targets.nodes:
        raise NoNodeAvailable("no Ollama node to pull to: " + "; ".join(f"{n}: {r}" for n, r in targets.skipped.items())
                              if targets.skipped else "no Ollama node to pull to")
    return targets


def node_model_name(node: NodeStatus, model: str) -> str | None:
    """The node's own name for `model` (`llama3.2` is `llama3.2:latest` there), if it has it."""
    wanted = normalize_model(model)
    return next((m for m in node.models if normalize_model(m) == wanted), None)


def holders(nodes: list[NodeStatus], model: str, names: list[str] | None = None) -> Targets:
    """The Ollama nodes that have `model` (a delete or copy goes to each); 404 if none has it."""
    targets = Targets({})
    for node in _named(nodes, names):
        name = node_model_name(node, model)
        if name is None:
            continue
        reason = _why_not(node)
        if reason is None:
            targets.nodes[node.name] = name
        else:
            targets.skipped[node.name] = reason
    if not targets.nodes and not targets.skipped:
        raise ModelNotFound(f"model '{model}' not found")
    if not targets.nodes:
        raise NoNodeAvailable(f"no node that has '{model}' can change it: "
                              + "; ".join(f"{n}: {r}" for n, r in targets.skipped.items()))
    return targets


def one_node(nodes: list[NodeStatus], name: str | None) -> str:
    """The node a create, push or blob goes to: the one named, else the first healthy Ollama
    node by name (the same one every time, so blobs and the create that uses them meet)."""
    if name is not None:
        node = _named(nodes, [name])[0]
        reason = _why_not(node)
        if reason is not None:
            raise BadRequest(f"node '{name}' cannot take this: {reason}")
        return name
    able = sorted(n.name for n in _named(nodes, None) if _why_not(n) is None)
    if not able:
        raise NoNodeAvailable("no healthy Ollama node")
    return able[0]


def skipped_line(node: str, reason: str) -> dict:
    return {"status": f"skipped: {reason}", "node": node}


class Tally:
    """Turns each node's progress into lines of the one stream and remembers how each ended."""

    def __init__(self, op: str, model: str, nodes: list[str], skipped: dict[str, str] | None = None):
        self.op, self.model = op, model
        self.last: dict[str, str] = {n: "" for n in nodes}  # node -> its last status
        self.failed: dict[str, str] = {}
        self.skipped = dict(skipped or {})

    def line(self, node: str, item: dict | BaseException) -> dict:
        if isinstance(item, BaseException):
            self.failed[node] = error_message(item)
            return {"status": f"failed: {self.failed[node]}", "node": node}
        self.last[node] = str(item.get("status", ""))
        return {**item, "node": node}

    def succeeded(self) -> list[str]:
        return [n for n, status in self.last.items() if status == "success" and n not in self.failed]

    def summary(self) -> dict:
        """The last line: success if every node's stream ended in success, else the error."""
        done = sorted(self.succeeded())  # by name: the nodes' order in the router's view is no promise
        broken = {**self.failed, **{n: "its stream ended before success" for n in self.last
                                    if n not in done and n not in self.failed}}
        if not broken:
            return {"status": "success", "model": self.model, "nodes": done, "skipped": sorted(self.skipped)}
        failures = "; ".join(f"{n}: {why}" for n, why in broken.items())
        ok = f"; succeeded on {', '.join(done)}" if done else ""
        return {"error": f"{self.op} of '{self.model}' failed on {len(broken)} node(s): {failures}{ok}",
                "model": self.model, "nodes": done, "failed": sorted(broken), "skipped": sorted(self.skipped)}


async def merge(streams: dict[str, AsyncIterator[dict]]) -> AsyncIterator[tuple[str, dict | BaseException]]:
    """Every stream's items as they come, named by their key; a stream that fails gives its
    exception as its last item. Ends when all have ended; closing it early stops them all."""
    queue: asyncio.Queue[tuple[str, dict | BaseException | None]] = asyncio.Queue()

    async def drain(name: str, stream: AsyncIterator[dict]) -> None:
        try:
            async for item in stream:
                await queue.put((name, item))
            await queue.put((name, None))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await queue.put((name, exc))
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    tasks = [asyncio.ensure_future(drain(name, stream)) for name, stream in streams.items()]
    running = len(tasks)
    try:
        while running:
            name, item = await queue.get()
            if item is None:
                running -= 1
                continue
            if isinstance(item, BaseException):
                running -= 1
            yield name, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
