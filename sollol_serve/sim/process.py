"""Run a simulated node as a child process (demo, tests, benchmarks): start, wait, stop by PID."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx

from sollol_serve.processes import die_with_parent, free_port, stop_process


@dataclass
class SimProcess:
    """A `sollol sim-node` process that can be faulted, killed and restarted on its port."""

    name: str
    args: list[str]
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "SimProcess":
        cmd = [sys.executable, "-m", "sollol_serve.cli", "sim-node", "--host", self.host, "--port", str(self.port),
               "--name", self.name, *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sim node {self.name} exited: {self.proc.stderr.read().decode()}")
            try:
                if httpx.get(self.url + "/_sim/state", timeout=1, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"sim node {self.name} did not start within {timeout} s")

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)

    def kill(self) -> None:
        """SIGKILL: the node dies the way a crashed machine does."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def faults(self, **faults: object) -> None:
        httpx.post(self.url + "/_sim/faults", json=faults, timeout=5, trust_env=False).raise_for_status()

    def state(self) -> dict:
        return httpx.get(self.url + "/_sim/state", timeout=5, trust_env=False).json()

    def embedded(self) -> dict[str, int]:
        """How many times each text reached this node in an embed request (needs --record-inputs)."""
        return httpx.get(self.url + "/_sim/inputs", timeout=5, trust_env=False).json()["embedded"]
