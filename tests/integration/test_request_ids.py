"""One ID per request through the real gateway: the client's X-Request-ID comes back on the
response, in `_sollol_routing` and the decision log, and in the JSON log lines of every Serve
replica the request went through (Ingress, Router, the node's worker), one of them the
failed try that moved it to another node."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
import ray

from sollol_serve.app import worker_deployment_name
from tests.helpers import side_app, wait_until

pytestmark = pytest.mark.integration

APP = "traced"
NODE_ARGS = ["--kind", "ollama", "--models", "llama3.2", "--slots", "2", "--decode-tps", "400", "--load-s", "0"]


@pytest.fixture(scope="module")
def traced(gateway):
    with side_app(gateway, APP, NODE_ARGS, ("t1", "t2"), slots=2,
                  logging={"encoding": "JSON", "every_hop": True},
                  routing={"strategy": "round_robin"}, failover={"backoff_s": 0}) as app:
        yield app


def _replica_lines(request_id: str) -> dict[str, list[dict]]:
    """The JSON log records that carry `request_id`, by the app's deployment that wrote them."""
    serve_logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    found: dict[str, list[dict]] = {}
    for path in serve_logs.glob(f"replica_{APP}_*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if request_id not in line:
                continue
            record = json.loads(line)  # JSON encoding: every line is one object
            if record.get("request_id") == request_id:  # deployment: "<app>_<name>"
                found.setdefault(record["deployment"].removeprefix(f"{APP}_"), []).append(record)
    return found


def _decisions(url: str) -> dict[str, dict]:
    return {d["request_id"]: d for d in httpx.get(url + "/api/routing/decisions?limit=200", timeout=10).json()["decisions"]
            if d.get("request_id")}


def test_a_request_id_is_on_the_answer_the_decision_and_every_replicas_log_lines(traced):
    rid = f"trace-{uuid.uuid4().hex}"
    r = httpx.post(traced.url + "/api/chat", headers={"X-Request-ID": rid}, timeout=30, json={
        "model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": "trace me"}],
        "options": {"num_predict": 4}})
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    routing = r.json()["_sollol_routing"]
    assert routing["request_id"] == rid

    wait_until(lambda: rid in _decisions(traced.url), 20, "the decision logged with its request ID")
    assert _decisions(traced.url)[rid]["node"] == routing["node"]
    worker = worker_deployment_name(routing["node"])
    wait_until(lambda: {"Ingress", "Router", worker} <= _replica_lines(rid).keys(), 30,
               f"the request's lines in the Ingress, Router and {worker} replica logs")


def _stream(url: str, rid: str) -> list[dict]:
    with httpx.stream("POST", url + "/api/chat", headers={"X-Request-ID": rid}, timeout=30, json={
            "model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "fail me over"}],
            "options": {"num_predict": 4}}) as r:
        assert r.status_code == 200 and r.headers["x-request-id"] == rid
        return [json.loads(line) for line in r.iter_lines() if line.strip()]


def test_a_streamed_request_that_fails_over_keeps_its_id_and_logs_the_failed_try(traced):
    traced.nodes["t1"].faults(mode="error", error_status=503)
    try:  # round robin: one of the first two streams is sent to t1 first
        ends = {rid: _stream(traced.url, rid)[-1] for rid in (f"failover-{uuid.uuid4().hex}" for _ in range(2))}
    finally:
        traced.nodes["t1"].faults(mode="none")
    assert all(end["done"] and end["_sollol_routing"]["request_id"] == rid for rid, end in ends.items()), ends
    moved = [rid for rid, end in ends.items()
             if [(a["node"], a["ok"]) for a in end["_sollol_routing"]["attempts"]] == [("t1", False), ("t2", True)]]
    assert moved, ends
    rid = moved[0]

    def failed_try_logged() -> bool:
        return any("try on node t1 failed" in rec["message"] for rec in _replica_lines(rid).get("Ingress", []))

    wait_until(failed_try_logged, 30, "the failed try in the Ingress replica's log with the request ID")
    wait_until(lambda: rid in _decisions(traced.url), 20, "the failed-over decision logged with its request ID")
