"""Start and stop the whole gateway on a local Ray instance (demo, tests, benchmarks)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import httpx
import ray
from ray import serve

from sollol_serve.app import build_gateway
from sollol_serve.config import GatewayConfig
from sollol_serve.processes import free_port

APP_NAME = "sollol"

# Ray Serve's own throughput settings, measured here (benchmarks/overhead.py) to cut the
# gateway's CPU per request from ~35 ms to ~12 ms on 2 cores: HAProxy in front of the ingress
# replicas instead of the Python proxy hop, gRPC between replicas, user code on the replica's
# main loop, no per-request logging to stderr. They must be in the environment before Ray
# starts; values already set by the user win.
FAST_SERVE_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_LOG_TO_STDERR": "0",
}


def apply_fast_serve_env(environ: dict[str, str] = os.environ) -> None:
    for key, value in FAST_SERVE_ENV.items():
        environ.setdefault(key, value)
    # HAProxy's files default to fixed paths under /tmp; give each local gateway its own so
    # that two of them (a demo and a test run) never share a config, socket or port.
    state = tempfile.mkdtemp(prefix="sollol-haproxy-")
    environ.setdefault("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", f"{state}/haproxy.cfg")
    environ.setdefault("RAY_SERVE_HAPROXY_SOCKET_PATH", f"{state}/admin.sock")
    environ.setdefault("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", state)
    environ.setdefault("RAY_SERVE_HAPROXY_SERVER_STATE_FILE", f"{state}/server-state")
    # A replica being stopped stays reachable 30 s so that load balancers can deregister it;
    # a local gateway stops as a whole, with no balancer in front: 30 s of waiting per stop.
    environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    # Its metrics and stats listeners have fixed default ports (9101, 8404): a second
    # gateway on the machine would fail to start.
    environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
    environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))


def start_local_serve(port: int, num_cpus: int = 2, include_dashboard: bool = False,
                      host: str = "127.0.0.1") -> str:
    """Start a Ray instance owned by this process and Serve's HTTP ingress; return the URL."""
    apply_fast_serve_env()
    # address="local": always a Ray of our own, never one a `ray start` left on the machine.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=include_dashboard, dashboard_host="127.0.0.1",
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    serve.start(http_options={"host": host, "port": port})
    return f"http://{host}:{port}"


def deploy_gateway(config: GatewayConfig) -> None:
    """Deploy (or redeploy, replacing) the gateway app on the running Serve instance."""
    serve.run(build_gateway(config), name=APP_NAME, route_prefix="/")


def start_local_gateway(config: GatewayConfig, port: int, num_cpus: int = 2, include_dashboard: bool = False,
                        host: str = "127.0.0.1") -> str:
    """Start a Ray instance owned by this process, deploy the app, return its URL."""
    url = start_local_serve(port, num_cpus, include_dashboard, host)
    deploy_gateway(config)
    return url


def wait_for_nodes(url: str, expected: int, timeout: float = 120.0) -> list[dict]:
    """Block until `expected` nodes are healthy (workers probe them at start)."""
    deadline = time.monotonic() + timeout
    nodes: list[dict] = []
    while time.monotonic() < deadline:
        try:
            nodes = httpx.get(url + "/api/nodes", timeout=5, trust_env=False).json()["nodes"]
            if sum(1 for n in nodes if n["healthy"]) >= expected:
                return nodes
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"only {sum(1 for n in nodes if n.get('healthy'))} of {expected} nodes healthy: {nodes}")


def stop_local_gateway() -> None:
    """Stop what start_local_gateway started (after a failed start too, without starting Ray
    again to find nothing to stop), and remove this process's HAProxy files."""
    try:
        if ray.is_initialized():
            serve.shutdown()
    finally:
        ray.shutdown()
        state = os.environ.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", "")
        if os.path.basename(state).startswith("sollol-haproxy-"):
            shutil.rmtree(state, ignore_errors=True)
            for key in [k for k, v in os.environ.items() if v.startswith(state)]:
                del os.environ[key]  # the next local gateway of this process makes its own
