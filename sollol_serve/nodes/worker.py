"""The worker of one node: the only place that talks HTTP to that node.

It detects the node's kind, keeps the shared node state informed of what the node has
(probing in the background, more often while the node is unstable), and carries requests to
the node through its backend adapter. `NodeWorker` is the plain class; `OllamaWorker` is the
Serve deployment for the nodes in the config, and `NodeWorkerActor` the detached actor made
for a node added at run time (a Serve app's deployments are fixed when it is deployed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import ray
from ray import serve
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from sollol_serve.cluster.state_actor import state_actor
from sollol_serve.config import GatewayConfig, NodeConfig, timeouts_for
from sollol_serve.names import NAMESPACE, runtime_worker_name
from sollol_serve.nodes import model_ops
from sollol_serve.nodes.backends import (
    BACKENDS,
    NodeBackend,
    NodeInventory,
    detect_kind,
)
from sollol_serve.nodes.coalesce import coalesced
from sollol_serve.nodes.health import ProbeSchedule
from sollol_serve.nodes.http import NodeHTTP
from sollol_serve.nodes.inflight import InFlight
from sollol_serve.nodes.placement import local_url, worker_resources
from sollol_serve.nodes.telemetry import sample_host
from sollol_serve.protocol import FirstByte, NodeError, NodeReport, NodeRequest, Usage

logger = logging.getLogger("ray.serve")


def _closes_stream(item: dict | Usage) -> bool:
    """The last chunk and the Usage after it go without lingering."""
    return isinstance(item, Usage) or bool(item.get("done"))


# What a node may advertise: a rogue server listing a million models must not fill the state.
MAX_MODELS_PER_NODE = 1024
LOADED_AFTER_S = 0.25  # an answer's load_duration above this was a model load


class NodeWorker:
    def __init__(self, node: dict, config: dict):
        self.node = NodeConfig.model_validate(node)
        self.config = GatewayConfig.model_validate(config)
        self.backend: NodeBackend | None = None
        self.schedule = ProbeSchedule(self.config.health)
        self.state = state_actor(self.config)
        self.http: NodeHTTP | None = None
        self.url = self.node.url  # how this worker reaches the node (loopback on its own host)
        self.host: tuple[str | None, str | None] = (None, None)  # this worker's Ray host: ip, node id
        self._prober: asyncio.Task | None = None
        self._wake = asyncio.Event()  # probe now, don't wait out the interval
        self._uploads = model_ops.BlobUploads(self.node.name)
        self.in_flight = InFlight()  # the node's requests, for the slots their first bytes prove
        self.joined: str | None = None  # the state actor's incarnation this node is registered with
        # This worker's own start: a router that saw the worker before it die waits for a newer one.
        self.started_at = time.time()

    async def start(self) -> None:
        """Register the node, probe it once and keep probing (needs the running loop)."""
        self.http = NodeHTTP(self.config.timeouts, self.node.name, self.config.max_node_response_bytes,
                             self.node.api_key)
        if ray.is_initialized():
            self.host = (ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id())
            self.url = await self._reachable_url()
        await self._register()
        await self.probe()
        self._prober = asyncio.create_task(self._probe_loop())

    async def _register(self) -> None:
        self.joined = await self.state.register.remote(self.node.name, self.node.url, self.node.slots,
                                                       self.config.health)

    async def rejoin(self, incarnation: str) -> None:
        """The state actor restarted (a router saw `incarnation`, or this worker's own report
        did): register the node with it again and report what the node has now."""
        if self.joined != incarnation:
            await self._register()
            await self.probe()

    async def stop(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
        if self.http is not None:
            await self.http.close()

    async def _reachable_url(self) -> str:
        """Loopback if the node is on this worker's host and answers there, else its URL."""
        local = local_url(self.node.url, {self.host[0]} if self.host[0] else set())
        if local != self.node.url and await detect_kind(self.http, local) is not None:
            return local
        return self.node.url

    async def _probe_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.schedule.interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.probe()
            except Exception:  # a failed probe must not end the loop
                logger.exception("probe of node %s failed", self.node.name)

    async def probe(self) -> NodeReport:
        """Detect the kind if unknown, read the inventory and report it."""
        report = NodeReport(name=self.node.name, url=self.node.url, kind=None, healthy=False)
        try:
            if self.backend is None:
                kind = self.node.kind if self.node.kind != "auto" else await detect_kind(self.http, self.url)
                if kind is None:
                    raise NodeError(f"node {self.node.name} answers neither the Ollama nor the OpenAI API", 503)
                self.backend = BACKENDS[kind](self.url, self.http)
            inventory: NodeInventory = await self.backend.inventory()
            report = NodeReport(name=self.node.name, url=self.node.url, kind=inventory.kind, healthy=True,
                                models=inventory.models[:MAX_MODELS_PER_NODE], loaded=inventory.loaded, slots=inventory.slots,
                                version=inventory.version)
        except NodeError as exc:
            report.error = exc.message
            report.kind = self.backend.kind if self.backend else None
        telemetry = await asyncio.to_thread(sample_host, self.node.name, self.config.telemetry.readings_file)
        report.telemetry = telemetry.as_dict()
        report.worker_ip, report.worker_node_id = self.host
        report.worker_started_at = self.started_at
        # What it has loaded is part of what changes: probed more often while models come and go.
        self.schedule.observe(report.healthy, (report.healthy, sorted(m.get("name", "") for m in report.models),
                                               sorted(m.get("name", "") for m in report.loaded)))
        incarnation = await self.state.report.remote(report)
        if self.joined is not None and incarnation != self.joined:  # it restarted and forgot the node
            await self._register()
            await self.state.report.remote(report)
        return report

    def _backend(self) -> NodeBackend:
        if self.backend is None:
            raise NodeError(f"node {self.node.name} has not been reached yet", 503)
        return self.backend

    async def call(self, req: NodeRequest, node_model: str) -> tuple[dict, Usage]:
        return await self._call(req, node_model)

    async def _call(self, req: NodeRequest, node_model: str,
                    on_first: Callable[[int], None] | None = None) -> tuple[dict, Usage]:
        """The node's whole answer; `on_first(running)` at its first byte."""
        timeouts = timeouts_for(self.config.timeouts, self.config.model_timeouts, req.model)
        serial = self.in_flight.begin()
        running: int | None = None

        def first_byte() -> None:
            nonlocal running
            running = self.in_flight.running_with(serial)
            if on_first is not None:
                on_first(running)
        try:
            body, usage = await self._backend().call(req, node_model, timeouts, first_byte)
            # No first byte (an embedding): the requests still running as it ends ran beside it.
            usage.running = running if running is not None else self.in_flight.running_with(serial)
            usage.ends_after_send = self.in_flight.ends_after_send(serial)
            self._reprobe_if_loaded(usage)
        except NodeError as exc:
            self._reprobe_if_unreachable(exc)
            raise
        finally:
            self.in_flight.end(serial)
        return body, usage

    async def call_watched(self, req: NodeRequest, node_model: str) -> AsyncIterator[object]:
        """`call` as a stream of two items, `FirstByte` when the node begins to answer, then
        the answer: what a router needs to hedge a non-streamed request on time to first byte."""
        began: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        answer = asyncio.ensure_future(self._call(req, node_model, began.set_result))
        try:
            await asyncio.wait((answer, began), return_when=asyncio.FIRST_COMPLETED)
            if began.done():
                yield FirstByte(running=began.result())
            yield await answer
        finally:
            answer.cancel()  # the router took another node's answer: stop this one

    async def stream(self, req: NodeRequest, node_model: str) -> AsyncIterator[list[object]]:
        """The node's chunks in batches (one Ray message each): the first led by a FirstByte,
        the closing Usage last."""
        timeouts = timeouts_for(self.config.timeouts, self.config.model_timeouts, req.model)
        serial = self.in_flight.begin()
        running: int | None = None
        try:
            async for batch in coalesced(self._backend().stream(req, node_model, timeouts), _closes_stream):
                if running is None:
                    running = self.in_flight.running_with(serial)
                    batch.insert(0, FirstByte(running=running))
                if isinstance(batch[-1], Usage):
                    batch[-1].running, batch[-1].ends_after_send = running, self.in_flight.ends_after_send(serial)
                    self._reprobe_if_loaded(batch[-1])
                    self.in_flight.end(serial)  # the node is done with it, whenever the client reads it
                yield batch
        except NodeError as exc:
            self._reprobe_if_unreachable(exc)
            raise
        finally:
            self.in_flight.end(serial)

    def _reprobe_if_loaded(self, usage: Usage) -> None:
        # A load happened (and maybe an eviction with it): the routers see what the node holds
        # now, not at the next scheduled probe. (A warm model's load_duration is a few ms.)
        if (usage.load_s or 0.0) > LOADED_AFTER_S and self.backend is not None and self.backend.kind == "ollama":
            self._wake.set()

    def _reprobe_if_unreachable(self, exc: NodeError) -> None:
        # Tell the routers now rather than at the next scheduled probe.
        if exc.status in (503, 504):
            self.schedule.disturbed()
            self._wake.set()

    async def warm(self, node_model: str, keep_alive: str | int | None) -> float | None:
        """Load a model now (`sollol warm`), then probe so the routers see it resident."""
        timeouts = timeouts_for(self.config.timeouts, self.config.model_timeouts, node_model)
        try:
            return await self._backend().load(node_model, keep_alive, timeouts)
        finally:
            self._wake.set()

    # -- model management (Ollama nodes): the node's answer once the routers can see it ----
    def _managed(self) -> None:
        kind = self._backend().kind
        if kind != "ollama":
            raise NodeError(f"node {self.node.name} is a {kind} server: it has no model management", 400,
                            retryable=False)

    async def manage_stream(self, op: model_ops.Streamed, body: dict) -> AsyncIterator[dict]:
        """A pull, push or create: the node's progress lines, the last one held until the
        node's new inventory is reported (a client told `success` can use the model)."""
        self._managed()
        held: dict | None = None
        async for event in model_ops.progress(self.http, self.url, op, body, self.config.timeouts):
            if held is not None:
                yield held
            held = event
        await self.probe()
        if held is not None:
            yield held

    async def manage(self, op: model_ops.Change, body: dict) -> None:
        """A delete or copy, then the inventory reported."""
        self._managed()
        await model_ops.change(self.http, self.url, op, body, self.config.timeouts)
        await self.probe()

    async def has_blob(self, digest: str) -> int:
        self._managed()
        return await model_ops.has_blob(self.http, self.url, digest, self.config.timeouts)

    # A blob arrives in pieces, one call each (a GGUF is too big for one Ray message).
    async def blob_begin(self, digest: str) -> str:
        self._managed()
        return self._uploads.begin(self.http, self.url, digest, self.config.timeouts)

    async def blob_part(self, upload_id: str, piece: bytes) -> None:
        await self._uploads.part(upload_id, piece)

    async def blob_end(self, upload_id: str, complete: bool) -> int | None:
        return await self._uploads.end(upload_id, complete)

    async def ps(self) -> list[dict]:
        inventory = await self._backend().inventory()
        return [{**entry, "node": self.node.name} for entry in inventory.loaded]

    async def show(self, body: dict) -> dict:
        backend = self._backend()
        if backend.kind != "ollama":
            model = body.get("model") or body.get("name")
            return {"modelfile": "", "parameters": "", "template": "", "details": {"format": "gguf"},
                    "model_info": {}, "capabilities": ["completion"], "model": model, "node": self.node.name}
        shown = await self.http.post_json(self.url + "/api/show", body)
        return {**shown, "node": self.node.name}


