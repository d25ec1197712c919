"""Fair share through the real gateway: two applications told apart by their API keys, one
flooding a one-slot node; the other's request is served next (not after the flood) and only
the flood is refused over its part of the queue."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from ray import serve

from sollol_serve.api.auth import hash_key
from sollol_serve.app import build_gateway
from sollol_serve.config import GatewayConfig
from sollol_serve.local import delete_gateway
from sollol_serve.sim.process import SimProcess
from tests.helpers import FAST_HEALTH, wait_until

pytestmark = pytest.mark.integration

APP = "fairshare"
FLOOD, CHAT, OPS = "sk-sollol-flood-test", "sk-sollol-chat-test", "sk-sollol-ops-test"
QUEUE_MAX = 6
FLOOD_SENT = 10  # one runs, six wait (the whole queue while it is alone), three are refused


def _chat(url: str, key: str, n: int) -> tuple[int, float, float]:
    """Status, when it was sent and when it ended."""
    started = time.monotonic()
    r = httpx.post(url + "/api/chat", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                   json={"model": "llama3.2", "stream": False, "options": {"num_predict": 50},
                         "messages": [{"role": "user", "content": f"request {n}"}]})
    return r.status_code, started, time.monotonic()


@pytest.fixture(scope="module")
def app(gateway):
    sim = SimProcess("fs1", ["--kind", "ollama", "--models", "llama3.2", "--slots", "1", "--decode-tps", "100",
                             "--load-s", "0"]).start()
    config = GatewayConfig.model_validate({
        "nodes": [{"name": "fs1", "url": sim.url, "slots": 1}], "state_actor_name": f"sollol_state_{APP}",
        "routing": {"queue_max": QUEUE_MAX}, "health": FAST_HEALTH,
        "security": {"keys": [{"name": "flood", "sha256": hash_key(FLOOD), "role": "user"},
                              {"name": "chat", "sha256": hash_key(CHAT), "role": "user"},
                              {"name": "ops", "sha256": hash_key(OPS), "role": "reader"}]},
    })
    try:
        serve.run(build_gateway(config), name=APP, route_prefix=f"/{APP}")
        url = f"{gateway.url}/{APP}"
        wait_until(lambda: _chat(url, CHAT, -1)[0] == 200, 60, "the fairshare app answering")
        yield url, sim
    finally:
        delete_gateway(APP, f"sollol_state_{APP}")
        sim.stop()


def _waiting(url: str, name: str) -> int:
    apps = httpx.get(url + "/api/applications", headers={"Authorization": f"Bearer {OPS}"}, timeout=10).json()
    entry = next((a for a in apps["applications"] if a["name"] == name), None)
    return entry["fair_share"]["waiting"] if entry else 0


def test_a_flood_waits_its_turn_and_only_the_flood_is_refused(app):
    url, sim = app
    # The node holds what it is sent until released, so the queue's order is the test's, not
    # the machine's: a busy machine sends the flood slower than one request takes.
    sim.faults(mode="hang")
    try:
        with ThreadPoolExecutor(FLOOD_SENT + 1) as pool:
            flood = [pool.submit(_chat, url, FLOOD, n) for n in range(FLOOD_SENT)]
            wait_until(lambda: _waiting(url, "flood") == QUEUE_MAX and sum(f.done() for f in flood) == 3, 60,
                       "one flood request running, six waiting, three refused")
            chat_future = pool.submit(_chat, url, CHAT, 0)
            wait_until(lambda: _waiting(url, "chat") == 1, 60, "the chat request waiting")
            sim.faults(mode="none")
            chat = chat_future.result(timeout=60)
            flood_done = [f.result(timeout=60) for f in flood]
    finally:
        sim.faults(mode="none")

    assert chat[0] == 200, chat
    statuses = sorted(status for status, _, _ in flood_done)
    assert statuses == [200] * (FLOOD_SENT - 3) + [429] * 3, statuses
    # Served by arrival, the chat request would end after all seven of the flood's; in its fair
    # turn it waits only for the one running (level with the flood, it has fewer waiting), so
    # it ends before the six that were waiting.
    ended_after_chat = [end for status, _, end in flood_done if status == 200 and end > chat[2]]
    assert len(ended_after_chat) == QUEUE_MAX, (chat, flood_done)

    apps = {a["name"]: a for a in httpx.get(url + "/api/applications", timeout=10,
                                            headers={"Authorization": f"Bearer {OPS}"}).json()["applications"]}
    assert apps["flood"]["fair_share"]["refused"] == 3 and apps["chat"]["fair_share"]["refused"] == 0
    assert apps["chat"]["fair_share"]["share"] == 1.0 and apps["flood"]["fair_share"]["count"] >= FLOOD_SENT - 3
