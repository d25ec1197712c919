"""The ID that ties together everything about one request: the client's `X-Request-ID`, else
the one Serve's proxy made for it.

Serve echoes it on the response and stamps each replica's log lines for the request with it
(its request context travels with every handle call), so one ID finds the request in
`_sollol_routing.request_id`, the decision log, the dashboard and the Ray dashboard's logs.
"""

from __future__ import annotations

# Private in Serve, but it is where Serve itself keeps the ID that its log lines carry.
from ray.serve.context import _get_serve_request_context

# A client chooses its own ID: one too long for a log line is cut where we keep it.
MAX_ID_CHARS = 128


def current_request_id() -> str:
    """The ID of the request being handled ("" outside one: a unit test, a background task)."""
    return _get_serve_request_context().request_id[:MAX_ID_CHARS]
