"""Spans of a request's way through the gateway (OpenTelemetry), beneath Serve's own.

Serve traces its proxy, each replica's handling of a call and each handle call between them,
once its `tracing_config` is enabled (serve_config.yaml); a client's W3C `traceparent`
continues its trace. Ours say what the gateway did inside: the admission, the cache lookup,
the routing decision and the time queued for it, a shard group's start, and every try on a
node (its hedges too), with what the node reported. A node is sent the trace's `traceparent`, so a llama-server or
vLLM that traces joins the trace.

With tracing off no provider is set and every span here is OpenTelemetry's no-op one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, Status, StatusCode

from sollol_serve.protocol import Ticket, Usage

TRACER_NAME = "sollol_serve"


def tracer() -> trace.Tracer:
    """The gateway's tracer, on whatever provider Serve set up in this process (or none)."""
    return _tracer_of(trace.get_tracer_provider())


@functools.lru_cache(maxsize=4)
def _tracer_of(provider: trace.TracerProvider) -> trace.Tracer:
    return provider.get_tracer(TRACER_NAME)  # a new object on every call: made once per provider


def otlp_span_processors() -> list:
    """Serve's `tracing_config.exporter_import_path`: spans batched to an OTLP/HTTP trace
    backend at `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (default http://localhost:4318/v1/traces:
    Jaeger, Tempo, an OpenTelemetry collector; Phoenix listens on :6006/v1/traces)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return [BatchSpanProcessor(OTLPSpanExporter())]


def trace_headers() -> dict[str, str]:
    """The current span as W3C trace headers (`traceparent`), for a node that can join the
    trace; none when nothing is traced."""
    carrier: dict[str, str] = {}
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(carrier)
    return carrier


@contextmanager
def span(name: str, **attributes: object) -> Iterator[Span]:
    """A span of the gateway's, current while the block runs; an error ends it as failed."""
    with tracer().start_as_current_span(name, attributes=_clean(attributes)) as current:
        yield current


def _clean(attributes: dict) -> dict:
    """OpenTelemetry takes str, bool, int, float (and lists of one of them); None is left out."""
    return {f"sollol.{k}": v for k, v in attributes.items() if v is not None}


def decision_attributes(ticket: Ticket) -> dict:
    """What a routing decision span tells: the node chosen, why, and the others' predictions."""
    choice = ticket.choice
    candidates = [c for c in choice.get("candidates") or () if isinstance(c, dict)]
    chosen = next((c for c in candidates if c.get("node") == ticket.node), {})
    return _clean({
        "node": ticket.node, "model": ticket.node_model, "probe": ticket.probe,
        "predicted_s": chosen.get("predicted_s"), "score": choice.get("score"), "strategy": choice.get("strategy"),
        "reasoning": choice.get("reasoning"), "queued_s": round(ticket.queued_s, 6),
        "candidates": [f"{c.get('node')}: {c.get('predicted_s')} s" for c in candidates],
        "hedge_after_s": ticket.hedge_after_s,
    })


def attempt_attributes(usage: Usage | None) -> dict:
    """What a node said of one try: tokens, time to first byte, its own load, queue, prefill
    and decode, and how many it was running at once."""
    if usage is None:
        return {}
    return _clean({
        "tokens_in": usage.prompt_tokens, "tokens_out": usage.completion_tokens, "ttfb_s": usage.ttfb_s,
        "node_load_s": usage.load_s, "node_queued_s": usage.queued_s, "node_prefill_s": usage.prefill_s,
        "node_decode_s": usage.decode_s, "node_running": usage.running, "total_s": usage.total_s,
    })


def shard_start_attributes(group: dict) -> dict:
    """What a shard group's start tells (the coordinator's view of the group): its state, the
    model's layers and size, its rpc-servers, its last start's seconds and restarts."""
    return _clean({
        "shard_state": group.get("state"), "layers": group.get("layers"), "size_mb": group.get("size_mb"),
        "backends": len(group.get("backends") or ()), "start_s": group.get("start_s"),
        "restarts": group.get("restarts"),
    })


def failed(current: Span, message: str) -> None:
    current.set_status(Status(StatusCode.ERROR, message))
