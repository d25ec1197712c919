"""The ShardCoordinator actor: starts, registers, supervises and stops shard groups.

One per gateway (detached, named). For a model it picks the Ray hosts that carry the rpc
label and have the most free memory, starts an `RpcServerActor` pinned to each (each runs one
`ggml-rpc-server` bound to its host's address), starts `llama-server --rpc ... -ngl 99` with
the layers split by free memory, waits for its /health, and registers it as the node
`shard:<model>` (an OpenAI-compatible node: the whole API, streaming included, works). Any RPC
error aborts llama-server, so a supervisor restarts the whole group (bounded, with backoff)
and stops a group that has been idle too long.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from sollol_serve.cluster.state_actor import state_actor
from sollol_serve.config import GatewayConfig, NodeConfig
from sollol_serve.names import named_actor, normalize_model
from sollol_serve.nodes.lifecycle import add_runtime_node, remove_node_now
from sollol_serve.processes import die_with_parent, free_port
from sollol_serve.protocol import GatewayError, NoNodeAvailable, NotFound
from sollol_serve.shard.build import ensure_binaries
from sollol_serve.shard.models import read_gguf_info, resolve_gguf
from sollol_serve.shard.plan import (
    Backend,
    Host,
    activity,
    choose_hosts,
    llama_server_command,
    rpc_buffers,
    rpc_server_command,
)

logger = logging.getLogger(__name__)

SUPERVISE_EVERY_S = 1.0


def shard_node_name(model: str) -> str:
    return f"shard:{normalize_model(model)}"


def _wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.1)
    return False


@ray.remote(num_cpus=0, max_restarts=0)
class RpcServerActor:
    """One `ggml-rpc-server` on this actor's Ray host, bound to the host's address."""

    def __init__(self, binary: str, loopback: bool):
        self.bind = "127.0.0.1" if loopback else ray.util.get_node_ip_address()
        self.port = free_port(self.bind)
        self.log = tempfile.NamedTemporaryFile(prefix="sollol-rpc-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(rpc_server_command(Path(binary), self.bind, self.port), stdout=self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        if not _wait_for_port(self.bind, self.port, 20):
            raise RuntimeError(f"ggml-rpc-server did not listen on {self.bind}:{self.port}")

    def endpoint(self) -> tuple[str, int, int]:
        return self.bind, self.port, self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()


@dataclass
class Group:
    model: str
    state: str = "starting"  # starting | running | restarting | failed | stopped
    backends: list[Backend] = field(default_factory=list)
    rpc_actors: list = field(default_factory=list)
    rpc_pids: list[int] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    url: str | None = None
    log_path: str | None = None
    restarts: int = 0
    error: str | None = None
    buffers: dict[str, float] = field(default_factory=dict)  # MiB of weights per backend, read once per start
    layers: int | None = None
    size_mb: int | None = None
    started_s: float | None = None  # seconds from launch to healthy, last start
    last_active: float = field(default_factory=time.monotonic)
    activity: float = 0.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def as_dict(self) -> dict:
        return {"model": self.model, "node": shard_node_name(self.model), "state": self.state, "url": self.url,
                "backends": [{"address": b.address, "node_id": b.host.node_id, "free_mb": b.host.free_mb,
                              "pid": pid, "model_buffer_mib": self.buffers.get(b.address)}
                             for b, pid in zip(self.backends, self.rpc_pids)],
                "pid": self.proc.pid if self.proc else None,
                "layers": self.layers, "size_mb": self.size_mb, "restarts": self.restarts, "error": self.error,
                "start_s": self.started_s, "log": self.log_path}


@ray.remote(num_cpus=0, max_restarts=-1)
class ShardCoordinator:
    def __init__(self, config: dict):
        self.config = GatewayConfig.model_validate(config)
        self.settings = self.config.shard
        self.state = state_actor(self.config.state_actor_name)
        self.groups: dict[str, Group] = {}
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    # -- API ----------------------------------------------------------------------------
    def configure(self, config: dict) -> None:
        """The gateway's config again (a redeploy): groups started from now on use it."""
        self.config = GatewayConfig.model_validate(config)
        self.settings = self.config.shard

    async def ensure(self, model: str) -> dict:
        """The model's group, started if needed; waits until it serves. GatewayError if it can't."""
        model = normalize_model(model)
        group = self.groups.get(model)
        if group is None or group.state in ("stopped", "failed"):
            group = self.groups[model] = Group(model)
            asyncio.get_running_loop().create_task(self._start(group))
        try:
            await asyncio.wait_for(group.ready.wait(), self.settings.start_timeout_s)
        except asyncio.TimeoutError:
            raise NoNodeAvailable(
                f"shard group for '{model}' not ready within {self.settings.start_timeout_s:g} s") from None
        if group.state != "running":
            raise NoNodeAvailable(f"shard group for '{model}' could not start: {group.error}")
        return group.as_dict()

    async def stop(self, model: str) -> dict:
        group = self.groups.get(normalize_model(model))
        if group is None:
            raise NotFound(f"no shard group for '{model}'")
        await self._teardown(group, unregister=True)
        group.state = "stopped"
        return group.as_dict()

    def status(self) -> list[dict]:
        return [g.as_dict() for g in self.groups.values()]

    # -- starting and stopping ------------------------------------------------------------
    async def _start(self, group: Group) -> None:
        try:
            await self._launch(group)
            group.state, group.error = "running", None
        except (GatewayError, ValueError, RuntimeError, OSError, ray.exceptions.RayError) as exc:
            group.state, group.error = "failed", str(exc)
            logger.warning("shard group %s failed to start: %s", group.model, exc)
            await self._teardown(group, unregister=False)
        finally:
            group.ready.set()

    def _hosts(self) -> list[Host]:
        label = self.settings.rpc_label
        return [Host(n["NodeID"], n["NodeManagerAddress"], int(n["Resources"].get("memory", 0) // 2**20))
                for n in ray.nodes() if n["Alive"] and n["Resources"].get(label, 0) > 0]

    async def _launch(self, group: Group) -> None:
        launched = time.monotonic()
        binaries = await asyncio.to_thread(ensure_binaries)
        store = Path(self.settings.ollama_models_dir) if self.settings.ollama_models_dir else None
        gguf = resolve_gguf(group.model, store, self.settings.gguf_paths)
        info = read_gguf_info(gguf)
        group.layers, group.size_mb = info.block_count, info.size_bytes // 2**20
        hosts = choose_hosts(await asyncio.to_thread(self._hosts), self.settings.backends, group.size_mb)
        group.rpc_actors = [
            RpcServerActor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(h.node_id, soft=False))
            .remote(str(binaries.rpc_server), self.settings.bind == "loopback") for h in hosts]
        endpoints = await asyncio.gather(*(a.endpoint.remote() for a in group.rpc_actors))
        group.backends = [Backend(h, port) if bind == h.ip else Backend(Host(h.node_id, bind, h.free_mb), port)
                          for h, (bind, port, _) in zip(hosts, endpoints)]
        group.rpc_pids = [pid for _, _, pid in endpoints]
        host = ray.util.get_node_ip_address() if self.settings.bind == "node" else "127.0.0.1"
        port = int(group.url.rsplit(":", 1)[1]) if group.url else free_port(host)  # a restart keeps its URL
        group.log_path = group.log_path or tempfile.mktemp(prefix="sollol-shard-", suffix=".log")
        command = llama_server_command(binaries.llama_server, gguf, group.model, group.backends, host, port,
                                       self.settings.ctx_size, self.settings.parallel, self.settings.llama_server_args)
        with open(group.log_path, "ab") as log:
            group.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        group.url = f"http://{host}:{port}"
        await self._wait_healthy(group)
        group.buffers = rpc_buffers(Path(group.log_path).read_text(errors="replace"))
        group.started_s = round(time.monotonic() - launched, 3)
        await self._register(group)

    async def _wait_healthy(self, group: Group) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
            while time.monotonic() < deadline:
                if group.proc.poll() is not None:
                    tail = Path(group.log_path).read_text(errors="replace")[-1500:]
                    raise RuntimeError(f"llama-server exited with {group.proc.returncode}: {tail}")
                try:
                    if (await client.get(group.url + "/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.3)
        raise RuntimeError(f"llama-server not healthy within {self.settings.start_timeout_s:g} s")

    async def _register(self, group: Group) -> None:
        name = shard_node_name(group.model)
        known = (await self.state.snapshot.remote()).get(name)
        if known is not None and known.url == group.url:
            return  # a restart on the same URL: the node's worker finds it again
        if known is not None:  # registered by an earlier coordinator (it died with its group)
            await remove_node_now(self.state, name, self.config)
        node = NodeConfig(name=name, url=group.url, kind="openai", slots=self.settings.parallel)
        await add_runtime_node(self.state, node, self.config)

    async def _teardown(self, group: Group, unregister: bool) -> None:
        if unregister:
            await remove_node_now(self.state, shard_node_name(group.model), self.config)
        if group.proc is not None and group.proc.poll() is None:
            group.proc.terminate()
            try:
                await asyncio.to_thread(group.proc.wait, 10)
            except subprocess.TimeoutExpired:
                group.proc.kill()
        for actor in group.rpc_actors:
            ray.kill(actor)
        group.rpc_actors, group.proc = [], None

    # -- supervision -----------------------------------------------------------------------
    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_EVERY_S)
            for group in [g for g in self.groups.values() if g.state == "running"]:
                try:
                    await self._check(group)
                except Exception:  # supervision must go on
                    logger.exception("supervising shard group %s", group.model)

    async def _broken(self, group: Group) -> str | None:
        if group.proc is None or group.proc.poll() is not None:
            return "llama-server exited"
        for backend, actor in zip(group.backends, group.rpc_actors):
            try:
                if not await asyncio.wait_for(actor.alive.remote(), 5):
                    return f"rpc-server {backend.address} exited"
            except (ray.exceptions.RayError, asyncio.TimeoutError):
                return f"rpc-server {backend.address} lost (its actor or host died)"
        return None

    async def _check(self, group: Group) -> None:
        broken = await self._broken(group)
        if broken:
            await self._restart(group, broken)
            return
        try:
            async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
                seen = activity((await client.get(group.url + "/metrics")).text)
        except httpx.HTTPError:
            return
        now = time.monotonic()
        if seen != group.activity:
            group.activity, group.last_active = seen, now
        elif now - group.last_active > self.settings.idle_stop_s:
            logger.info("stopping idle shard group %s", group.model)
            await self.stop(group.model)

    async def _restart(self, group: Group, why: str) -> None:
        group.error = why
        await self._teardown(group, unregister=False)
        if group.restarts >= self.settings.max_restarts:
            group.state = "failed"
            await remove_node_now(self.state, shard_node_name(group.model), self.config)
            return
        group.state = "restarting"
        group.restarts += 1
        await asyncio.sleep(self.settings.restart_backoff_s * 2 ** (group.restarts - 1))
        try:
            await self._launch(group)
            group.state = "running"
        except (GatewayError, ValueError, RuntimeError, OSError, ray.exceptions.RayError) as exc:
            group.error = f"{why}; restart failed: {exc}"
            await self._teardown(group, unregister=False)
            group.state = "restarting"  # the next supervision round will not see it running
            asyncio.get_running_loop().create_task(self._restart(group, group.error))


def coordinator_name(state_actor_name: str) -> str:
    return f"{state_actor_name}_shards"


def shard_coordinator(config: GatewayConfig):
    """The gateway's coordinator (created once, found by name afterwards), given this config:
    it outlives a redeploy, which may change the shard settings."""
    actor = named_actor(ShardCoordinator, coordinator_name(config.state_actor_name), config.model_dump(mode="json"))
    actor.configure.remote(config.model_dump(mode="json"))
    return actor
