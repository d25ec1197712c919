"""GPU readings change routing: a cold model that needs more VRAM than a node has free is not
sent there. Readings are injected from a file (this machine has no GPU); a second app on the
shared Ray, over two nodes of its own."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from ray import serve

from sollol_serve.app import build_gateway
from sollol_serve.config import GatewayConfig
from sollol_serve.local import delete_gateway
from sollol_serve.sim.process import SimProcess
from tests.helpers import nodes_of, wait_until

pytestmark = pytest.mark.integration

# `big` is 6 GB on disk; g-small is the faster node but, in the first readings, has 4 GB free.
NODES = {"g-small": ["--models", "big@6", "--slots", "2", "--decode-tps", "400", "--load-s", "0.05"],
         "g-roomy": ["--models", "big@6", "--slots", "2", "--decode-tps", "100", "--load-s", "0.05"]}


def _gpu(free_mb: int, total_mb: int = 24576) -> dict:
    return {"gpus": [{"index": 0, "name": "Simulated GPU (injected reading)", "memory.total": total_mb,
                      "memory.used": total_mb - free_mb, "utilization.gpu": 10, "temperature.gpu": 50}]}


@pytest.fixture(scope="module")
def gpu_app(gateway, tmp_path_factory):
    readings = tmp_path_factory.mktemp("gpus") / "readings.json"
    readings.write_text(json.dumps({"g-small": _gpu(4096), "g-roomy": _gpu(16384)}))
    sims = {name: SimProcess(name, args).start() for name, args in NODES.items()}
    config = GatewayConfig.model_validate({
        "nodes": [{"name": s.name, "url": s.url, "slots": 2} for s in sims.values()],
        "state_actor_name": "sollol_state_gpus",
        "routing": {"snapshot_interval_s": 0.2},
        "health": {"probe_interval_s": 0.5, "probe_min_s": 0.5, "probe_max_s": 0.5},
        "telemetry": {"readings_file": str(readings)},
        "discovery": {"ray_nodes": False},
    })
    serve.run(build_gateway(config), name="gpus", route_prefix="/gpus")
    url = gateway.url + "/gpus"
    try:
        wait_until(lambda: all(n["healthy"] and (n["telemetry"] or {}).get("source") == "injected"
                                for n in nodes_of(url).values()), 30, "nodes healthy with injected readings")
        yield url, readings
    finally:
        delete_gateway("gpus", "sollol_state_gpus")
        for sim in sims.values():
            sim.stop()


def _ask(url: str, first: int, n: int) -> set[str]:
    """The nodes that answered n concurrent requests (more than one node's slots)."""
    async def all_of() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(url + "/api/generate", json={
                "model": "big", "prompt": f"q{first + i}", "stream": False, "options": {"num_predict": 40}})
                for i in range(n)))

    responses = asyncio.run(all_of())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return {r.json()["_sollol_routing"]["node"] for r in responses}


def test_nodes_report_their_gpu_readings(gpu_app):
    url, _ = gpu_app
    small = nodes_of(url)["g-small"]["telemetry"]
    assert small["vram_free_mb"] == 4096 and small["vram_total_mb"] == 24576
    assert small["gpus"][0]["utilization_pct"] == 10 and small["ram_total_mb"] is None


def test_cold_model_goes_only_where_it_fits_and_follows_the_readings(gpu_app):
    url, readings = gpu_app
    assert _ask(url, 0, 6) == {"g-roomy"}  # the faster node has no room for it, busy or not
    readings.write_text(json.dumps({"g-small": _gpu(20480), "g-roomy": _gpu(16384)}))
    wait_until(lambda: nodes_of(url)["g-small"]["telemetry"]["vram_free_mb"] == 20480, 10, "new readings seen")
    assert "g-small" in _ask(url, 10, 6)  # now it fits, and it is 4x faster
