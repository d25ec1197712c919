"""sollol_serve.routing.core.RoutingCore: ranking, picking, slot reservation, learning."""

from __future__ import annotations

import dataclasses
import math

import pytest

from sollol_serve.analysis.profile import RequestProfile
from sollol_serve.cluster.learning import MEMORY_S, Ewma, Observation, PerfBook
from sollol_serve.cluster.state import ClusterState, NodeView
from sollol_serve.config import RoutingConfig
from sollol_serve.names import normalize_model
from sollol_serve.protocol import ModelNotFound, NodeReport, NoNodeAvailable
from sollol_serve.routing.core import (
    DEMAND_S,
    ELSEWHERE_REMAINING_S,
    MIN_REMAINING_S,
    RECENT_USE_S,
    Flight,
    Grant,
    RoutingCore,
)
from sollol_serve.routing.predict import Priors
from sollol_serve.routing.residency import DEFAULT_KEEP_ALIVE_S

M = "llama3.2:latest"


def nv(name: str, *, models=(M,), loaded=None, kind="ollama", healthy=True, slots=1, slots_known=True,
       elsewhere=0) -> NodeView:
    models = {normalize_model(m): m for m in models}
    loaded = frozenset(normalize_model(m) for m in (models if loaded is None else loaded))
    return NodeView(name=name, url=f"http://{name}:1", kind=kind, healthy=healthy, models=models, loaded=loaded,
                    slots=slots, slots_known=slots_known, in_flight_elsewhere=elsewhere)


def prof(tokens_in: int = 10, tokens_out: int = 100, *, model: str = "llama3.2", priority: int = 5,
         task: str = "generation") -> RequestProfile:
    return RequestProfile(task_type=task, complexity="low", tokens_in=tokens_in, tokens_out_est=tokens_out,
                          output_capped=True, requires_gpu=False, model=model, priority=priority)


def speed(node: str, prefill_tps: float, decode_tps: float, model: str = M) -> Observation:
    """A timed, unqueued response showing the node's speeds (400 tokens in, 400 out)."""
    prefill_s, decode_s = 400 / prefill_tps, 400 / decode_tps
    return Observation(node=node, model=model, task_type="generation", ok=True, prompt_tokens=400,
                       completion_tokens=400, prefill_s=prefill_s, decode_s=decode_s, load_s=0.0,
                       wall_s=prefill_s + decode_s)


def book_of(*observations: Observation) -> PerfBook:
    book = PerfBook()
    book.merge_from(list(observations))
    return book


def core_with(strategy: str, *views: NodeView, book: PerfBook | None = None) -> RoutingCore:
    core = RoutingCore(RoutingConfig(strategy=strategy), seed=0)
    core.snapshot = {v.name: v for v in views}
    if book is not None:
        core.book = book
    return core


def pick(core: RoutingCore, ranked, priority: float = 10.0, profile: RequestProfile | None = None,
         now: float = 0.0):
    """The node `core.pick` chose (its Scored), or None."""
    grant = core.pick(ranked, profile or prof(priority=min(int(priority), 10)), priority, now)
    return grant.choice if grant else None


def start(core: RoutingCore, choice, profile: RequestProfile, now: float) -> int:
    """Reserve a slot on `choice` as the router does; the flight id."""
    return core.start(Grant([choice], choice, -1), profile, now).flight_id


def names(ranked) -> list[str]:
    return [s.node.name for s in ranked]


def fill(core: RoutingCore, node: str, n: int, predicted_end: float, model: str = "llama3.2") -> None:
    for i in range(n):
        core.flights[node][1000 + i] = Flight(node, model, started=predicted_end - 1.0, predicted_end=predicted_end,
                                              concurrent=i + 1)


# fast: 4000 prefill / 400 decode tok/s, 4 slots; slow: 8x slower, 1 slot.
FAST_SLOW_BOOK = (speed("fast", 4000, 400), speed("slow", 500, 50))


def test_construction_from_config():
    core = RoutingCore(RoutingConfig(strategy="least_busy", queue_max=3, aging_s=2.5))
    assert core.strategy == "least_busy" and core.chooser.strategy == "least_busy"
    assert (core.queue.max_size, core.queue.aging_s) == (3, 2.5)
    assert core.snapshot == {} and core.pending == [] and core.in_flight_counts() == {}
    assert RoutingCore(RoutingConfig()).strategy == "intelligent"


# =======================================================================================
# rank: errors
# =======================================================================================
@pytest.mark.parametrize("strategy", ["intelligent", "least_busy", "round_robin", "random"])
def test_rank_unknown_model_raises_model_not_found(strategy):
    core = core_with(strategy, nv("a"), nv("b", healthy=False, models=["phi3:mini"]))
    with pytest.raises(ModelNotFound) as info:
        core.rank(prof(model="mistral:7b"), set(), now=0.0)
    assert info.value.status == 404
    assert "mistral:7b" in info.value.message
    with pytest.raises(ModelNotFound):
        core_with(strategy).rank(prof(), set(), now=0.0)  # empty snapshot


