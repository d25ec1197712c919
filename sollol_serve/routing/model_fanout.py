"""Cluster model management, the moving part: each node's share runs on that node's worker,
the progress is merged (`cluster_models`), and the router adopts the new inventory before the
answer ends, so the model a client was just told is there routes at once.

It runs in the process that serves the client (the Ingress), with the workers it reaches and
the Router's view of the nodes; the Router itself only re-syncs on request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from sollol_serve.protocol import NodeError, NodeStatus, error_message, unwrap
from sollol_serve.routing.cluster_models import (
    Tally,
    Targets,
    holders,
    merge,
    one_node,
    pull_targets,
    skipped_line,
)
from sollol_serve.routing.links import WorkerLink


class Inventory(Protocol):
    """The Router as model management uses it."""

    async def nodes(self) -> list[NodeStatus]: ...

    async def refresh(self) -> None:
        """Adopt the shared node state now (workers have reported the change)."""


class Workers(Protocol):
    async def find(self, node: str) -> WorkerLink | None: ...


class RouterInventory:
    def __init__(self, handle):
        self.handle = handle

    async def nodes(self) -> list[NodeStatus]:
        return await self.handle.nodes.remote()

    async def refresh(self) -> None:
        await self.handle.sync_now.remote()


class ModelFanout:
    def __init__(self, workers: Workers, inventory: Inventory):
        self.workers = workers
        self.inventory = inventory

    async def _link(self, node: str) -> WorkerLink:
        link = await self.workers.find(node)
        if link is None:
            raise NodeError(f"no worker for node '{node}'", 503)
        return link

    async def _stream(self, node: str, op: str, body: dict) -> AsyncIterator[dict]:
        stream = (await self._link(node)).stream("manage_stream", op, body)
        try:
            async for event in stream:
                yield event
        finally:
            stream.cancel()  # the client left: the node's pull stops too, as Ollama's does

    # -- pull: every Ollama node, one stream -----------------------------------------------
    async def plan_pull(self, model: str, names: list[str] | None) -> Targets:
        """Where a pull goes; an unknown node or no Ollama node at all fails before any stream."""
        return pull_targets(await self.inventory.nodes(), model, names)

    async def pull(self, body: dict, model: str, targets: Targets) -> AsyncIterator[dict]:
        tally = Tally("pull", model, list(targets.nodes), targets.skipped)
        for node, reason in targets.skipped.items():
            yield skipped_line(node, reason)
        streams = {node: self._stream(node, "pull", {**body, "model": name}) for node, name in targets.nodes.items()}
        async for node, item in merge(streams):
            yield tally.line(node, item)
        if tally.succeeded():
            await self.inventory.refresh()
        yield tally.summary()

    # -- delete, copy: every node that has the model -----------------------------------------
    async def change(self, op: str, model: str, body_for, names: list[str] | None) -> dict:
        """`op` on every Ollama node that has `model` (`body_for(name there)` is its body): the
        nodes it was done on, or an error naming those it failed on."""
        targets = holders(await self.inventory.nodes(), model, names)
        links = {node: await self._link(node) for node in targets.nodes}
        results = await asyncio.gather(*(links[node].ask("manage", op, body_for(name))
                                         for node, name in targets.nodes.items()), return_exceptions=True)
        tally = Tally(op, model, list(targets.nodes), targets.skipped)
        for node, result in zip(targets.nodes, results):
            tally.line(node, result if isinstance(result, BaseException) else {"status": "success"})
        if tally.succeeded():
            await self.inventory.refresh()
        summary = tally.summary()
        if "error" in summary:
            statuses = {getattr(unwrap(r), "status", 502) for r in results if isinstance(r, BaseException)}
            # Every node refusing alike (a 400 for a bad name) is that refusal; a mixed outcome a 502.
            alike = len(statuses) == 1 and not tally.succeeded()
            raise NodeError(summary["error"], statuses.pop() if alike else 502, retryable=False)
        return summary

    # -- create, push, blobs: one node ----------------------------------------------------
    async def choose(self, name: str | None) -> str:
        return one_node(await self.inventory.nodes(), name)

    async def single(self, op: str, node: str, body: dict) -> AsyncIterator[dict]:
        """The node's progress lines, named; an error line last if it fails."""
        succeeded = False
        try:
            async for event in self._stream(node, op, body):
                succeeded = event.get("status") == "success"
                if succeeded:
                    await self.inventory.refresh()
                yield {**event, "node": node}
        except Exception as exc:
            yield {"error": f"{op} failed on {node}: {error_message(exc)}", "node": node}
            return
        if not succeeded:
            yield {"error": f"{op} on {node} ended before success", "node": node}

    async def has_blob(self, node: str, digest: str) -> int:
        return await (await self._link(node)).ask("has_blob", digest)

    async def upload_blob(self, node: str, digest: str, pieces: AsyncIterator[bytes]) -> int:
        """Pass a blob on to the node's worker piece by piece; the node's status (201, or 200
        if it had it). A failure on the way gives the upload up on the worker too."""
        link = await self._link(node)
        upload_id = await link.ask("blob_begin", digest)
        try:
            async for piece in pieces:
                await link.ask("blob_part", upload_id, piece)
        except BaseException:
            # not awaited: this task may be being cancelled (the client left)
            asyncio.ensure_future(link.ask("blob_end", upload_id, False))
            raise
        return await link.ask("blob_end", upload_id, True)


async def regrouped(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """The request body's chunks (a few KB each, as they arrive) in pieces of `size` bytes, the
    last one shorter: one Ray call per piece, not per chunk."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)
