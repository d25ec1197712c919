"""Batch jobs without Ray: the SQLite store, the runner (chunks, retries, cancel, resume) and payloads."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from sollol_serve.api.schemas import (
    BatchChatRequest,
    BatchEmbedRequest,
    chat_items,
    job_settings,
)
from sollol_serve.batch.jobs import job_status, results_page
from sollol_serve.batch.runner import BatchRunner, chunked
from sollol_serve.batch.store import SCHEMA, JobStore, Outcome
from sollol_serve.config import BatchConfig
from sollol_serve.protocol import ModelNotFound, NoNodeAvailable
from tests.helpers import wait_for_async

FAST = BatchConfig(concurrency=2, embed_chunk=3, retry_base_s=0.001, retry_max_s=0.002, max_attempts=3)


def run(coro):
    return asyncio.run(coro)


async def _store(tmp_path) -> JobStore:
    return await JobStore.open(tmp_path / "data" / "jobs.sqlite3")


async def _wait_done(runner: BatchRunner, job_id: str) -> None:
    await wait_for_async(lambda: job_id not in runner.tasks, 10, f"job {job_id} finished")


class Node:
    """A fake `send`: records every call's inputs; can fail or hang on demand."""

    def __init__(self, fail: list[Exception] | None = None, hang: bool = False):
        self.calls: list[list] = []
        self.request_ids: list[str] = []
        self.fail = list(fail or [])
        self.hang = hang
        self.cancelled = 0

    async def __call__(self, kind, model, settings, inputs, owner, request_id):
        self.calls.append(list(inputs))
        self.request_ids.append(request_id)
        if self.fail:
            raise self.fail.pop(0)
        if self.hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return [f"{model}:{x}" for x in inputs], "n1"


def test_chunked():
    assert chunked(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]


def test_job_runs_in_chunks_and_records_every_item(tmp_path):
    async def main():
        store = await _store(tmp_path)
        node = Node()
        runner = BatchRunner(store, node, FAST)
        job = await store.create("embed", "m", "alice", {}, [f"t{i}" for i in range(7)], 60)
        runner.start(job)
        await _wait_done(runner, job)
        assert sorted(len(c) for c in node.calls) == [1, 3, 3]
        assert (await store.job(job))["state"] == "completed"
        assert await store.counts(job) == {"pending": 0, "done": 7, "failed": 0}
        results = await store.results(job, 0, 100)
        assert [r["result"] for r in results] == [f"m:t{i}" for i in range(7)]
        # Each chunk's call has its own request ID, kept with each of its items.
        assert sorted(node.request_ids) == [f"{job}/0", f"{job}/3", f"{job}/6"]
        assert [r["request_id"] for r in results] == [f"{job}/{i // 3 * 3}" for i in range(7)]
        assert await store.nodes(job) == {"n1": 7}
        await store.close()

    run(main())


def test_retryable_errors_are_retried_and_refusals_fail_the_items(tmp_path):
    async def main():
        store = await _store(tmp_path)
        busy = Node(fail=[NoNodeAvailable("full"), NoNodeAvailable("full")])
        runner = BatchRunner(store, busy, FAST)
        job = await store.create("embed", "m", "a", {}, ["x"], 60)
        runner.start(job)
        await _wait_done(runner, job)
        assert len(busy.calls) == 3 and await store.counts(job) == {"pending": 0, "done": 1, "failed": 0}

        refused = Node(fail=[ModelNotFound("no such model")])
        runner = BatchRunner(store, refused, FAST)
        job = await store.create("embed", "m", "a", {}, ["x", "y"], 60)
        runner.start(job)
        await _wait_done(runner, job)
        assert len(refused.calls) == 1
        assert [r["error"] for r in await store.results(job, 0, 10)] == ["no such model"] * 2

        stuck = Node(fail=[NoNodeAvailable("down")] * 5)
        runner = BatchRunner(store, stuck, FAST)
        job = await store.create("embed", "m", "a", {}, ["x"], 60)
        runner.start(job)
        await _wait_done(runner, job)
        assert len(stuck.calls) == FAST.max_attempts and (await store.counts(job))["failed"] == 1
        await store.close()

    run(main())


