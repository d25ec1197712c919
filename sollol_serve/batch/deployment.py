"""The BatchJobs deployment: one replica, on the head node, that owns the jobs file.

Jobs are profiled as live requests are and go through the same Router, at low priority, so they
fill the cluster's spare slots and yield to interactive traffic. On start the replica resumes
every job that had not finished (a gateway restart, or Serve replacing a dead replica).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from ray import serve
from ray.serve.handle import DeploymentHandle

from sollol_serve.analysis.output_lengths import OutputLengths
from sollol_serve.analysis.profile import profile_request
from sollol_serve.batch.jobs import RESULTS_PAGE_MAX, job_status, results_page
from sollol_serve.batch.runner import BatchRunner
from sollol_serve.batch.store import UNFINISHED, JobStore
from sollol_serve.config import GatewayConfig, data_dir
from sollol_serve.observability.tracing import span
from sollol_serve.protocol import NodeRequest, NotFound
from sollol_serve.routing.dispatch import Dispatcher
from sollol_serve.routing.links import ServeRouterLink, WorkerRegistry, this_replica

logger = logging.getLogger(__name__)

EXPIRE_EVERY_S = 60.0


def jobs_file(config: GatewayConfig) -> Path:
    return Path(data_dir(config.batch)) / f"{config.state_actor_name}-batch.sqlite3"


@serve.deployment(num_replicas=1, max_ongoing_requests=256,
                  # The jobs file lives on the head node's disk, which outlives the other hosts.
                  ray_actor_options={"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}})
class BatchJobs:
    async def __init__(self, router: DeploymentHandle, workers: dict[str, DeploymentHandle], config: dict):
        self.config = GatewayConfig.model_validate(config)
        self.lengths = OutputLengths(self.config, background=False)  # asked only while jobs run
        self.dispatch = Dispatcher(ServeRouterLink(router, this_replica()), WorkerRegistry(workers, self.config.state_actor_name),
                                   self.config.failover)
        self.store = await JobStore.open(jobs_file(self.config))
        self.runner = BatchRunner(self.store, self._send, self.config.batch)
        await self.runner.resume()
        self._expirer = asyncio.create_task(self._expire_loop())

    async def _send(self, kind: str, model: str, settings: dict, inputs: list, owner: str,
                    request_id: str) -> tuple[list, str]:
        """One chunk through the router, as the Ollama request a client would have sent, in
        its owner's fair share."""
        settings = dict(settings)
        priority = settings.pop("priority", None) or self.config.batch.priority
        settings.pop("metadata", None)  # the caller's labels for the job, not for the node
        if kind == "embed":
            op, body = "embed", {**settings, "model": model, "input": inputs}
        else:
            op, body = "chat", {**inputs[0], "model": model, "stream": False}
        profile = profile_request("ollama", op, body, priority, await self.lengths.fresh())
        profile.app, profile.share = owner, self.config.security.share_of(owner)
        # A cancelled job cancels this call, and with it the node's work. A chunk's span, with
        # its decisions and tries beneath, is in the trace of the submit that made the job (the
        # runner's task carries its context); a job resumed after a restart has none, and each
        # of its chunks is a trace of its own, sampled as a request is.
        with span("sollol.batch_chunk", request_id=request_id, kind=kind, model=model, app=owner,
                  items=len(inputs), priority=priority):
            routed = await self.dispatch.call(profile, NodeRequest(api="ollama", op=op, body=body, stream=False,
                                                                   model=model, request_id=request_id))
        return (routed.body["embeddings"] if kind == "embed" else [routed.body]), routed.node

    async def _expire_loop(self) -> None:
        while True:
            try:
                await self.store.expire()
            except Exception:  # a locked or full disk must not end expiry for good
                logger.exception("expiring batch jobs failed")
            await asyncio.sleep(EXPIRE_EVERY_S)

    async def _owned(self, job_id: str, owner: str | None) -> dict:
        """The job, if it exists and `owner` may see it (None: an admin sees every job)."""
        job = await self.store.job(job_id)
        if job is None or owner is not None and job["owner"] != owner:
            raise NotFound(f"batch job '{job_id}' not found")
        return job

    async def _status(self, job: dict) -> dict:
        counts, nodes = await asyncio.gather(self.store.counts(job["id"]), self.store.nodes(job["id"]))
        return job_status(job, counts, nodes, time.time())

    # -- called by the ingress ----------------------------------------------------------
    async def submit(self, kind: str, model: str, owner: str, settings: dict, inputs: list,
                     ttl_s: float | None) -> dict:
        job_id = await self.store.create(kind, model, owner, settings, inputs, ttl_s or self.config.batch.ttl_s)
        self.runner.start(job_id)
        return await self.status(job_id, None)

    async def status(self, job_id: str, owner: str | None) -> dict:
        return await self._status(await self._owned(job_id, owner))

    async def list_jobs(self, owner: str | None, limit: int = -1) -> list[dict]:
        """Newest first; `limit` -1 for all."""
        return [await self._status(job) for job in await self.store.jobs(owner, limit)]

    async def summary(self, recent: int = 10) -> dict:
        """For the dashboard and /metrics: jobs per state, items to do, the latest jobs."""
        totals = await self.store.totals()
        return {**totals, "recent": [await self._status(job) for job in await self.store.jobs(limit=recent)]}

    async def results(self, job_id: str, owner: str | None, offset: int, limit: int) -> dict:
        job = await self._owned(job_id, owner)
        rows = await self.store.results(job_id, offset, min(limit, RESULTS_PAGE_MAX))
        more = len(rows) == min(limit, RESULTS_PAGE_MAX)
        return results_page(job, rows, more)

    async def cancel_or_delete(self, job_id: str, owner: str | None) -> dict:
        """`DELETE` of a job: an unfinished one is cancelled (its calls in flight too) and kept
        with what it finished; a finished one is deleted with its results. The answer says which."""
        job = await self._owned(job_id, owner)
        if job["state"] in UNFINISHED:
            await self.runner.cancel(job_id)
            return {**await self.status(job_id, None), "action": "cancelled"}
        status = await self._status(job)
        await self.store.delete(job_id)
        return {**status, "action": "deleted"}
