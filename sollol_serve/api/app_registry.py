"""Applications that register themselves, as the original SOLLOL's `DashboardClient` does:
register (name, router type, version, metadata), heartbeat (optionally with new metadata),
deregister. A registered application shows in `/api/applications` before it sends anything,
and as stale once its heartbeats stop. Needs the `chat` permission: a read-only key (a
monitoring system) has no application to register."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator
from starlette.responses import JSONResponse, Response

from sollol_serve.api.body import validated
from sollol_serve.api.services import Services, authorized, services
from sollol_serve.observability.applications import MAX_REGISTRATIONS, Registration, clean_name
from sollol_serve.protocol import BadRequest, GatewayError, NotFound

router = APIRouter(dependencies=[authorized("chat")])
MAX_METADATA_BYTES = 4096
Short = Annotated[StrictStr, Field(max_length=64)]


def _small_metadata(value: dict | None) -> dict | None:
    if value is not None and len(json.dumps(value)) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes of JSON")
    return value


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metadata: dict | None = None

    _bounded = field_validator("metadata")(_small_metadata)


class Register(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the original's client may send more

    app_name: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    router_type: Short = "unknown"
    version: Short = ""
    metadata: dict = Field(default_factory=dict)

    _bounded = field_validator("metadata")(_small_metadata)


class TooManyApplications(GatewayError):
    status = 429
    code = "too_many_applications"


@router.post("/api/applications/register")
async def register(request: Request, svc: Services = Depends(services)) -> Response:
    body = validated(await svc.body(request), Register)
    name = clean_name(body.app_name)
    if name is None:
        raise BadRequest("app_name must have letters or digits")
    app_id, now = uuid.uuid4().hex, time.time()
    registration = Registration(name, body.router_type, body.version, body.metadata, now, now)
    if not await svc.metrics_book.register.remote(app_id, registration):
        raise TooManyApplications(f"{MAX_REGISTRATIONS} applications are registered and active; retry later",
                                  retry_after_s=30)
    return JSONResponse({"app_id": app_id, "name": name}, status_code=201)


@router.post("/api/applications/{app_id}/heartbeat")
async def heartbeat(app_id: str, request: Request, svc: Services = Depends(services)) -> Response:
    sent = request.headers.get("content-length") not in (None, "0")  # a bare heartbeat has no body
    body = validated(await svc.body(request) if sent else {}, Heartbeat)
    if not await svc.metrics_book.heartbeat.remote(app_id, body.metadata):
        raise NotFound(f"no registered application '{app_id}': register again")
    return JSONResponse({"app_id": app_id, "status": "active"})


@router.delete("/api/applications/{app_id}")
async def deregister(app_id: str, svc: Services = Depends(services)) -> Response:
    if not await svc.metrics_book.deregister.remote(app_id):
        raise NotFound(f"no registered application '{app_id}'")
    return JSONResponse({"app_id": app_id, "deregistered": True})
