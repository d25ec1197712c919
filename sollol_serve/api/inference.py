"""The inference surface: Ollama's /api and OpenAI's /v1, as their clients expect them, and
the dialects translated at the edge (Anthropic's /v1/messages, OpenAI's /v1/responses).

A routed request: validate, answer from the cache if it may, else profile it here (a pure
function over output lengths this replica keeps in step) and carry it to a node on the
Router's ticket; JSON, or a stream written as it arrives. A dialect's request travels as the
OpenAI chat request it translates to, and its answer is translated back here.
"""

import functools
import time
from collections.abc import Callable

from fastapi import APIRouter, Depends, Request
from opentelemetry import trace
from pydantic import BaseModel
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from sollol_serve import __version__
from sollol_serve.analysis.profile import parse_priority, profile_request
from sollol_serve.api import schemas
from sollol_serve.api.actor_calls import optional
from sollol_serve.api.auth import Principal
from sollol_serve.api.body import api_path, validated
from sollol_serve.api.dialects import ANTHROPIC, RESPONSES, Dialect
from sollol_serve.api.ratelimit import token_counts
from sollol_serve.api.recorder import StreamAccount
from sollol_serve.api.request_id import current_request_id
from sollol_serve.api.services import Services, authorized, counted, services
from sollol_serve.api.streams import NDJSON, DialectSSE, OpenAISSE, relay
from sollol_serve.api.visibility import shown_routing
from sollol_serve.cache.policy import cache_key, cacheable
from sollol_serve.cache.store import Cached
from sollol_serve.names import normalize_model
from sollol_serve.observability.tracing import span
from sollol_serve.protocol import Api, BadRequest, ModelNotFound, NodeRequest, Operation

router = APIRouter()
routed_requests = APIRouter(dependencies=[Depends(counted)])


def version_key(version: str) -> tuple:
    parts = []
    for piece in version.split("-", 1)[0].split("."):
        parts.append(int(piece) if piece.isdigit() else 0)
    return tuple(parts)


def cached_routing(hit: Cached, lookup_s: float) -> dict:
    """`_sollol_routing` of an answer from the cache: which node computed it, and that none was called."""
    return {"node": hit.node, "request_id": current_request_id(), "cache": "hit", "strategy": "cache",
            "attempts": [], "queue_wait_ms": 0.0,
            "routing_ms": round(lookup_s * 1000, 3),
            "reasoning": "answered from the response cache: same model, input and options as an earlier request"}


def clamped(asked: int, priority: int) -> dict[str, str]:
    """Tells a client whose key may not ask that high that its priority was lowered."""
    return {"X-SOLLOL-Priority": f"{priority}; lowered from {asked} (the key's max_priority)"} if asked > priority else {}


async def routed(request: Request, svc: Services, principal: Principal, api: Api, op: Operation,
                 schema: type[BaseModel], dialect: Dialect | None = None) -> Response:
    """One inference request, holding one of its key's `max_concurrent` leases until its
    answer (or its stream) ends."""
    release = await svc.lease(principal)
    try:
        response = await answer(request, svc, principal, api, op, schema, release, dialect)
    except BaseException:
        release()
        raise
    if not isinstance(response, StreamingResponse):
        release()
    return response


async def answer(request: Request, svc: Services, principal: Principal, api: Api, op: Operation,
                 schema: type[BaseModel], release, dialect: Dialect | None = None) -> Response:
    started, endpoint = request.state.started, api_path(request)
    sent = await svc.model_body(request)
    validated(sent, schema)  # forwarded as the client sent it, once the schema accepts it
    request.state.model = str(sent.get("model"))
    asked = parse_priority(sent.get("priority"), request.headers.get("x-sollol-priority"))
    priority = min(asked, principal.max_priority)
    body = dialect.chat_request(sent) if dialect else sent
    reply = functools.partial(dialect.answer, body=sent) if dialect else _as_sent
    streams = op in ("chat", "generate") and body.get("stream", api == "ollama") is True
    trace.get_current_span().set_attributes({
        "sollol.request_id": current_request_id(), "sollol.endpoint": endpoint, "sollol.model": str(body.get("model")),
        "sollol.app": request.state.application[0], "sollol.priority": priority, "sollol.stream": streams})
    key = cache_key(api, op, body) if cacheable(api, op, body, streams, svc.config.cache) else None
    if key is not None:
        with span("sollol.cache_lookup") as lookup:
            hit = await optional(lambda: svc.cache.get.remote(key), "response cache", None)
            lookup.set_attribute("sollol.hit", hit is not None)
        svc.recorder.cache_lookup(endpoint, body["model"], hit is not None)
        if hit is not None:
            return cached(svc, endpoint, body["model"], hit, started, reply, request.state.application)
    profile = profile_request(api, op, body, priority, svc.lengths.table)
    profile.app, profile.share = request.state.application[0], principal.share
    req = NodeRequest(api=api, op=op, body=body, stream=streams, model=body["model"], request_id=current_request_id())
    charge = svc.charger(principal)
    if not streams:
        routed_answer = await svc.dispatch.call(profile, req)
        tokens = token_counts(routed_answer.body)
        charge(sum(tokens))
        svc.recorder.record(endpoint, req.model, routed_answer.node, 200, time.perf_counter() - started, None,
                            routed_answer.routing, request.state.application, tokens)
        headers = {"X-SOLLOL-Node": routed_answer.node, **clamped(asked, priority)}
        if key is not None:
            svc.cache.put.remote(key, req.model, routed_answer.body, routed_answer.node)  # not awaited: off the path
            headers["X-SOLLOL-Cache"] = "miss"
        return JSONResponse({**reply(routed_answer.body),
                             "_sollol_routing": shown_routing(routed_answer.routing, principal)}, headers=headers)
    items = svc.dispatch.stream(profile, req)
    start = await items.__anext__()  # errors before the first byte surface here, as a status
    account = StreamAccount(svc.recorder, endpoint, req.model, start.node, started, charge,
                            prompt_tokens=profile.tokens_in, on_close=release, application=request.state.application)
    view = functools.partial(shown_routing, principal=principal)
    headers = {"X-SOLLOL-Node": start.node, **clamped(asked, priority)}
    if api == "ollama":
        return StreamingResponse(relay(items, account, NDJSON(), view), media_type="application/x-ndjson",
                                 headers=headers)
    encoder = DialectSSE(dialect.events(sent)) if dialect else OpenAISSE()
    return StreamingResponse(relay(items, account, encoder, view), media_type="text/event-stream",
                             headers={**headers, "Cache-Control": "no-cache"})


