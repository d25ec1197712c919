"""The rebuild paths when one of the gateway's own processes dies (no Ray): a request whose
Router replica died is asked again, a dead worker's request moves on without counting against
its node and the node is routed around until a newer worker reports, a worker re-registers
with a restarted state actor, and the request path's calls to shared actors survive a restart."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from sollol_serve.api.actor_calls import SharedStateUnavailable, optional, survive
from sollol_serve.cluster.state import NodeView
from sollol_serve.config import GatewayConfig
from sollol_serve.nodes import worker as worker_module
from sollol_serve.nodes.backends import NodeInventory
from sollol_serve.protocol import NodeError, is_node_fault, is_process_death
from sollol_serve.routing.holders import Holders
from sollol_serve.routing.lost_workers import LostWorkers
from tests.unit.test_dispatch import PROFILE, REQ, FakeItems, FakeLink, FakeRouter, FakeWorkers, dispatcher, run


class RouterThatDies(FakeRouter):
    """Its first `deaths` answers are the replica dying (`error`); it keeps every outcome whole."""

    def __init__(self, *nodes: str, deaths: int = 1, error: BaseException | None = None, **fields):
        super().__init__(*nodes, **fields)
        self.deaths, self.error, self.whole = deaths, error or ActorDiedError(), []

    async def decide(self, profile, tried, last_error, wait):
        if self.deaths:
            self.deaths -= 1
            raise self.error
        return await super().decide(profile, tried, last_error, wait)

    def report(self, outcome):
        super().report(outcome)
        self.whole.append(outcome)


def test_a_process_death_is_no_node_fault():
    assert is_process_death(ActorDiedError()) and is_process_death(ActorDiedError(), certain=True)
    unreachable = ActorUnavailableError("network", None)
    assert is_process_death(unreachable) and not is_process_death(unreachable, certain=True)
    assert not is_node_fault(ActorDiedError())
    assert not is_process_death(NodeError("down", 503))


def test_a_request_whose_router_died_is_asked_again():
    router = RouterThatDies("a", deaths=2)
    routed = run(dispatcher(router, FakeWorkers(a=FakeLink(answer={"ok": 1}))).call(PROFILE, REQ))
    assert routed.node == "a" and len(router.asked) == 1  # the third ask reached a live replica
    assert router.outcomes == [("a", True)]


def test_an_unreachable_router_is_not_asked_twice():
    # It may have issued the ticket: asking again could hold two slots for one request.
    router = RouterThatDies("a", error=ActorUnavailableError("network", None))
    with pytest.raises(ActorUnavailableError):
        run(dispatcher(router, FakeWorkers(a=FakeLink(answer={"ok": 1}))).call(PROFILE, REQ))


def test_a_router_that_stays_dead_fails_the_request_after_bounded_tries():
    router = RouterThatDies("a", deaths=100)
    with pytest.raises(ActorDiedError):
        run(dispatcher(router, FakeWorkers(a=FakeLink(answer={"ok": 1}))).call(PROFILE, REQ))
    assert router.deaths == 100 - 5  # the first ask and four more


def test_a_dead_workers_request_moves_on_and_tells_the_router():
    router = RouterThatDies("a", "b", deaths=0)
    workers = FakeWorkers(a=FakeLink(error=ActorDiedError()), b=FakeLink(answer={"ok": 1}))
    routed = run(dispatcher(router, workers).call(PROFILE, REQ))
    assert routed.node == "b"
    # learn nothing of a (the node did nothing wrong), and say its worker died
    assert [(o.node, o.ok, o.worker_died) for o in router.whole] == [("a", None, True), ("b", True, False)]


def test_a_dead_workers_stream_before_its_first_chunk_moves_on():
    router = RouterThatDies("a", "b", deaths=0)
    dead = FakeLink(items=[ActorDiedError()])
    live = FakeLink(items=[[{"n": 1, "done": True}]])

    async def collect():
        return [item async for item in dispatcher(router, FakeWorkers(a=dead, b=live)).stream(PROFILE, REQ)]

    out = run(collect())
    assert out[1] == [{"n": 1, "done": True}]
    assert [(o.node, o.ok, o.worker_died) for o in router.whole][0] == ("a", None, True)


def _view(name: str, started: float | None) -> NodeView:
    return NodeView(name=name, url="http://x:1", kind="ollama", healthy=True, models={}, loaded=frozenset(),
                    slots=1, slots_known=False, in_flight_elsewhere=0, worker_started_at=started)


def test_a_node_whose_worker_died_is_routed_around_until_a_newer_worker_reports():
    lost = LostWorkers()
    view = _view("a", started=100.0)
    lost.died(view)
    assert not view.routable and "a" in lost
    again = {"a": _view("a", started=100.0)}  # the next sync: still the dead worker's report
    lost.mark(again)
    assert not again["a"].routable
    newer = {"a": _view("a", started=105.0)}  # Serve's replacement registered and probed
    lost.mark(newer)
    assert newer["a"].routable and "a" not in lost


def test_a_worker_that_never_reported_is_replaced_by_the_first_that_does():
    lost = LostWorkers()
    lost.died(_view("a", started=None))
    snapshot = {"a": _view("a", started=3.0)}
    lost.mark(snapshot)
    assert snapshot["a"].routable
    lost.died(_view("b", started=1.0))
    lost.mark({})  # b was removed meanwhile: forgotten
    assert "b" not in lost


class Remote:
    """A fake actor method: `.remote(...)` is awaitable, and records its calls."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def remote(self, *args):
        self.calls.append(args)

        async def result():
            return self.answer() if callable(self.answer) else self.answer
        return result()