@pytest.mark.parametrize("strategy", ["intelligent", "least_busy"])
def test_rank_model_only_on_unhealthy_nodes_raises_no_node_available(strategy):
    core = core_with(strategy, nv("a"), nv("b", healthy=False, models=["phi3:mini"]),
                     nv("c", healthy=False, models=["phi3:mini"]))
    with pytest.raises(NoNodeAvailable) as info:
        core.rank(prof(model="phi3:mini"), set(), now=0.0)
    assert info.value.status == 503
    assert "(b: down; c: down)" in info.value.message
    # All healthy holders excluded (tried already): also no node available, not "not found".
    with pytest.raises(NoNodeAvailable):
        core.rank(prof(), {"a"}, now=0.0)


def test_rank_returns_only_healthy_candidates_not_excluded():
    core = core_with("intelligent", nv("a"), nv("b"), nv("c", healthy=False), nv("d", models=["phi3:mini"]))
    assert sorted(names(core.rank(prof(), set(), now=0.0))) == ["a", "b"]
    assert names(core.rank(prof(), {"a"}, now=0.0)) == ["b"]


# =======================================================================================
# intelligent vs least_busy: the fast busy node and the slow free one
# =======================================================================================
def test_intelligent_waits_for_busy_fast_node_rather_than_take_idle_slow_one():
    now = 100.0
    core = core_with("intelligent", nv("fast", slots=4), nv("slow", slots=1), book=book_of(*FAST_SLOW_BOOK))
    fill(core, "fast", 4, predicted_end=now + 0.5)
    ranked = core.rank(prof(10, 100), set(), now)
    assert names(ranked) == ["fast", "slow"]
    fast, slow = ranked
    # fast: wait .5 (all 4 slots end in .5 s) + 10/4000 + 100/400 = .7525; slow: 10/500 + 100/50 = 2.02
    assert fast.score == pytest.approx(0.7525)
    assert slow.score == pytest.approx(2.02)
    assert (fast.busy, fast.slots, fast.free) == (4, 4, False)
    assert (slow.busy, slow.slots, slow.free) == (0, 1, True)
    assert fast.prediction.wait_s == pytest.approx(0.5) and fast.prediction.load_s == 0.0
    assert fast.prediction.free_slot is False
    assert pick(core, ranked) is None  # wait for the fast node


def test_intelligent_takes_slow_node_when_the_fast_one_is_busy_for_long():
    now = 100.0
    core = core_with("intelligent", nv("fast", slots=4), nv("slow", slots=1), book=book_of(*FAST_SLOW_BOOK))
    fill(core, "fast", 4, predicted_end=now + 5.0)
    ranked = core.rank(prof(10, 100), set(), now)
    assert names(ranked) == ["slow", "fast"]
    assert ranked[1].score == pytest.approx(5.2525)
    assert pick(core, ranked).node.name == "slow"


def test_least_busy_takes_free_slow_node():
    now = 100.0
    core = core_with("least_busy", nv("fast", slots=4), nv("slow", slots=1), book=book_of(*FAST_SLOW_BOOK))
    fill(core, "fast", 4, predicted_end=now + 0.5)
    ranked = core.rank(prof(10, 100), set(), now)
    assert [(s.node.name, s.score) for s in ranked] == [("slow", 0.0), ("fast", 1.0)]
    # Predictions are attached for reporting even when they don't decide.
    assert ranked[0].prediction.total_s == pytest.approx(2.02)
    assert pick(core, ranked).node.name == "slow"


def test_intelligent_takes_a_free_unmeasured_node_to_measure_it_while_the_best_is_busy():
    now = 100.0
    # new: no numbers yet and cold (prior load 5 s) -> 5 + .2525 = 5.2525, ranked last.
    core = core_with("intelligent", nv("fast", slots=4), nv("slow", slots=1), nv("new", loaded=()),
                     book=book_of(*FAST_SLOW_BOOK))
    fill(core, "fast", 4, predicted_end=now + 0.5)
    ranked = core.rank(prof(10, 100), set(), now)
    assert names(ranked) == ["fast", "slow", "new"]
    assert ranked[2].score == pytest.approx(5.0 + 10 / 2250 + 100 / 225)  # priors: medians of fast and slow
    assert pick(core, ranked).node.name == "new"  # not the measured, free, slow one
    # Busy too: wait.
    fill(core, "new", 1, predicted_end=now + 1.0)  # its one slot taken
    assert pick(core, core.rank(prof(10, 100), set(), now)) is None


def test_pick_non_intelligent_none_when_all_full():
    core = core_with("least_busy", nv("a", slots=1), nv("b", slots=2))
    fill(core, "a", 1, predicted_end=1.0)
    fill(core, "b", 2, predicted_end=1.0)
    ranked = core.rank(prof(), set(), now=0.0)
    assert pick(core, ranked) is None


