"""The gateway's HTTP app: every surface's routes, and one place that turns errors into the
API's own format (Ollama-style on /api, OpenAI-style on /v1).

Routes raise `GatewayError`s (or a Ray error carrying one from another deployment); anything
else is a bug and stays a 500.
"""

import time

from fastapi import Depends, FastAPI, Request
from ray.exceptions import RayTaskError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from sollol_serve import __version__
from sollol_serve.api import admin, app_registry, batch_jobs, dashboard, inference, model_admin, operations
from sollol_serve.api.body import api_path
from sollol_serve.api.errors import error_response
from sollol_serve.api.middleware import PoweredByHeader
from sollol_serve.api.services import same_site
from sollol_serve.protocol import GatewayError, unwrap

app = FastAPI(title="sollol_serve", version=__version__, docs_url="/docs", redoc_url=None,
              dependencies=[Depends(same_site)])
app.add_middleware(PoweredByHeader)
for surface in (inference.router, inference.routed_requests, operations.router, operations.health_router,
                admin.router, model_admin.router, batch_jobs.router, app_registry.router, dashboard.router):
    app.include_router(surface)


@app.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    return error_response(api_path(request), exc.status_code, str(exc.detail))


@app.exception_handler(GatewayError)
@app.exception_handler(RayTaskError)
async def gateway_error(request: Request, exc: Exception) -> Response:
    error = unwrap(exc)
    if not isinstance(error, GatewayError):
        raise exc
    recorder = getattr(request.state, "recorder", None)
    if recorder is not None:  # an inference request that failed: in the metrics too
        recorder.record(api_path(request), getattr(request.state, "model", "none"), "none", error.status,
                        time.perf_counter() - request.state.started, None, None,
                        getattr(request.state, "application", None))
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s else None
    return error_response(api_path(request), error.status, error.message, error.code, headers)
