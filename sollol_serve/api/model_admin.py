"""Cluster model management (the `admin` permission), in Ollama's own API: `/api/pull` to every
Ollama node (or `nodes: [...]`) as one progress stream naming the node on every line;
`/api/delete` and `/api/copy` on every node that has the model; `/api/create`, `/api/push`
and `/api/blobs/:digest` on one node (`node` in the body or query, else the first healthy
Ollama node). llama-server nodes have no model management and are skipped with a reason."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from sollol_serve.api.body import validated
from sollol_serve.api.model_schemas import CopyRequest, DeleteRequest, OneNodeRequest, PullRequest
from sollol_serve.api.services import Services, authorized, services
from sollol_serve.api.streams import dumps
from sollol_serve.nodes.model_ops import check_digest
from sollol_serve.protocol import NodeError, error_message
from sollol_serve.routing.model_fanout import ModelFanout, RouterInventory, regrouped

router = APIRouter(dependencies=[authorized("admin")])
NDJSON = "application/x-ndjson"
BLOB_PIECE_BYTES = 4 * 2**20  # a blob crosses to the worker in Ray messages of this size


def fanout(svc: Services) -> ModelFanout:
    return ModelFanout(svc.dispatch.workers, RouterInventory(svc.router))


async def _ndjson(lines: AsyncIterator[dict]) -> AsyncIterator[str]:
    try:
        async for line in lines:
            yield dumps(line) + "\n"
    except Exception as exc:  # the stream has begun: its end is an error line, as Ollama's
        yield dumps({"error": error_message(exc)}) + "\n"


async def _answer(lines: AsyncIterator[dict], stream: bool) -> Response:
    """Ollama's two ways: the progress lines, or (`stream: false`) one answer at the end."""
    if stream:
        return StreamingResponse(_ndjson(lines), media_type=NDJSON)
    last: dict = {}
    async for last in lines:
        pass
    if "error" in last:
        raise NodeError(last["error"], 502, retryable=False)
    return JSONResponse(last)


@router.post("/api/pull")
async def pull(request: Request, svc: Services = Depends(services)) -> Response:
    body = validated(await svc.body(request), PullRequest)
    models = fanout(svc)
    targets = await models.plan_pull(body.target, body.nodes)  # a bad node list is an error status, not a stream
    return await _answer(models.pull(body.for_node(), body.target, targets), body.stream)


@router.delete("/api/delete")
async def delete(request: Request, svc: Services = Depends(services)) -> Response:
    body = validated(await svc.body(request), DeleteRequest)
    extra = body.for_node()
    return JSONResponse(await fanout(svc).change("delete", body.target, lambda name: {**extra, "model": name},
                                                 body.nodes))


@router.post("/api/copy")
async def copy(request: Request, svc: Services = Depends(services)) -> Response:
    body = validated(await svc.body(request), CopyRequest)
    return JSONResponse(await fanout(svc).change("copy", body.source,
                                                 lambda name: {"source": name, "destination": body.destination},
                                                 body.nodes))


async def _one_node(op: str, request: Request, svc: Services) -> Response:
    body = validated(await svc.body(request), OneNodeRequest)
    models = fanout(svc)
    node = await models.choose(body.node)
    return await _answer(models.single(op, node, body.for_node()), body.stream)


@router.post("/api/create")
async def create(request: Request, svc: Services = Depends(services)) -> Response:
    return await _one_node("create", request, svc)


@router.post("/api/push")
async def push(request: Request, svc: Services = Depends(services)) -> Response:
    return await _one_node("push", request, svc)


@router.head("/api/blobs/{digest}")
async def has_blob(digest: str, request: Request, svc: Services = Depends(services)) -> Response:
    models = fanout(svc)
    node = await models.choose(request.query_params.get("node"))
    status = await models.has_blob(node, check_digest(digest))
    return Response(status_code=status, headers={"X-SOLLOL-Node": node})


@router.post("/api/blobs/{digest}")
async def upload_blob(digest: str, request: Request, svc: Services = Depends(services)) -> Response:
    """The blob goes to the node that will create the model from it, passed on as it arrives
    (a GGUF of many GB is never held whole)."""
    check_digest(digest)
    models = fanout(svc)
    node = await models.choose(request.query_params.get("node"))
    status = await models.upload_blob(node, digest, regrouped(request.stream(), BLOB_PIECE_BYTES))
    return Response(status_code=status, headers={"X-SOLLOL-Node": node})
