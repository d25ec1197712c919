"""Start and stop the whole gateway on a local Ray instance (demo, tests, benchmarks)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time

import httpx
import ray
from ray import serve

from sollol_serve.app import build_gateway
from sollol_serve.config import GatewayConfig
from sollol_serve.names import NAMESPACE, SHARED_ACTOR_ROLES, is_gateway_actor
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


# Ray puts each socket at <folder>/<node id: 56 characters>/<name>, and HAProxy refuses a
# stats socket path longer than 97 characters: short names (admin socket, metrics socket).
HAPROXY_SOCKETS = ("s", "m")
HAPROXY_SOCKET_PATH_MAX = 97
# Where HAProxy's files go, each a name in our folder ("": the folder itself).
HAPROXY_PATHS = {
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
    "RAY_SERVE_HAPROXY_SOCKET_PATH": HAPROXY_SOCKETS[0],
    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": HAPROXY_SOCKETS[1],
    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": "",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
}


def haproxy_state_dir() -> str:
    """A new `sollol-haproxy-*` folder in the temp directory, or in /tmp when TMPDIR is too
    long a path for HAProxy's sockets under it (the gateway would not start)."""
    state = tempfile.mkdtemp(prefix="sollol-haproxy-")
    room = len("/") + 56 + len("/") + max(len(name) for name in HAPROXY_SOCKETS)
    if len(state) + room > HAPROXY_SOCKET_PATH_MAX and os.path.isdir("/tmp"):
        os.rmdir(state)
        state = tempfile.mkdtemp(prefix="sollol-haproxy-", dir="/tmp")
    return state


def apply_fast_serve_env(environ: dict[str, str] = os.environ) -> None:
    for key, value in FAST_SERVE_ENV.items():
        environ.setdefault(key, value)
    # HAProxy's files default to fixed paths under /tmp/haproxy-serve (left behind, one folder
    # per Ray node id); give each local gateway its own folder, removed by stop_local_gateway,
    # so that two of them (a demo and a test run) never share a config, socket or port.
    if any(key not in environ for key in HAPROXY_PATHS):
        state = haproxy_state_dir()
        for key, name in HAPROXY_PATHS.items():
            environ.setdefault(key, os.path.join(state, name) if name else state)
    # A replica being stopped stays reachable 30 s so that load balancers can deregister it;
    # a local gateway stops as a whole, with no balancer in front: 30 s of waiting per stop.
    environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    # Serve kills a proxy that is not ready within 5 s of its start and starts another; on a
    # busy 2-core machine HAProxy's start can take longer, and the first one's death fails
    # serve.start ("HAProxyManager ... killed by ray.kill", seen starting the demo beside a busy test run).
    environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    # Its metrics and stats listeners have fixed default ports (9101, 8404): a second
    # gateway on the machine would fail to start.
    environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
    environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))


def start_local_serve(port: int, num_cpus: int = 2, include_dashboard: bool = False,
                      host: str = "127.0.0.1", logging_level: int | None = None) -> str:
    """Start a Ray instance owned by this process and Serve's HTTP ingress; return the URL.
    `logging_level`: of Ray's and Serve's loggers in this process (WARNING: no INFO lines;
    default: Ray's, INFO)."""
    apply_fast_serve_env()
    level = {}
    if logging_level is not None:
        level = {"logging_level": logging_level}
        # Serve's logger here has a handler of its own at INFO, set when ray.serve is imported.
        logging.getLogger("ray.serve").setLevel(logging_level)
    # address="local": always a Ray of our own, never one a `ray start` left on the machine.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=include_dashboard, dashboard_host="127.0.0.1",
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}}, **level)
    serve.start(http_options={"host": host, "port": port})
    return f"http://{host}:{port}"


def deploy_gateway(config: GatewayConfig) -> None:
    """Deploy (or redeploy, replacing) the gateway app on the running Serve instance."""
    serve.run(build_gateway(config), name=APP_NAME, route_prefix="/")


def start_local_gateway(config: GatewayConfig, port: int, num_cpus: int = 2, include_dashboard: bool = False,
                        host: str = "127.0.0.1", logging_level: int | None = None) -> str:
    """Start a Ray instance owned by this process, deploy the app, return its URL."""
    url = start_local_serve(port, num_cpus, include_dashboard, host, logging_level)
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
        remove_haproxy_state()


def delete_gateway(app: str, state_actor_name: str) -> None:
    """Delete a gateway app from a Ray that goes on running, with the detached actors it made
    (state, discovery, metrics, cache, limits, sessions, shards, workers added at run time):
    they outlive a redeploy on purpose, so `serve.delete` leaves them, each with its loops."""
    serve.delete(app)
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == NAMESPACE and is_gateway_actor(actor["name"], state_actor_name):
            try:
                ray.kill(ray.get_actor(actor["name"], namespace=NAMESPACE), no_restart=True)
            except ValueError:  # gone since it was listed
                pass


def remove_haproxy_state(environ: dict[str, str] = os.environ) -> None:
    """Remove the `sollol-haproxy-*` folder apply_fast_serve_env made (not paths the user set)."""
    for key, name in HAPROXY_PATHS.items():
        path = environ.get(key, "")
        state = os.path.dirname(path) if name else path
        if os.path.basename(state).startswith("sollol-haproxy-"):
            shutil.rmtree(state, ignore_errors=True)
            del environ[key]  # the next local gateway of this process makes its own


def gateway_actor_name(role: str, app: str = APP_NAME, state_actor_name: str = "sollol_node_state") -> tuple[str, str]:
    """(Ray actor name, namespace) of one of a gateway's processes, by role: `router`,
    `ingress`, `worker:<node>` (a Serve replica: the first one listed), or a shared actor:
    `state` or one of `SHARED_ACTOR_ROLES` (`metrics`, `cache`, `ratelimits`, `sessions`...)."""
    if role == "state":
        return state_actor_name, NAMESPACE
    if role in SHARED_ACTOR_ROLES:
        return f"{state_actor_name}_{role}", NAMESPACE
    deployment = {"router": "Router", "ingress": "Ingress"}.get(role) or "OllamaWorker-" + role.removeprefix("worker:")
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))
    if not names:
        raise LookupError(f"no live replica of {deployment} in app {app}")
    return names[0], "serve"


def gateway_pid(role: str, app: str = APP_NAME, state_actor_name: str = "sollol_node_state") -> int:
    """The PID of one of a gateway's processes (see `gateway_actor_name`): what an operator
    would see killed by the OOM killer, and what the fault tests and the soak kill."""
    name, namespace = gateway_actor_name(role, app, state_actor_name)
    actor = ray.get_actor(name, namespace=namespace)
    return ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()), timeout=30)
