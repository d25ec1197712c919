"""The gateway's own processes die under steady load (SIGKILL by PID, as the OOM killer does)
and no client notices: no failed request but those in flight on a killed Ingress (and a stream
under way on a killed worker), every node
back in /api/nodes with what was learned of it, and traffic flowing again.

One app of its own (defaults as shipped, nodes given without slots, keys on so the rate-limit
actor is on the path) over three simulated nodes; a mix of streamed and non-streamed chats and
embeddings at ~2.5 requests/s, one kill per test.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
from ray import serve

from sollol_serve.api.auth import hash_key
from sollol_serve.app import build_gateway
from sollol_serve.config import GatewayConfig
from sollol_serve.local import delete_gateway, gateway_pid
from sollol_serve.sim.process import SimProcess
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = "faults"
STATE = "sollol_state_faults"
KEY = "sk-sollol-faults-test"
HEADERS = {"Authorization": f"Bearer {KEY}"}
NODE_ARGS = {
    "p1": ["--models", "llama3.2,nomic-embed-text@0.3", "--slots", "4", "--decode-tps", "300", "--load-s", "0"],
    "p2": ["--models", "llama3.2,nomic-embed-text@0.3", "--slots", "2", "--decode-tps", "150", "--load-s", "0"],
    "p3": ["--models", "llama3.2", "--slots", "1", "--decode-tps", "80", "--load-s", "0"],
}
SEND_EVERY_S = 0.4
AFTER_KILL_S = 10.0
# A new Ingress replica takes Serve's health check and a replica start (5 s idle; a CI run on a
# busy machine saw none within 10 s): the load runs longer after that kill.
AFTER_INGRESS_KILL_S = 20.0
# What a killed Ingress may take with it: the requests on it, those sent as the signal lands
# (the suite saw one sent +0.0 s after the clock read, cut off 0.13 s later), and those Serve's
# proxy hands it in the moment before it knows it is dead. They fail as a dropped connection or
# the proxy's plain 500, never as one of the gateway's own answers.
KILL_LANDS_S = 1.0
LOST_WITH_INGRESS = ("RemoteProtocolError", "ReadError", "500 Internal Server Error", "500 b'Internal Server Error")
# A stream already under way on a killed worker has sent tokens no other node would repeat: it
# ends with an error chunk naming the death (CI caught one in flight), a non-streamed request
# moves to another node.
LOST_WITH_WORKER = "stream ended {'error': 'stream from "


@dataclass
class Sent:
    kind: str
    started: float
    ended: float
    ok: bool
    detail: str = ""


def _one(url: str, kind: str, n: int) -> Sent:
    started = time.time()
    messages = [{"role": "user", "content": f"request {n}: say something about routing"}]
    try:
        with httpx.Client(timeout=60, headers=HEADERS) as client:
            if kind == "embed":
                r = client.post(url + "/api/embed", json={"model": "nomic-embed-text", "input": f"text {n}"})
                ok = r.status_code == 200 and len(r.json().get("embeddings", [])) == 1
                return Sent(kind, started, time.time(), ok, "" if ok else f"{r.status_code} {r.text[:200]}")
            body = {"model": "llama3.2", "messages": messages, "options": {"num_predict": 24}}
            if kind == "chat":
                r = client.post(url + "/api/chat", json={**body, "stream": False})
                ok = r.status_code == 200 and r.json().get("done") is True
                return Sent(kind, started, time.time(), ok, "" if ok else f"{r.status_code} {r.text[:200]}")
            with client.stream("POST", url + "/api/chat", json={**body, "stream": True}) as r:
                if r.status_code != 200:
                    return Sent(kind, started, time.time(), False, f"{r.status_code} {r.read()[:200]!r}")
                last = {}
                for line in r.iter_lines():
                    if line.strip():
                        last = json.loads(line)
                ok = last.get("done") is True and "error" not in last
                return Sent(kind, started, time.time(), ok, "" if ok else f"stream ended {last}")
    except Exception as exc:  # the client's own view: a reset, a time-out
        return Sent(kind, started, time.time(), False, f"{type(exc).__name__}: {exc}")


class Load:
    """Requests sent on a fixed schedule (an open loop, as users send), each on its own thread."""

    KINDS = ("chat", "chat_stream", "embed", "chat_stream", "chat")

    def __init__(self, url: str):
        self.url = url
        self.sent: list[Sent] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(32)
        self._futures = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set() and n < 400:  # bounded in count and in time
            self._futures.append(self._pool.submit(_one, self.url, self.KINDS[n % len(self.KINDS)], n))
            n += 1
            self._stop.wait(SEND_EVERY_S)

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sent = [f.result(timeout=120) for f in self._futures]
        self._pool.shutdown()


def _long_stream(url: str) -> None:
    """A stream that is surely in flight when its Ingress is killed (what it gets is not checked)."""
    try:
        with httpx.Client(timeout=30, headers=HEADERS) as client, client.stream(
                "POST", url + "/api/chat", json={"model": "llama3.2", "stream": True, "options": {"num_predict": 400},
                                                 "messages": [{"role": "user", "content": "a long one"}]}) as r:
            for _ in r.iter_lines():
                pass
    except httpx.HTTPError:
        pass


def _kill_under_load(url: str, role: str) -> tuple[list[Sent], float]:
    with Load(url) as load:
        time.sleep(3.0)
        if role == "ingress":  # tickets held by the replica that dies: their slots must come back
            streams = [threading.Thread(target=_long_stream, args=(url,), daemon=True) for _ in range(3)]
            for stream in streams:
                stream.start()
            time.sleep(0.5)
        pid = gateway_pid(role, APP, STATE)
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        time.sleep(AFTER_INGRESS_KILL_S if role == "ingress" else AFTER_KILL_S)
    return load.sent, killed_at


def _first_success_after(sent: list[Sent], at: float) -> float | None:
    """Seconds from `at` to the end of the first request sent after it that succeeded."""
    ends = [s.ended for s in sent if s.started >= at and s.ok]
    return min(ends) - at if ends else None


@pytest.fixture(scope="module")
def app(gateway):
    sims = {name: SimProcess(name, ["--kind", "ollama", *args]).start() for name, args in NODE_ARGS.items()}
    config = GatewayConfig.model_validate({
        "nodes": [{"name": name, "url": sim.url} for name, sim in sims.items()],
        "state_actor_name": STATE,
        "security": {"keys": [{"name": "faults", "sha256": hash_key(KEY), "role": "admin",
                               "requests_per_minute": 100000}]},
        "discovery": {"ray_nodes": False},
    })
    try:
        url = _deploy(gateway.url, config)
        with Load(url):  # every node's speed learned before anything dies
            time.sleep(6)
        yield url
    finally:
        delete_gateway(APP, STATE)
        for sim in sims.values():
            sim.stop()


def _deploy(root_url: str, config: GatewayConfig) -> str:
    serve.run(build_gateway(config), name=APP, route_prefix=f"/{APP}")
    url = f"{root_url}/{APP}"
    wait_until(lambda: _all_back(url), 60, "the faults app's nodes healthy")
    return url


def _all_back(url: str) -> bool:
    nodes = _nodes(url)
    return set(NODE_ARGS) <= nodes.keys() and all(n["healthy"] for n in nodes.values())


def _nodes(url: str) -> dict[str, dict]:
    return {n["name"]: n for n in httpx.get(url + "/api/nodes", headers=HEADERS, timeout=10).json()["nodes"]}


def _learned(url: str) -> dict[str, dict]:
    return {name: n["decode_tps"] for name, n in _nodes(url).items()}


@pytest.mark.parametrize("role", ["state", "router", "worker:p1", "metrics", "cache", "ratelimits", "ingress"])
def test_a_killed_gateway_process_loses_no_request(app, role):
    url = app
    learned_before = _learned(url)
    sent, killed_at = _kill_under_load(url, role)

    in_flight = [s for s in sent if s.started < killed_at < s.ended]
    failed = [s for s in sent if not s.ok]
    if role == "ingress":  # what was on the killed replica may be lost with it, nothing else
        failed = [s for s in failed if not (s.started < killed_at + KILL_LANDS_S and s.ended > killed_at
                                            and s.detail.startswith(LOST_WITH_INGRESS))]
    if role.startswith("worker:"):
        failed = [s for s in failed if not (s.kind == "chat_stream" and s.started < killed_at < s.ended
                                            and s.detail.startswith(LOST_WITH_WORKER) and "ActorDiedError" in s.detail)]
    assert not failed, f"{len(failed)} of {len(sent)} failed after killing the {role}: " + \
        "; ".join(f"{s.kind} at {s.started - killed_at:+.1f}s: {s.detail}" for s in failed[:6])

    recovered = _first_success_after(sent, killed_at)
    # Traffic must come back, however long a busy machine takes to start a replica (CI saw 26 s
    # for an Ingress): the time is printed, not asserted.
    assert recovered is not None, f"no success after killing the {role}"
    print(f"\n{role}: {len(sent)} sent, {len(in_flight)} in flight at the kill, first success after "
          f"{recovered:.2f} s")

    # Every node back, healthy, with what was learned of it, and every slot given back (a
    # ticket of a dead replica's too) once the load is over.
    wait_until(lambda: _all_back(url), 30, "every node back in /api/nodes")
    wait_until(lambda: sum(n["in_flight"] for n in _nodes(url).values()) == 0, 30,
               f"every slot free again after killing the {role}: {_nodes(url)}")
    learned_after = _learned(url)
    for name, speeds in learned_before.items():
        assert set(speeds) <= set(learned_after[name]), f"{name} lost what was learned: {learned_after[name]}"