class FakeState:
    def __init__(self):
        self.incarnation = "one"
        self.register = Remote(lambda: self.incarnation)
        self.report = Remote(lambda: self.incarnation)


class FakeBackend:
    kind = "ollama"

    async def inventory(self):
        return NodeInventory(kind="ollama", version="0.1", models=[{"name": "m:latest"}])


def _worker(monkeypatch) -> tuple[worker_module.NodeWorker, FakeState]:
    state = FakeState()
    monkeypatch.setattr(worker_module, "state_actor", lambda config: state)
    config = GatewayConfig.model_validate({"nodes": [{"name": "a", "url": "http://127.0.0.1:9", "kind": "ollama"}]})
    worker = worker_module.NodeWorker(config.nodes[0].model_dump(mode="json"), config.model_dump(mode="json"))
    worker.backend = FakeBackend()
    return worker, state


def test_a_worker_registers_again_when_its_report_shows_a_restarted_state_actor(monkeypatch):
    worker, state = _worker(monkeypatch)
    run(worker._register())
    run(worker.probe())
    assert len(state.register.calls) == 1 and len(state.report.calls) == 1
    state.incarnation = "two"  # killed and restarted: it knows no node
    run(worker.probe())
    assert len(state.register.calls) == 2 and worker.joined == "two"
    assert len(state.report.calls) == 3  # the report sent again, to the actor that now knows the node
    assert state.report.calls[-1][0].worker_started_at == worker.started_at


def test_a_router_asks_a_worker_to_rejoin_once_per_incarnation(monkeypatch):
    worker, state = _worker(monkeypatch)
    run(worker._register())
    run(worker.rejoin("one"))  # already registered with it: nothing to do
    assert len(state.register.calls) == 1 and not state.report.calls
    state.incarnation = "two"
    run(worker.rejoin("two"))
    assert len(state.register.calls) == 2 and len(state.report.calls) == 1


def test_a_call_cut_short_by_its_actors_death_is_sent_again_until_it_is_back():
    answers = iter([ActorDiedError(), ActorDiedError(), 7])

    async def call():
        answer = next(answers)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert asyncio.run(survive(call, "rate limiter")) == 7


def test_an_actor_that_does_not_come_back_in_time_is_a_503_not_a_hang():
    async def hangs():
        await asyncio.sleep(10)

    with pytest.raises(SharedStateUnavailable) as info:
        asyncio.run(survive(hangs, "rate limiter", timeout_s=0.01))
    assert info.value.status == 503 and info.value.retry_after_s == 1

    async def dies():
        raise ActorDiedError()

    with pytest.raises(SharedStateUnavailable):  # dead for good: bounded, then a 503
        asyncio.run(survive(dies, "rate limiter", timeout_s=0.6))


def test_an_errors_own_meaning_is_kept():
    async def refuses():
        raise ValueError("a bug, not a death")

    with pytest.raises(ValueError):
        asyncio.run(survive(refuses, "rate limiter"))


def test_an_optional_call_is_skipped_when_its_actor_is_down():
    async def dies():
        raise ActorDiedError()

    assert asyncio.run(optional(dies, "response cache", None)) is None


def test_the_slots_of_a_dead_holders_tickets_are_freed():
    holders = Holders()
    holders.hold("SERVE_REPLICA::app#Ingress#a", "n1", 1)
    holders.hold("SERVE_REPLICA::app#Ingress#a", "n2", 2)
    holders.hold("SERVE_REPLICA::app#Ingress#b", "n1", 3)
    holders.hold(None, "n1", 4)  # the router's own re-measurement: nobody else holds it
    holders.release("n2", 2)  # its outcome came back
    assert holders.orphaned({"SERVE_REPLICA::app#Ingress#a", "SERVE_REPLICA::app#Ingress#b"}) == []
    assert holders.orphaned({"SERVE_REPLICA::app#Ingress#b"}) == [("n1", 1)]  # a was killed
    assert holders.holders() == {"SERVE_REPLICA::app#Ingress#b"}
    holders.release("n1", 3)
    assert holders.holders() == set()
