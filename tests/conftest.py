"""Shared fixtures: simulated nodes on loopback ports, and one Ray + Serve app per session.

Ray start-up costs 10-30 s on these machines, so the gateway is started once (lazily, by the
first integration test) and shared. Everything started here is stopped here, by PID or by
the Ray instance this process owns.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SimNode:
    """A simulated node process (`sollol sim-node`) that a test can fault, kill and restart."""

    name: str
    args: list[str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "SimNode":
        cmd = [sys.executable, "-m", "sollol_serve.cli", "sim-node", "--port", str(self.port), "--name", self.name,
               *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sim node {self.name} exited: {self.proc.stderr.read().decode()}")
            try:
                if httpx.get(self.url + "/_sim/state", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"sim node {self.name} did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def faults(self, **faults) -> None:
        httpx.post(self.url + "/_sim/faults", json=faults, timeout=5).raise_for_status()

    def state(self) -> dict:
        return httpx.get(self.url + "/_sim/state", timeout=5).json()


@dataclass
class Gateway:
    url: str
    nodes: dict[str, SimNode]


# Three Ollama-flavoured nodes of different speeds and one llama-server-flavoured node.
SIM_NODES = {
    "fast": ["--kind", "ollama", "--models", "llama3.2,nomic-embed-text@0.3", "--slots", "4",
             "--decode-tps", "400", "--prefill-tps", "4000", "--load-s", "0.05"],
    "mid": ["--kind", "ollama", "--models", "llama3.2,qwen2.5:0.5b", "--slots", "2",
            "--decode-tps", "200", "--prefill-tps", "2000", "--load-s", "0.05"],
    "llamacpp": ["--kind", "openai", "--models", "tiny-llama", "--slots", "2",
                 "--decode-tps", "300", "--prefill-tps", "3000", "--load-s", "0"],
}


def _wait_healthy(url: str, expected: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            nodes = httpx.get(url + "/api/nodes", timeout=5).json()["nodes"]
            last = nodes
            if sum(1 for n in nodes if n["healthy"]) >= expected:
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"gateway nodes not healthy in time: {last}")


@pytest.fixture(scope="session")
def gateway():
    import ray
    from ray import serve

    from sollol_serve.app import build_gateway
    from sollol_serve.config import GatewayConfig

    nodes = {name: SimNode(name, args).start() for name, args in SIM_NODES.items()}
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = GatewayConfig.model_validate({
            "nodes": [{"name": n.name, "url": n.url} for n in nodes.values()],
            "routing": {"probe_interval_s": 1.0, "snapshot_interval_s": 0.2},
        })
        serve.run(build_gateway(config), name="sollol", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, len(nodes))
        yield Gateway(url=url, nodes=nodes)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            for node in nodes.values():
                node.stop()
