"""The admin surface (the `admin` permission): nodes at run time, model warm-up, shard
groups, and forgetting cached answers."""

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from sollol_serve.api import schemas
from sollol_serve.api.body import validated
from sollol_serve.api.services import Services, authorized, services
from sollol_serve.api.streams import events
from sollol_serve.config import NodeConfig

router = APIRouter(dependencies=[authorized("admin")])


@router.get("/api/admin/nodes")
async def admin_nodes(svc: Services = Depends(services)) -> Response:
    return JSONResponse({"nodes": [n.as_json() for n in await svc.router.nodes.remote()]})


@router.post("/api/admin/nodes")
async def add_node(request: Request, svc: Services = Depends(services)) -> Response:
    node = await svc.body(request)
    validated(node, NodeConfig)
    return JSONResponse(await svc.router.add_node.remote(node), status_code=201)


@router.post("/api/admin/nodes/{name}/drain")
async def drain_node(name: str, svc: Services = Depends(services)) -> Response:
    """No new work for the node; what it has runs to the end."""
    return JSONResponse({"node": await svc.router.drain_node.remote(name)})


@router.post("/api/admin/nodes/{name}/undrain")
async def undrain_node(name: str, svc: Services = Depends(services)) -> Response:
    return JSONResponse({"node": await svc.router.drain_node.remote(name, False)})


@router.delete("/api/admin/nodes/{name}")
async def remove_node(name: str, svc: Services = Depends(services)) -> Response:
    return JSONResponse(await svc.router.remove_node.remote(name), status_code=202)


@router.post("/api/admin/warm")
async def warm(request: Request, svc: Services = Depends(services)) -> Response:
    """Load a model on nodes now (before traffic needs it): NDJSON progress, a line per node."""
    body = validated(await svc.model_body(request), schemas.WarmRequest)
    progress = svc.router.warm.options(stream=True).remote(body.model, body.nodes, body.keep_alive)
    first = await progress.__anext__()  # an unknown model or node is an error status, not a stream
    return StreamingResponse(events(first, progress), media_type="application/x-ndjson")


@router.get("/api/shards")
async def shards(svc: Services = Depends(services)) -> Response:
    return JSONResponse({"shards": await svc.router.shards.remote()})


@router.post("/api/shards/{model:path}/start")
async def start_shard(model: str, svc: Services = Depends(services)) -> Response:
    """Start the model's group now (it also starts on demand) and wait until it serves."""
    return JSONResponse({"shard": await svc.router.shard_action.remote(model, "start")})


@router.post("/api/shards/{model:path}/stop")
async def stop_shard(model: str, svc: Services = Depends(services)) -> Response:
    return JSONResponse({"shard": await svc.router.shard_action.remote(model, "stop")})


@router.delete("/api/cache")
async def clear_cache(svc: Services = Depends(services)) -> Response:
    return JSONResponse({"removed": await svc.cache.invalidate.remote()})


@router.delete("/api/cache/{model:path}")
async def invalidate_model(model: str, svc: Services = Depends(services)) -> Response:
    """Forget one model's answers, e.g. after the model was pulled again with new weights."""
    return JSONResponse({"removed": await svc.cache.invalidate.remote(model)})