def test_cancel_stops_calls_in_flight_and_takes_no_more(tmp_path):
    async def main():
        store = await _store(tmp_path)
        node = Node(hang=True)
        runner = BatchRunner(store, node, FAST)
        job = await store.create("embed", "m", "a", {}, [str(i) for i in range(30)], 60)
        runner.start(job)
        await wait_for_async(lambda: len(node.calls) >= 2, 10, "both calls in flight")
        assert len(node.calls) == 2  # concurrency 2: both slots hang, so no third call
        await asyncio.wait_for(runner.cancel(job), 10)  # a cancel that left the calls hanging would hang here
        assert node.cancelled == 2 and len(node.calls) == 2
        # Nothing of the job is left to take more: no task but this one.
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert (await store.job(job))["state"] == "cancelled"
        assert (await store.counts(job))["pending"] == 30
        await store.close()

    run(main())


def test_a_restart_resumes_only_pending_items(tmp_path):
    async def main():
        store = await _store(tmp_path)
        job = await store.create("embed", "m", "a", {}, [str(i) for i in range(6)], 60)
        await store.started(job)
        await store.finish_items(job, [Outcome(0, result="done before"), Outcome(4, result="done before")])
        await store.close()

        store = await _store(tmp_path)  # the restarted replica
        node = Node()
        runner = BatchRunner(store, node, FAST)
        assert await runner.resume() == [job]
        await _wait_done(runner, job)
        sent = sorted(x for call in node.calls for x in call)
        assert sent == ["1", "2", "3", "5"]
        results = {r["index"]: r["result"] for r in await store.results(job, 0, 10)}
        assert results[0] == results[4] == "done before" and results[1] == "m:1"
        # an item finished twice keeps its first result
        await store.finish_items(job, [Outcome(1, result="again")])
        assert (await store.results(job, 1, 1))[0]["result"] == "m:1"
        await store.close()

    run(main())


def test_finished_jobs_expire_after_their_ttl(tmp_path):
    async def main():
        store = await _store(tmp_path)
        old = await store.create("embed", "m", "a", {}, ["x"], 10, now=1000.0)
        assert await store.end(old, "completed", now=1000.0)
        assert not await store.end(old, "cancelled", now=1000.0)  # finished stays finished
        assert (await store.job(old))["state"] == "completed"
        live = await store.create("embed", "m", "a", {}, ["x"], 10, now=1000.0)
        assert await store.expire(now=1011.0) == [old]
        assert await store.job(old) is None and await store.job(live) is not None
        assert await store.results(old, 0, 10) == []
        await store.delete(live)  # the DELETE of an ended job
        assert await store.job(live) is None and await store.pending(live) == []
        await store.close()

    run(main())


def test_owner_filter_and_status(tmp_path):
    async def main():
        store = await _store(tmp_path)
        mine = await store.create("embed", "m", "alice", {"priority": 2}, ["a", "b"], 60, now=100.0)
        await store.create("embed", "m", "bob", {}, ["c"], 60, now=101.0)
        assert [j["id"] for j in await store.jobs("alice")] == [mine]
        assert len(await store.jobs()) == 2 and len(await store.jobs(limit=1)) == 1
        assert await store.totals() == {"jobs": {"queued": 2}, "pending_items": 3}
        job = await store.job(mine)
        assert job["request"] == {"priority": 2}
        await store.started(mine, now=110.0)
        await store.finish_items(mine, [Outcome(0, result=[0.1])])
        status = job_status(await store.job(mine), await store.counts(mine), {}, now=112.5)
        assert status["progress"] == {"percent": 50.0, "done": 1, "total": 2}
        assert status["done"] == 1 and status["pending"] == 1
        assert status["duration_s"] == status["duration_seconds"] == 2.5 and status["expires_at"] is None
        # The original SOLLOL's names beside ours: job_id, status.
        assert status["job_id"] == status["id"] == mine and status["status"] == status["state"] == "running"
        await store.close()

    run(main())


