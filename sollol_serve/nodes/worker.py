"""The OllamaWorker deployment: one per node, the only place that talks HTTP to that node.

It detects the node's kind, keeps the shared node state informed of what the node has
(probing in the background), and carries requests to the node through its backend adapter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from ray import serve

from sollol_serve.config import NodeConfig, TimeoutConfig
from sollol_serve.nodes.backends import BACKENDS, NodeBackend, NodeInventory, detect_kind
from sollol_serve.nodes.http import NodeHTTP
from sollol_serve.protocol import NodeError, NodeRequest, Usage
from sollol_serve.routing.state import NodeReport
from sollol_serve.routing.state_actor import state_actor

logger = logging.getLogger("ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 0})
class OllamaWorker:
    async def __init__(self, node: dict, timeouts: dict, probe_interval_s: float, state_actor_name: str):
        self.node = NodeConfig.model_validate(node)
        self.http = NodeHTTP(TimeoutConfig.model_validate(timeouts))
        self.backend: NodeBackend | None = None
        self.probe_interval_s = probe_interval_s
        self.state = state_actor(state_actor_name)
        await self.state.register.remote(self.node.name, self.node.url, self.node.slots)
        await self.probe()
        self._prober = asyncio.create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            try:
                await self.probe()
            except Exception:  # a failed probe must not end the loop
                logger.exception("probe of node %s failed", self.node.name)

    async def probe(self) -> NodeReport:
        """Detect the kind if unknown, read the inventory and report it."""
        report = NodeReport(name=self.node.name, url=self.node.url, kind=None, healthy=False)
        try:
            if self.backend is None:
                kind = self.node.kind if self.node.kind != "auto" else await detect_kind(self.http, self.node.url)
                if kind is None:
                    raise NodeError(f"node {self.node.url} answers neither the Ollama nor the OpenAI API", 503)
                self.backend = BACKENDS[kind](self.node.url, self.http)
            inventory: NodeInventory = await self.backend.inventory()
            report = NodeReport(name=self.node.name, url=self.node.url, kind=inventory.kind, healthy=True,
                                models=inventory.models, loaded=inventory.loaded, slots=inventory.slots,
                                version=inventory.version)
        except NodeError as exc:
            report.error = exc.message
            report.kind = self.backend.kind if self.backend else None
        await self.state.report.remote(report)
        return report

    def _backend(self) -> NodeBackend:
        if self.backend is None:
            raise NodeError(f"node {self.node.name} has not been reached yet", 503)
        return self.backend

    async def call(self, req: NodeRequest, node_model: str) -> tuple[dict, Usage]:
        try:
            return await self._backend().call(req, node_model)
        except NodeError as exc:
            self._reprobe_if_unreachable(exc)
            raise

    async def stream(self, req: NodeRequest, node_model: str) -> AsyncIterator[dict | Usage]:
        try:
            async for item in self._backend().stream(req, node_model):
                yield item
        except NodeError as exc:
            self._reprobe_if_unreachable(exc)
            raise

    def _reprobe_if_unreachable(self, exc: NodeError) -> None:
        # Tell the routers now rather than at the next scheduled probe.
        if exc.status in (503, 504):
            asyncio.create_task(self.probe())

    async def ps(self) -> list[dict]:
        inventory = await self._backend().inventory()
        return [{**entry, "node": self.node.name} for entry in inventory.loaded]

    async def show(self, body: dict) -> dict:
        backend = self._backend()
        if backend.kind != "ollama":
            model = body.get("model") or body.get("name")
            return {"modelfile": "", "parameters": "", "template": "", "details": {"format": "gguf"},
                    "model_info": {}, "capabilities": ["completion"], "model": model, "node": self.node.name}
        shown = await self.http.post_json(self.node.url + "/api/show", body)
        return {**shown, "node": self.node.name}