def test_intelligent_prefers_faster_idle_node_and_unmeasured_node_gets_cluster_prior():
    book = book_of(speed("fast", 4000, 400), speed("slow", 500, 50))
    core = core_with("intelligent", nv("slow"), nv("fast"), nv("new"), book=book)
    ranked = core.rank(prof(10, 100), set(), now=0.0)
    # new: median prefill of (4000, 500) = 2250, decode (400, 50) = 225 -> 10/2250 + 100/225 = .4489
    assert names(ranked) == ["fast", "new", "slow"]
    new = ranked[1]
    assert new.score == pytest.approx(10 / 2250 + 100 / 225)
    assert new.prediction.factors["unmeasured"] == 1.0
    assert "not measured yet" in new.reason
    assert pick(core, ranked).node.name == "fast"


def test_intelligent_cold_node_pays_learned_load_time():
    book = book_of(speed("a", 4000, 400), speed("b", 4000, 400))
    cold = Observation(node="b", model=M, task_type="generation", ok=True, prompt_tokens=400, completion_tokens=400,
                       prefill_s=0.1, decode_s=1.0, load_s=3.0, wall_s=4.1)
    book.observe(cold)
    core = core_with("intelligent", nv("b", loaded=()), nv("a", loaded=()), book=book)
    ranked = core.rank(prof(10, 100), set(), now=0.0)
    # a never cold-loaded: the cluster's load time (b's 3 s) is its prior too; both pay 3 s.
    assert [round(s.prediction.load_s, 6) for s in ranked] == [3.0, 3.0]
    core.snapshot["a"] = nv("a")  # now resident on a
    ranked = core.rank(prof(10, 100), set(), now=0.0)
    assert names(ranked) == ["a", "b"]
    assert ranked[0].prediction.load_s == 0.0


# =======================================================================================
# flights: start / finish / busy / remaining / resident
# =======================================================================================
def test_start_reserves_and_finish_releases():
    now = 10.0
    view = nv("a", slots=2, elsewhere=1)
    core = core_with("intelligent", view, book=book_of(speed("a", 4000, 400)))
    assert core.busy(view) == 1  # the other routers' request
    assert core.remaining(view, now) == [ELSEWHERE_REMAINING_S]
    ranked = core.rank(prof(10, 100), set(), now)
    choice = pick(core, ranked)
    total = choice.prediction.total_s
    assert total == pytest.approx(0.2525)
    fid = start(core, choice, prof(10, 100), now)
    assert core.busy(view) == 2
    assert core.in_flight_counts() == {"a": 1}
    flight = core.flights["a"][fid]
    assert (flight.node, flight.model, flight.started, flight.concurrent) == ("a", "llama3.2", now, 2)
    assert flight.predicted_end == pytest.approx(now + total)
    assert sorted(core.remaining(view, now)) == pytest.approx(sorted([total, ELSEWHERE_REMAINING_S]))
    assert core.remaining(view, now + 0.1)[0] == pytest.approx(total - 0.1)
    assert core.remaining(view, now + 60.0)[0] == MIN_REMAINING_S  # overdue: still holds its slot
    # Now full (2 slots): the next ranking sees it.
    ranked = core.rank(prof(10, 100), set(), now)
    assert (ranked[0].busy, ranked[0].free) == (2, False)
    assert pick(core, ranked) is None
    # finish releases
    assert core.finish(fid, "a", now) is flight
    assert core.busy(view) == 1
    assert core.in_flight_counts() == {}
    assert core.remaining(view, now) == [ELSEWHERE_REMAINING_S]
    assert core.finish(fid, "a", now) is None  # twice: nothing
    assert core.finish(fid, "nowhere", now) is None
    assert pick(core, core.rank(prof(10, 100), set(), now)) is not None


def test_start_ids_unique_and_concurrency_counts_up():
    core = core_with("least_busy", nv("a", slots=3))
    ids, concurrency = [], []
    for _ in range(3):
        choice = pick(core, core.rank(prof(), set(), now=0.0))
        fid = start(core, choice, prof(), now=0.0)
        ids.append(fid)
        concurrency.append(core.flights["a"][fid].concurrent)
    assert len(set(ids)) == 3
    assert concurrency == [1, 2, 3]
    assert core.in_flight_counts() == {"a": 3}


def test_start_without_prediction_ends_now():
    from sollol_serve.routing.policy import score_least_busy
    core = core_with("least_busy", nv("a"))
    fid = start(core, score_least_busy(nv("a"), 0, 1, True), prof(), now=5.0)
    assert core.flights["a"][fid].predicted_end == 5.0


