"""Finding LLM servers on the Ray cluster: a probe pinned to every alive Ray node, and an
optional bounded scan of an address range.

Each round lists the alive Ray nodes, asks each (from a task placed on it) which of the
configured ports answer the Ollama or the OpenAI API, on loopback first (Ollama binds
127.0.0.1 by default) and then on the node's own address, adds what is new as a node whose
worker is pinned to that Ray node, and retires discovered nodes whose Ray node has gone or
whose server stopped answering. The servers in the config are never touched.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from urllib.parse import urlparse

import httpx
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from sollol_serve.cluster.state_actor import state_actor
from sollol_serve.config import DiscoveryConfig, GatewayConfig, NodeConfig, default_node_name
from sollol_serve.names import NAMESPACE, named_actor
from sollol_serve.nodes.backends import KIND_PROBES
from sollol_serve.nodes.lifecycle import add_runtime_node, retire_node
from sollol_serve.nodes.placement import LOOPBACK_HOSTS

logger = logging.getLogger(__name__)

# A discovered server that misses this many rounds in a row (its Ray node still alive) is retired.
MISSED_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A server found by a probe: where it answered and on which Ray node (None: a scan)."""

    url: str
    kind: str
    ray_node_id: str | None
    host_ip: str

    @property
    def key(self) -> str:
        """host:port as the cluster sees it (a loopback URL means the host it was found on)."""
        return f"{self.host_ip}:{urlparse(self.url).port}"

    @property
    def name(self) -> str:
        return default_node_name(f"http://{self.key}")

    def node_config(self) -> NodeConfig:
        return NodeConfig(name=self.name, url=self.url, kind=self.kind, ray_node_id=self.ray_node_id)


def kind_of(client: httpx.Client, base: str) -> str | None:
    """'ollama' or 'openai' if `base` answers that API, else None."""
    for kind, path, key in KIND_PROBES:
        try:
            response = client.get(base + path)
            if response.status_code == 200 and key in response.json():
                return kind
        except (httpx.HTTPError, ValueError):
            continue
    return None


@ray.remote(num_cpus=0, max_retries=0)
def probe_ports(ports: list[int], timeout_s: float) -> list[tuple[str, str, str]]:
    """Run on a Ray node: (url, kind, node ip) of each port that answers, loopback first."""
    own_ip = ray.util.get_node_ip_address()
    found = []
    with httpx.Client(timeout=timeout_s, trust_env=False) as client:
        for port in ports:
            for host in dict.fromkeys(("127.0.0.1", own_ip)):
                kind = kind_of(client, f"http://{host}:{port}")
                if kind:
                    found.append((f"http://{host}:{port}", kind, own_ip))
                    break
    return found


def scan_targets(cidr: str, ports: list[int], max_hosts: int) -> list[str]:
    """The base URLs a range scan tries: at most `max_hosts` hosts of `cidr`."""
    network = ipaddress.ip_network(cidr, strict=False)
    hosts = []
    for address in network.hosts() if network.num_addresses > 1 else [network.network_address]:
        if len(hosts) >= max_hosts:
            break
        hosts.append(str(address))
    return [f"http://{host}:{port}" for host in hosts for port in ports]


def scan(settings: DiscoveryConfig) -> list[Endpoint]:
    """Probe the range, `scan_concurrency` hosts at once, for at most `interval_s`: a big range
    of silent hosts must not stall discovery's rounds."""
    targets = scan_targets(settings.cidr, settings.ports, settings.cidr_max_hosts)
    with httpx.Client(timeout=settings.probe_timeout_s, trust_env=False) as client, \
            ThreadPoolExecutor(settings.scan_concurrency) as pool:
        futures = {pool.submit(kind_of, client, base): base for base in targets}
        done, late = wait(futures, timeout=settings.interval_s)
        for future in late:
            future.cancel()
    return [Endpoint(futures[f], f.result(), None, urlparse(futures[f]).hostname or "")
            for f in done if f.result()]