@serve.deployment(ray_actor_options={"num_cpus": 0})
class OllamaWorker(NodeWorker):
    async def __init__(self, node: dict, config: dict):
        super().__init__(node, config)
        await self.start()


@ray.remote(num_cpus=0, max_restarts=-1)
class NodeWorkerActor(NodeWorker):
    """The worker of a node added through the admin API. An async actor runs `__init__` on
    its event loop, so it starts itself, again after every restart."""

    def __init__(self, node: dict, config: dict):
        super().__init__(node, config)
        self._starting = asyncio.get_running_loop().create_task(self.start())


def create_runtime_worker(node: NodeConfig, config: GatewayConfig):
    """The detached worker actor of a node added at run time (named, so every router finds
    it), on the node's Ray host: the one it was discovered on, or the one with its label."""
    options: dict = {"name": runtime_worker_name(config.state_actor_name, node.name), "namespace": NAMESPACE,
                     "lifetime": "detached"}
    if node.ray_node_id:  # it lives and dies with that host: calls fail at once, not wait for a restart
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node.ray_node_id, soft=False)
        options["max_restarts"] = 0
    else:
        options["resources"] = worker_resources(node.name, node.ray_resource, ray.cluster_resources())
    return NodeWorkerActor.options(**options).remote(node.model_dump(mode="json"), config.model_dump(mode="json"))
