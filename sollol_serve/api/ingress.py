"""The Ingress deployment: the Ollama and OpenAI HTTP APIs of the gateway.

It parses and validates, asks the Analyzer for a profile, hands the request to the Router and
writes the answer out: JSON, NDJSON (Ollama streams) or SSE (OpenAI streams), chunk by chunk
as they arrive. Errors are written in the API's own format.
"""


import asyncio
import functools
import html
import json
import string
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources

import ray
from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from sollol_serve import __version__
from sollol_serve.analysis.deployment import OutputLengths
from sollol_serve.analysis.profile import parse_priority, profile_request
from sollol_serve.api import schemas
from sollol_serve.api.auth import (
    SESSION_COOKIE,
    SESSION_TTL_S,
    Authenticator,
    Principal,
    check_bind,
)
from sollol_serve.api.errors import error_response
from sollol_serve.api.middleware import PoweredByHeader
from sollol_serve.api.ratelimit import RateLimited, rate_limiter, tokens_used
from sollol_serve.api.schemas import (
    BatchChatRequest,
    BatchEmbedRequest,
    chat_items,
    job_settings,
)
from sollol_serve.cache.actor import cache_actor
from sollol_serve.cache.policy import cache_key, cacheable
from sollol_serve.cache.store import Cached
from sollol_serve.config import GatewayConfig, NodeConfig, Permission
from sollol_serve.observability.activity import MAX_DECISIONS, decision
from sollol_serve.observability.metrics import RequestMetrics, render
from sollol_serve.observability.metrics_actor import metrics_actor
from sollol_serve.protocol import (
    Api,
    BadRequest,
    GatewayError,
    ModelNotFound,
    NodeRequest,
    Operation,
    StreamEnd,
    error_message,
    unwrap,
)
from sollol_serve.routing.dispatch import Dispatcher
from sollol_serve.routing.links import ServeRouterLink, WorkerRegistry

app = FastAPI(title="sollol_serve", version=__version__, docs_url="/docs", redoc_url=None)
app.add_middleware(PoweredByHeader)


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"


def api_path(request: Request) -> str:
    """The path without the app's route prefix: it decides the API's error format."""
    path, root = request.url.path, request.scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    return error_response(api_path(request), exc.status_code, str(exc.detail))


def _dumps(payload: dict) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _gateway_error(request: Request, exc: BaseException) -> Response:
    error = unwrap(exc)
    if isinstance(error, GatewayError):
        headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s else None
        return error_response(api_path(request), error.status, error.message, error.code, headers)
    raise exc


async def serve_http_host() -> str:
    """The host Serve's HTTP ingress binds, as configured (http_options.host)."""
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    return (await controller.get_http_config.remote()).host


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return f"invalid request: {where}: {first.get('msg')}"


# Everything the routes use is defined above the class: serve.ingress(app) pickles the app
# (routes and what they reference) when the class is defined.
def _version_key(version: str) -> tuple:
    parts = []
    for piece in version.split("-", 1)[0].split("."):
        parts.append(int(piece) if piece.isdigit() else 0)
    return tuple(parts)


@functools.cache
def _page(name: str) -> str:
    return resources.files("sollol_serve.observability").joinpath(name).read_text()


def dashboard_page() -> str:
    """The live dashboard: one static page that polls /api/stats and /api/routing/decisions."""
    return _page("dashboard.html")


def login_page(root: str, message: str, status: int) -> HTMLResponse:
    """The dashboard's login form (when keys are on and the browser has no session)."""
    body = string.Template(_page("login.html")).substitute(action=html.escape(f"{root}/dashboard/login"),
                                                           message=html.escape(message))
    return HTMLResponse(body, status_code=status)


def session_of(request: Request) -> str | None:
    """The session cookie, honoured only on reads: a forged cross-site POST carries it too."""
    return request.cookies.get(SESSION_COOKIE) if request.method in ("GET", "HEAD") else None


METRICS_FLUSH_S = 1.0


