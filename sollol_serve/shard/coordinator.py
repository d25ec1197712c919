"""The ShardCoordinator actor: starts, registers, supervises and stops shard groups.

One per gateway (detached, named). For a model it picks the Ray hosts that carry the rpc
label and have the most free memory, starts an `RpcServerActor` pinned to each (each runs one
`ggml-rpc-server` bound to its host's address), starts `llama-server --rpc ... -ngl 99` with
the layers split by free memory, waits for its /health, and registers it as the node
`shard:<model>` (an OpenAI-compatible node: the whole API, streaming included, works). Any RPC
error aborts llama-server, so a supervisor restarts the whole group (bounded, with backoff)
and stops a group that has been idle too long.

Exposure: llama-server listens on 127.0.0.1 only and wants a random api key that only the
gateway knows (the node's worker, pinned to this actor's host, sends it); rpc-servers, which
have no authentication, listen on what `shard.bind` names, and a wildcard or public address is
refused unless `shard.allow_public_bind`. llama-server logs at info level (no prompts) to
`<data dir>/shard/`, mode 0600. A client whose request could not start a group gets a short
reason; the log tail is in the group's status (admins: /api/shards).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
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
from sollol_serve.config import GatewayConfig, NodeConfig, data_dir
from sollol_serve.names import named_actor, normalize_model
from sollol_serve.nodes.lifecycle import add_runtime_node, remove_node_now, remove_node_unrouted
from sollol_serve.processes import die_with_parent, free_port
from sollol_serve.protocol import BadRequest, GatewayError, NoNodeAvailable, NotFound
from sollol_serve.shard.build import ensure_binaries
from sollol_serve.shard.models import InvalidModelName, ModelFileError, check_model_name, read_gguf_info, resolve_gguf
from sollol_serve.shard.plan import (
    API_KEY_ENV,
    Backend,
    Host,
    PlanError,
    activity,
    bind_refusal,
    choose_hosts,
    llama_server_command,
    rpc_buffers,
    rpc_server_command,
    tensor_split,
)

logger = logging.getLogger(__name__)

SUPERVISE_EVERY_S = 1.0
LLAMA_SERVER_HOST = "127.0.0.1"  # its node's worker runs on the coordinator's host
LOG_ROTATE_BYTES = 4 * 2**20  # a log bigger than this at a (re)start becomes <log>.1
LOG_TAIL_CHARS = 1500  # of a failed start's log, in the group's status (admins only)


def shard_node_name(model: str) -> str:
    return f"shard:{normalize_model(model)}"


class ShardStartError(RuntimeError):
    """A group could not start: `reason` is short and safe for any client, `detail` (the log
    tail, paths) is for the group's status only."""

    def __init__(self, reason: str, detail: str | None = None):
        super().__init__(reason)
        self.reason, self.detail = reason, detail or reason


START_ERRORS = (GatewayError, ValueError, RuntimeError, OSError, ray.exceptions.RayError)


def _failure(exc: BaseException) -> tuple[str, str]:
    """(reason for the client, detail for the group's status) of a failed start."""
    if isinstance(exc, ShardStartError):
        return exc.reason, exc.detail
    if isinstance(exc, ModelFileError):  # its message names files and directories of the host
        return "no usable GGUF file for the model", str(exc)
    if isinstance(exc, PlanError):
        return str(exc), str(exc)
    return f"its processes could not be started ({type(exc).__name__})", str(exc)


def rpc_bind_address(bind: str, node_ip: str) -> str:
    """The address an rpc-server on a host whose cluster address is `node_ip` listens on."""
    return {"loopback": "127.0.0.1", "node": node_ip}.get(bind, bind)


def check_bind(address: str, allow_public: bool) -> None:
    """ShardStartError if a shard group's process may not listen on `address`."""
    why = bind_refusal(address, allow_public)
    if why is not None:
        raise ShardStartError(f"refused to bind an rpc-server to {why} (it has no authentication; "
                              "shard.allow_public_bind allows it)")


