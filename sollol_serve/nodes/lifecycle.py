"""Adding and retiring nodes while the gateway runs: shared by the admin API and discovery."""

from __future__ import annotations

import asyncio
import time

import ray
from ray.actor import ActorHandle

from sollol_serve.config import GatewayConfig, NodeConfig
from sollol_serve.names import NAMESPACE, runtime_worker_name
from sollol_serve.nodes.worker import create_runtime_worker
from sollol_serve.protocol import NOT_PROBED

# How long adding a node waits for its worker's first probe before answering.
ADD_NODE_WAIT_S = 15.0
KILL_WAIT_S = 10.0


async def add_runtime_node(state: ActorHandle, node: NodeConfig, config: GatewayConfig) -> tuple[ActorHandle, dict]:
    """Start the node's worker actor and wait (bounded) for its first probe: the actor and
    what the probe found."""
    actor = create_runtime_worker(node, config)
    deadline = time.monotonic() + ADD_NODE_WAIT_S
    while time.monotonic() < deadline:
        view = (await state.snapshot.remote()).get(node.name)
        if view is not None and (view.healthy or view.error != NOT_PROBED):
            return actor, {"node": node.name, "url": node.url, "healthy": view.healthy, "error": view.error}
        await asyncio.sleep(0.2)
    return actor, {"node": node.name, "url": node.url, "healthy": False, "error": NOT_PROBED}


async def remove_node_now(state: ActorHandle, name: str, config: GatewayConfig) -> None:
    """Remove the node at once (its server is gone anyway) and stop its runtime worker."""
    await state.remove.remote(name)
    await _kill_runtime_worker(name, config)


async def remove_node_unrouted(state: ActorHandle, name: str, config: GatewayConfig) -> None:
    """Remove the node from the shared state, give every router two syncs to stop sending to
    it (its server still answers what they sent meanwhile; an idle router syncs less often),
    then stop its runtime worker."""
    await state.remove.remote(name)
    await asyncio.sleep(2 * config.routing.longest_sync_s)
    await _kill_runtime_worker(name, config)


async def retire_node(state: ActorHandle, name: str, config: GatewayConfig) -> None:
    """Drain the node, let what it has finish (bounded by `drain_timeout_s`), then remove it
    from the shared state and stop its worker if it was started at run time."""
    routing = config.routing
    await state.drain.remote(name)
    # Let every router report flights it started before it saw the drain.
    await asyncio.sleep(2 * routing.snapshot_interval_s)
    deadline = time.monotonic() + routing.drain_timeout_s
    while time.monotonic() < deadline and await state.in_flight_total.remote(name):
        await asyncio.sleep(routing.snapshot_interval_s)
    await remove_node_now(state, name, config)


async def _kill_runtime_worker(name: str, config: GatewayConfig) -> None:
    actor_name = runtime_worker_name(config.state_actor_name, name)
    try:
        actor = await asyncio.to_thread(ray.get_actor, actor_name, NAMESPACE)
    except ValueError:  # a node from the config: its deployment stays until the app is redeployed
        return
    ray.kill(actor)
    # Until Ray has freed the name, a node added again under it could not get a worker.
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline:
        try:
            await asyncio.to_thread(ray.get_actor, actor_name, NAMESPACE)
        except ValueError:
            return
        await asyncio.sleep(0.1)
