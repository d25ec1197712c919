"""`sollol demo` as a newcomer runs it: it comes up, serves a chat, says how to open Ray's
dashboard, prints no Ray log lines, and stops cleanly, leaving nothing in the temp directory.

Runs before the shared gateway starts (marker `own_ray`), as its own process with its own Ray.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from sollol_serve.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.own_ray]


@pytest.fixture
def temp_dir():
    """The demo's temp directory (TMPDIR), short: Ray puts sockets under it (107 bytes at most)."""
    path = Path(tempfile.mkdtemp(prefix="demo-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_demo_starts_three_nodes_and_the_gateway(temp_dir):
    port, node_port = free_port(), free_port()
    temp = temp_dir
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TMPDIR"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sollol_serve.cli", "demo", "--port", str(port), "--node-port", str(node_port),
         "--duration", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**env, "TMPDIR": str(temp)},
    )
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            seen.append(line)
            if "Ctrl-C stops everything" in line:
                break
        output = "".join(seen)
        assert "sollol_serve is running" in output, output[-3000:]
        assert f"http://127.0.0.1:{port}/dashboard" in output
        assert "get-auth-token` prints it" in output  # what Ray's dashboard asks for, and where to get it
        ray_lines = [line for line in seen if "INFO" in line or "WARNING" in line]
        assert not ray_lines, ray_lines
        url = f"http://127.0.0.1:{port}"
        nodes = httpx.get(url + "/api/nodes", timeout=10).json()["nodes"]
        assert {n["name"] for n in nodes} == {"gpu-big", "gpu-small", "cpu"}
        assert all(n["healthy"] for n in nodes)
        # Nodes given as users give them: no slots; the router starts from what is proven.
        assert {n["name"]: (n["slots"], n["slots_source"]) for n in nodes} == {
            "gpu-big": (1, "learned"), "gpu-small": (1, "learned"), "cpu": (1, "learned")}
        reply = httpx.post(url + "/api/chat", timeout=60, json={
            "model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 3}})
        assert reply.status_code == 200 and reply.json()["eval_count"] == 3
        # A burst teaches it more slots, never more than a node has (4 / 2 / 1).
        body = {"model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": "tell me"}],
                "options": {"num_predict": 60}}
        with ThreadPoolExecutor(12) as pool:
            replies = list(pool.map(lambda _: httpx.post(url + "/api/chat", json=body, timeout=120), range(24)))
        assert [r.status_code for r in replies] == [200] * 24
        learned = {n["name"]: n["slots_learned"] for n in httpx.get(url + "/api/nodes", timeout=10).json()["nodes"]}
        assert learned["gpu-big"] >= 2 and learned["gpu-big"] <= 4, learned
        assert learned["gpu-small"] <= 2 and learned["cpu"] == 1, learned
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    # Ray keeps its session logs in <temp>/ray, as it always does; nothing else stays.
    assert sorted(p.name for p in temp.iterdir()) in ([], ["ray"]), list(temp.iterdir())