def test_payloads():
    embed = BatchEmbedRequest.model_validate({"model": "m", "input": ["a"], "priority": 2, "truncate": True})
    assert job_settings(embed) == {"truncate": True, "priority": 2}
    # The original SOLLOL's body: `documents` for `input`, and metadata kept with the job.
    legacy = BatchEmbedRequest.model_validate({"model": "m", "documents": ["a", "b"], "metadata": {"source": "kb"}})
    assert legacy.input == ["a", "b"] and job_settings(legacy) == {"metadata": {"source": "kb"}}
    with pytest.raises(ValueError, match="not both"):
        BatchEmbedRequest.model_validate({"model": "m", "documents": ["a"], "input": ["b"]})
    with pytest.raises(ValueError):
        BatchEmbedRequest.model_validate({"model": "m", "documents": []})
    with pytest.raises(ValueError):
        BatchEmbedRequest.model_validate({"model": "m", "input": []})
    for unbounded in ({"dimensions": 10**12}, {"model": "m" * 513}):
        with pytest.raises(ValueError):
            BatchEmbedRequest.model_validate({"model": "m", "input": ["a"], **unbounded})
    chat = BatchChatRequest.model_validate({"model": "m", "requests": [
        {"messages": [{"role": "user", "content": "hi"}], "options": {"temperature": 0}, "stream": True}]})
    assert chat_items(chat) == [{"messages": [{"role": "user", "content": "hi"}], "options": {"temperature": 0}}]
    bad = BatchChatRequest.model_validate({"model": "m", "requests": [{"messages": []}]})
    with pytest.raises(ValueError, match=r"requests\[0\]\.messages"):
        chat_items(bad)
    bad = BatchChatRequest.model_validate({"model": "m", "requests": [{"messages": "nope"}]})
    with pytest.raises(ValueError, match=r"requests\[0\]"):
        chat_items(bad)


def test_a_ttl_past_any_calendar_is_refused_and_a_stored_one_does_not_break_the_status():
    with pytest.raises(ValueError, match="ttl_s"):
        BatchEmbedRequest.model_validate({"model": "m", "input": ["a"], "ttl_s": 1e300})
    with pytest.raises(ValueError, match="ttl_s"):
        BatchChatRequest.model_validate({"model": "m", "requests": [{"messages": []}], "ttl_s": 1e12})
    assert BatchEmbedRequest.model_validate({"model": "m", "input": ["a"], "ttl_s": 30 * 86_400}).ttl_s == 2_592_000
    # A row written before the bound (or by hand): the job still reports, without an expiry.
    job = {"id": "j", "kind": "embed", "model": "m", "owner": "o", "state": "completed", "total": 1,
           "created": 100.0, "started": 100.0, "finished": 101.0, "ttl_s": 1e300}
    status = job_status(job, {"done": 1, "failed": 0, "pending": 0}, {"n1": 1}, 200.0)
    assert status["expires_at"] is None and status["finished_at"].startswith("1970-01-01T00:01:41")
    assert status["metadata"] is None  # a row with no stored settings


def test_a_results_page_holds_the_values_in_input_order_and_the_items():
    job = {"id": "j", "state": "completed", "total": 3}
    items = [{"index": 0, "node": "a", "result": [0.1]}, {"index": 1, "node": "b", "error": "boom"},
             {"index": 2, "node": "a", "result": [0.3]}]
    page = results_page(job, items, more=False)
    assert page["results"] == [[0.1], None, [0.3]] and page["items"] == items
    assert page["job_id"] == "j" and page["status"] == "completed" and page["next_offset"] is None
    assert results_page(job, items[:2], more=True)["next_offset"] == 2


def test_a_jobs_file_from_before_request_ids_gains_the_column_and_keeps_its_items(tmp_path):
    path = tmp_path / "data" / "jobs.sqlite3"
    path.parent.mkdir(parents=True)
    old_schema = SCHEMA.replace("    request_id TEXT,\n", "")
    assert "request_id" not in old_schema
    with sqlite3.connect(path) as db:
        db.executescript(old_schema)
        db.execute("INSERT INTO jobs VALUES ('j1', 'embed', 'm', 'alice', 'completed', '{}', 1, 1.0, 1.0, 2.0, 60)")
        db.execute("INSERT INTO items (job, idx, input, state, result, node) VALUES ('j1', 0, '\"a\"', 'done', '[1]', 'n1')")

    async def main():
        store = await JobStore.open(path)
        try:
            return await store.results("j1", 0, 10)
        finally:
            await store.close()

    assert run(main()) == [{"index": 0, "node": "n1", "request_id": None, "result": [1]}]