def _as_sent(body: dict) -> dict:
    return body


def cached(svc: Services, endpoint: str, model: str, hit: Cached, started: float,
           reply: Callable[[dict], dict] = _as_sent, application: tuple[str, str] | None = None) -> Response:
    """An answer from the cache: no node was called, so no tokens are charged."""
    elapsed = time.perf_counter() - started
    svc.recorder.record(endpoint, model, hit.node, 200, elapsed, None, None, application)
    return JSONResponse({**reply(hit.body), "_sollol_routing": cached_routing(hit, elapsed)},
                        headers={"X-SOLLOL-Node": hit.node, "X-SOLLOL-Cache": "hit"})


def _route(path: str, api: Api, op: Operation, schema: type[BaseModel], permission,
           dialect: Dialect | None = None) -> None:
    async def endpoint(request: Request, svc: Services = Depends(services),
                       principal: Principal = authorized(permission)) -> Response:
        return await routed(request, svc, principal, api, op, schema, dialect)

    endpoint.__name__ = f"{api}_{path.strip('/').replace('/', '_')}"
    routed_requests.add_api_route(path, endpoint, methods=["POST"])


for _path, _api, _op, _schema, _permission in (
    ("/api/chat", "ollama", "chat", schemas.OllamaChat, "chat"),
    ("/api/generate", "ollama", "generate", schemas.OllamaGenerate, "generate"),
    ("/api/embed", "ollama", "embed", schemas.OllamaEmbed, "embed"),
    ("/api/embeddings", "ollama", "embeddings", schemas.OllamaEmbeddings, "embed"),
    ("/v1/chat/completions", "openai", "chat", schemas.OpenAIChat, "chat"),
    ("/v1/completions", "openai", "generate", schemas.OpenAICompletion, "generate"),
    ("/v1/embeddings", "openai", "embed", schemas.OpenAIEmbeddings, "embed"),
):
    _route(_path, _api, _op, _schema, _permission)
for _path, _dialect in (("/v1/messages", ANTHROPIC), ("/v1/responses", RESPONSES)):
    _route(_path, "openai", "chat", _dialect.schema, "chat", _dialect)


# -- what a client asks before it sends work ------------------------------------------
@router.get("/")
async def root() -> Response:
    return PlainTextResponse("Ollama is running")


@router.head("/")
async def root_head() -> Response:
    return PlainTextResponse("")


@router.get("/api/version", dependencies=[authorized("models")])
async def version(svc: Services = Depends(services)) -> Response:
    versions = await svc.router.versions.remote()
    # The oldest node bounds which features a client may rely on.
    oldest = min(versions, key=version_key) if versions else "0.0.0"
    return JSONResponse({"version": oldest, "sollol_serve": __version__})


@router.get("/api/tags", dependencies=[authorized("models")])
async def tags(svc: Services = Depends(services)) -> Response:
    return JSONResponse({"models": await svc.router.tags.remote()})


@router.get("/api/ps", dependencies=[authorized("models")])
async def ps(svc: Services = Depends(services)) -> Response:
    return JSONResponse({"models": await svc.router.ps.remote()})


@router.post("/api/show", dependencies=[authorized("models")])
async def show(request: Request, svc: Services = Depends(services)) -> Response:
    body = await svc.model_body(request)
    validated(body, schemas.OllamaShow)
    model = body.get("model") or body.get("name")
    if not model:
        raise BadRequest("model is required")
    return JSONResponse(await svc.router.show.remote(body, model))


def model_object(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "sollol"}


@router.get("/v1/models", dependencies=[authorized("models")])
async def models(svc: Services = Depends(services)) -> Response:
    created = int(time.time())
    data = [model_object(m.get("name") or m.get("model"), created) for m in await svc.router.tags.remote()]
    return JSONResponse({"object": "list", "data": data})


@router.get("/v1/models/{model:path}", dependencies=[authorized("models")])
async def model(model: str, svc: Services = Depends(services)) -> Response:
    """One model, under the name asked (`llama3.2` finds `llama3.2:latest`, as Ollama does)."""
    wanted = normalize_model(model)
    if any(normalize_model(m.get("name") or m.get("model") or "") == wanted for m in await svc.router.tags.remote()):
        return JSONResponse(model_object(model, int(time.time())))
    raise ModelNotFound(f"The model '{model}' does not exist")
