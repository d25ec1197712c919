"""An Ingress replica's request counts and routing decisions, sent to the shared metrics book
once a second (so the app is one scrape target, whatever the number of replicas)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ray.actor import ActorHandle

from sollol_serve.observability.activity import decision
from sollol_serve.observability.metrics import RequestMetrics
from sollol_serve.protocol import StreamEnd

METRICS_FLUSH_S = 1.0


class RequestRecorder:
    def __init__(self, book: ActorHandle):
        self.book = book
        self.metrics = RequestMetrics()  # counts since the last flush
        self.decisions: list[dict] = []  # and the routing decisions

    def record(self, endpoint: str, model: str, node: str, status: int, latency_s: float, ttft_s: float | None,
               routing: dict | None) -> None:
        """Count a routed request, and keep its decision for the dashboard."""
        routing = routing or {}
        self.metrics.record(endpoint, model, node, status, latency_s, ttft_s, routing.get("attempts", ()))
        if routing:
            self.decisions.append(decision(model, endpoint, status, latency_s, routing))

    def cache_lookup(self, endpoint: str, model: str, hit: bool) -> None:
        self.metrics.cache_lookup(endpoint, model, hit)

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(METRICS_FLUSH_S)
            await self.flush()

    async def flush(self) -> None:
        if self.metrics.empty():
            return
        delta, self.metrics = self.metrics, RequestMetrics()
        decisions, self.decisions = self.decisions, []
        try:
            await self.book.add.remote(delta, decisions)
        except Exception:  # keep the counts for the next flush
            delta.merge(self.metrics)
            self.metrics, self.decisions = delta, decisions + self.decisions


class StreamAccount:
    """What a stream's end settles: the key's tokens and the metrics (with time to first chunk)."""

    def __init__(self, recorder: RequestRecorder, endpoint: str, model: str, node: str, started: float,
                 charge: Callable[[int], None]):
        self.recorder, self.endpoint, self.model, self.node = recorder, endpoint, model, node
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
        self.recorder.record(self.endpoint, self.model, self.node, status, time.perf_counter() - self.started,
                             self.first, routing)
