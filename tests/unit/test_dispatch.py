"""The dispatcher's legs with a fake router and fake worker links: tickets, failover, hedges,
streams and the outcomes reported back (no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from sollol_serve.analysis.profile import RequestProfile
from sollol_serve.config import FailoverConfig
from sollol_serve.protocol import (
    BadRequest,
    FirstByte,
    NodeError,
    NodeRequest,
    NoNodeAvailable,
    StreamBroken,
    StreamEnd,
    StreamStart,
    Ticket,
    Usage,
    is_node_fault,
)
from sollol_serve.nodes.backends import OllamaBackend
from sollol_serve.routing.dispatch import Dispatcher, Relay

REQ = NodeRequest(api="ollama", op="chat", body={"model": "m"}, stream=False, model="m")
PROFILE = RequestProfile(task_type="generation", complexity="low", tokens_in=5, tokens_out_est=10,
                         output_capped=True, requires_gpu=False, model="m", priority=5)
USAGE = Usage(prompt_tokens=3, completion_tokens=4)


class FakeRouter:
    """Hands out tickets for `nodes` in order, skipping the ones tried; records what comes back."""

    def __init__(self, *nodes: str, **ticket_fields):
        self.nodes, self.fields = list(nodes), ticket_fields
        self.asked: list[tuple[frozenset, str | None, bool]] = []
        self.outcomes, self.first_bytes = [], []
        self.ids = iter(range(100))

    async def decide(self, profile, tried, last_error, wait):
        self.asked.append((tried, last_error, wait))
        left = [n for n in self.nodes if n not in tried]
        if not left:
            if not wait:
                return None
            raise NoNodeAvailable(f"every node failed; last error: {last_error}")
        return Ticket(router_id="r1", flight_id=next(self.ids), node=left[0], node_model=f"{left[0]}-m",
                      choice={"node": left[0]}, queued_s=0.25, **self.fields)

    def report(self, outcome):
        self.outcomes.append((outcome.node, outcome.ok))

    def began(self, ticket, running):
        self.first_bytes.append((ticket.node, running))


class FakeItems:
    def __init__(self, items: list, delay_s: float = 0.0):
        self.items, self.delay_s, self.cancelled = list(items), delay_s, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        await asyncio.sleep(self.delay_s)
        if not self.items:
            raise StopAsyncIteration
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self):
        self.cancelled = True


class FakeLink:
    runtime = False

    def __init__(self, answer=None, error: BaseException | None = None, items: list | None = None,
                 delay_s: float = 0.0):
        self.answer, self.error, self.items, self.delay_s = answer, error, items, delay_s
        self.opened: list[FakeItems] = []
        self.calls: list[str] = []
        self.keep_alives: list[int | None] = []

    async def call(self, req, node_model):
        self.calls.append(node_model)
        self.keep_alives.append(req.keep_alive)
        if self.error:
            raise self.error
        return self.answer, USAGE

    def open(self, method, req, node_model):
        self.calls.append(node_model)
        self.keep_alives.append(req.keep_alive)
        stream = FakeItems(self.items if self.items is not None else [FirstByte(running=2), (self.answer, USAGE)],
                           self.delay_s)
        self.opened.append(stream)
        return stream


class FakeWorkers:
    def __init__(self, **links: FakeLink):
        self.links = links

    def for_ticket(self, ticket):
        return self.links[ticket.node]


def dispatcher(router, workers, max_attempts: int = 3) -> Dispatcher:
    failover = FailoverConfig(max_attempts=max_attempts, backoff_s=0.001, backoff_max_s=0.002)
    return Dispatcher(router, workers, failover, clock=lambda: 0.0)


def run(coro):
    return asyncio.run(coro)


def test_node_faults_versus_client_errors():
    assert is_node_fault(NodeError("refused", 503))
    assert is_node_fault(RuntimeError("worker crashed"))
    assert not is_node_fault(NodeError("bad options", 400, retryable=False))
    assert not is_node_fault(BadRequest("nope"))
    relay = Relay("a")
    assert relay.outcome() is None  # nothing delivered, nothing broke: the client left
    relay.broken = True
    assert relay.outcome() is False


def test_a_call_goes_to_the_ticket_node_and_its_outcome_goes_back():
    router, a = FakeRouter("a", "b"), FakeLink(answer={"message": "hi"})
    routed = run(dispatcher(router, FakeWorkers(a=a)).call(PROFILE, REQ))
    assert routed.node == "a" and routed.body == {"message": "hi"}
    assert a.calls == ["a-m"]  # the node's own name for the model
    assert router.outcomes == [("a", True)]
    assert routed.routing["attempts"] == [{"node": "a", "ok": True}]
    assert routed.routing["queue_wait_ms"] == 250.0 and routed.routing["node"] == "a"


def test_each_try_carries_the_keep_alive_its_ticket_chose_and_the_request_is_not_changed():
    router, a = FakeRouter("a", keep_alive=1500), FakeLink(answer={"message": "hi"})
    d = dispatcher(router, FakeWorkers(a=a))
    run(d.call(PROFILE, REQ))

    async def drain():
        return [item async for item in d.stream(PROFILE, REQ)]

    run(drain())
    assert a.keep_alives == [1500, 1500] and REQ.keep_alive is None


def test_the_keep_alive_is_sent_to_an_ollama_node_unless_the_client_set_its_own():
    backend = OllamaBackend("http://127.0.0.1:1", http=None)
    steered = NodeRequest(api="ollama", op="chat", body={"model": "m"}, stream=False, model="m", keep_alive=-1)
    assert backend._native(steered, "m") == {"model": "m", "keep_alive": -1}
    own = NodeRequest(api="ollama", op="chat", body={"model": "m", "keep_alive": "1m"}, stream=False, model="m",
                      keep_alive=900)
    assert backend._native(own, "m")["keep_alive"] == "1m"
    openai = NodeRequest(api="openai", op="chat", body={"model": "m", "messages": []}, stream=False, model="m",
                         keep_alive=900)
    assert backend._native(openai, "m")["keep_alive"] == 900  # an OpenAI client has no keep_alive of its own
    assert "keep_alive" not in backend._native(REQ, "m")


def test_a_node_fault_moves_the_request_to_the_next_node():
    router = FakeRouter("a", "b")
    workers = FakeWorkers(a=FakeLink(error=NodeError("refused", 503)), b=FakeLink(answer={"ok": 1}))
    routed = run(dispatcher(router, workers).call(PROFILE, REQ))
    assert routed.node == "b"
    assert router.outcomes == [("a", False), ("b", True)]
    assert router.asked[1] == (frozenset({"a"}), "refused", True)  # the router hears what failed
    assert [a["node"] for a in routed.routing["attempts"]] == ["a", "b"]


def test_a_client_error_is_not_retried_and_not_held_against_the_node():
    router = FakeRouter("a", "b")
    workers = FakeWorkers(a=FakeLink(error=NodeError("bad option", 400, retryable=False)))
    with pytest.raises(NodeError, match="bad option"):
        run(dispatcher(router, workers).call(PROFILE, REQ))
    assert router.outcomes == [("a", None)]


def test_a_refusal_from_every_node_reaches_the_client_as_that_refusal():
    # Both nodes answer 404 (say, an endpoint neither serves): the client gets the 404 and
    # its text, not a 503 "every node failed", and neither node is held at fault.
    router = FakeRouter("a", "b")
    lost = FakeLink(error=NodeError("404 page not found", 404))
    with pytest.raises(NodeError, match="404 page not found") as info:
        run(dispatcher(router, FakeWorkers(a=lost, b=lost)).call(PROFILE, REQ))
    assert info.value.status == 404 and router.outcomes == [("a", None), ("b", None)]
    assert not is_node_fault(NodeError("model 'm' not found", 404))
    # The same at max_attempts, before the router runs out of nodes.
    with pytest.raises(NodeError) as info:
        run(dispatcher(FakeRouter("a", "b", "c"), FakeWorkers(a=lost, b=lost), max_attempts=2).call(PROFILE, REQ))
    assert info.value.status == 404


def test_a_refusal_beside_an_outage_is_an_outage():
    router = FakeRouter("a", "b")
    workers = FakeWorkers(a=FakeLink(error=NodeError("gone", 404)), b=FakeLink(error=NodeError("down", 503)))
    with pytest.raises(NoNodeAvailable):
        run(dispatcher(router, workers).call(PROFILE, REQ))
    busy = FakeLink(error=NodeError("too many requests", 429))  # every node busy: not the client's fault
    with pytest.raises(NoNodeAvailable):
        run(dispatcher(FakeRouter("a", "b"), FakeWorkers(a=busy, b=busy)).call(PROFILE, REQ))


def test_attempts_stop_at_max_attempts():
    router = FakeRouter("a", "b", "c")
    fail = FakeLink(error=NodeError("down", 503))
    with pytest.raises(NoNodeAvailable, match="2 attempts failed"):
        run(dispatcher(router, FakeWorkers(a=fail, b=fail, c=fail), max_attempts=2).call(PROFILE, REQ))
    assert router.outcomes == [("a", False), ("b", False)]


def test_a_probe_ticket_reports_the_first_byte():
    router = FakeRouter("a", probe=True, wants_first_byte=True)
    a = FakeLink(answer={"ok": 1})
    routed = run(dispatcher(router, FakeWorkers(a=a)).call(PROFILE, REQ))
    assert routed.node == "a" and router.first_bytes == [("a", 2)]  # with the worker's count
    assert router.outcomes == [("a", True)]


def test_a_slow_node_is_hedged_and_the_first_answer_wins():
    router = FakeRouter("slow", "fast", hedge_after_s=0.01)
    slow = FakeLink(answer={"from": "slow"}, delay_s=60.0)  # never first, however late the hedge's answer
    fast = FakeLink(answer={"from": "fast"})
    routed = run(dispatcher(router, FakeWorkers(slow=slow, fast=fast)).call(PROFILE, REQ))
    assert routed.body == {"from": "fast"}
    assert router.asked[1][2] is False  # a hedge never queues
    assert sorted(router.outcomes) == [("fast", True), ("slow", None)]  # the loser learns nothing
    assert slow.opened[0].cancelled  # and its work is stopped
    assert routed.routing["attempts"][0]["hedge"] is True


def test_a_stream_passes_batches_through_and_ends_with_the_routing():
    items = [[{"n": 1}], [{"n": 2}, {"n": 3, "done": True}, USAGE]]
    router = FakeRouter("a")

    async def collect():
        return [item async for item in dispatcher(router, FakeWorkers(a=FakeLink(items=items))).stream(PROFILE, REQ)]

    out = run(collect())
    assert out[0] == StreamStart(node="a")
    assert out[1:3] == [[{"n": 1}], [{"n": 2}, {"n": 3, "done": True}]]  # the Usage is kept back
    assert isinstance(out[3], StreamEnd) and out[3].tokens == 7 and out[3].routing["node"] == "a"
    assert router.outcomes == [("a", True)]


def test_a_probe_stream_reports_its_first_byte_and_the_client_never_sees_it():
    items = [[FirstByte(running=3), {"n": 1}], [{"n": 2, "done": True}, USAGE]]
    router = FakeRouter("a", probe=True, wants_first_byte=True)

    async def collect():
        return [item async for item in dispatcher(router, FakeWorkers(a=FakeLink(items=items))).stream(PROFILE, REQ)]

    out = run(collect())
    assert out[1:3] == [[{"n": 1}], [{"n": 2, "done": True}]]
    assert router.first_bytes == [("a", 3)]


def test_a_stream_that_breaks_after_its_first_chunk_is_not_retried():
    items = [[{"n": 1}], NodeError("connection reset", 502)]
    router = FakeRouter("a", "b")

    async def collect():
        out = []
        with pytest.raises(StreamBroken):
            async for item in dispatcher(router, FakeWorkers(a=FakeLink(items=items))).stream(PROFILE, REQ):
                out.append(item)
        return out

    assert len(run(collect())) == 2  # the start and the one batch the client has
    assert router.outcomes == [("a", False)]


def test_a_stream_failing_before_its_first_chunk_moves_to_the_next_node():
    router = FakeRouter("a", "b")
    workers = FakeWorkers(a=FakeLink(items=[NodeError("refused", 503)]), b=FakeLink(items=[[{"n": 1}], [USAGE]]))

    async def collect():
        return [item async for item in dispatcher(router, workers).stream(PROFILE, REQ)]

    out = run(collect())
    assert out[0] == StreamStart(node="b")
    assert router.outcomes == [("a", False), ("b", True)]


def test_a_client_leaving_a_stream_gives_the_slot_back_and_stops_the_node():
    router = FakeRouter("a")
    link = FakeLink(items=[[{"n": i}] for i in range(10)])

    async def leave_early():
        stream = dispatcher(router, FakeWorkers(a=link)).stream(PROFILE, REQ)
        await stream.__anext__()
        await stream.__anext__()
        await stream.aclose()

    run(leave_early())
    assert router.outcomes == [("a", None)] and link.opened[0].cancelled
