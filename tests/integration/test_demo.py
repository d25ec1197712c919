"""`sollol demo` as a newcomer runs it: it comes up, serves a chat, and stops cleanly.

Runs before the shared gateway starts (marker `own_ray`), as its own process with its own Ray.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest

from sollol_serve.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.own_ray]


def test_demo_starts_three_nodes_and_the_gateway():
    port, node_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sollol_serve.cli", "demo", "--port", str(port), "--node-port", str(node_port),
         "--duration", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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
        url = f"http://127.0.0.1:{port}"
        nodes = httpx.get(url + "/api/nodes", timeout=10).json()["nodes"]
        assert {n["name"] for n in nodes} == {"gpu-big", "gpu-small", "cpu"}
        assert all(n["healthy"] for n in nodes)
        assert {n["name"]: n["slots"] for n in nodes} == {"gpu-big": 4, "gpu-small": 2, "cpu": 1}
        reply = httpx.post(url + "/api/chat", timeout=60, json={
            "model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 3}})
        assert reply.status_code == 200 and reply.json()["eval_count"] == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
