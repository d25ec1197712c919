"""The batch surface (the `batch` permission): submit embedding or chat jobs, follow them,
page through their results, cancel them. A caller sees its own jobs; an admin sees all."""

import json

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from sollol_serve.analysis.profile import estimate_tokens
from sollol_serve.api.auth import Principal
from sollol_serve.api.body import PayloadTooLarge, query_int, validated
from sollol_serve.api.ratelimit import RateLimited
from sollol_serve.api.schemas import BatchChatRequest, BatchEmbedRequest, chat_items, job_settings
from sollol_serve.api.services import Services, authorized, services
from sollol_serve.batch.jobs import RESULTS_PAGE_MAX
from sollol_serve.protocol import BadRequest, ModelNotFound

router = APIRouter()
caller = authorized("batch")


def job_owner(principal: Principal) -> str | None:
    """Whose batch jobs a caller may see: its own, or (admin) everyone's."""
    return None if "admin" in principal.permissions else principal.name


async def submit(request: Request, svc: Services, principal: Principal, kind: str,
                 schema: type[BaseModel]) -> Response:
    job = validated(await svc.model_body(request), schema)
    try:
        inputs = job.input if kind == "embed" else chat_items(job)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    limit = svc.config.batch.max_items
    if len(inputs) > limit:
        raise PayloadTooLarge(f"a batch job takes at most {limit} items; this one has {len(inputs)}")
    if not await svc.router.knows.remote(job.model):  # every item would fail: refuse it up front
        raise ModelNotFound(f"model '{job.model}' not found on any node")
    if principal.name in svc.limited:  # the key pays for every item, and up front
        tokens = estimate_tokens(json.dumps(inputs, ensure_ascii=False))
        refused = await svc.limiter.admit_batch(principal.name, len(inputs), tokens)
        if refused:
            raise RateLimited(refused, retry_after_s=60)
    settings = job_settings(job)
    if settings.get("priority", 0) > principal.max_priority:
        settings["priority"] = principal.max_priority  # the key may not ask higher
    status = await svc.batch.submit.remote(kind, job.model, principal.name, settings, inputs, job.ttl_s)
    return JSONResponse(status, status_code=202)


@router.post("/api/batch/embed")
async def batch_embed(request: Request, svc: Services = Depends(services), principal: Principal = caller) -> Response:
    return await submit(request, svc, principal, "embed", BatchEmbedRequest)


@router.post("/api/batch/chat")
async def batch_chat(request: Request, svc: Services = Depends(services), principal: Principal = caller) -> Response:
    return await submit(request, svc, principal, "chat", BatchChatRequest)


@router.get("/api/batch/jobs")
async def batch_jobs(request: Request, svc: Services = Depends(services), principal: Principal = caller) -> Response:
    """Newest first; `?limit=N` for the latest N."""
    limit = query_int(request, "limit", 0) or -1  # none (or 0): every job
    return JSONResponse({"jobs": await svc.batch.list_jobs.remote(job_owner(principal), limit)})


@router.get("/api/batch/jobs/{job_id}")
async def batch_job(job_id: str, svc: Services = Depends(services), principal: Principal = caller) -> Response:
    return JSONResponse(await svc.batch.status.remote(job_id, job_owner(principal)))


@router.get("/api/batch/results/{job_id}")
async def batch_results(request: Request, job_id: str, svc: Services = Depends(services),
                        principal: Principal = caller) -> Response:
    """Finished items in index order, a page at a time (`offset` = the next index wanted)."""
    offset, limit = query_int(request, "offset", 0), max(1, query_int(request, "limit", RESULTS_PAGE_MAX))
    return JSONResponse(await svc.batch.results.remote(job_id, job_owner(principal), offset, limit))


@router.delete("/api/batch/jobs/{job_id}")
async def cancel_or_delete_batch_job(job_id: str, svc: Services = Depends(services),
                                     principal: Principal = caller) -> Response:
    """Cancels a job that runs (`"action": "cancelled"`), deletes one that ended (`"deleted"`)."""
    return JSONResponse(await svc.batch.cancel_or_delete.remote(job_id, job_owner(principal)))