def test_resident_when_same_model_already_in_flight():
    view = nv("a", models=[M, "qwen2.5:0.5b"], loaded=())
    other = nv("b", loaded=())
    core = core_with("least_busy", view, other)
    assert not core.resident(view, "llama3.2", now=10.0)
    start(core, core.rank(prof(model="qwen2.5:0.5b"), set(), now=10.0)[0], prof(model="qwen2.5:0.5b"), now=10.0)
    assert not core.resident(view, "llama3.2", now=10.0)  # another model doesn't make it resident
    choice = next(s for s in core.rank(prof(), set(), now=10.0) if s.node.name == "a")
    fid = start(core, choice, prof(model="llama3.2"), now=10.0)  # unnormalized name
    assert core.resident(view, "llama3.2:latest", now=10.0)
    assert core.resident(view, "llama3.2", now=10.0)
    assert not core.resident(other, "llama3.2", now=10.0)  # other node
    # It answered: loaded there, and taken as loaded for a keep-alive after (Ollama counts it
    # from the request's end) ...
    clock = [1000.0]
    core.wall = lambda: clock[0]
    core.finish(fid, "a", 50.0, ok=True)
    clock[0] += DEFAULT_KEEP_ALIVE_S - 1.0
    assert core.resident(view, "llama3.2", now=50.0)
    # ... but not once Ollama has likely unloaded it.
    clock[0] += 2.0
    assert not core.resident(view, "llama3.2", now=50.0)
    assert core.resident(nv("c", kind="openai", loaded=()), "llama3.2", now=0.0)  # not Ollama: always resident
    assert core.resident(nv("d", loaded=["llama3.2"]), "llama3.2:latest", now=0.0)


def test_resident_while_a_long_flight_is_still_on_the_node():
    view = nv("a", loaded=())
    core = core_with("least_busy", view)
    start(core, core.rank(prof(), set(), now=0.0)[0], prof(), now=0.0)
    assert core.in_flight_counts() == {"a": 1}
    assert core.resident(view, "llama3.2", now=300.0)


def test_resident_flight_removes_cold_penalty_and_load_time():
    view = nv("a", loaded=(), slots=4)
    core = core_with("least_busy", view, book=book_of(speed("a", 4000, 400)))
    first = core.rank(prof(10, 100), set(), now=0.0)[0]
    assert first.score == pytest.approx(0.5 / 4)
    assert first.prediction.load_s == 5.0  # the default prior: nobody has measured a cold load
    start(core, first, prof(10, 100), now=0.0)
    second = core.rank(prof(10, 100), set(), now=0.0)[0]
    assert second.score == pytest.approx(1 / 4)  # 1 in flight, no cold penalty
    # but it waits for what is left of the first one's load (none of it has passed yet)
    assert second.prediction.load_s == pytest.approx(5.0, abs=0.1)
    assert second.prediction.cold.victim is None


# =======================================================================================
# plan: deciding for the queue
# =======================================================================================
def test_plan_waiters_book_their_work_so_later_ones_go_elsewhere():
    now = 50.0
    # fast: 1 slot, busy .1 s more; slow: 2x slower (service .505 s for the request), idle.
    core = core_with("intelligent", nv("fast"), nv("slow"), book=book_of(speed("fast", 4000, 400),
                                                                          speed("slow", 2000, 200)))
    fill(core, "fast", 1, predicted_end=now + 0.1)
    requests = [(prof(10, 100), set(), 5), (prof(10, 100), set(), 5), (prof(10, 100), set(), 5)]
    decisions = core.plan(requests, now)
    # 1st: fast .1 + .2525 = .3525 < slow .505 -> waits for fast (booking .3525 there)
    # 2nd: fast waits for the 2nd to finish: .3525 + .2525 = .605 > .505 -> slow, granted
    # 3rd: not looked at: no node has room left (it would wait for fast: .605 < .505 + .505)
    assert len(decisions) == 2 and decisions[0] is None
    grant = decisions[1]
    assert isinstance(grant, Grant)
    assert grant.choice.node.name == "slow"
    assert names(grant.ranked) == ["slow", "fast"]
    assert grant.ranked[1].score == pytest.approx(0.605)
    assert core.flights["slow"][grant.flight_id].predicted_end == pytest.approx(now + 0.505)
    assert core.in_flight_counts() == {"fast": 1, "slow": 1}
    # The bookings last only for the plan.
    assert core.remaining(core.snapshot["fast"], now) == pytest.approx([0.1])


def test_plan_reports_errors_per_request_and_keeps_going():
    core = core_with("least_busy", nv("a", slots=1), nv("b", healthy=False, models=["phi3:mini"]))
    decisions = core.plan([(prof(model="nope"), set(), 5), (prof(model="phi3:mini"), set(), 5), (prof(), set(), 5),
                           (prof(), set(), 5)], now=0.0)
    assert isinstance(decisions[0], ModelNotFound)
    assert isinstance(decisions[1], NoNodeAvailable)
    assert isinstance(decisions[2], Grant) and decisions[2].choice.node.name == "a"
    assert len(decisions) == 3  # a's only slot went to the one before: the last is not looked at
    assert core.plan([], now=0.0) == []


