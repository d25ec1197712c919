"""A real trace backend on loopback for the tracing tests: Arize Phoenix (OTLP/HTTP in, a trace
UI and a REST API out), pinned, in a venv of its own under ~/.cache/sollol_serve (its many
dependencies stay out of the project's), installed from PyPI the first time (a few minutes);
and the gateway as `serve run serve_config.yaml` starts it, with tracing turned on, sending
its spans there.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from sollol_serve.processes import die_with_parent, free_port, stop_process
from sollol_serve.sim.process import SimProcess
from tests.helpers import nodes_of, wait_until

ROOT = Path(__file__).resolve().parents[1]
GATEWAY_READY_S = 300  # a Ray and Serve start: 20 s idle, minutes on a busy machine

PHOENIX = "arize-phoenix==20.26.1"
VENV = Path.home() / ".cache" / "sollol_serve" / "phoenix-20.26.1"
READY_S = 180


def phoenix_bin() -> Path:
    """The `phoenix` command of the pinned venv, made the first time."""
    command = VENV / "bin" / "phoenix"
    if not command.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", PHOENIX], check=True,
                       timeout=1800)
    return command


@contextmanager
def phoenix(workdir: Path) -> Iterator[str]:
    """A Phoenix server on loopback ports of its own, with its data in `workdir`; its URL.
    Stopped by its PID on the way out."""
    port, grpc_port = free_port(), free_port()
    env = {**os.environ, "PHOENIX_WORKING_DIR": str(workdir), "PHOENIX_HOST": "127.0.0.1",
           "PHOENIX_PORT": str(port), "PHOENIX_GRPC_PORT": str(grpc_port)}
    log = (workdir / "phoenix.log").open("wb")
    proc = subprocess.Popen([str(phoenix_bin()), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=die_with_parent)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"phoenix exited with {proc.returncode}; see {workdir / 'phoenix.log'}")
            try:
                if httpx.get(url + "/healthz", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"phoenix not ready in {READY_S} s; see {workdir / 'phoenix.log'}")
            time.sleep(1)
        yield url
    finally:
        stop_process(proc, wait_s=30)
        log.close()


def spans_of(url: str, project: str = "default") -> list[dict]:
    """Every span the backend holds for `project`, through its own REST API."""
    spans, cursor = [], None
    while True:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{url}/v1/projects/{project}/spans", params=params, timeout=30, trust_env=False)
        page.raise_for_status()
        body = page.json()
        spans += body["data"]
        cursor = body.get("next_cursor")
        if not cursor:
            return spans


def shipped_config_with(nodes: dict[str, SimProcess], port: int) -> dict:
    """serve_config.yaml as shipped, with tracing turned on, these nodes (no slots) and port."""
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    doc["tracing_config"]["enabled"] = True
    doc["http_options"]["port"] = port
    args = doc["applications"][0]["args"]
    args["nodes"] = [{"name": n.name, "url": n.url} for n in nodes.values()]
    args.setdefault("discovery", {})["ray_nodes"] = False  # this machine's Ollama, if any, stays out
    return doc


def _serve_run_setup() -> None:
    """In `serve run`, before exec: Ctrl-C's default back (a suite started in the background
    ignores SIGINT, and `serve run` would then never stop its Ray on it), and dying with us."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    die_with_parent()


@contextmanager
def traced_gateway(workdir: Path, nodes: dict[str, SimProcess], backend: str) -> Iterator[str]:
    """`serve run` of the shipped config with tracing on, its spans sent to `backend`, on a Ray
    of its own; its URL once every node is healthy. Stopped (SIGINT: it stops its Ray) on the
    way out."""
    port = free_port()
    config = workdir / "serve_config.yaml"
    config.write_text(yaml.safe_dump(shipped_config_with(nodes, port), sort_keys=False))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_SERVE_HAPROXY", "RAY_ADDRESS")) and k != "SOLLOL_NODES"}
    env.update({"RAY_ADDRESS": "local", "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": 2}),
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{backend}/v1/traces", "OTEL_SERVICE_NAME": "sollol",
                "SOLLOL_DATA_DIR": str(workdir / "data")})
    log_path = workdir / "gateway.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("serve")), "run", str(config)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_serve_run_setup)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, f"serve run exited ({proc.returncode}): see {log_path}"
        try:
            listed = nodes_of(url)
        except (httpx.HTTPError, KeyError, ValueError):
            return False
        return listed.keys() == nodes.keys() and all(n["healthy"] for n in listed.values())

    try:
        wait_until(ready, GATEWAY_READY_S, "the traced gateway's nodes healthy", every_s=1.0)
        yield url
    finally:
        stop_process(proc, signal.SIGINT, wait_s=60)  # serve run stops its Ray on Ctrl-C


# Two nodes for a failover: `quick` answers far sooner, so once the router has measured both it
# sends there first; `steady` takes what `quick` fails.
FAILOVER_SIMS = {
    "quick": ["--kind", "ollama", "--models", "llama3.2", "--decode-tps", "800", "--prefill-tps", "8000"],
    "steady": ["--kind", "ollama", "--models", "llama3.2", "--decode-tps", "60", "--prefill-tps", "1000"]}


def chat_body(stream: bool, tokens: int = 16) -> dict:
    return {"model": "llama3.2", "stream": stream, "options": {"num_predict": tokens},
            "messages": [{"role": "user", "content": "trace me"}]}


def traceparent() -> tuple[str, str]:
    """A client's sampled W3C traceparent, and its trace ID."""
    trace_id = secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01", trace_id


def failover_chat(url: str, sims: dict[str, SimProcess], tries: int = 5) -> tuple[httpx.Response, str]:
    """A traced chat that went to `quick` first, which failed it (HTTP 500), and then to
    `steady`; with its traceparent. Both nodes are measured first (chats four at a time reach
    both), so the router prefers `quick`; a chat it sent to `steady` first is sent again."""
    with ThreadPoolExecutor(4) as pool:
        for _ in range(2):
            for answer in pool.map(lambda _: httpx.post(url + "/api/chat", json=chat_body(False), timeout=60),
                                   range(4)):
                answer.raise_for_status()
    sims["quick"].faults(mode="error")
    try:
        for _ in range(tries):
            header, _ = traceparent()
            answer = httpx.post(url + "/api/chat", json=chat_body(False), timeout=60,
                                headers={"traceparent": header, "X-Request-ID": "failed-over"})
            answer.raise_for_status()
            if [a["node"] for a in answer.json()["_sollol_routing"]["attempts"]] == ["quick", "steady"]:
                return answer, header
    finally:
        sims["quick"].faults(mode="none")
    raise AssertionError(f"none of {tries} chats went to the failing node first")
