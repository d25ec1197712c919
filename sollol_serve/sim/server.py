"""`sollol sim-node`: run one simulated node (Ollama or llama-server flavoured) on a port.

It is a simulator for demos, tests and benchmarks and says so on `/` and `/api/version`.
Faults are injected at run time with `POST /_sim/faults {"mode": "error"|"hang"|"slow"|"none", ...}`;
`GET /_sim/state` shows slots in use, queue length, requests received, queued (waited for a
slot) and served, and how many reused a slot's cached prompt prefix (`prefix_hits`, `cached_tokens` skipped);
`GET /_sim/inputs` counts the texts embedded (with `--record-inputs`). An Ollama-flavoured
node also manages models (`models_api`: pull, delete, copy, create, push, blobs).
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sollol_serve.sim.engine import (
    DEFAULT_CONTEXT,
    Faults,
    SimEngine,
    SimModel,
    SimNodeConfig,
)
from sollol_serve.sim.models_api import ModelStoreSim, sim_model
from sollol_serve.sim.ollama_api import OllamaSim
from sollol_serve.sim.openai_api import OpenAISim

DEFAULT_PULL_S = 0.3  # a simulated pull: fast, yet long enough to see its progress lines


def parse_models(spec: str, tagged: bool = True) -> list[SimModel]:
    """`llama3.2:3b,nomic-embed-text@0.3` -> models; `@N` is the size in GB.
    `tagged`: Ollama names carry a tag (`:latest` by default); llama-server ids don't."""
    models = []
    for item in filter(None, (p.strip() for p in spec.split(","))):
        name, _, size = item.partition("@")
        if tagged and ":" not in name:
            name += ":latest"
        models.append(sim_model(name, int(float(size) * 1e9) if size else None))
    return models


def build_sim_app(config: SimNodeConfig, pull_s: float = DEFAULT_PULL_S) -> Starlette:
    """`pull_s`: how long a simulated pull (or push) takes, spread over its progress lines."""
    engine = SimEngine(config)
    facade = OllamaSim(engine) if config.kind == "ollama" else OpenAISim(engine)
    # llama-server has no model management: it serves the one model it was started with.
    managed = ModelStoreSim(engine, pull_s).routes() if config.kind == "ollama" else []

    async def get_state(request: Request) -> Response:
        return JSONResponse(
            {
                "simulator": True,
                "name": config.name,
                "kind": config.kind,
                "slots": config.slots,
                "active": engine.active,
                "waiting": engine.waiting,
                "served": engine.served,
                "received": engine.received,
                "queued": engine.queued,
                "prefix_hits": engine.prefix_hits,
                "cached_tokens": engine.cached_tokens,
                "loaded": sorted(engine.loaded_models()),
                "max_loaded": config.max_loaded,
                "loads": dict(engine.scheduler.loads),
                "evictions": dict(engine.scheduler.evictions),
                "faults": engine.faults.model_dump(),
            }
        )

    async def set_faults(request: Request) -> Response:
        try:
            engine.set_faults(Faults.model_validate_json(await request.body() or b"{}"))
        except ValidationError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(engine.faults.model_dump())

    async def get_inputs(request: Request) -> Response:
        return JSONResponse({"recording": config.record_inputs, "embedded": dict(engine.embedded)})

    routes = facade.routes() + managed + [
        Route("/_sim/state", get_state, methods=["GET"]),
        Route("/_sim/inputs", get_inputs, methods=["GET"]),
        Route("/_sim/faults", set_faults, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sollol sim-node", description="Run a simulated LLM node (no real model).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=11434)
    p.add_argument("--name", default="sim")
    p.add_argument("--kind", choices=["ollama", "openai"], default="ollama")
    p.add_argument("--models", default="llama3.2:latest,nomic-embed-text:latest@0.3")
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--max-queue", type=int, default=512)
    p.add_argument("--prefill-tps", type=float, default=400.0)
    p.add_argument("--decode-tps", type=float, default=40.0)
    p.add_argument("--slot-slowdown", type=float, default=0.08)
    p.add_argument("--load-s", type=float, default=1.0)
    p.add_argument("--load-s-per-gb", type=float, default=None,
                   help="a model's load takes this many seconds per GB of it (instead of --load-s)")
    p.add_argument("--max-loaded", type=_positive_int, default=3,
                   help="OLLAMA_MAX_LOADED_MODELS: models loaded at once (Ollama's default is 3 per GPU)")
    p.add_argument("--keep-alive-s", type=float, default=300.0)
    p.add_argument("--context-length", type=_positive_int, default=DEFAULT_CONTEXT,
                   help="every model's context in tokens (Ollama: until a request asks for another num_ctx)")
    p.add_argument("--record-inputs", action="store_true", help="count embedded texts (GET /_sim/inputs)")
    p.add_argument("--pull-s", type=float, default=DEFAULT_PULL_S,
                   help="how long a simulated /api/pull or /api/push takes")
    return p


def config_from_args(args: argparse.Namespace) -> SimNodeConfig:
    return SimNodeConfig(
        name=args.name,
        kind=args.kind,
        models=[m.model_copy(update={"context_length": args.context_length})
                for m in parse_models(args.models, tagged=args.kind == "ollama")],
        slots=args.slots,
        max_queue=args.max_queue,
        prefill_tps=args.prefill_tps,
        decode_tps=args.decode_tps,
        slot_slowdown=args.slot_slowdown,
        load_s=args.load_s,
        load_s_per_gb=args.load_s_per_gb,
        max_loaded=args.max_loaded,
        keep_alive_s=args.keep_alive_s,
        record_inputs=args.record_inputs,
    )


def main(argv: list[str] | None = None) -> None:
    args = arg_parser().parse_args(argv)
    app = build_sim_app(config_from_args(args), max(args.pull_s, 0.0))
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False))
    asyncio.run(server.serve())
