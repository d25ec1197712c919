"""The gateway's spans, recorded by OpenTelemetry's own SDK in memory: a request's decisions,
time queued and tries on nodes (a failover, a hedge, a stream), with their attributes; a node
is sent the trace's `traceparent`; nothing is recorded or sent with tracing off; a shard
group's start is a span of the request that waits for it."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.util._once import Once

from sollol_serve.config import TimeoutConfig
from sollol_serve.nodes.http import NodeHTTP
from sollol_serve.observability.tracing import decision_attributes, span, trace_headers
from sollol_serve.protocol import FirstByte, NodeError, NoNodeAvailable, Ticket
from sollol_serve.routing.shard_start import await_shard_group
from tests.unit.test_dispatch import PROFILE, REQ, USAGE, FakeLink, FakeRouter, FakeWorkers, dispatcher


def _set_provider(provider) -> None:
    # OpenTelemetry sets its global provider once per process; its own tests reset it this way.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    if provider is not None:
        trace.set_tracer_provider(provider)


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _set_provider(provider)
    yield exporter
    _set_provider(None)


def _request(spans_fn):
    """Run `spans_fn` inside a request span (as Serve's replica span would be); its spans."""
    async def inside():
        with span("request"):
            return await spans_fn()
    return asyncio.run(inside())


def by_name(exporter, name: str) -> list:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_a_failover_is_one_trace_of_decisions_a_queue_and_a_failed_then_a_good_attempt(spans):
    router = FakeRouter("a", "b")
    workers = FakeWorkers(a=FakeLink(error=NodeError("refused", 503)), b=FakeLink(answer={"ok": 1}))
    _request(lambda: dispatcher(router, workers).call(PROFILE, REQ))
    (root,) = by_name(spans, "request")
    decisions, attempts, queues = by_name(spans, "sollol.decision"), by_name(spans, "sollol.attempt"), \
        by_name(spans, "sollol.queue")
    assert len(decisions) == 2 and len(attempts) == 2 and len(queues) == 2
    everything = spans.get_finished_spans()
    assert {s.context.trace_id for s in everything} == {root.context.trace_id}  # one trace
    assert all(s.parent.span_id == root.context.span_id for s in decisions + attempts)
    assert all(q.parent.span_id in {d.context.span_id for d in decisions} for q in queues)
    assert [d.attributes["sollol.node"] for d in decisions] == ["a", "b"]
    assert decisions[1].attributes["sollol.tried"] == ("a",)
    assert queues[0].end_time - queues[0].start_time == 250_000_000  # the ticket's 0.25 s queued
    first, second = attempts
    assert first.attributes["sollol.node"] == "a" and first.status.status_code == StatusCode.ERROR
    assert "refused" in first.status.description
    assert second.attributes["sollol.node"] == "b" and second.status.status_code == StatusCode.UNSET
    assert second.attributes["sollol.tokens_in"] == 3 and second.attributes["sollol.tokens_out"] == 4


def test_a_hedge_is_a_second_attempt_and_the_loser_is_marked_dropped(spans):
    router = FakeRouter("slow", "fast", hedge_after_s=0.01)
    workers = FakeWorkers(slow=FakeLink(answer={"from": "slow"}, delay_s=60.0), fast=FakeLink(answer={"from": "fast"}))
    _request(lambda: dispatcher(router, workers).call(PROFILE, REQ))
    attempts = {s.attributes["sollol.node"]: s for s in by_name(spans, "sollol.attempt")}
    assert attempts["fast"].attributes["sollol.hedge"] is True
    assert attempts["slow"].attributes["sollol.dropped"] is True
    assert attempts["slow"].attributes["sollol.hedge"] is False
    assert by_name(spans, "sollol.decision")[0].attributes["sollol.hedge_after_s"] == 0.01


def test_a_streams_attempt_lasts_the_stream_and_carries_what_the_node_said(spans):
    items = [[FirstByte(running=2), {"n": 1}], [{"n": 2, "done": True}, USAGE]]
    router = FakeRouter("a")

    async def collect():
        return [item async for item in dispatcher(router, FakeWorkers(a=FakeLink(items=items))).stream(PROFILE, REQ)]

    _request(collect)
    (attempt,) = by_name(spans, "sollol.attempt")
    assert attempt.attributes["sollol.stream"] is True and attempt.attributes["sollol.tokens_out"] == 4
    assert attempt.status.status_code == StatusCode.UNSET


def test_the_worker_sends_the_traces_traceparent_and_nothing_when_tracing_is_off(spans):
    async def inside():
        with span("request") as current:
            return trace_headers(), current.get_span_context()

    headers, context = asyncio.run(inside())
    assert headers["traceparent"] == f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    _set_provider(None)  # off: OpenTelemetry's no-op spans

    async def untraced():
        with span("request"):
            return trace_headers()

    assert asyncio.run(untraced()) == {}


def test_a_decision_names_the_chosen_node_its_prediction_and_every_candidates():
    ticket = Ticket(router_id="r", flight_id=1, node="gpu", node_model="llama3.2:latest", probe=True, queued_s=0.5,
                    choice={"score": 1.25, "strategy": "intelligent", "reasoning": "gpu: fastest",
                            "candidates": [{"node": "gpu", "predicted_s": 1.2}, {"node": "cpu", "predicted_s": 7.5}]})
    assert decision_attributes(ticket) == {
        "sollol.node": "gpu", "sollol.model": "llama3.2:latest", "sollol.probe": True, "sollol.predicted_s": 1.2,
        "sollol.score": 1.25, "sollol.strategy": "intelligent", "sollol.reasoning": "gpu: fastest",
        "sollol.queued_s": 0.5, "sollol.candidates": ["gpu: 1.2 s", "cpu: 7.5 s"]}


def _headers_a_node_receives(traced: bool) -> list[str | None]:
    """The `traceparent` a real local node server receives on a call and on a stream, made
    inside a span (or not): the node can join the trace."""
    async def run() -> list[str | None]:
        seen: list[str | None] = []

        async def handler(request: web.Request) -> web.Response:
            seen.append(request.headers.get("traceparent"))
            return web.Response(text='{"done": true}\n')

        app = web.Application()
        app.router.add_post("/x", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/x"
        http = NodeHTTP(TimeoutConfig(), node="n1")
        try:
            if traced:
                with span("sollol.attempt"):
                    await http.post_json(url, {})
                    [line async for line in http.post_lines(url, {})]
            else:
                await http.post_json(url, {})
                [line async for line in http.post_lines(url, {})]
        finally:
            await http.close()
            await runner.cleanup()
        return seen
    return asyncio.run(run())


def test_a_node_is_sent_the_traces_traceparent_on_calls_and_streams(spans):
    call, stream = _headers_a_node_receives(traced=True)
    (attempt,) = by_name(spans, "sollol.attempt")
    context = attempt.context
    assert call == stream == f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def test_an_untraced_call_sends_the_node_no_traceparent():
    assert _headers_a_node_receives(traced=False) == [None, None]


GROUP = {"model": "big:latest", "node": "shard-big", "state": "running", "layers": 32, "size_mb": 4100,
         "backends": [{"address": "127.0.0.1:50052"}, {"address": "127.0.0.1:50053"}], "start_s": 7.5,
         "restarts": 0}


def test_a_shard_groups_start_is_a_span_saying_what_started_and_lasting_until_the_router_sees_it(spans):
    polls = []

    async def ensure(model: str) -> dict:
        assert model == "big"
        return GROUP

    def reachable() -> bool:  # this router's picture has the node healthy at its third look
        polls.append(1)
        return len(polls) >= 3

    _request(lambda: await_shard_group("big", "shard-big", ensure, reachable, timeout_s=5.0, interval_s=0.01))
    (root,) = by_name(spans, "request")
    (started,) = by_name(spans, "sollol.shard_start")
    assert started.parent.span_id == root.context.span_id and started.status.status_code == StatusCode.UNSET
    assert dict(started.attributes) == {
        "sollol.model": "big", "sollol.node": "shard-big", "sollol.shard_state": "running", "sollol.layers": 32,
        "sollol.size_mb": 4100, "sollol.backends": 2, "sollol.start_s": 7.5, "sollol.restarts": 0}
    assert len(polls) == 3 and started.end_time - started.start_time >= 20_000_000  # two waits of 10 ms


def test_a_shard_group_that_cannot_start_ends_its_span_as_failed_with_the_coordinators_reason(spans):
    async def ensure(model: str) -> dict:
        raise NoNodeAvailable("shard group for 'big' could not start: no rpc-server host")

    with pytest.raises(NoNodeAvailable, match="no rpc-server host"):
        _request(lambda: await_shard_group("big", "shard-big", ensure, lambda: True, timeout_s=5.0, interval_s=0.01))
    (started,) = by_name(spans, "sollol.shard_start")
    assert started.status.status_code == StatusCode.ERROR and "no rpc-server host" in started.status.description
    assert "sollol.shard_state" not in started.attributes


def test_a_started_group_this_router_never_sees_is_a_503_after_the_start_timeout(spans):
    async def ensure(model: str) -> dict:
        return GROUP

    with pytest.raises(NoNodeAvailable, match="started but is not reachable"):
        _request(lambda: await_shard_group("big", "shard-big", ensure, lambda: False, timeout_s=0.05, interval_s=0.01))
    (started,) = by_name(spans, "sollol.shard_start")
    assert started.status.status_code == StatusCode.ERROR and started.attributes["sollol.layers"] == 32
