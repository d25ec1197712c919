"""What the routing benchmark puts in front of the simulated nodes, one after the other.

- `shipped`: the gateway exactly as `serve run serve_config.yaml` configures it (the
  `applications[0].args` of the repo's serve_config.yaml, read at run time), with the nodes
  given the way users give them: `SOLLOL_NODES=name=url,...`. Two changes, both needed to
  benchmark at all: `discovery.ray_nodes` off (a real Ollama on this machine would join the
  cluster) and a fresh `state_actor_name` (each contender learns from scratch).
- `configured`: the same, with every node's true `slots` given (`name=url;slots=N`).
- `gw:<strategy>` (with `--strategies`): the shipped config with another routing.strategy.
- `nginx least_conn` / `nginx round_robin`: Debian's nginx (`nginx.py`).
- `omniscient (model)`: the discrete-event bound of `omniscient.py`, no live run.

Per-node counts come from the simulators' `/_sim/state` `received` counters (the difference
around the measured run) for every contender alike: nginx says nothing about where a request
went. They count every request a node was sent: hedged copies, retries and the router's own
re-measurements included.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import ray
import yaml
from nginx import NginxProxy
from ray import serve
from workload import NodeSpec

from sollol_serve.config import NODES_ENV, GatewayConfig, load_config
from sollol_serve.local import APP_NAME, deploy_gateway, wait_for_nodes
from sollol_serve.names import NAMESPACE
from sollol_serve.sim.process import SimProcess

MODELS = ("llama3.2", "nomic-embed-text")  # what workload.NodeSpec.sim_args serves
SERVE_CONFIG = Path(__file__).resolve().parents[1] / "serve_config.yaml"
SLOT_FIELDS = ("slots", "slots_learned", "slots_configured", "slots_source", "capacity")
_runs = itertools.count(1)


# -- the simulated cluster ------------------------------------------------------------------
class Cluster:
    """The simulated nodes of one scenario (`with Cluster(specs) as cluster:`)."""

    def __init__(self, specs: list[NodeSpec], models: tuple[str, ...] = MODELS):
        self.specs = specs
        self.models = models  # what reset unloads and prime loads
        self.sims = {s.name: SimProcess(s.name, s.sim_args()) for s in specs}

    def __enter__(self) -> "Cluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        # From this thread, one after the other: a simulator dies with the thread that started
        # it (die_with_parent), so never from a pool thread.
        for sim in self.sims.values():
            sim.start()

    def stop(self) -> None:
        for sim in self.sims.values():
            sim.stop()

    def restart(self) -> None:
        """Fresh simulators on the same ports: empty caches and queues, counters at zero."""
        self.stop()
        self.start()

    def _load(self, keep_alive: int | None) -> None:
        for sim in self.sims.values():
            for model in self.models:
                body = {"model": model, "prompt": "", **({} if keep_alive is None else {"keep_alive": keep_alive})}
                httpx.post(sim.url + "/api/generate", json=body, timeout=30, trust_env=False).raise_for_status()

    def reset(self) -> None:
        """Every node as the first contender found it: idle, models cold, no slot caching a
        prompt (an unload drops the caches; the same seeded prompts are replayed to each
        contender, so a cache left by the one before would favour the next). Nodes that still
        work on a backlog (a run cut at its drain cap) are restarted."""
        states = [sim.state() for sim in self.sims.values()]
        if any(st["active"] or st["waiting"] for st in states):
            self.restart()
        else:
            self._load(keep_alive=0)

    def prime(self) -> None:
        """Load the models on every node: all a warm-up does for a contender that learns nothing."""
        self._load(keep_alive=None)

    @property
    def urls(self) -> list[str]:
        return [self.sims[s.name].url for s in self.specs]

    def received(self) -> dict[str, int]:
        return {name: state["received"] for name, state in self.states().items()}

    def loads(self) -> int:
        """Cold loads the nodes have done so far, all models."""
        return sum(sum(state.get("loads", {}).values()) for state in self.states().values())

    def states(self) -> dict[str, dict]:
        with ThreadPoolExecutor(max_workers=4) as pool:
            return dict(zip(self.sims, pool.map(lambda sim: sim.state(), self.sims.values())))


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


# -- contenders -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Contender:
    name: str
    kind: Literal["gateway", "nginx", "bound"]
    slots: bool = False  # gateway: tell it every node's true slots
    routing: dict = field(default_factory=dict)  # gateway: routing overrides on the shipped config
    mode: str = "least_conn"  # nginx: least_conn | round_robin


SHIPPED = Contender("shipped", "gateway")
CONFIGURED = Contender("configured", "gateway", slots=True)
AFFINITY_OFF = Contender("affinity off", "gateway", routing={"affinity": False})
NGINX_LC = Contender("nginx least_conn", "nginx", mode="least_conn")
NGINX_RR = Contender("nginx round_robin", "nginx", mode="round_robin")
OMNISCIENT = Contender("omniscient (model)", "bound")


def strategy_contender(strategy: str) -> Contender:
    return Contender(f"gw:{strategy}", "gateway", routing={"strategy": strategy})


def shipped_args(path: Path = SERVE_CONFIG) -> dict:
    """serve_config.yaml's `applications[0].args`, without its `nodes` (those come from SOLLOL_NODES)."""
    args = dict(yaml.safe_load(path.read_text())["applications"][0]["args"])
    args.pop("nodes", None)
    return args


