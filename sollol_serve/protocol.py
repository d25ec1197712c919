"""Messages passed between the deployments: the Ingress asks the Router for a Ticket, sends
the request to the OllamaWorker the ticket names, and reports the Outcome back.

They are plain dataclasses: they cross a Ray hop on every request, and pickling a
dataclass is several times cheaper than a pydantic model. Chunks themselves travel as
plain dicts already in the client's API format.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Literal

from ray.exceptions import ActorDiedError, RayActorError

Api = Literal["ollama", "openai"]
# chat: /api/chat, /v1/chat/completions; generate: /api/generate, /v1/completions;
# embed: /api/embed, /v1/embeddings; embeddings: legacy /api/embeddings.
Operation = Literal["chat", "generate", "embed", "embeddings"]


NOT_PROBED = "not probed yet"


@dataclass(slots=True)
class NodeReport:
    """What a worker last learned about its node."""

    name: str
    url: str
    kind: str | None
    healthy: bool
    models: list[dict] = field(default_factory=list)  # /api/tags entries
    loaded: list[dict] = field(default_factory=list)  # /api/ps entries
    slots: int | None = None
    version: str | None = None
    error: str | None = None
    telemetry: dict | None = None  # HostTelemetry.as_dict() of the worker's host
    worker_ip: str | None = None  # the Ray host the node's worker runs on
    worker_node_id: str | None = None
    worker_started_at: float | None = None  # when the reporting worker process started
    at: float = field(default_factory=time.time)


@dataclass(slots=True)
class NodeRequest:
    api: Api
    op: Operation
    body: dict
    stream: bool
    model: str
    # Set per try by the router, for an Ollama node, when the client set none (routing/keep_alive.py).
    keep_alive: int | None = None
    request_id: str = ""  # the client's X-Request-ID, else Serve's (observability/request_id.py)


@dataclass(slots=True)
class Usage:
    """What a finished request tells about the node: the learning signal."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefill_s: float | None = None
    decode_s: float | None = None
    load_s: float | None = None
    total_s: float = 0.0
    ttfb_s: float | None = None  # request sent -> first chunk from the node (hedging's clock)
    # Waited inside the node for a slot, by the node's own clock (None: it doesn't say).
    queued_s: float | None = None
    # Prompt tokens the node evaluated (the rest came from its prefix cache); None: all.
    prefill_tokens: int | None = None
    # Requests the node was running at once when this one's first byte came, by its worker's
    # count (see nodes.inflight); None: no first byte, or not counted.
    running: int | None = None
    # For each request unfinished there when this one was sent: seconds after the send its
    # worker saw it end (None: still running at this one's end). See nodes.inflight.
    ends_after_send: tuple[float | None, ...] | None = None


@dataclass(slots=True)
class FirstByte:
    """A worker's signal that the node has begun to answer: an item of its own in a watched
    non-streamed call, the head of the first batch in a stream."""

    running: int = 1  # requests the node was running at once then (see nodes.inflight)


@dataclass(slots=True)
class StreamStart:
    """First event of a routed stream: the node that is answering (sent before any chunk)."""

    node: str


@dataclass(slots=True)
class StreamEnd:
    """Last event of a routed stream: how it was routed, and the tokens it used."""

    routing: dict
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Ticket:
    """A slot a router reserved for one try at a request: where to send it and why there.
    The try's Outcome goes back to the router that issued it (`router_id`)."""

    router_id: str
    flight_id: int
    node: str
    node_model: str  # the model's name on that node
    choice: dict  # the `_sollol_routing` fields of the decision: node, score, candidates, ...
    queued_s: float = 0.0  # waited in the router's priority queue
    probe: bool = False  # one above the node's proven slots, to learn its capacity
    # The router learns from the node's first byte (a probe, or a burst that may prove slots).
    wants_first_byte: bool = False
    hedge_after_s: float | None = None  # an urgent request may try a second node after this
    # The worker actor of a node added at run time (its name outlives it: a shard group's
    # worker is made anew each time the group starts); None: the config's Serve deployment.
    worker: object | None = None
    keep_alive: int | None = None  # for the node, where the client sets none


@dataclass(slots=True)
class Outcome:
    """How one try went, for the router that issued its ticket: frees the slot, feeds learning."""

    router_id: str
    flight_id: int
    node: str
    ok: bool | None  # None: the client went away, nothing to learn
    usage: Usage | None = None
    worker_died: bool = False  # the node's worker process died under it (no fault of the node's)