def test_background_work_leaves_the_reserved_slot_to_live_requests():
    core = core_with("least_busy", nv("a", slots=2), nv("b", slots=2))
    fill(core, "a", 2, predicted_end=5.0)
    fill(core, "b", 1, predicted_end=5.0)  # one slot free in the cluster: the reserve
    ranked = core.rank(prof(priority=1), set(), 0.0)
    assert pick(core, ranked, priority=1) is None  # batch work waits
    assert pick(core, ranked, priority=1.0 + 0.5) is None  # aged, still background
    assert pick(core, ranked, priority=3).node.name == "b"  # aged past background: served
    assert pick(core, ranked, priority=5).node.name == "b"  # live work takes it
    decisions = core.plan([(prof(priority=8), set(), 8), (prof(priority=1), set(), 1)], now=0.0)
    assert isinstance(decisions[0], Grant) and len(decisions) == 1  # the reserve is taken: no room left
    core.finish(decisions[0].flight_id, "b", 0.0)  # the reserve is free again
    decisions = core.plan([(prof(priority=1), set(), 1), (prof(priority=8), set(), 8)], now=0.0)
    # The background request (first, aged) leaves the reserve alone; the live one behind it takes it.
    assert decisions[0] is None and decisions[1].choice.node.name == "b" and len(decisions) == 2
    for flight_id in list(core.flights["a"]):  # a is idle: two free, one beyond the reserve
        core.finish(flight_id, "a", 0.0)
    assert pick(core, core.rank(prof(priority=1), set(), 0.0), priority=1) is not None


def test_the_reserve_never_stops_background_work_on_a_one_slot_cluster():
    core = core_with("least_busy", nv("only", slots=1))
    assert pick(core, core.rank(prof(priority=1), set(), 0.0), priority=1).node.name == "only"
    reserved_nothing = core_with("least_busy", nv("a", slots=1), nv("b", slots=1))
    reserved_nothing.config = RoutingConfig(strategy="least_busy", reserved_slots=0)
    fill(reserved_nothing, "a", 1, predicted_end=5.0)
    assert pick(reserved_nothing, reserved_nothing.rank(prof(priority=1), set(), 0.0), priority=1).node.name == "b"


# =======================================================================================
# slots
# =======================================================================================
def test_slots_known_used_as_is():
    core = core_with("intelligent")
    core.book.capacity_of("a").proven = 10
    assert core.slots(nv("a", slots=3, slots_known=True)) == 3
    assert core.slots(nv("a", slots=1, slots_known=True)) == 1


@pytest.mark.parametrize(("proven", "slots"), [(None, 1), (1, 1), (5, 5), (100, 100)])
def test_slots_unknown_are_the_proven_ones_only(proven, slots):
    # The predictor never believes in the probe above what the node has proved.
    core = core_with("intelligent")
    if proven is not None:
        core.book.capacity_of("a").proven = proven
    assert core.slots(nv("a", slots=1, slots_known=False)) == slots


def test_unknown_slots_learned_from_observations_reach_ranking():
    view = nv("a", slots=1, slots_known=False)
    core = core_with("least_busy", view)
    fill(core, "a", 1, predicted_end=1.0)
    grant = core.pick(core.rank(prof(), set(), now=0.0), prof(), 5, 0.0)
    assert grant.probe and grant.choice.node.name == "a"  # full by its proven 1: one probe may go
    fill(core, "a", 2, predicted_end=1.0)
    assert pick(core, core.rank(prof(), set(), now=0.0)) is None  # 2 in flight of 1 proven: no second probe
    obs = speed("a", 4000, 400)
    obs.concurrent = 3
    core.learn(obs)  # served 3 at once without queueing
    ranked = core.rank(prof(), set(), now=0.0)
    assert (ranked[0].slots, ranked[0].free) == (3, True)


# =======================================================================================
# learning hand-off and adopt
# =======================================================================================
def test_learn_appends_pending_and_take_pending_empties():
    core = core_with("intelligent", nv("a"))
    o1, o2 = speed("a", 4000, 400), speed("a", 2000, 200)
    core.learn(o1)
    assert core.book.perf("a", M).decode_tps.mean == pytest.approx(400.0)  # learned locally at once
    core.learn(o2)
    assert core.pending == [o1, o2]
    assert core.take_pending() == [o1, o2]
    assert core.pending == []
    assert core.take_pending() == []


def test_adopt_replaces_snapshot_and_book():
    core = core_with("intelligent", nv("old"), book=book_of(speed("old", 1, 1)))
    snapshot = {"new": nv("new")}
    book = book_of(speed("new", 4000, 400))
    core.adopt(snapshot, book)
    assert core.snapshot is snapshot
    assert core.book is book
    assert names(core.rank(prof(), set(), now=0.0)) == ["new"]
    assert core.book.perf("old", M) is None


def test_adopt_from_cluster_state_sync():
    state = ClusterState()
    state.register("a", "http://a:1", slots=None)
    state.report(NodeReport(name="a", url="http://a:1", kind="ollama", healthy=True, models=[{"name": M}],
                            loaded=[{"name": M}]))
    core = RoutingCore(RoutingConfig(strategy="intelligent"))
    o = speed("a", 4000, 400)
    o.concurrent = 2
    core.adopt(*state.sync("r1", core.in_flight_counts(), [o]))
    assert core.snapshot["a"].slots_known is False
    assert core.slots(core.snapshot["a"]) == 2  # proven by the observation, no more
    assert core.rank(prof(10, 100), set(), now=0.0)[0].score == pytest.approx(0.2525)