def nodes_env(cluster: Cluster, slots: bool) -> str:
    """SOLLOL_NODES as a user writes it: `name=url,...`, with `;slots=N` per node if asked."""
    return ",".join(f"{s.name}={cluster.sims[s.name].url}" + (f";slots={s.slots}" if slots else "")
                    for s in cluster.specs)


def _with_slots(args: dict, cluster: Cluster) -> GatewayConfig:
    """The config with every node's true slots, given as users give them (`name=url;slots=N`)."""
    config = load_config(args, environ={NODES_ENV: nodes_env(cluster, slots=True)})
    got, want = [n.slots for n in config.nodes], [s.slots for s in cluster.specs]
    if got != want:  # the per-node option was parsed into something else: measuring it would mislead
        raise RuntimeError(f"SOLLOL_NODES ;slots= gave slots {got}, expected {want}")
    return config


def gateway_config(contender: Contender, cluster: Cluster, tag: str) -> tuple[GatewayConfig, dict]:
    """The shipped config for `contender`, and notes on how it was built (for the report)."""
    args = shipped_args()
    if contender.slots:
        config, given_as = _with_slots(args, cluster), "SOLLOL_NODES name=url;slots=N"
    else:
        config = load_config(args, environ={NODES_ENV: nodes_env(cluster, slots=False)})
        given_as = "SOLLOL_NODES name=url"
    routing = config.routing.model_copy(update=contender.routing)
    config = config.model_copy(update={
        "routing": routing,
        "discovery": config.discovery.model_copy(update={"ray_nodes": False}),
        "state_actor_name": f"bench_{tag}_{next(_runs)}_{os.getpid()}",
    })
    # model_copy skips validation: validate the result the way build_app would
    config = GatewayConfig.model_validate(config.model_dump())
    notes = {"nodes_given_as": given_as, "strategy": routing.strategy, "affinity": routing.affinity,
             "discovery_ray_nodes": False}
    return config, notes


def _forget(state_actor_name: str) -> None:
    """Kill the detached actors the gateway left (state, cache, metrics, ...): the next
    contender starts from scratch, and none of them idles on the 2 cores meanwhile."""
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == NAMESPACE and actor["name"].startswith(state_actor_name):
            with contextlib.suppress(ValueError):
                ray.kill(ray.get_actor(actor["name"], namespace=NAMESPACE))


@contextlib.contextmanager
def gateway(serve_url: str, config: GatewayConfig) -> Iterator[str]:
    deploy_gateway(config)
    try:
        wait_for_nodes(serve_url, len(config.nodes))
        yield serve_url
    finally:
        serve.delete(APP_NAME)
        _forget(config.state_actor_name)


def gateway_nodes(url: str) -> dict[str, dict]:
    """What the gateway says about each node after a run: its slot fields and learned speed."""
    nodes = httpx.get(url + "/api/nodes", timeout=10, trust_env=False).json()["nodes"]
    return {n["name"]: {**{k: n[k] for k in SLOT_FIELDS if k in n}, "decode_tps": n.get("decode_tps")}
            for n in nodes}


@contextlib.contextmanager
def serving(contender: Contender, cluster: Cluster, serve_url: str, tag: str) -> Iterator[tuple[str, dict]]:
    """`with serving(...) as (url, notes):` the contender up in front of the cluster."""
    if contender.kind == "gateway":
        config, notes = gateway_config(contender, cluster, tag)
        with gateway(serve_url, config) as url:
            yield url, notes
    elif contender.kind == "nginx":
        with NginxProxy(cluster.urls, contender.mode) as url:
            yield url, {"nginx": contender.mode}
    else:
        raise ValueError(f"{contender.name} has no live run")