def known_key(url: str, worker_ip: str | None) -> str:
    """host:port of a node already in the gateway; a loopback URL is its worker's host."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if host in LOOPBACK_HOSTS and worker_ip:
        host = worker_ip
    return f"{host}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"


def plan(found: list[Endpoint], known: set[str], discovered: dict[str, str | None], alive: set[str],
         missed: dict[str, int]) -> tuple[list[Endpoint], list[str]]:
    """(endpoints to add, discovered nodes to retire). `known`: host:port of the nodes the
    gateway has; `discovered`: name -> Ray node id of what earlier rounds added; `missed`
    counts the rounds each was not found (updated here)."""
    seen = {e.name for e in found}
    to_add = [e for e in {e.name: e for e in found}.values() if e.name not in discovered and e.key not in known]
    to_retire = []
    for name, ray_node in discovered.items():
        missed[name] = 0 if name in seen else missed.get(name, 0) + 1
        if (ray_node is not None and ray_node not in alive) or missed[name] >= MISSED_ROUNDS:
            to_retire.append(name)
    return to_add, to_retire


@ray.remote(num_cpus=0, max_restarts=-1)
class NodeDiscovery:
    """One per gateway (named, detached): runs a discovery round every `interval_s`."""

    def __init__(self, config: dict):
        self.config = GatewayConfig.model_validate(config)
        self.state = state_actor(self.config)
        self.discovered: dict[str, str | None] = {}
        self.missed: dict[str, int] = {}
        self.rounds = 0
        self._loop = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except Exception:  # a failed round must not end discovery
                logger.exception("node discovery round failed")
            await asyncio.sleep(self.config.discovery.interval_s)

    async def round(self) -> None:
        settings = self.config.discovery
        alive = {n["NodeID"]: n["NodeManagerAddress"] for n in await asyncio.to_thread(ray.nodes) if n["Alive"]}
        found = await self._probe_ray_nodes(list(alive)) if settings.ray_nodes else []
        if settings.cidr:
            found += await asyncio.to_thread(scan, settings)
        known = {known_key(r.url, r.worker_ip) for r in (await self.state.reports.remote()).values()}
        to_add, to_retire = plan(found, known, self.discovered, set(alive), self.missed)
        for endpoint in to_add:
            await add_runtime_node(self.state, endpoint.node_config(), self.config)
            self.discovered[endpoint.name] = endpoint.ray_node_id
            logger.info("discovered %s at %s", endpoint.name, endpoint.url)
        for name in to_retire:
            del self.discovered[name]
            self.missed.pop(name, None)
            asyncio.create_task(retire_node(self.state, name, self.config))
        self.rounds += 1

    async def _probe_ray_nodes(self, node_ids: list[str]) -> list[Endpoint]:
        settings = self.config.discovery
        refs = [probe_ports.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
                .remote(settings.ports, settings.probe_timeout_s) for node_id in node_ids]
        results = await asyncio.gather(*refs, return_exceptions=True)
        return [Endpoint(url, kind, node_id, ip) for node_id, result in zip(node_ids, results)
                if isinstance(result, list) for url, kind, ip in result]

    def configure(self, config: dict) -> None:
        """The gateway's config again (a redeploy): the next round uses it."""
        self.config = GatewayConfig.model_validate(config)

    def status(self) -> dict:
        return {"rounds": self.rounds, "discovered": dict(self.discovered)}


def discovery_actor_name(state_actor_name: str) -> str:
    return f"{state_actor_name}_discovery"


def start_discovery(config: GatewayConfig):
    """The gateway's discovery actor (created once, found by name afterwards) with this config,
    or None if discovery is off. Blocks on a name lookup: call it from a thread."""
    name = discovery_actor_name(config.state_actor_name)
    if not (config.discovery.ray_nodes and config.discovery.ports) and not config.discovery.cidr:
        try:  # a redeploy turned it off: the detached actor would go on discovering
            ray.kill(ray.get_actor(name, namespace=NAMESPACE))
        except ValueError:  # there is none
            pass
        return None
    actor = named_actor(NodeDiscovery, name, config.model_dump(mode="json"))
    actor.configure.remote(config.model_dump(mode="json"))  # it outlives a redeploy: take this config
    return actor
