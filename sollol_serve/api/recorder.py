"""An Ingress replica's request counts, routing decisions and applications' usage, sent to the
shared metrics book once a second (so the app is one scrape target, whatever the number of replicas).

Only models some node serves become metric labels: a client can send any string as a model,
and every new label is a new time series in every scrape, for good. The rest count as
`unknown`. The served models are asked of the Router at each flush."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from ray.actor import ActorHandle

from sollol_serve.names import normalize_model
from sollol_serve.observability.activity import decision
from sollol_serve.observability.applications import Source, Use
from sollol_serve.observability.metrics import RequestMetrics
from sollol_serve.protocol import StreamEnd

METRICS_FLUSH_S = 1.0
UNKNOWN_MODEL = "unknown"


class RequestRecorder:
    def __init__(self, book: ActorHandle, served_models: Callable[[], Awaitable[set[str]]] | None = None):
        self.book = book
        self.served_models = served_models
        self.known: frozenset[str] = frozenset()  # normalized names of the models nodes serve
        self.metrics = RequestMetrics()  # counts since the last flush
        self.decisions: list[dict] = []  # and the routing decisions
        self.uses: list[Use] = []  # and who sent what

    def label(self, model: str) -> str:
        """The model's metric label: its full name if some node serves it (`llama3.2` and
        `llama3.2:latest` are one model), else `unknown`."""
        name = normalize_model(model)
        return name if name in self.known else UNKNOWN_MODEL

    def record(self, endpoint: str, model: str, node: str, status: int, latency_s: float, ttft_s: float | None,
               routing: dict | None, application: tuple[str, Source] | None = None,
               tokens: tuple[int, int] = (0, 0)) -> None:
        """Count a routed request for its application (name, source), and keep its decision
        for the dashboard. `tokens`: prompt and completion tokens the node used."""
        routing = routing or {}
        label = self.label(model)
        self.metrics.record(endpoint, label, node, status, latency_s, ttft_s, routing.get("attempts", ()))
        if routing:
            self.decisions.append(decision(model, endpoint, status, latency_s, routing))
        name, source = application or ("unknown", "user-agent")
        self.uses.append(Use(name, source, label, node or "none", status, latency_s, tokens[0], tokens[1]))

    def cache_lookup(self, endpoint: str, model: str, hit: bool) -> None:
        self.metrics.cache_lookup(endpoint, self.label(model), hit)

    async def refresh_models(self) -> None:
        if self.served_models is not None:
            try:
                self.known = frozenset(await self.served_models())
            except Exception:  # keep the last known set; the next flush asks again
                pass

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(METRICS_FLUSH_S)
            await self.refresh_models()
            await self.flush()

    async def flush(self) -> None:
        if self.metrics.empty():
            return
        delta, self.metrics = self.metrics, RequestMetrics()
        decisions, self.decisions = self.decisions, []
        uses, self.uses = self.uses, []
        try:
            await self.book.add.remote(delta, decisions, uses)
        except Exception:  # keep the counts for the next flush
            delta.merge(self.metrics)
            self.metrics, self.decisions, self.uses = delta, decisions + self.decisions, uses + self.uses


class StreamAccount:
    """What a stream settles: the key's tokens as they flow, the metrics (with time to first
    chunk) at its end, and its key's in-flight lease when it closes, however it closes."""

    CHARGE_EVERY = 32  # chunks (about one token each) charged per call to the rate limiter

    def __init__(self, recorder: RequestRecorder, endpoint: str, model: str, node: str, started: float,
                 charge: Callable[[int], None], prompt_tokens: int = 0, on_close: Callable[[], None] | None = None,
                 application: tuple[str, Source] | None = None):
        self.recorder, self.endpoint, self.model, self.node = recorder, endpoint, model, node
        self.started, self.charge, self.on_close, self.application = started, charge, on_close, application
        self.prompt_tokens = prompt_tokens  # the estimate, until the node's count arrives
        self.first: float | None = None
        self.chunks = 0
        self.charged = 0
        self.pending = prompt_tokens  # owed before the node's own count arrives at the end
        self.settled = False

    def chunk(self, n: int = 1) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.started
        self.chunks += n
        self.pending += n
        if self.pending >= self.CHARGE_EVERY:
            self._pay(self.pending)

    def end(self, item: StreamEnd) -> None:
        self.settled = True
        self._pay(item.tokens - self.charged)
        self._record(200, item.routing, (item.prompt_tokens, item.completion_tokens))

    def broken(self) -> None:
        self._record(502, None, (self.prompt_tokens, self.chunks))

    def close(self) -> None:
        """The stream is over: a client that left (or a node that broke) still pays for what
        was generated, and the key's lease goes back."""
        if not self.settled:
            self.settled = True
            self._pay(self.pending)
        if self.on_close is not None:
            self.on_close()
            self.on_close = None

    def _pay(self, tokens: int) -> None:
        if tokens > 0:
            self.charge(tokens)
            self.charged += tokens
        self.pending = 0

    def _record(self, status: int, routing: dict | None, tokens: tuple[int, int]) -> None:
        self.recorder.record(self.endpoint, self.model, self.node, status, time.perf_counter() - self.started,
                             self.first, routing, self.application, tokens)
