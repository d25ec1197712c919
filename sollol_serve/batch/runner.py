"""Running batch jobs: a job's pending items go out in chunks through the router, a bounded
number at a time across all jobs, and each finished chunk is written before the next is taken.

Retryable failures (the cluster is full or every node failed: 429, 502, 503, 504) wait and try
again, since a batch may outlive a busy spell; a request the cluster refuses as such (400,
404, 413) fails its items at once. Cancelling a job cancels its calls in flight.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable

from sollol_serve.batch.store import JobStore, Outcome
from sollol_serve.config import BatchConfig
from sollol_serve.protocol import GatewayError, error_message, unwrap
from sollol_serve.routing.failover import full_jitter_s

logger = logging.getLogger(__name__)

RETRYABLE = frozenset({429, 502, 503, 504})
# (kind, model, job request, inputs of one chunk, owner, request ID) -> (one result per input, the node that answered)
Send = Callable[[str, str, dict, list, str, str], Awaitable[tuple[list, str]]]


def chunk_request_id(job_id: str, first_index: int) -> str:
    """The request ID of a chunk's call: its job and first item, so that its routing decision
    and log lines are found from a result (a retry of the chunk is the same request)."""
    return f"{job_id}/{first_index}"


def chunked(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def chunk_size(kind: str, config: BatchConfig) -> int:
    """Embeddings go many inputs to a call (as Ollama's /api/embed takes them); chats one each."""
    return config.embed_chunk if kind == "embed" else 1


def is_retryable(exc: BaseException) -> bool:
    return not isinstance(exc, GatewayError) or exc.status in RETRYABLE


class BatchRunner:
    def __init__(self, store: JobStore, send: Send, config: BatchConfig):
        self.store, self.send, self.config = store, send, config
        self.slots = asyncio.Semaphore(config.concurrency)  # upstream calls in flight, all jobs
        self.tasks: dict[str, asyncio.Task] = {}
        self.rng = random.Random()

    def start(self, job_id: str) -> None:
        self.tasks[job_id] = asyncio.create_task(self._run(job_id))
        self.tasks[job_id].add_done_callback(lambda _: self.tasks.pop(job_id, None))

    async def resume(self) -> list[str]:
        """After a restart: run again every job that had not finished (only its pending items)."""
        jobs = await self.store.unfinished()
        for job_id in jobs:
            self.start(job_id)
        return jobs

    async def cancel(self, job_id: str) -> None:
        task = self.tasks.pop(job_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.store.end(job_id, "cancelled")

    async def _run(self, job_id: str) -> None:
        job = await self.store.job(job_id)
        if job is None:
            return
        await self.store.started(job_id)
        chunks = deque(chunked(await self.store.pending(job_id), chunk_size(job["kind"], self.config)))
        workers = min(self.config.concurrency, len(chunks))
        try:
            await asyncio.gather(*(self._work(job, chunks) for _ in range(workers)))
        except Exception:  # not cancellation (a BaseException): that leaves the state to `cancel`
            logger.exception("batch job %s failed", job_id)
            await self.store.end(job_id, "failed")
            return
        await self.store.end(job_id, "completed")

    async def _work(self, job: dict, chunks: deque) -> None:
        while chunks:
            chunk = chunks.popleft()
            outcomes = await self._process(job, chunk)
            await self.store.finish_items(job["id"], outcomes)

    async def _process(self, job: dict, chunk: list[tuple[int, object]]) -> list[Outcome]:
        """One chunk's outcomes: its results, or its error once it is not worth retrying."""
        indexes = [idx for idx, _ in chunk]
        request_id = chunk_request_id(job["id"], indexes[0])
        failures = 0
        while True:
            try:
                async with self.slots:
                    results, node = await self.send(job["kind"], job["model"], job["request"], [x for _, x in chunk],
                                                    job["owner"], request_id)
                return [Outcome(idx, result=r, node=node, request_id=request_id)
                        for idx, r in zip(indexes, results, strict=True)]
            except Exception as exc:
                message = error_message(exc)
                failures += 1
                if not is_retryable(unwrap(exc)) or failures >= self.config.max_attempts:
                    return [Outcome(idx, error=message, request_id=request_id) for idx in indexes]
                logger.info("batch request %s: retrying the chunk after %s", request_id, message)
                await asyncio.sleep(full_jitter_s(failures, self.config.retry_base_s, self.config.retry_max_s,
                                                  self.rng))