@dataclass(slots=True)
class NodeStatus:
    """A node as the Router sees it, for /api/nodes, /health, /metrics and the dashboard."""

    name: str
    healthy: bool
    slots: int  # what the router lets in at once now
    in_flight: int
    breaker: str = "closed"
    url: str = ""
    kind: str | None = None
    slots_source: str = "learned"  # configured, reported by the node, or learned
    slots_configured: int | None = None
    slots_learned: int | None = None
    capacity: dict = field(default_factory=dict)  # what capacity learning has proven and probed
    draining: bool = False
    added_at_run_time: bool = False
    models: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    error: str | None = None
    worker_ip: str | None = None
    worker_node_id: str | None = None
    telemetry: dict | None = None
    decode_tps: dict[str, float] = field(default_factory=dict)  # model -> learned tokens/s
    worker_down: bool = False  # its worker process died and Serve is starting another
    max_loaded: int | None = None  # models it holds at once (configured, or learned)
    max_loaded_source: str = "default"  # configured | learned | default (Ollama's 3)
    model_loads: dict[str, int] = field(default_factory=dict)  # model -> loads this router saw
    model_evictions: dict[str, int] = field(default_factory=dict)  # model -> unloads this router saw

    def as_json(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class QueueStatus:
    """A Router replica's priority queue: who waits now, and how long served requests waited."""

    router: str
    waiting: int
    max: int
    aging_s: float
    waited_by_priority: dict[str, dict] = field(default_factory=dict)  # priority -> count, mean/max ms
    # application -> share, waiting, refused (over its part of the queue), count, mean/max ms
    by_application: dict[str, dict] = field(default_factory=dict)

    def as_json(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class Routed:
    """A routed non-streamed response."""

    body: dict
    node: str
    routing: dict = field(default_factory=dict)


class GatewayError(Exception):
    """An error with an HTTP status, shown to the client in its API's error format."""

    status = 500
    code = "server_error"
    retry_after_s: int | None = None  # sent as Retry-After when set

    def __init__(self, message: str, status: int | None = None, retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.status, self.__dict__))


def _rebuild(cls: type, message: str, status: int, attrs: dict) -> "GatewayError":
    error = cls.__new__(cls)
    GatewayError.__init__(error, message, status)
    error.__dict__.update(attrs)
    return error


class BadRequest(GatewayError):
    status = 400
    code = "invalid_request_error"


class ModelNotFound(GatewayError):
    status = 404
    code = "model_not_found"


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class Conflict(GatewayError):
    status = 409
    code = "conflict"


class NoNodeAvailable(GatewayError):
    status = 503
    code = "no_node_available"


class QueueFull(GatewayError):
    """The cluster is saturated and the priority queue is full."""

    status = 429
    code = "queue_full"


class NodeError(GatewayError):
    """The node answered with an error status, or could not be reached."""

    status = 502
    code = "node_error"

    def __init__(self, message: str, status: int | None = None, retryable: bool = True):
        super().__init__(message, status)
        self.retryable = retryable


class StreamBroken(GatewayError):
    """A stream failed after chunks were already sent to the client."""

    status = 502
    code = "stream_broken"


def unwrap(exc: BaseException) -> BaseException:
    """The user exception inside a Ray task error, if any."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def error_message(exc: BaseException) -> str:
    """What to tell a client about a failure: the gateway's own message, else the error's type and text."""
    error = unwrap(exc)
    return error.message if isinstance(error, GatewayError) else f"{type(error).__name__}: {error}"


def is_process_death(exc: BaseException, certain: bool = False) -> bool:
    """The Ray process that was to answer died (or, unless `certain`, is unreachable for now):
    the call may succeed on a live or restarted one, and says nothing about a node. Only a
    certain death means the call's work died with it (an unreachable process may have done it)."""
    return isinstance(unwrap(exc), ActorDiedError if certain else RayActorError)


def is_node_fault(exc: BaseException) -> bool:
    """A failure that counts against the node (unreachable, 5xx, worker crash), not a
    client error the node rightly refused. A node's 4xx (a model it lost since it was listed,
    an endpoint it lacks, its own rate limit) may send the request elsewhere, but is no fault:
    else a client repeating a request some node refuses could open that node's breaker."""
    error = unwrap(exc)
    if isinstance(error, NodeError):
        return error.retryable and not 400 <= error.status < 500
    return not isinstance(error, GatewayError) and not is_process_death(error)
