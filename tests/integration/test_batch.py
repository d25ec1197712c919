"""Batch jobs through the real gateway: progress, spread over nodes, cancel, and a gateway restart.

A Serve app of its own ("batch") over two slow embedding nodes that count every text they
embed, with its jobs file in a temporary directory; the restart test deletes and redeploys
this app, which is what a gateway restart does to the BatchJobs replica.
"""

from __future__ import annotations

import sqlite3
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from sollol_serve.batch.deployment import jobs_file
from sollol_serve.client import SollolError, connect
from tests.conftest import Gateway
from tests.helpers import deploy_app, side_app, wait_until

pytestmark = pytest.mark.integration

MODEL = "embedder"
# ~40 tokens per text at 400 tokens/s: each 4-text chunk keeps a node busy for ~0.4 s.
NODE_ARGS = ["--kind", "ollama", "--models", f"{MODEL}@0.3", "--slots", "1", "--prefill-tps", "400",
             "--load-s", "0", "--record-inputs"]
APP = "batch"


def _text(tag: str, i: int) -> str:
    return f"{tag} item {i} " + " ".join(f"w{j}" for j in range(36))


@pytest.fixture(scope="module")
def batch_app(gateway, tmp_path_factory):
    with side_app(gateway, APP, NODE_ARGS, ("b1", "b2"), slots=1,
                  # No slot kept back for live traffic: these tests want the batch on both nodes at once.
                  routing={"snapshot_interval_s": 0.2, "reserved_slots": 0},
                  batch={"data_dir": str(tmp_path_factory.mktemp("jobs")), "concurrency": 2, "embed_chunk": 4},
                  cache={"embeddings": False}) as app:  # every text must reach a node: these tests count them
        app.root = gateway.url
        yield app


