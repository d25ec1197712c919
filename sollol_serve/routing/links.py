"""How a router reaches a node's worker: a Serve deployment handle (nodes in the config) or
a detached actor (nodes added at run time). Both give the router the same three calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import ray
from ray.actor import ActorHandle
from ray.serve.handle import DeploymentHandle

from sollol_serve.protocol import NodeRequest, Usage


class ItemStream(Protocol):
    """A worker's streamed answer: items as they come; `cancel()` stops the worker's work."""

    def __aiter__(self) -> AsyncIterator[object]: ...

    async def __anext__(self) -> object: ...

    def cancel(self) -> None: ...


class WorkerLink(Protocol):
    runtime: bool  # added through the admin API (its actor is ours to kill on removal)

    async def call(self, req: NodeRequest, node_model: str) -> tuple[dict, Usage]: ...

    def open(self, method: str, req: NodeRequest, node_model: str) -> ItemStream: ...

    async def ask(self, method: str, *args: object) -> object: ...


class ServeLink:
    runtime = False

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    async def call(self, req: NodeRequest, node_model: str) -> tuple[dict, Usage]:
        return await self.handle.call.remote(req, node_model)

    def open(self, method: str, req: NodeRequest, node_model: str) -> ItemStream:
        return getattr(self.handle, method).options(stream=True).remote(req, node_model)

    async def ask(self, method: str, *args: object) -> object:
        return await getattr(self.handle, method).remote(*args)


class ActorItems:
    def __init__(self, refs: ray.ObjectRefGenerator):
        self.refs = refs

    def __aiter__(self) -> "ActorItems":
        return self

    async def __anext__(self) -> object:
        return await (await self.refs.__anext__())

    def cancel(self) -> None:
        ray.cancel(self.refs)


class ActorLink:
    runtime = True

    def __init__(self, actor: ActorHandle):
        self.actor = actor

    async def call(self, req: NodeRequest, node_model: str) -> tuple[dict, Usage]:
        return await self.actor.call.remote(req, node_model)

    def open(self, method: str, req: NodeRequest, node_model: str) -> ItemStream:
        return ActorItems(getattr(self.actor, method).options(num_returns="streaming").remote(req, node_model))

    async def ask(self, method: str, *args: object) -> object:
        return await getattr(self.actor, method).remote(*args)
