"""The gateway on a multi-raylet Ray cluster on this machine: each raylet has its own loopback
address (127.0.0.2, .3, .4) and resource label, and a simulated Ollama bound to that address.

Workers run on the Ray node that owns their label; a Ray node that joins with a server is
discovered and gets traffic; a Ray node that leaves stops getting traffic without a failed
request. Runs before the shared gateway (marker `own_ray`) and shuts its cluster down.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster

from sollol_serve.app import build_gateway
from sollol_serve.config import GatewayConfig
from sollol_serve.processes import free_port
from sollol_serve.sim.process import SimProcess
from tests.helpers import nodes_of, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.own_ray, pytest.mark.cluster]

SIM = ["--kind", "ollama", "--slots", "2", "--decode-tps", "300", "--load-s", "0"]


def _ray_node_ids() -> dict[str, str]:
    return {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}


def _sim(name: str, ip: str, models: str, port: int | None = None) -> SimProcess:
    return SimProcess(name, [*SIM, "--models", models], port=port or free_port(ip), host=ip).start()


async def _chats(url: str, model: str, n: int, pause_s: float) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def one(i: int) -> httpx.Response:
            await asyncio.sleep(i * pause_s)
            return await client.post("/api/chat", json={"model": model, "stream": False, "options": {"num_predict": 30},
                                                        "messages": [{"role": "user", "content": f"c{i}"}]})

        return await asyncio.gather(*(one(i) for i in range(n)))


def test_workers_follow_their_hosts_and_ray_nodes_join_and_leave():
    sims: list[SimProcess] = []
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=0, resources={"sollol-node:gpu-a": 1}, node_ip_address="127.0.0.2")
        cluster.add_node(num_cpus=0, resources={"sollol-node:gpu-b": 1}, node_ip_address="127.0.0.3")
        ray.init(address=cluster.address, log_to_driver=False)
        sims += [_sim("gpu-a", "127.0.0.2", "shared,a-only"), _sim("gpu-b", "127.0.0.3", "shared")]
        late_port = free_port("127.0.0.4")
        config = GatewayConfig.model_validate({
            "nodes": [{"name": s.name, "url": s.url, "slots": 2} for s in sims],
            # Round robin: every node with the model gets its turn, whatever the machine's load.
            "routing": {"strategy": "round_robin", "snapshot_interval_s": 0.2},
            "health": {"probe_interval_s": 1.0, "probe_min_s": 0.5, "probe_max_s": 2.0},
            "discovery": {"ports": [late_port], "interval_s": 1.0},
        })
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        serve.run(build_gateway(config), name="sollol", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: sum(n["healthy"] for n in nodes_of(url).values()) == 2, 60, "both nodes healthy")

        ids = _ray_node_ids()
        nodes = nodes_of(url)
        assert nodes["gpu-a"]["worker_node_id"] == ids["127.0.0.2"] and nodes["gpu-a"]["worker_ip"] == "127.0.0.2"
        assert nodes["gpu-b"]["worker_node_id"] == ids["127.0.0.3"]

        # A Ray host with a server joins after Serve started: discovered, pinned there, serving.
        sims.append(_sim("late", "127.0.0.4", "shared,late-only", port=late_port))
        late_raylet = cluster.add_node(num_cpus=0, node_ip_address="127.0.0.4")
        late = f"127.0.0.4-{late_port}"
        # A raylet start, a discovery scan and a worker actor's start on the new host: a minute
        # or more on a busy machine.
        wait_until(lambda: nodes_of(url).get(late, {}).get("healthy"), 180, "the joining node discovered")
        assert nodes_of(url)[late]["worker_node_id"] == _ray_node_ids()["127.0.0.4"]
        assert nodes_of(url)[late]["added_at_run_time"]
        served = asyncio.run(_chats(url, "late-only", 3, 0))
        assert [r.status_code for r in served] == [200] * 3 and {r.headers["x-sollol-node"] for r in served} == {late}

        # It shares `shared` with gpu-a and gpu-b: round robin gives it its turns.
        wait_until(lambda: late in {r.headers["x-sollol-node"] for r in asyncio.run(_chats(url, "shared", 6, 0))},
                   30, "the joined node gets its share of a model the others have too")

        # That Ray host leaves while requests for the model it shares are in flight.
        async def load_while_leaving() -> list[httpx.Response]:
            pending = asyncio.ensure_future(_chats(url, "shared", 30, 0.03))
            await asyncio.sleep(0.3)
            await asyncio.to_thread(cluster.remove_node, late_raylet)
            return await pending

        responses = asyncio.run(load_while_leaving())
        assert [r.status_code for r in responses] == [200] * 30, [r.text[:200] for r in responses if r.status_code != 200]
        wait_until(lambda: late not in nodes_of(url), 120, "the departed Ray node's server retired")
        after = asyncio.run(_chats(url, "shared", 6, 0))
        assert {r.headers["x-sollol-node"] for r in after} <= {"gpu-a", "gpu-b"}
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        for sim in sims:
            sim.stop()