def _status(url: str, job_id: str) -> dict:
    response = httpx.get(f"{url}/api/batch/jobs/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _submit(url: str, texts: list[str]) -> dict:
    response = httpx.post(f"{url}/api/batch/embed", json={"model": MODEL, "input": texts}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def _times_embedded(app: Gateway) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in app.nodes.values():
        for text, n in node.embedded().items():
            counts[text] = counts.get(text, 0) + n
    return counts


def test_progress_advances_and_results_match_the_nodes(batch_app):
    texts = [_text("progress", i) for i in range(40)]
    seen = []
    with connect(batch_app.url) as sollol:
        vectors = sollol.batch_embed(MODEL, texts, progress=lambda s: seen.append(s["progress"]["percent"]),
                                     poll_s=0.2)
        direct = sollol.embed(MODEL, [texts[0], texts[-1]])
        status = sollol.batch_jobs()[0]
    assert vectors[0] == direct[0] and vectors[-1] == direct[1] and len(vectors) == 40
    assert seen == sorted(seen) and seen[-1] == 100.0
    assert len({p for p in seen if 0 < p < 100}) >= 2, seen  # it was seen moving, not just done
    assert status["state"] == "completed" and status["done"] == 40 and status["failed"] == 0
    assert set(status["nodes"]) == {"b1", "b2"}, status["nodes"]  # spread over both nodes
    assert status["duration_s"] > 0 and status["expires_at"]


def test_cancel_stops_upstream_calls(batch_app):
    job = _submit(batch_app.url, [_text("cancel", i) for i in range(200)])
    wait_until(lambda: _status(batch_app.url, job["id"])["done"] >= 8, 30, "some items done")
    response = httpx.delete(f"{batch_app.url}/api/batch/jobs/{job['id']}", timeout=30)
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    received = {name: node.state()["received"] for name, node in batch_app.nodes.items()}
    time.sleep(2.0)  # several chunks' worth of time: a job still running would have sent more
    assert {name: node.state()["received"] for name, node in batch_app.nodes.items()} == received
    status = _status(batch_app.url, job["id"])
    assert status["state"] == "cancelled" and status["pending"] > 100
    assert status["done"] + status["failed"] + status["pending"] == 200
    assert response.json()["action"] == "cancelled"
    # A job that has ended is deleted by the same DELETE, with its results.
    deleted = httpx.delete(f"{batch_app.url}/api/batch/jobs/{job['id']}", timeout=30)
    assert deleted.status_code == 200 and deleted.json()["action"] == "deleted", deleted.text
    assert httpx.get(f"{batch_app.url}/api/batch/jobs/{job['id']}").status_code == 404
    assert httpx.get(f"{batch_app.url}/api/batch/results/{job['id']}").status_code == 404


def test_a_gateway_restart_mid_job_loses_nothing_and_repeats_no_finished_item(batch_app):
    texts = [_text("restart", i) for i in range(200)]
    job = _submit(batch_app.url, texts)
    wait_until(lambda: _status(batch_app.url, job["id"])["done"] >= 20, 60, "a sixth of the job done")
    serve.delete(APP)  # the gateway goes away mid-job
    with sqlite3.connect(jobs_file(batch_app.config)) as db:
        finished = {idx for (idx,) in db.execute(
            "SELECT idx FROM items WHERE job = ? AND state != 'pending'", (job["id"],))}
    assert 20 <= len(finished) < 200
    deploy_app(batch_app.root, APP, batch_app.config)
    wait_until(lambda: _status(batch_app.url, job["id"])["state"] == "completed", 90, "the resumed job completes")
    status = _status(batch_app.url, job["id"])
    assert status["done"] == 200 and status["failed"] == 0
    with connect(batch_app.url) as sollol:
        results = sollol.batch_results(job["id"])
    assert [r["index"] for r in results] == list(range(200))  # nothing lost, nothing twice
    embedded = _times_embedded(batch_app)
    assert all(embedded[texts[i]] == 1 for i in finished), "an item finished before the restart was redone"
    assert all(embedded.get(t, 0) >= 1 for t in texts)


def test_bad_batch_requests(batch_app):
    url = batch_app.url
    assert httpx.post(f"{url}/api/batch/embed", json={"model": MODEL, "input": []}).status_code == 400
    assert httpx.post(f"{url}/api/batch/embed", json={"model": MODEL, "input": "one"}).status_code == 400
    missing = httpx.post(f"{url}/api/batch/embed", json={"model": "nope", "input": ["x"]})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    assert httpx.post(f"{url}/api/batch/chat", json={"model": MODEL, "requests": [{"messages": []}]}).status_code == 400
    assert httpx.get(f"{url}/api/batch/jobs/batch-unknown").status_code == 404
    assert httpx.delete(f"{url}/api/batch/jobs/batch-unknown").status_code == 404
    assert httpx.get(f"{url}/api/batch/results/batch-unknown?offset=x").status_code == 400
    with connect(url) as sollol, pytest.raises(SollolError) as info:
        sollol.batch_job("batch-unknown")
    assert info.value.status == 404


def test_batch_chat_on_the_shared_gateway(gateway):
    requests = [{"messages": [{"role": "user", "content": f"batch chat {i}"}], "options": {"num_predict": 3}}
                for i in range(6)]
    response = httpx.post(f"{gateway.url}/api/batch/chat", json={"model": "llama3.2", "requests": requests})
    assert response.status_code == 202, response.text
    job = response.json()
    wait_until(lambda: _status(gateway.url, job["id"])["state"] == "completed", 60, "batch chat completes")
    page = httpx.get(f"{gateway.url}/api/batch/results/{job['id']}").json()
    assert [r["index"] for r in page["items"]] == list(range(6))
    assert page["results"] == [r["result"] for r in page["items"]]  # the answers alone, in order
    assert all(r["message"]["content"] and r["eval_count"] == 3 for r in page["results"])
    # A chat item is a chunk of one, with the request ID of its call.
    assert [r["request_id"] for r in page["items"]] == [f"{job['id']}/{i}" for i in range(6)]
    batch = httpx.get(f"{gateway.url}/api/stats", timeout=30).json()["batch"]  # what the dashboard shows
    assert any(j["id"] == job["id"] and j["state"] == "completed" for j in batch["recent"])
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=30).text
    completed = [s.value for f in text_string_to_metric_families(metrics) for s in f.samples
                 if s.name == "sollol_batch_jobs" and s.labels == {"state": "completed"}]
    assert completed and completed[0] >= 1
