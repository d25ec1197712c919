"""What both simulated APIs share: reading a JSON body and turning engine errors into
each API's own error response."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from sollol_serve.sim.engine import InjectedError, QueueFull


class BadRequest(Exception):
    pass


ErrorFn = Callable[[int, str], Response]
Handler = Callable[[dict], Awaitable[Response]]


async def read_json_object(request: Request) -> dict:
    try:
        body = json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"invalid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


async def guarded(request: Request, handler: Handler, error: ErrorFn) -> Response:
    try:
        return await handler(await read_json_object(request))
    except BadRequest as exc:
        return error(400, str(exc))
    except LookupError as exc:
        return error(404, str(exc.args[0]))
    except QueueFull as exc:
        return error(503, str(exc))
    except InjectedError as exc:
        return error(exc.status, str(exc))