# =======================================================================================
# retry_after_s
# =======================================================================================
def test_retry_after_s():
    core = core_with("intelligent", nv("fast", slots=4), nv("slow", slots=1), nv("down", healthy=False, slots=8))
    assert core.retry_after_s() == 1  # empty queue, default 5 s service over 5 slots
    for i in range(9):
        core.queue.push(i, 5, now=0.0)
    assert core.retry_after_s() == 10  # (9 + 1) x 5 s / 5 slots
    core.book = book_of(*FAST_SLOW_BOOK)  # 128 tokens: .32 s and 2.56 s -> mean 1.44 s
    assert core.retry_after_s() == 3  # ceil(10 x 1.44 / 5) = ceil(2.88)


# --- breakers, draining, hedge grants -------------------------------------------------------
def _with(view: NodeView, **changes) -> NodeView:
    return dataclasses.replace(view, **changes)


@pytest.mark.parametrize("strategy", ["intelligent", "least_busy"])
def test_open_breaker_and_draining_nodes_get_no_work_and_the_error_says_why(strategy):
    core = core_with(strategy, _with(nv("a"), breaker="open"), _with(nv("b"), draining=True))
    with pytest.raises(NoNodeAvailable) as info:
        core.rank(prof(), set(), now=0.0)
    assert "a: circuit breaker open" in info.value.message and "b: draining" in info.value.message


def test_half_open_node_gets_one_trial_request_at_a_time():
    book = PerfBook()
    for _ in range(3):
        book.observe(speed("fast", 4000, 400))
        book.observe(speed("trial", 400, 40))
    core = core_with("intelligent", nv("fast", slots=4), _with(nv("trial", slots=4), breaker="half_open"), book=book)
    first = pick(core, core.rank(prof(), set(), now=0.0))
    assert first.node.name == "trial"  # slower, but the breaker needs a trial to close
    start(core, first, prof(), 0.0)
    second = pick(core, core.rank(prof(), set(), now=0.0))
    assert second.node.name == "fast"


def test_grant_now_takes_a_free_slot_or_nothing():
    core = core_with("intelligent", nv("a"), nv("b"))
    held = core.grant_now(prof(), set(), 0.0)
    assert held is not None and held.choice.node.name in {"a", "b"}
    other = core.grant_now(prof(), {held.choice.node.name}, 0.0)
    assert other is not None and other.choice.node.name != held.choice.node.name
    assert core.grant_now(prof(), set(), 0.0) is None  # both busy: a hedge never queues
    assert core.grant_now(prof(model="missing"), set(), 0.0) is None


# =======================================================================================
# estimates that stay true: decay toward the prior, re-measuring stale nodes
# =======================================================================================
def timed_speed(node: str, decode_tps: float, at: float) -> Observation:
    o = speed(node, 4000, decode_tps)
    o.at = at
    return o


def test_learned_speed_decays_toward_the_cluster_prior_with_idle_time():
    # fast was measured at 40 tok/s during a slow spell (t=1); mid and slow at the same time.
    book = book_of(timed_speed("fast", 40, 1.0), timed_speed("mid", 200, 1.0), timed_speed("slow", 100, 1.0))
    core = core_with("intelligent", nv("fast"), nv("mid"), nv("slow"), book=book)
    perf = book.perf("fast", M)
    prior = Priors.from_book(book, M).decode_tps
    assert prior == 100.0  # the median of 40, 100, 200
    for idle_s, expected in ((0.0, 40.0), (60.0, 40 * math.exp(-1) + 100 * (1 - math.exp(-1))), (600.0, 100.0)):
        assert perf.decode_tps.toward(prior, 1.0 + idle_s) == pytest.approx(expected, rel=1e-3)
    core.wall = lambda: 61.0
    # 100 tokens: 100 / 77.93 tok/s after a minute idle (was 100 / 40 when fresh).
    decode = core.predict(nv("fast"), prof(10, 100), Priors.from_book(book, M), now=0.0).decode_s
    assert decode == pytest.approx(100 / (40 * math.exp(-1) + 100 * (1 - math.exp(-1))), rel=1e-3)


def test_a_sample_after_a_silence_outweighs_the_old_estimate():
    e = Ewma(follows_changes=True)
    for at in (1.0, 2.0, 3.0, 4.0):
        e.update(10.0, at)  # a slow spell: 10 tok/s
    e.update(60.0, 4.0 + MEMORY_S)  # healed, measured again a minute later
    # weight = max(1 - (1 - 0.2) e^-1, 0.5 for a 6x surprise) = 0.7057
    assert e.mean == pytest.approx(10 + (1 - 0.8 * math.exp(-1)) * 50)
    steady = Ewma(follows_changes=True)
    for at in (1.0, 2.0, 3.0, 4.0):
        steady.update(10.0, at)
    steady.update(60.0, 4.1)  # the same sample at once: still a change, half weight
    assert steady.mean == pytest.approx(35.0)


def _stale_core(now_wall: float) -> RoutingCore:
    book = book_of(timed_speed("fast", 40, 100.0), timed_speed("mid", 200, 100.0 + 9.0))
    core = core_with("intelligent", nv("fast", slots=4), nv("mid", slots=2), book=book)
    core.wall = lambda: now_wall
    core.rank(prof(), set(), now=50.0)  # the model is in demand
    return core


