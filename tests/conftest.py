"""Shared fixtures: simulated nodes on loopback ports, and one Ray + Serve app per session.

Ray start-up costs 10-30 s on these machines, so the gateway is started once (lazily, by the
first integration test) and shared. Everything started here is stopped here, by PID or by
the Ray instance this process owns.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import pytest

from sollol_serve.config import DATA_DIR_ENV
from sollol_serve.processes import free_port
from sollol_serve.sim.process import SimProcess


@dataclass
class Gateway:
    url: str
    nodes: dict[str, SimProcess]
    config: object = None  # its GatewayConfig


# Two Ollama-flavoured nodes of different speeds and one llama-server-flavoured node.
SIM_NODES = {
    "fast": ["--kind", "ollama", "--models", "llama3.2,nomic-embed-text@0.3", "--slots", "4",
             "--decode-tps", "400", "--prefill-tps", "4000", "--load-s", "0.05"],
    "mid": ["--kind", "ollama", "--models", "llama3.2,qwen2.5:0.5b", "--slots", "2",
            "--decode-tps", "200", "--prefill-tps", "2000", "--load-s", "0.05"],
    "llamacpp": ["--kind", "openai", "--models", "tiny-llama", "--slots", "2",
                 "--decode-tps", "300", "--prefill-tps", "3000", "--load-s", "0"],
    # The only node with `slowpoke`, one slot: the priority-queue tests saturate it.
    "solo": ["--kind", "ollama", "--models", "slowpoke", "--slots", "1", "--decode-tps", "25",
             "--prefill-tps", "5000", "--load-s", "0"],
}
QUEUE_MAX = 20


def pytest_configure(config):
    # Every app the tests deploy keeps its batch jobs in a directory of this run, not the user's.
    # Set before any Ray starts, so its workers inherit it.
    config.sollol_data_dir = tempfile.mkdtemp(prefix="sollol-test-data-")
    os.environ[DATA_DIR_ENV] = config.sollol_data_dir
    # Serve kills an HTTP proxy not ready within 5 s of its start, and serve.start fails with
    # it: tests that start several raylets on a busy machine took longer (the local gateway
    # allows the same, local.py). In the environment before any Ray starts, for its controller.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "sollol_data_dir", ""), ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Tests that start their own Ray run first, before the shared gateway's Ray exists."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("own_ray") else 1)


@pytest.fixture(scope="session")
def gateway():
    from sollol_serve.config import GatewayConfig
    from sollol_serve.local import (
        start_local_gateway,
        stop_local_gateway,
        wait_for_nodes,
    )

    nodes = {name: SimProcess(name, args).start() for name, args in SIM_NODES.items()}
    try:
        config = GatewayConfig.model_validate({
            "nodes": [{"name": n.name, "url": n.url, **({"slots": 1} if n.name == "solo" else {})}
                      for n in nodes.values()],
            "routing": {"snapshot_interval_s": 0.2, "queue_max": QUEUE_MAX},
            "health": {"probe_interval_s": 1.0, "probe_min_s": 0.5, "probe_max_s": 2.0},
            "cache": {"deterministic_completions": True},
        })
        url = start_local_gateway(config, port=free_port())
        wait_for_nodes(url, len(nodes))
        yield Gateway(url=url, nodes=nodes, config=config)
    finally:
        stop_local_gateway()
        for node in nodes.values():
            node.stop()


# Keys of the `secure` app (a second app with keys, on the shared Ray).
ADMIN, USER, READER = "sk-sollol-admin-test", "sk-sollol-user-test", "sk-sollol-reader-test"
LIMITED = "sk-sollol-limited-test"
LIMIT_RPM = 10
# Keys of the security tests' limits: tokens per minute, requests in flight, a batch budget.
STREAMER, PAIR, BUDGET = "sk-sollol-streamer-test", "sk-sollol-pair-test", "sk-sollol-budget-test"
STREAMER_TPM, PAIR_MAX, BUDGET_RPM = 200, 2, 20


@pytest.fixture(scope="session")
def secure(gateway):
    """The gateway's URL of an app with API keys over the shared `fast` node."""
    from ray import serve

    from sollol_serve.api.auth import hash_key
    from sollol_serve.app import build_gateway
    from sollol_serve.config import GatewayConfig
    from sollol_serve.local import delete_gateway

    config = GatewayConfig.model_validate({
        "nodes": [{"name": "fast", "url": gateway.nodes["fast"].url}],
        "state_actor_name": "sollol_state_secure",
        "security": {"keys": [{"name": "root", "sha256": hash_key(ADMIN), "role": "admin"},
                              {"name": "app", "sha256": hash_key(USER), "role": "user"},
                              {"name": "grafana", "sha256": hash_key(READER), "role": "reader"},
                              {"name": "metered", "sha256": hash_key(LIMITED), "role": "user",
                               "requests_per_minute": LIMIT_RPM},
                              {"name": "streamer", "sha256": hash_key(STREAMER), "role": "user",
                               "tokens_per_minute": STREAMER_TPM},
                              {"name": "pair", "sha256": hash_key(PAIR), "role": "user", "max_concurrent": PAIR_MAX},
                              {"name": "budget", "sha256": hash_key(BUDGET), "role": "user",
                               "requests_per_minute": BUDGET_RPM}]},
    })
    serve.run(build_gateway(config), name="secure", route_prefix="/secure")
    try:
        yield gateway.url + "/secure"
    finally:
        delete_gateway("secure", "sollol_state_secure")
