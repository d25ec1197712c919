"""The operations surface: health, nodes, queue, stats, routing decisions, applications, alerts,
the last hour's timeline, cache stats and Prometheus metrics (the `stats` permission; /health and /api/health need only a valid key),
and the original SOLLOL's /api/health and /api/dashboard."""

import asyncio

from fastapi import APIRouter, Depends, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse, Response

from sollol_serve import __version__
from sollol_serve.api.body import query_int, query_number
from sollol_serve.api.services import Services, authorized, services
from sollol_serve.api.visibility import is_admin, shown_nodes, shown_shards
from sollol_serve.names import host_port
from sollol_serve.observability.activity import MAX_DECISIONS
from sollol_serve.observability.metrics import render
from sollol_serve.observability.summary import dashboard_summary, health_summary

router = APIRouter(dependencies=[authorized("stats")])
health_router = APIRouter(dependencies=[authorized(None)])


@health_router.get("/health")
async def health(svc: Services = Depends(services)) -> Response:
    """ok, degraded (a gateway process is being restarted: which, under `gateway`), or 503
    with no healthy node."""
    nodes, gateway = await asyncio.gather(svc.router.nodes.remote(), svc.router.recovery.remote())
    healthy = sum(1 for n in nodes if n.healthy)
    recovering = gateway["state_actor"] != "ok" or bool(gateway["workers_restarting"])
    status = "no healthy node" if not healthy else "degraded" if recovering else "ok"
    return JSONResponse({"status": status, "nodes": len(nodes), "healthy": healthy, "gateway": gateway},
                        status_code=200 if healthy else 503)


@health_router.get("/api/health")
async def sollol_health(svc: Services = Depends(services)) -> Response:
    """The original SOLLOL's health check, which its clients use to detect it (`service`)."""
    summary = health_summary(await svc.router.nodes.remote(), __version__)
    return JSONResponse(summary, status_code=503 if summary["status"] == "unhealthy" else 200)


@router.get("/api/nodes")
async def nodes(request: Request, svc: Services = Depends(services)) -> Response:
    nodes = [n.as_json() for n in await svc.router.nodes.remote()]
    return JSONResponse({"nodes": shown_nodes(nodes, request.state.principal)})


@router.get("/api/queue")
async def queue(svc: Services = Depends(services)) -> Response:
    return JSONResponse({"queue": (await svc.router.queue_stats.remote()).as_json()})


@router.get("/api/cache")
async def cache_stats(svc: Services = Depends(services)) -> Response:
    return JSONResponse({"cache": await svc.cache.stats.remote()})


@router.get("/metrics")
async def metrics_text(svc: Services = Depends(services)) -> Response:
    """Prometheus text format: the whole app's counts (merged from every replica) and gauges."""
    book, apps, alerts, nodes, queue, shards, cache, batch = await asyncio.gather(
        svc.metrics_book.snapshot.remote(), svc.metrics_book.application_counters.remote(),
        svc.metrics_book.alert_gauges.remote(), svc.router.nodes.remote(), svc.router.queue_stats.remote(),
        svc.router.shards.remote(), svc.cache.stats.remote(), svc.batch.summary.remote(0))
    return Response(render(book, nodes, queue, shards, cache, batch, apps, alerts), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/stats")
async def stats(request: Request, svc: Services = Depends(services)) -> Response:
    """What the dashboard shows now, as JSON: nodes, queue, shard groups, totals, cache, batch."""
    nodes, queue, shards, book, cache, batch = await asyncio.gather(
        svc.router.nodes.remote(), svc.router.queue_stats.remote(), svc.router.shards.remote(),
        svc.metrics_book.snapshot.remote(), svc.cache.stats.remote(), svc.batch.summary.remote())
    totals = {"requests": sum(book.requests.values()),
              "errors": sum(n for key, n in book.requests.items() if int(key[3]) >= 400),
              "retries": sum(book.retries.values()), "hedges": sum(book.hedges.values())}
    principal = request.state.principal
    return JSONResponse({"nodes": shown_nodes([n.as_json() for n in nodes], principal), "queue": queue.as_json(),
                         "shards": shown_shards(shards, principal),
                         "totals": totals, "cache": cache, "batch": batch})


@router.get("/api/timeline")
async def timeline(request: Request, svc: Services = Depends(services)) -> Response:
    """The last hour in 10 s intervals (since `?since=<unix s>`): rate, latency percentiles,
    tokens/s and load per node, queue depth and wait by priority, predicted vs actual seconds."""
    since = query_number(request, "since", 0.0)
    return JSONResponse(await svc.metrics_book.timeline_since.remote(since))


@router.get("/api/applications")
async def applications(svc: Services = Depends(services)) -> Response:
    """Every application that sent requests: totals, live for the last minute, and its fair
    share of the queue (share, waiting now, refused over its part, waits of its served requests)."""
    shown, queue = await asyncio.gather(svc.metrics_book.applications_json.remote(), svc.router.queue_stats.remote())
    for entry in shown["applications"]:
        entry["fair_share"] = queue.by_application.get(entry["name"]) or {
            "share": svc.config.security.share_of(entry["name"]), "waiting": 0, "refused": 0}
    return JSONResponse(shown)


@router.get("/api/alerts")
async def alerts(svc: Services = Depends(services)) -> Response:
    """Active alerts (critical first) and the recently ended ones, judged from every request's
    tries and the Routers' samples of the nodes, queues and shard groups (config `alerts:`)."""
    return JSONResponse(await svc.metrics_book.alerts_json.remote())


@router.get("/api/dashboard")
async def dashboard_data(request: Request, svc: Services = Depends(services)) -> Response:
    """The original SOLLOL's dashboard data: hosts with latency, success rate and load."""
    nodes, book, queue = await asyncio.gather(svc.router.nodes.remote(), svc.metrics_book.snapshot.remote(),
                                              svc.router.queue_stats.remote())
    admin = is_admin(request.state.principal)
    return JSONResponse(dashboard_summary(nodes, book, queue, lambda n: host_port(n.url) if admin else n.name))


@router.get("/api/routing/decisions")
async def decisions(request: Request, svc: Services = Depends(services)) -> Response:
    """The most recent routing decisions, newest first, with their reasons and candidates."""
    limit = max(1, min(query_int(request, "limit", 50), MAX_DECISIONS))
    return JSONResponse({"decisions": await svc.metrics_book.decisions.remote(limit)})