def cached_routing(hit: Cached, lookup_s: float) -> dict:
    """`_sollol_routing` of an answer from the cache: which node computed it, and that none was called."""
    return {"node": hit.node, "cache": "hit", "strategy": "cache", "attempts": [], "queue_wait_ms": 0.0,
            "routing_ms": round(lookup_s * 1000, 3),
            "reasoning": "answered from the response cache: same model, input and options as an earlier request"}


def job_owner(principal: Principal) -> str | None:
    """Whose batch jobs a caller may see: its own, or (admin) everyone's."""
    return None if "admin" in principal.permissions else principal.name


def query_int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name, str(default))
    if not raw.isdigit() or len(raw) > 9:
        raise BadRequest(f"{name} must be a whole number below 10^9")
    return int(raw)


class StreamAccount:
    """What a stream's end settles: the key's tokens and the metrics (with time to first chunk)."""

    def __init__(self, record: Callable[..., None], endpoint: str, model: str, node: str, started: float,
                 charge: Callable[[int], None]):
        # `record` looks the replica's current book up at call time: the book is swapped every flush.
        self.record, self.endpoint, self.model, self.node = record, endpoint, model, node
        self.started, self.charge = started, charge
        self.first: float | None = None

    def chunk(self) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.started

    def end(self, item: StreamEnd) -> None:
        self.charge(item.tokens)
        self._record(200, item.routing)

    def broken(self) -> None:
        self._record(502, None)

    def _record(self, status: int, routing: dict | None) -> None:
        self.record(self.endpoint, self.model, self.node, status, time.perf_counter() - self.started,
                    self.first, routing)


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Ingress:
    async def __init__(self, router: DeploymentHandle, workers: dict[str, DeploymentHandle], batch: DeploymentHandle,
                       config: dict):
        self.router = router
        self.batch = batch
        self.config = GatewayConfig.model_validate(config)
        # Requests go from here to the node's worker on the router's ticket (one hop per chunk).
        self.dispatch = Dispatcher(ServeRouterLink(router), WorkerRegistry(workers, self.config.state_actor_name),
                                   self.config.failover)
        self.lengths = OutputLengths(self.config.state_actor_name)
        self.auth = Authenticator(self.config.security)
        check_bind(await serve_http_host(), self.config.security)
        keys = self.config.security.keys
        self.limited = {k.name for k in keys if k.requests_per_minute or k.tokens_per_minute}
        self.limiter = rate_limiter(f"{self.config.state_actor_name}_ratelimits", keys) if self.limited else None
        self.metrics = RequestMetrics()  # this replica's counts since the last flush
        self.decisions: list[dict] = []  # and its routing decisions
        self.metrics_book = metrics_actor(self.config.state_actor_name)
        self.cache = cache_actor(self.config.state_actor_name, self.config.cache)
        await self.cache.configure.remote(self.config.cache.model_dump())
        self._flusher = asyncio.create_task(self._flush_metrics())

    # -- request plumbing --------------------------------------------------------------
    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _json(self, request: Request, schema: type[BaseModel]) -> dict:
        """The body as the client sent it (forwarded as is), once `schema` accepts it."""
        body = await self._object(request)
        self._validated(body, schema)
        return body

    async def _payload(self, request: Request, schema: type[BaseModel]) -> BaseModel:
        """The body as `schema`'s model (for the gateway's own endpoints)."""
        return self._validated(await self._object(request), schema)

    async def _object(self, request: Request) -> dict:
        raw = await self._read_body(request)
        try:
            body = json.loads(raw)
        except UnicodeDecodeError:
            raise BadRequest("request body is not valid UTF-8") from None
        except json.JSONDecodeError as exc:
            raise BadRequest(f"invalid JSON: {exc.msg} at position {exc.pos}") from None
        except RecursionError:
            raise BadRequest("invalid JSON: nested too deeply") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body

    @staticmethod
    def _validated(body: dict, schema: type[BaseModel]) -> BaseModel:
        try:
            return schema.model_validate(body)
        except ValidationError as exc:
            raise BadRequest(_validation_message(exc)) from None

    async def _guard(self, request: Request, handler: Callable[[], Awaitable[Response]],
                     permission: Permission | None) -> Response:
        try:
            principal = self.auth.authorize(request.headers, permission, session_of(request))
            if principal.name in self.limited:
                wait = await self.limiter.admit.remote(principal.name)
                if wait:
                    raise RateLimited(f"rate limit of key '{principal.name}' reached; retry in {wait} s",
                                      retry_after_s=wait)
            request.state.principal = principal
            return await handler()
        except Exception as exc:
            return _gateway_error(request, exc)

    async def _routed(self, request: Request, api: Api, op: Operation, schema: type[BaseModel],
                      permission: Permission) -> Response:
        started = time.perf_counter()
        endpoint = api_path(request)

        async def handle() -> Response:
            body = await self._json(request, schema)
            request.state.model = str(body.get("model"))
            priority = parse_priority(body.get("priority"), request.headers.get("x-sollol-priority"))
            streams = op in ("chat", "generate") and body.get("stream", api == "ollama") is True
            key = cache_key(api, op, body) if cacheable(api, op, body, streams, self.config.cache) else None
            if key is not None:
                hit = await self.cache.get.remote(key)
                self.metrics.cache_lookup(endpoint, body["model"], hit is not None)
                if hit is not None:
                    return self._cached(endpoint, body["model"], hit, started)
            profile = profile_request(api, op, body, priority, self.lengths.table)
            req = NodeRequest(api=api, op=op, body=body, stream=streams, model=body["model"])
            charge = self._charger(request.state.principal)
            if not streams:
                routed = await self.dispatch.call(profile, req)
                charge(tokens_used(routed.body))
                self._record(endpoint, req.model, routed.node, 200, time.perf_counter() - started, None,
                             routed.routing)
                headers = {"X-SOLLOL-Node": routed.node}
                if key is not None:
                    self.cache.put.remote(key, req.model, routed.body, routed.node)  # not awaited: off the path
                    headers["X-SOLLOL-Cache"] = "miss"
                payload = {**routed.body, "_sollol_routing": routed.routing}
                return JSONResponse(payload, headers=headers)
            items = self.dispatch.stream(profile, req)
            start = await items.__anext__()  # errors before the first byte surface here
            account = StreamAccount(self._record, endpoint, req.model, start.node, started, charge)
            if api == "ollama":
                return StreamingResponse(self._ndjson(items, account), media_type="application/x-ndjson",
                                         headers={"X-SOLLOL-Node": start.node})
            return StreamingResponse(self._sse(items, account), media_type="text/event-stream",
                                     headers={"X-SOLLOL-Node": start.node, "Cache-Control": "no-cache"})

        response = await self._guard(request, handle, permission)
        if response.status_code >= 400:
            self._record(endpoint, getattr(request.state, "model", "none"), "none", response.status_code,
                         time.perf_counter() - started, None, None)
        return response

    def _cached(self, endpoint: str, model: str, hit: Cached, started: float) -> Response:
        """An answer from the cache: no node was called, so no tokens are charged."""
        elapsed = time.perf_counter() - started
        self._record(endpoint, model, hit.node, 200, elapsed, None, None)
        return JSONResponse({**hit.body, "_sollol_routing": cached_routing(hit, elapsed)},
                            headers={"X-SOLLOL-Node": hit.node, "X-SOLLOL-Cache": "hit"})

    def _charger(self, principal: Principal) -> Callable[[int], None]:
        """Charges the tokens a response used to its key, if the key is rate limited."""
        if principal.name not in self.limited:
            return lambda tokens: None
        return lambda tokens: self.limiter.charge.remote(principal.name, tokens)

    def _record(self, endpoint: str, model: str, node: str, status: int, latency_s: float, ttft_s: float | None,
                routing: dict | None) -> None:
        """Count a routed request, and keep its decision for the dashboard."""
        routing = routing or {}
        self.metrics.record(endpoint, model, node, status, latency_s, ttft_s, routing.get("attempts", ()))
        if routing:
            self.decisions.append(decision(model, endpoint, status, latency_s, routing))

    async def _flush_metrics(self) -> None:
        """Send this replica's counts to the shared book every second (one scrape target)."""
        while True:
            await asyncio.sleep(METRICS_FLUSH_S)
            if self.metrics.empty():
                continue
            delta, self.metrics = self.metrics, RequestMetrics()
            decisions, self.decisions = self.decisions, []
            try:
                await self.metrics_book.add.remote(delta, decisions)
            except Exception:  # keep the counts for the next flush
                delta.merge(self.metrics)
                self.metrics, self.decisions = delta, decisions + self.decisions

    async def _ndjson(self, items: AsyncIterator[object], account: "StreamAccount") -> AsyncIterator[str]:
        """Ollama stream: chunks as they come, a batch per write; the final `done` chunk gets
        `_sollol_routing`."""
        final: dict | None = None
        try:
            async for item in items:
                if isinstance(item, StreamEnd):
                    account.end(item)
                    if final is not None:
                        yield _dumps({**final, "_sollol_routing": item.routing}) + "\n"
                    return
                account.chunk()
                if item[-1].get("done"):
                    final = item.pop()  # held only until the StreamEnd that follows at once
                if item:
                    yield "".join(_dumps(chunk) + "\n" for chunk in item)
        except Exception as exc:
            account.broken()
            yield _dumps({"error": error_message(exc), "done": True, "done_reason": "error"}) + "\n"
        finally:
            await items.aclose()

    async def _sse(self, items: AsyncIterator[object], account: "StreamAccount") -> AsyncIterator[str]:
        """OpenAI stream: `data:` events; a last chunk carries `_sollol_routing`, then [DONE]."""
        last: dict = {}
        try:
            async for item in items:
                if isinstance(item, StreamEnd):
                    account.end(item)
                    tail = {k: last[k] for k in ("id", "object", "created", "model") if k in last}
                    yield f"data: {_dumps({**tail, 'choices': [], '_sollol_routing': item.routing})}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                account.chunk()
                last = item[-1]
                yield "".join(f"data: {_dumps(chunk)}\n\n" for chunk in item)
        except Exception as exc:
            account.broken()
            error = {"message": error_message(exc), "type": "server_error", "code": "stream_broken"}
            yield f"data: {_dumps({'error': error})}\n\n"
        finally:
            await items.aclose()

    # -- Ollama API --------------------------------------------------------------------
    @app.get("/")
    async def root(self) -> Response:
        return PlainTextResponse("Ollama is running")

    @app.head("/")
    async def root_head(self) -> Response:
        return PlainTextResponse("")

    @app.get("/api/version")
    async def version(self, request: Request) -> Response:
        async def handle() -> Response:
            versions = await self.router.versions.remote()
            # The oldest node bounds which features a client may rely on.
            oldest = min(versions, key=_version_key) if versions else "0.0.0"
            return JSONResponse({"version": oldest, "sollol_serve": __version__})

        return await self._guard(request, handle, "models")

    @app.get("/api/tags")
    async def tags(self, request: Request) -> Response:
        return await self._guard(request, lambda: self._json_of(self.router.tags.remote(), "models"), "models")

    @app.get("/api/ps")
    async def ps(self, request: Request) -> Response:
        return await self._guard(request, lambda: self._json_of(self.router.ps.remote(), "models"), "models")

    async def _json_of(self, pending, key: str) -> Response:
        return JSONResponse({key: await pending})

    @app.post("/api/show")
    async def show(self, request: Request) -> Response:
        async def handle() -> Response:
            body = await self._json(request, schemas.OllamaShow)
            model = body.get("model") or body.get("name")
            if not model:
                raise BadRequest("model is required")
            return JSONResponse(await self.router.show.remote(body, model))

        return await self._guard(request, handle, "models")

    @app.post("/api/chat")
    async def chat(self, request: Request) -> Response:
        return await self._routed(request, "ollama", "chat", schemas.OllamaChat, "chat")

    @app.post("/api/generate")
    async def generate(self, request: Request) -> Response:
        return await self._routed(request, "ollama", "generate", schemas.OllamaGenerate, "generate")

    @app.post("/api/embed")
    async def embed(self, request: Request) -> Response:
        return await self._routed(request, "ollama", "embed", schemas.OllamaEmbed, "embed")

    @app.post("/api/embeddings")
    async def embeddings(self, request: Request) -> Response:
        return await self._routed(request, "ollama", "embeddings", schemas.OllamaEmbeddings, "embed")

    # -- OpenAI API --------------------------------------------------------------------
    @app.get("/v1/models")
    async def models(self, request: Request) -> Response:
        async def handle() -> Response:
            created = int(time.time())
            data = [{"id": m.get("name") or m.get("model"), "object": "model", "created": created,
                     "owned_by": "sollol"} for m in await self.router.tags.remote()]
            return JSONResponse({"object": "list", "data": data})

        return await self._guard(request, handle, "models")

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._routed(request, "openai", "chat", schemas.OpenAIChat, "chat")

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._routed(request, "openai", "generate", schemas.OpenAICompletion, "generate")

    @app.post("/v1/embeddings")
    async def openai_embeddings(self, request: Request) -> Response:
        return await self._routed(request, "openai", "embed", schemas.OpenAIEmbeddings, "embed")

    # -- operations --------------------------------------------------------------------
    @app.get("/api/nodes")
    async def nodes(self, request: Request) -> Response:
        return await self._guard(request, lambda: self._json_of(self.router.nodes.remote(), "nodes"), "stats")

    @app.get("/metrics")
    async def metrics_text(self, request: Request) -> Response:
        """Prometheus text format: the whole app's counts (merged from every replica) and gauges."""
        async def handle() -> Response:
            book, nodes, queue, shards, cache, batch = await asyncio.gather(
                self.metrics_book.snapshot.remote(), self.router.nodes.remote(), self.router.queue_stats.remote(),
                self.router.shards.remote(), self.cache.stats.remote(), self.batch.summary.remote(0))
            return Response(render(book, nodes, queue, shards, cache, batch), media_type=CONTENT_TYPE_LATEST)

        return await self._guard(request, handle, "stats")

    @app.get("/api/stats")
    async def stats(self, request: Request) -> Response:
        """What the dashboard shows, as JSON: nodes, queue, shard groups, latency over time, totals."""
        async def handle() -> Response:
            nodes, queue, shards, latency, book, cache, batch = await asyncio.gather(
                self.router.nodes.remote(), self.router.queue_stats.remote(), self.router.shards.remote(),
                self.metrics_book.latency.remote(), self.metrics_book.snapshot.remote(), self.cache.stats.remote(),
                self.batch.summary.remote())
            totals = {"requests": sum(book.requests.values()),
                      "errors": sum(n for key, n in book.requests.items() if int(key[3]) >= 400),
                      "retries": sum(book.retries.values()), "hedges": sum(book.hedges.values())}
            return JSONResponse({"nodes": nodes, "queue": queue, "shards": shards, "latency": latency,
                                 "totals": totals, "cache": cache, "batch": batch})

        return await self._guard(request, handle, "stats")

    @app.get("/api/routing/decisions")
    async def decisions_json(self, request: Request) -> Response:
        """The most recent routing decisions, newest first, with their reasons and candidates."""
        async def handle() -> Response:
            limit = max(1, min(query_int(request, "limit", 50), MAX_DECISIONS))
            return await self._json_of(self.metrics_book.decisions.remote(limit), "decisions")

        return await self._guard(request, handle, "stats")

    @app.get("/api/queue")
    async def queue(self, request: Request) -> Response:
        return await self._guard(request, lambda: self._json_of(self.router.queue_stats.remote(), "queue"), "stats")

    @app.get("/health")
    async def health(self, request: Request) -> Response:
        async def handle() -> Response:
            nodes = await self.router.nodes.remote()
            healthy = sum(1 for n in nodes if n["healthy"])
            status = 200 if healthy else 503
            return JSONResponse({"status": "ok" if healthy else "no healthy node", "nodes": len(nodes),
                                 "healthy": healthy}, status_code=status)

        return await self._guard(request, handle, None)

    # -- admin: nodes at run time -------------------------------------------------------
    @app.get("/api/admin/nodes")
    async def admin_nodes(self, request: Request) -> Response:
        return await self._guard(request, lambda: self._json_of(self.router.nodes.remote(), "nodes"), "admin")

    @app.post("/api/admin/nodes")
    async def add_node(self, request: Request) -> Response:
        async def handle() -> Response:
            node = await self._json(request, NodeConfig)
            return JSONResponse(await self.router.add_node.remote(node), status_code=201)

        return await self._guard(request, handle, "admin")

    @app.post("/api/admin/nodes/{name}/drain")
    async def drain_node(self, request: Request, name: str) -> Response:
        """No new work for the node; what it has runs to the end."""
        return await self._guard(request, lambda: self._json_of(self.router.drain_node.remote(name), "node"), "admin")

    @app.post("/api/admin/nodes/{name}/undrain")
    async def undrain_node(self, request: Request, name: str) -> Response:
        return await self._guard(request, lambda: self._json_of(self.router.drain_node.remote(name, False), "node"),
                                 "admin")

    @app.delete("/api/admin/nodes/{name}")
    async def remove_node(self, request: Request, name: str) -> Response:
        async def handle() -> Response:
            return JSONResponse(await self.router.remove_node.remote(name), status_code=202)

        return await self._guard(request, handle, "admin")

    @app.post("/api/admin/warm")
    async def warm(self, request: Request) -> Response:
        """Load a model on nodes now (before traffic needs it): NDJSON progress, a line per node."""
        async def handle() -> Response:
            body = await self._payload(request, schemas.WarmRequest)
            events = self.router.warm.options(stream=True).remote(body.model, body.nodes, body.keep_alive)
            first = await events.__anext__()  # an unknown model or node is an error status, not a stream
            return StreamingResponse(self._events(first, events), media_type="application/x-ndjson")

        return await self._guard(request, handle, "admin")

    async def _events(self, first: dict, events) -> AsyncIterator[str]:
        yield _dumps(first) + "\n"
        try:
            async for event in events:
                yield _dumps(event) + "\n"
        except Exception as exc:
            yield _dumps({"status": "error", "error": error_message(exc)}) + "\n"
        finally:
            events.cancel()

    # -- admin: shard groups --------------------------------------------------------------
    @app.get("/api/shards")
    async def shards(self, request: Request) -> Response:
        return await self._guard(request, lambda: self._json_of(self.router.shards.remote(), "shards"), "admin")

    @app.post("/api/shards/{model:path}/start")
    async def start_shard(self, request: Request, model: str) -> Response:
        """Start the model's group now (it also starts on demand) and wait until it serves."""
        return await self._guard(
            request, lambda: self._json_of(self.router.shard_action.remote(model, "start"), "shard"), "admin")

    @app.post("/api/shards/{model:path}/stop")
    async def stop_shard(self, request: Request, model: str) -> Response:
        return await self._guard(
            request, lambda: self._json_of(self.router.shard_action.remote(model, "stop"), "shard"), "admin")

    # -- response cache -------------------------------------------------------------------
    @app.get("/api/cache")
    async def cache_stats(self, request: Request) -> Response:
        return await self._guard(request, lambda: self._json_of(self.cache.stats.remote(), "cache"), "stats")

    @app.delete("/api/cache")
    async def clear_cache(self, request: Request) -> Response:
        return await self._guard(request, lambda: self._json_of(self.cache.invalidate.remote(), "removed"), "admin")

    @app.delete("/api/cache/{model:path}")
    async def invalidate_model(self, request: Request, model: str) -> Response:
        """Forget one model's answers, e.g. after the model was pulled again with new weights."""
        return await self._guard(
            request, lambda: self._json_of(self.cache.invalidate.remote(model), "removed"), "admin")

    # -- batch jobs -----------------------------------------------------------------------
    async def _submit(self, request: Request, kind: str, schema: type[BaseModel]) -> Response:
        async def handle() -> Response:
            job = await self._payload(request, schema)
            try:
                inputs = job.input if kind == "embed" else chat_items(job)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            limit = self.config.batch.max_items
            if len(inputs) > limit:
                raise PayloadTooLarge(f"a batch job takes at most {limit} items; this one has {len(inputs)}")
            if not await self.router.knows.remote(job.model):  # every item would fail: refuse it up front
                raise ModelNotFound(f"model '{job.model}' not found on any node")
            status = await self.batch.submit.remote(kind, job.model, request.state.principal.name, job_settings(job),
                                                    inputs, job.ttl_s)
            return JSONResponse(status, status_code=202)

        return await self._guard(request, handle, "batch")

    @app.post("/api/batch/embed")
    async def batch_embed(self, request: Request) -> Response:
        return await self._submit(request, "embed", BatchEmbedRequest)

    @app.post("/api/batch/chat")
    async def batch_chat(self, request: Request) -> Response:
        return await self._submit(request, "chat", BatchChatRequest)

    @app.get("/api/batch/jobs")
    async def batch_jobs(self, request: Request) -> Response:
        return await self._guard(
            request, lambda: self._json_of(self.batch.list_jobs.remote(job_owner(request.state.principal)), "jobs"),
            "batch")

    @app.get("/api/batch/jobs/{job_id}")
    async def batch_job(self, request: Request, job_id: str) -> Response:
        async def handle() -> Response:
            return JSONResponse(await self.batch.status.remote(job_id, job_owner(request.state.principal)))

        return await self._guard(request, handle, "batch")

    @app.get("/api/batch/results/{job_id}")
    async def batch_results(self, request: Request, job_id: str) -> Response:
        """Finished items in index order, a page at a time (`offset` = the next index wanted)."""
        async def handle() -> Response:
            offset, limit = query_int(request, "offset", 0), max(1, query_int(request, "limit", 1000))
            return JSONResponse(await self.batch.results.remote(
                job_id, job_owner(request.state.principal), offset, limit))

        return await self._guard(request, handle, "batch")

    @app.delete("/api/batch/jobs/{job_id}")
    async def cancel_batch_job(self, request: Request, job_id: str) -> Response:
        async def handle() -> Response:
            return JSONResponse(await self.batch.cancel.remote(job_id, job_owner(request.state.principal)))

        return await self._guard(request, handle, "batch")

    @app.get("/dashboard")
    async def dashboard(self, request: Request) -> Response:
        async def page() -> Response:
            return HTMLResponse(dashboard_page())

        response = await self._guard(request, page, "admin")
        if response.status_code in (401, 403) and self.auth.enabled:  # a browser: offer the login form
            message = ("that key lacks the admin permission" if response.status_code == 403
                       else "log in with an API key that has the admin permission")
            return login_page(request.scope.get("root_path", ""), message, response.status_code)
        return response

    @app.post("/dashboard/login")
    async def dashboard_login(self, request: Request) -> Response:
        """The login form's key -> a session cookie (HttpOnly, SameSite=Strict) -> the dashboard."""
        root = request.scope.get("root_path", "")
        try:
            form = urllib.parse.parse_qs((await self._read_body(request)).decode("utf-8", "replace"))
            principal, token = self.auth.login((form.get("key") or [""])[0].strip())
            if "admin" not in principal.permissions:
                return login_page(root, "that key lacks the admin permission", 403)
        except GatewayError as exc:
            return login_page(root, exc.message, exc.status)
        response = RedirectResponse(f"{root}/dashboard", status_code=303)
        response.set_cookie(SESSION_COOKIE, token, max_age=SESSION_TTL_S, path=root or "/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    @app.post("/dashboard/logout")
    async def dashboard_logout(self, request: Request) -> Response:
        root = request.scope.get("root_path", "")
        response = RedirectResponse(f"{root}/dashboard", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=root or "/")
        return response
