"""Reading a request: its path within the app, a size-capped JSON body, validation and
query parameters, each failing as a `GatewayError` the error handler writes in the API's format."""

from __future__ import annotations

import json
import math
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from sollol_serve.protocol import BadRequest, GatewayError


M = TypeVar("M", bound=BaseModel)


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"


def api_path(request: Request) -> str:
    """The path without the app's route prefix: it decides the API's error format."""
    path, root = request.url.path, request.scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def read_body(request: Request, limit: int) -> bytes:
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


async def json_object(request: Request, limit: int) -> dict:
    raw = await read_body(request, limit)
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


def validated(body: dict, schema: type[M]) -> M:
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(validation_message(exc)) from None


def validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return f"invalid request: {where}: {first.get('msg')}"


def query_int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name, str(default))
    if not raw.isdigit() or len(raw) > 9:
        raise BadRequest(f"{name} must be a whole number below 10^9")
    return int(raw)


def query_number(request: Request, name: str, default: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number") from None
    if not math.isfinite(value) or value < 0:
        raise BadRequest(f"{name} must be a finite number, 0 or more")
    return value