def test_stale_node_is_re_measured_with_a_short_request_once_at_a_time():
    assert _stale_core(now_wall=109.0).stale(now=50.0) == []  # 9 s: not stale yet
    core = _stale_core(now_wall=111.0)  # fast: 11 s without a sample (> stale_after_s 10); mid: 2 s
    assert [(v.name, m) for v, m in core.stale(now=50.0)] == [("fast", M)]
    fid = core.start_remeasure(core.snapshot["fast"], M, now=50.0)
    flight = core.flights["fast"][fid]
    assert flight.remeasure and not flight.probe
    assert core.stale(now=50.0) == []  # one at a time: ours is in flight there
    core.finish(fid, "fast", now=51.0)
    core.learn(dataclasses.replace(timed_speed("fast", 400, 111.0), remeasure=True))
    assert core.stale(now=51.0) == []  # measured again: fresh
    assert core.book.perf("fast", M).decode_tps.mean > 200  # and now the fastest
    assert core.book.expected_output(M, "generation") == 400  # the re-measure's length isn't learned


def test_stale_nodes_are_not_re_measured_without_demand_or_room():
    core = _stale_core(now_wall=111.0)
    assert core.stale(now=50.0 + DEMAND_S + 1) == []  # nobody asked for the model for a minute
    fill(core, "fast", 4, predicted_end=60.0)
    assert core.stale(now=50.0) == []  # no free slot
    cold = _stale_core(now_wall=111.0)
    cold.snapshot["fast"] = nv("fast", slots=4, loaded=())
    cold.residency.nodes.clear()  # nothing known loaded there
    assert cold.stale(now=50.0) == []  # would cost a cold load


def test_only_a_node_with_a_rival_for_the_model_is_re_measured():
    # an estimate no other node competes with decides nothing (and would keep a shard group awake)
    core = _stale_core(now_wall=111.0)
    core.snapshot["mid"] = nv("mid", slots=2, models=("other-model",))
    assert core.stale(now=50.0) == []
    del core.snapshot["mid"]
    assert core.stale(now=50.0) == []


# =======================================================================================
# prefix affinity, bounded by load
# =======================================================================================
def chat_prof(tokens_in: int, prefix: int, conversation: str = "c1", tokens_out: int = 50) -> RequestProfile:
    p = prof(tokens_in, tokens_out)
    p.conversation, p.prefix_tokens = conversation, prefix
    return p


def test_follow_up_turn_goes_where_its_prefix_is_cached():
    # a and b equally fast: 1000 tok/s prefill, 100 decode. A 3000-token follow-up of which
    # 2900 are the previous turn's prompt and answer, cached on b.
    book = book_of(speed("a", 1000, 100), speed("b", 1000, 100))
    core = core_with("intelligent", nv("a", slots=2), nv("b", slots=2), book=book)
    core.remember_turn("c1", "b", now=10.0)
    ranked = core.rank(chat_prof(3000, 2900), set(), now=11.0)
    assert names(ranked) == ["b", "a"]
    b, a = ranked
    assert b.score == pytest.approx(100 / 1000 + 50 / 100)  # only 100 tokens to prefill
    assert a.score == pytest.approx(3000 / 1000 + 50 / 100)
    assert "2900 prompt tokens cached there" in b.reason
    # Another conversation, or affinity off, sees no cache.
    assert core.rank(chat_prof(3000, 2900, conversation="c2"), set(), now=11.0)[0].score == pytest.approx(3.5)
    core.config = RoutingConfig(affinity=False)
    assert core.rank(chat_prof(3000, 2900), set(), now=11.0)[0].score == pytest.approx(3.5)


def test_a_follow_up_asked_before_the_turns_outcome_is_back_finds_its_node():
    """The router learns where a turn runs when it grants the slot: the client asks its next
    turn as soon as the stream ends, before the batched outcome comes back."""
    book = book_of(speed("a", 1000, 100), speed("b", 1000, 100))
    core = core_with("intelligent", nv("a", slots=2), nv("b", slots=2), book=book)
    first = core.admit_now(chat_prof(1000, 0), {"a"}, 5, now=10.0)  # turn 1 on b, still in flight
    assert first.choice.node.name == "b"
    ranked = core.rank(chat_prof(3000, 2900), set(), now=11.0)
    assert names(ranked) == ["b", "a"] and ranked[0].prediction.factors["cached_tokens"] == 2900
    # A turn that failed there leaves no prefix to follow.
    core.forget_turn("c1", "a")  # not where it ran: nothing changes
    assert core.cached_tokens(core.snapshot["b"], chat_prof(3000, 2900), now=11.0) == 2900
    core.forget_turn("c1", "b")
    assert core.cached_tokens(core.snapshot["b"], chat_prof(3000, 2900), now=11.0) == 0


