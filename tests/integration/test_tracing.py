"""A request's trace, end to end: the gateway started as `serve run serve_config.yaml` is, with
its `tracing_config` turned on and sending spans to a real trace backend on loopback (Arize
Phoenix, tests/trace_backend.py); each request's trace read back through the backend's own API.

A streamed chat and a chat that fails over (its first node answers 500s) each carry a client's
sampled `traceparent` (the shipped sampling ratio, 0.01, would trace few on its own): each is
one trace continuing the client's: the HTTP request's span holds the Ingress's, which holds
the gateway's admission, decisions (with the Router's handling of each beneath), queue waits
and tries on nodes (with the node's worker's handling beneath), with their attributes. A batch
job submitted with one has its chunks in that trace, each with its decision and try.

Runs before the shared gateway (marker `own_ray`): Serve's tracing config is set once per Serve.
"""

from __future__ import annotations

import json

import httpx
import pytest

from sollol_serve.batch.runner import chunk_request_id
from sollol_serve.sim.process import SimProcess
from tests.helpers import wait_until
from tests.trace_backend import FAILOVER_SIMS, chat_body, failover_chat, phoenix, spans_of, traceparent, traced_gateway

pytestmark = [pytest.mark.integration, pytest.mark.own_ray, pytest.mark.slow]

@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """(gateway URL, Phoenix URL, the nodes) of a `serve run` gateway tracing to Phoenix."""
    workdir = tmp_path_factory.mktemp("tracing")
    sims = {name: SimProcess(name, args).start() for name, args in FAILOVER_SIMS.items()}
    try:
        with phoenix(workdir) as backend, traced_gateway(workdir, sims, backend) as url:
            yield url, backend, sims
    finally:
        for sim in sims.values():
            sim.stop()


def trace_of(backend: str, trace_id: str, counts: dict[str, int], client_parent: str) -> list[dict]:
    """The trace's spans once the backend holds at least `counts` of the spans whose names
    start so, and the parent of every span but the one continuing the client's: each process
    sends its spans in batches every few seconds, the proxy's (the root) among them, so a
    request that ends within a second may be in the backend without its root for a while."""
    found: list[dict] = []

    def complete() -> bool:
        nonlocal found
        found = [s for s in spans_of(backend) if s["context"]["trace_id"] == trace_id]
        ids = {s["context"]["span_id"] for s in found} | {client_parent}
        return (all(sum(s["name"].startswith(prefix) for s in found) >= n for prefix, n in counts.items())
                and all(s["parent_id"] in ids for s in found))

    wait_until(complete, 60, f"trace {trace_id} in the backend with {counts}, every span's parent in it",
               every_s=1.0)
    return found


def ancestors(span: dict, by_id: dict[str, dict]) -> list[dict]:
    out = []
    while (parent := by_id.get(span["parent_id"])) is not None:
        out.append(parent)
        span = parent
    return out


def assert_one_tree(spans: list[dict], client_parent: str) -> dict[str, dict]:
    """One tree continuing the client's span: a single root, whose parent is the client's."""
    by_id = {s["context"]["span_id"]: s for s in spans}
    roots = [s for s in spans if s["parent_id"] not in by_id]
    assert len(roots) == 1, [(s["name"], s["parent_id"]) for s in roots]
    assert roots[0]["parent_id"] == client_parent
    return by_id


def ours(spans: list[dict], name: str) -> list[dict]:
    return sorted((s for s in spans if s["name"] == name), key=lambda s: s["start_time"])