def open_log(path: Path) -> tuple[int, int]:
    """Open llama-server's log for appending, mode 0600 in a 0700 directory, first renaming a
    log bigger than LOG_ROTATE_BYTES to `<log>.1` (one old copy is kept): (fd, start offset)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        if path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)  # a file left by an older version may have been wider
    return fd, os.fstat(fd).st_size


def log_path_for(config: GatewayConfig, model: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model).strip(".") or "model"
    return Path(data_dir(config.batch)) / "shard" / f"{safe}.log"


def _read_log(path: str | None, offset: int) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


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
    """One `ggml-rpc-server` on this actor's Ray host, bound to what `bind` names (see
    `rpc_bind_address`); a wildcard or public address only with `allow_public`."""

    def __init__(self, binary: str, bind: str, allow_public: bool = False):
        self.bind = rpc_bind_address(bind, ray.util.get_node_ip_address())
        check_bind(self.bind, allow_public)
        self.port = free_port(self.bind)
        self.log = tempfile.NamedTemporaryFile(prefix="sollol-rpc-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(rpc_server_command(Path(binary), self.bind, self.port), stdout=self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        if not _wait_for_port(self.bind, self.port, 20):
            raise RuntimeError(f"ggml-rpc-server did not listen on {self.bind}:{self.port}")

    def endpoint(self) -> tuple[str, int, int]:
        """(address it listens on, port, pid)."""
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
    log_offset: int = 0  # where this start's output begins in the log
    log_tail: str | None = None  # of a failed start (admins only)
    # llama-server's api key: random, known to the gateway only (the node's worker sends it)
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    registered: bool = False
    restarts: int = 0
    error: str | None = None  # what went wrong, in full (admins only: under "log")
    reason: str | None = None  # the short form a client (and a reader of /api/stats) is given
    # MiB of weights per backend, from llama-server's log when it says (at info level, which
    # logs no prompt, this llama.cpp does not: None then; `layer_share` is the split asked for)
    buffers: dict[str, float] = field(default_factory=dict)
    layers: int | None = None
    size_mb: int | None = None
    started_s: float | None = None  # seconds from launch to healthy, last start
    last_active: float = field(default_factory=time.monotonic)
    activity: float = 0.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def as_dict(self) -> dict:
        return {"model": self.model, "node": shard_node_name(self.model), "state": self.state, "url": self.url,
                "backends": [{"address": b.address, "node_id": b.host.node_id, "free_mb": b.host.free_mb,
                              "pid": pid, "layer_share": share, "model_buffer_mib": self.buffers.get(b.address)}
                             for b, pid, share in zip(self.backends, self.rpc_pids, tensor_split(self.backends))],
                "pid": self.proc.pid if self.proc else None,
                "layers": self.layers, "size_mb": self.size_mb, "restarts": self.restarts,
                # readers see `error` (short, no address or path); `log` is for admins only
                "error": self.reason if self.error else None,
                "start_s": self.started_s, "log": {"path": self.log_path, "tail": self.log_tail, "error": self.error}}


@ray.remote(num_cpus=0, max_restarts=-1)
class ShardCoordinator:
    def __init__(self, config: dict):
        self.config = GatewayConfig.model_validate(config)
        self.settings = self.config.shard
        self.state = state_actor(self.config)
        self.groups: dict[str, Group] = {}
        self._stopping: dict[str, asyncio.Future] = {}  # model -> done when its stop is
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    # -- API ----------------------------------------------------------------------------
    def configure(self, config: dict) -> None:
        """The gateway's config again (a redeploy): groups started from now on use it."""
        self.config = GatewayConfig.model_validate(config)
        self.settings = self.config.shard

    async def ensure(self, model: str) -> dict:
        """The model's group, started if needed; waits until it serves. GatewayError if it can't."""
        try:
            check_model_name(model)
        except InvalidModelName as exc:
            raise BadRequest(str(exc)) from None
        model = normalize_model(model)
        stopping = self._stopping.get(model)
        if stopping is not None:  # a stop under way (idle, or an admin's): start again after it
            await asyncio.shield(stopping)
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
            raise NoNodeAvailable(f"shard group for '{model}' could not start: {group.reason or f'it is {group.state}'}; "
                                  "see the shard group's log (admins: /api/shards)")
        return group.as_dict()

    async def stop(self, model: str) -> dict:
        model = normalize_model(model)
        group = self.groups.get(model)
        if group is None:
            raise NotFound(f"no shard group for '{model}'")
        if model in self._stopping:  # already stopping: the same answer once it is done
            await asyncio.shield(self._stopping[model])
            return group.as_dict()
        done = self._stopping[model] = asyncio.get_running_loop().create_future()
        try:
            await self._teardown(group, unregister=True)
            group.state = "stopped"
        finally:
            del self._stopping[model]
            done.set_result(None)
        return group.as_dict()

    def status(self) -> list[dict]:
        return [g.as_dict() for g in self.groups.values()]

    # -- starting and stopping ------------------------------------------------------------
    async def _start(self, group: Group) -> None:
        try:
            await self._launch(group)
            if self._abandoned(group):  # stopped while it started: what it started goes too
                await self._teardown(group, unregister=True)
                return
            group.state, group.error, group.reason, group.log_tail = "running", None, None, None
        except START_ERRORS as exc:
            if self._abandoned(group):
                await self._teardown(group, unregister=False)
                return
            group.reason, group.error = _failure(exc)
            group.state = "failed"
            logger.warning("shard group %s failed to start: %s", group.model, group.error)
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
        bind, allow_public = self.settings.bind, self.settings.allow_public_bind
        for h in hosts:  # refused before anything starts; each actor checks again where it runs
            check_bind(rpc_bind_address(bind, h.ip), allow_public)
        group.rpc_actors = [
            RpcServerActor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(h.node_id, soft=False))
            .remote(str(binaries.rpc_server), bind, allow_public) for h in hosts]
        endpoints = await asyncio.gather(*(a.endpoint.remote() for a in group.rpc_actors))
        # llama-server connects to the address an rpc-server listens on (its host's, for a wildcard)
        group.backends = [Backend(Host(h.node_id, h.ip if _unspecified(addr) else addr, h.free_mb), port)
                          for h, (addr, port, _) in zip(hosts, endpoints)]
        group.rpc_pids = [pid for _, _, pid in endpoints]
        host = LLAMA_SERVER_HOST
        port = int(group.url.rsplit(":", 1)[1]) if group.url else free_port(host)  # a restart keeps its URL
        log_path = Path(group.log_path) if group.log_path else log_path_for(self.config, group.model)
        command = llama_server_command(binaries.llama_server, gguf, group.model, group.backends, host, port,
                                       self.settings.ctx_size, self.settings.parallel, self.settings.llama_server_args)
        fd, group.log_offset = open_log(log_path)
        group.log_path = str(log_path)
        try:
            group.proc = subprocess.Popen(command, stdout=fd, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
                                          env={**os.environ, API_KEY_ENV: group.api_key})
        finally:
            os.close(fd)
        group.url = f"http://{host}:{port}"
        await self._wait_healthy(group)
        group.buffers = rpc_buffers(_read_log(group.log_path, group.log_offset))
        group.started_s = round(time.monotonic() - launched, 3)
        await self._register(group)

    async def _wait_healthy(self, group: Group) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
            while time.monotonic() < deadline:
                if group.proc.poll() is not None:
                    group.log_tail = _read_log(group.log_path, group.log_offset)[-LOG_TAIL_CHARS:]
                    code = group.proc.returncode
                    raise ShardStartError(f"llama-server exited with code {code} during start",
                                          f"llama-server exited with code {code} during start; "
                                          f"log {group.log_path}: {group.log_tail}")
                try:
                    if (await client.get(group.url + "/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.3)
        group.log_tail = _read_log(group.log_path, group.log_offset)[-LOG_TAIL_CHARS:]
        raise ShardStartError(f"llama-server not healthy within {self.settings.start_timeout_s:g} s")

    async def _register(self, group: Group) -> None:
        name = shard_node_name(group.model)
        known = (await self.state.snapshot.remote()).get(name)
        if known is not None and known.url == group.url and group.registered:
            return  # a restart on the same URL and key: the node's worker finds it again
        if known is not None:  # registered by an earlier coordinator (it died with its group)
            await remove_node_now(self.state, name, self.config)
        # The worker runs on this host (llama-server listens on its loopback) and sends the key.
        node = NodeConfig(name=name, url=group.url, kind="openai", slots=self.settings.parallel,
                          ray_node_id=ray.get_runtime_context().get_node_id(), api_key=group.api_key)
        await add_runtime_node(self.state, node, self.config)
        group.registered = True

    async def _teardown(self, group: Group, unregister: bool) -> None:
        if unregister:  # routers stop sending to the group before its processes go
            await remove_node_unrouted(self.state, shard_node_name(group.model), self.config)
            group.registered = False
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

    def _abandoned(self, group: Group) -> bool:
        """Stopped (or being stopped), or replaced by a new start, while supervision awaited:
        a stop's teardown looks like a crash, and must not be restarted as one."""
        return group.model in self._stopping or group.state == "stopped" or self.groups.get(group.model) is not group

    async def _check(self, group: Group) -> None:
        broken = await self._broken(group)
        if self._abandoned(group):
            return
        if broken:
            await self._restart(group, broken)
            return
        try:
            async with httpx.AsyncClient(timeout=2, trust_env=False,
                                         headers={"Authorization": f"Bearer {group.api_key}"}) as client:
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
        group.error, group.reason = why, "it is restarting after a crash"
        await self._teardown(group, unregister=False)
        if group.restarts >= self.settings.max_restarts:
            group.state, group.reason = "failed", "it crashed more than shard.max_restarts times"
            await remove_node_now(self.state, shard_node_name(group.model), self.config)
            group.registered = False
            return
        group.state = "restarting"
        group.restarts += 1
        await asyncio.sleep(self.settings.restart_backoff_s * 2 ** (group.restarts - 1))
        if self._abandoned(group):
            return
        try:
            await self._launch(group)
            if self._abandoned(group):  # stopped while it started: what it started goes too
                await self._teardown(group, unregister=True)
                return
            group.state, group.reason, group.log_tail = "running", None, None
        except START_ERRORS as exc:
            group.reason, detail = _failure(exc)
            group.error = f"{why}; restart failed: {detail}"
            await self._teardown(group, unregister=False)
            if self._abandoned(group):
                return
            group.state = "restarting"  # the next supervision round will not see it running
            asyncio.get_running_loop().create_task(self._restart(group, group.error))


def _unspecified(address: str) -> bool:
    return address in ("0.0.0.0", "::")


def coordinator_name(state_actor_name: str) -> str:
    return f"{state_actor_name}_shards"


def shard_coordinator(config: GatewayConfig):
    """The gateway's coordinator (created once, found by name afterwards), given this config:
    it outlives a redeploy, which may change the shard settings."""
    actor = named_actor(ShardCoordinator, coordinator_name(config.state_actor_name), config.model_dump(mode="json"))
    actor.configure.remote(config.model_dump(mode="json"))
    return actor
