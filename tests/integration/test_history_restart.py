"""Restart test (issue 16): what the gateway learned of its nodes (decode speeds, slots)
survives deleting and redeploying the app with its detached actors, and a full Ray restart:
`/api/nodes` shows it again before any new traffic, read back from the history file.

Runs before the shared gateway (marker `own_ray`). The gateway runs in a child process with a
Ray of its own (this module, run with `python -m`, is that child), so that the whole Ray can
be stopped by the child's PID and started again over the same data dir.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from sollol_serve.cluster.history import HistoryStore, book_of, history_file
from sollol_serve.config import GatewayConfig
from sollol_serve.processes import free_port
from sollol_serve.sim.process import SimProcess
from tests.helpers import FAST_HEALTH, nodes_of, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.own_ray, pytest.mark.slow]

STATE = "sollol_state_history"
# A Ray and Serve start in a child process: 20 s idle, over 2 minutes on a busy CI machine.
READY_S = 300
ROOT = Path(__file__).resolve().parents[2]
# A wide node (4 slots, to learn) and a narrow one; `qwen` only on the narrow one, so both
# get measured whatever the router prefers.
SIMS = {"wide": ["--models", "llama3.2", "--slots", "4", "--decode-tps", "400", "--prefill-tps", "4000",
                 "--load-s", "0"],
        "narrow": ["--models", "llama3.2,qwen2.5:0.5b", "--slots", "1", "--decode-tps", "150",
                   "--prefill-tps", "2000", "--load-s", "0"]}


# -- the child: a gateway on a Ray of its own --------------------------------------------
def serve_gateway(config: GatewayConfig, port: int) -> None:
    """Start Ray and the gateway, print `ready`; on `redeploy` (stdin) delete the app and
    kill every detached actor it made, deploy it again, print `ready`; stop on SIGTERM."""
    import ray
    from ray import serve

    from sollol_serve.local import APP_NAME, deploy_gateway, start_local_gateway, stop_local_gateway, wait_for_nodes
    from sollol_serve.names import NAMESPACE

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        url = start_local_gateway(config, port, num_cpus=2)
        wait_for_nodes(url, len(config.nodes))
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() == "redeploy":
                serve.delete(APP_NAME)
                for actor in ray.util.list_named_actors(all_namespaces=True):
                    if actor["namespace"] == NAMESPACE and actor["name"].startswith(STATE):
                        ray.kill(ray.get_actor(actor["name"], namespace=NAMESPACE), no_restart=True)
                deploy_gateway(config)
                wait_for_nodes(url, len(config.nodes))
                print("ready", flush=True)
    finally:
        stop_local_gateway()


class Child:
    """The gateway process, driven by lines on its stdin; stopped by its PID."""

    def __init__(self, config: GatewayConfig, port: int, log: Path):
        # Nothing of a Ray or HAProxy of this process's may leak into the child's own.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_SERVE_HAPROXY", "RAY_ADDRESS"))}
        self.log = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.test_history_restart", config.model_dump_json(), str(port)],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x.strip()) for x in self.proc.stdout], daemon=True).start()

    def ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc.poll() is None, f"the gateway exited ({self.proc.returncode}): see {self.log.name}"
            try:
                if self.lines.get(timeout=1.0) == "ready":  # and look again whether it exited
                    return
            except queue.Empty:
                pass
            assert time.monotonic() < deadline, f"the gateway not ready within {timeout_s} s: see {self.log.name}"

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # it shuts its Ray down
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# -- the test ----------------------------------------------------------------------------
def learned(url: str) -> dict[str, tuple]:
    """Per node: its learned decode tok/s per model, learned slots and capacity figures."""
    return {name: (n["decode_tps"], n["slots_learned"], n["capacity"]) for name, n in nodes_of(url).items()}


def assert_same(after: dict[str, tuple], before: dict[str, tuple]) -> None:
    assert after.keys() == before.keys()
    for name, (speeds, slots, capacity) in before.items():
        assert after[name][0] == pytest.approx(speeds, abs=0.01), name
        assert after[name][1:] == (slots, capacity), name


def chat(url: str, model: str, tokens: int) -> httpx.Response:
    return httpx.post(url + "/api/chat", timeout=60, json={
        "model": model, "stream": False, "options": {"num_predict": tokens},
        "messages": [{"role": "user", "content": "tell me something"}]})


@pytest.mark.timeout(3 * READY_S + 120)
def test_learned_speeds_and_slots_survive_a_redeploy_and_a_ray_restart(tmp_path):
    sims = {name: SimProcess(name, args).start() for name, args in SIMS.items()}
    config = GatewayConfig.model_validate({
        "nodes": [{"name": s.name, "url": s.url} for s in sims.values()],  # no slots: learned
        "state_actor_name": STATE, "batch": {"data_dir": str(tmp_path / "data")},
        # No re-measurement of stale estimates: its probes would change what was learned after
        # it settled (within a minute of the burst), and this test is about keeping it.
        "routing": {"snapshot_interval_s": 0.2, "stale_after_s": 3600},
        "health": FAST_HEALTH, "discovery": {"ray_nodes": False},
    })
    port, log = free_port(), tmp_path / "gateway.log"
    url = f"http://127.0.0.1:{port}"
    child = Child(config, port, log)
    try:
        child.ready(READY_S)
        with ThreadPoolExecutor(8) as pool:  # a burst teaches the wide node's slots
            replies = list(pool.map(lambda _: chat(url, "llama3.2", 40), range(24)))
        replies += [chat(url, "qwen2.5:0.5b", 20) for _ in range(3)]
        assert [r.status_code for r in replies] == [200] * 27

        # Settled: every outcome synced into the state actor, nothing more to learn.
        previous: list[dict] = [{}]

        def settled() -> bool:
            now = learned(url)
            stable, previous[0] = now == previous[0], now
            return stable and all(speeds for speeds, _, _ in now.values())

        wait_until(settled, 15, "learning settles", every_s=1.0)
        before = previous[0]
        assert before["wide"][1] >= 2, before  # slots learned above the start (1)
        assert set(before["narrow"][0]) == {"llama3.2:latest", "qwen2.5:0.5b"}, before

        # The periodic save (at most every 15 s) has written what /api/nodes shows.
        store = HistoryStore(history_file(STATE, config.batch))

        def saved() -> bool:
            book = book_of(store.load(), time.time())
            return all(book.learned_slots(name) == slots and {
                m: round(p.decode_tps.mean, 2) for (n, m), p in book.models.items() if n == name and p.decode_tps.n
            } == speeds for name, (speeds, slots, _) in before.items())

        wait_until(saved, 30, "the history file holds what was learned", every_s=1.0)

        # (a) the app and every detached actor deleted, deployed again: no new traffic yet
        child.send("redeploy")
        child.ready(READY_S)
        assert_same(learned(url), before)

        # (b) Ray itself stopped and started again over the same data dir
        child.stop()
        child = Child(config, port, log)
        child.ready(READY_S)
        assert_same(learned(url), before)
        # ... and the router predicts with it: no node is unmeasured
        routing = chat(url, "llama3.2", 5).json()["_sollol_routing"]
        assert all("unmeasured" not in c["factors"] for c in routing["candidates"]), routing
    finally:
        child.stop()
        for sim in sims.values():
            sim.stop()


if __name__ == "__main__":
    serve_gateway(GatewayConfig.model_validate_json(sys.argv[1]), int(sys.argv[2]))