def test_a_streamed_chat_is_one_trace_from_the_proxy_to_the_node(traced):
    url, backend, _ = traced
    header, trace_id = traceparent()
    with httpx.stream("POST", url + "/api/chat", json=chat_body(stream=True), timeout=60,
                      headers={"traceparent": header, "X-Request-ID": "traced-stream"}) as response:
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[-1]["done"] is True
    client = header.split("-")[2]
    spans = trace_of(backend, trace_id, {"sollol.admission": 1, "sollol.decision": 1, "sollol.queue": 1,
                                         "sollol.attempt": 1, "replica_handle_request Router decide": 1,
                                         "replica_handle_request OllamaWorker-": 1}, client)
    by_id = assert_one_tree(spans, client)
    (attempt,) = ours(spans, "sollol.attempt")
    (decision,) = ours(spans, "sollol.decision")
    (queue,) = ours(spans, "sollol.queue")
    assert queue["parent_id"] == decision["context"]["span_id"]
    root = next(s for s in spans if s["parent_id"] not in by_id)
    assert root["attributes"]["http.route"] == "/api/chat"  # the HTTP request's span holds it all
    ingress = next(s for s in ancestors(attempt, by_id) if s["attributes"].get("sollol.request_id"))
    assert ingress["attributes"]["sollol.request_id"] == "traced-stream"
    assert ingress in ancestors(decision, by_id) and root in ancestors(ingress, by_id)
    # The Router's handling of the decision, and the node's worker's of the try, in their own
    # processes, beneath the decision and the try.
    (routed,) = ours(spans, "replica_handle_request Router decide")
    assert decision in ancestors(routed, by_id)
    (worked,) = [s for s in spans if s["name"].startswith("replica_handle_request OllamaWorker-")]
    assert attempt in ancestors(worked, by_id)
    assert worked["name"] == f"replica_handle_request OllamaWorker-{attempt['attributes']['sollol.node']} stream"
    a = attempt["attributes"]
    assert a["sollol.node"] == decision["attributes"]["sollol.node"] and a["sollol.stream"] is True
    assert a["sollol.tokens_out"] == 16 and a["sollol.ttfb_s"] > 0 and "sollol.node_decode_s" in a
    assert attempt["status_code"] != "ERROR"
    assert decision["attributes"]["sollol.candidates"] and "sollol.predicted_s" in decision["attributes"]


def test_a_chat_that_fails_over_shows_both_tries_in_one_trace(traced):
    url, backend, sims = traced
    response, header = failover_chat(url, sims)
    trace_id = header.split("-")[1]
    client = header.split("-")[2]
    spans = trace_of(backend, trace_id, {"sollol.decision": 2, "sollol.queue": 2, "sollol.attempt": 2}, client)
    attempts = ours(spans, "sollol.attempt")
    assert_one_tree(spans, client)
    assert [a["attributes"]["sollol.node"] for a in attempts] == ["quick", "steady"]
    assert attempts[0]["status_code"] == "ERROR" and attempts[1]["status_code"] != "ERROR"
    assert "500" in attempts[0]["status_message"]  # what the node said
    request_id = response.json()["_sollol_routing"]["request_id"]
    assert request_id == "failed-over" and any(s["attributes"].get("sollol.request_id") == request_id for s in spans)
    decisions = ours(spans, "sollol.decision")
    assert [d["attributes"]["sollol.node"] for d in decisions] == ["quick", "steady"]
    assert decisions[1]["attributes"]["sollol.tried"] == ["quick"]


def test_a_traced_batch_jobs_chunks_are_in_its_submits_trace_each_with_its_decision_and_try(traced):
    """A chunk runs after the submit has been answered, in the runner's task, which carries the
    submit's trace: a client that traces its submit sees every item's way to a node."""
    url, backend, _ = traced
    header, trace_id = traceparent()
    requests = [{"messages": [{"role": "user", "content": f"item {i}"}], "options": {"num_predict": 4}}
                for i in range(2)]
    submitted = httpx.post(url + "/api/batch/chat", json={"model": "llama3.2", "requests": requests},
                           headers={"traceparent": header}, timeout=60)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    wait_until(lambda: httpx.get(f"{url}/api/batch/jobs/{job_id}", timeout=30).json()["state"] == "completed",
               120, f"batch job {job_id} completed")
    client = header.split("-")[2]
    spans = trace_of(backend, trace_id, {"sollol.batch_chunk": 2, "sollol.decision": 2, "sollol.attempt": 2}, client)
    by_id = assert_one_tree(spans, client)
    chunks = ours(spans, "sollol.batch_chunk")
    assert sorted(c["attributes"]["sollol.request_id"] for c in chunks) == sorted(
        chunk_request_id(job_id, i) for i in range(2))
    for chunk in chunks:
        a = chunk["attributes"]
        assert (a["sollol.kind"], a["sollol.items"], a["sollol.model"]) == ("chat", 1, "llama3.2")
        assert chunk["status_code"] != "ERROR"
    for name in ("sollol.decision", "sollol.attempt"):
        beneath = [next((c for c in chunks if c in ancestors(s, by_id)), None) for s in ours(spans, name)]
        assert None not in beneath and len(set(id(c) for c in beneath)) == 2  # one of each under each chunk