def test_a_follow_up_does_not_count_its_own_ended_turn_as_load():
    """Turn 1's outcome is not back yet, and b also runs another conversation: by the
    router's flights b is full. But the client asking turn 2 has turn 1's answer: that slot
    is free, and the follow-up goes to its cache."""
    book = book_of(speed("a", 1000, 100), speed("b", 1000, 100))
    core = core_with("intelligent", nv("a", slots=2), nv("b", slots=2), book=book)
    first = core.admit_now(chat_prof(1000, 0), {"a"}, 5, now=10.0)
    other = core.admit_now(chat_prof(500, 0, conversation="c2"), {"a"}, 5, now=10.0)
    assert first.choice.node.name == other.choice.node.name == "b"
    ranked = core.rank(chat_prof(3000, 2900), set(), now=11.0)
    b = next(s for s in ranked if s.node.name == "b")
    assert b.busy == 1 and b.prediction.factors["cached_tokens"] == 2900 and names(ranked)[0] == "b"
    # The same request again (not a later turn: as many tokens before its last message) and
    # other conversations see b as full.
    assert next(s for s in core.rank(chat_prof(1000, 0), set(), now=11.0) if s.node.name == "b").busy == 2
    assert next(s for s in core.rank(chat_prof(900, 0, "c3"), set(), now=11.0) if s.node.name == "b").busy == 2


def test_affinity_never_overloads_its_node():
    book = book_of(speed("a", 1000, 100), speed("b", 1000, 100))
    core = core_with("intelligent", nv("a", slots=2), nv("b", slots=2), book=book)
    core.remember_turn("c1", "b", now=10.0)
    fill(core, "b", 2, predicted_end=11.5)  # b is full: the cache would mean waiting there
    ranked = core.rank(chat_prof(3000, 2900), set(), now=11.0)
    b = next(s for s in ranked if s.node.name == "b")
    assert b.prediction.factors.get("cached_tokens") is None  # not counted where no slot is free
    assert names(ranked)[0] == "a"


def test_cached_prefix_is_assumed_evicted_after_as_many_requests_as_slots():
    book = book_of(speed("a", 1000, 100), speed("b", 1000, 100))
    core = core_with("intelligent", nv("a", slots=2), nv("b", slots=2), book=book)
    core.remember_turn("c1", "b", now=10.0)
    b = core.snapshot["b"]
    assert core.cached_tokens(b, chat_prof(3000, 2900), now=11.0) == 2900
    for _ in range(2):  # two other requests started on b (2 slots) since that turn
        fid = start(core, core.rank(prof(), {"a"}, now=11.0)[0], prof(), now=11.0)
        core.finish(fid, "b", now=11.0)
    assert core.cached_tokens(b, chat_prof(3000, 2900), now=11.0) == 0
    # Follow-ups of other conversations b holds reuse their own slots: they evict nothing.
    core.remember_turn("c1", "b", now=12.0)
    core.remember_turn("c2", "b", now=12.0)
    for _ in range(3):
        grant = core.admit_now(chat_prof(3000, 2900, conversation="c2"), {"a"}, 5, now=12.0)
        assert grant.choice.prediction.factors["cached_tokens"] == 2900
        core.finish(grant.flight_id, "b", now=12.0)
        core.remember_turn("c2", "b", now=12.0)  # what the router does when the turn is answered
    assert core.cached_tokens(b, chat_prof(3000, 2900), now=12.0) == 2900
    core.remember_turn("c1", "b", now=12.0)
    assert core.cached_tokens(b, chat_prof(3000, 2900), now=12.0 + RECENT_USE_S + 1) == 0  # too long ago


# =======================================================================================
# context-length fit
# =======================================================================================
def test_request_that_overflows_a_nodes_loaded_context_goes_elsewhere():
    small = _with(nv("small"), contexts={M: 2048})
    large = _with(nv("large"), contexts={M: 8192})
    book = book_of(speed("small", 4000, 400), speed("large", 400, 40))  # small is 10x faster
    core = core_with("intelligent", small, large, book=book)
    assert names(core.rank(prof(1000, 100), set(), now=0.0))[0] == "small"  # 1100 fits in 2048
    assert names(core.rank(prof(3000, 100), set(), now=0.0)) == ["large"]  # 3100 does not
    only_small = core_with("intelligent", small, book=book)
    assert names(only_small.rank(prof(3000, 100), set(), now=0.0)) == ["small"]  # nowhere fits: still served


def test_asking_for_more_context_is_predicted_with_the_reload_and_less_is_not():
    view = _with(nv("a"), contexts={M: 2048})
    core = core_with("intelligent", view, book=book_of(speed("a", 4000, 400)))
    p = prof(1000, 100)
    assert core.predict(view, p, Priors(load_s=3.0), now=0.0).load_s == 0.0
    p.num_ctx = 8192
    assert core.predict(view, p, Priors(load_s=3.0), now=0.0).load_s == 3.0  # Ollama reloads it
    for asked in (2048, 1024):  # sent with the loaded 2048 (nodes/context.py): no reload
        p.num_ctx = asked
        assert core.predict(view, p, Priors(load_s=3.0), now=0.0).load_s == 0.0
    server = _with(nv("s", kind="openai"), contexts={M: 2048})  # a llama-server never reloads
    assert core_with("intelligent", server).resident(server, M, 0.0, num_ctx=8192)
