"""What the router knows of each node's loaded models and what a cold model costs there, with
numbers worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest

from sollol_serve.config import RoutingConfig
from sollol_serve.routing.core import RoutingCore
from sollol_serve.routing.keep_alive import FOREVER, keep_alive_s, session_s
from sollol_serve.routing.placement import pin_target, warm_ahead
from sollol_serve.routing.policy import Scored
from sollol_serve.routing.predict import Prediction, Priors, predict
from sollol_serve.routing.residency import (
    DEFAULT_MAX_LOADED,
    PIN_EVICTION_S,
    ColdCost,
    Demand,
    NodeResidency,
    Residency,
)
from tests.unit.test_core import book_of, nv, prof, speed, start

LOADS = {"a": 4.0, "b": 5.0, "c": 6.0, "d": 2.0}
ORDER = {"b": "sha256:1", "a": "sha256:2", "c": "sha256:3", "d": "sha256:4"}  # Ollama's path order: b, a, c, d


def cost(res: Residency, model: str, now: float, running: dict[str, list[float]] | None = None,
         capacity: int = 2, warm_elsewhere: bool = False) -> ColdCost:
    return res.cold_cost("n", model, now, capacity, LOADS.__getitem__, running or {}, ORDER.__getitem__,
                         lambda m: warm_elsewhere)


def full_node(at: float = 100.0) -> Residency:
    res = Residency()
    res.of("n").poll(frozenset({"a", "b"}), at)
    return res


def test_how_many_models_a_node_holds():
    node = NodeResidency()
    assert node.capacity(None) == DEFAULT_MAX_LOADED == 3 and node.capacity_source(None) == "default"
    node.poll(frozenset({"a", "b"}), 1.0)
    node.poll(frozenset({"a"}), 2.0)  # b expired: fewer loaded, nothing learned
    assert node.learned_max is None
    node.poll(frozenset({"a", "c"}), 3.0)  # c loaded beside a: room, nothing learned
    node.poll(frozenset({"a", "d"}), 4.0)  # d replaced c at the same count: full at 2
    assert node.capacity(None) == 2 and node.capacity_source(None) == "learned"
    assert node.capacity(5) == 5 and node.capacity_source(5) == "configured"
    node.poll(frozenset({"a", "b", "c"}), 5.0)  # seen holding 3: never believed fewer
    assert node.capacity(None) == 3
    assert dict(node.loads) == {"a": 1, "b": 2, "c": 2, "d": 1}
    assert dict(node.evictions) == {"b": 1, "c": 1, "d": 1}


def test_the_newest_fact_wins_whatever_its_source():
    res = Residency()
    res.of("n").poll(frozenset({"a"}), 10.0)
    res.finished("n", "c", ok=True, now=12.0)  # an answer: c is loaded there at 12
    res.of("n").poll(frozenset({"a"}), 11.0)  # a report taken before it, arriving late: ignored
    assert res.is_loaded("n", "c") and res.is_loaded("n", "a")
    res.of("n").poll(frozenset({"a"}), 13.0)  # a newer one without c: it is gone
    assert not res.is_loaded("n", "c")
    assert res.is_loaded("n", "a", now=13.0 + 299) and not res.is_loaded("n", "a", now=13.0 + 301)  # keep-alive


def test_room_for_another_model_costs_only_its_load():
    res = Residency()
    res.of("n").poll(frozenset({"a"}), 100.0)
    assert cost(res, "c", 100.0) == ColdCost(load_s=6.0)


def test_a_full_node_evicts_the_first_idle_model_in_ollamas_order_and_charges_its_demand():
    # b comes first in path order but is busy; a is idle: a goes, no drain. a was asked for 3
    # times at 100 s: 3/60 = 0.05 requests/s; within the 30 s horizon that is 1.5, capped at 1:
    # its next request surely pays its 4 s load. c: 6 s load.
    res = full_node()
    for _ in range(3):
        res.demand.note("a", 100.0)
    c = cost(res, "c", 100.0, running={"b": [3.0, 1.0]})
    assert (c.victim, c.drain_s, c.load_s, c.eviction_s) == ("a", 0.0, 6.0, 4.0)
    # 60 s later with no request for a: 0.05 * e^-1 = 0.018394/s, 0.5518 within 30 s: 2.2073 s
    later = cost(res, "c", 160.0, running={"b": [3.0, 1.0]})
    assert later.eviction_s == pytest.approx(0.05 * math.exp(-1) * 30 * 4.0, rel=1e-6)
    # a warm elsewhere too: its requests can go there; a quarter of it
    assert cost(res, "c", 100.0, running={"b": [3.0]}, warm_elsewhere=True).eviction_s == pytest.approx(1.0)


def test_a_full_node_with_every_model_busy_waits_for_the_first_in_order_to_drain():
    # both busy: b (first path) is waited for, until the longer of its two requests ends (3 s)
    c = cost(full_node(), "c", 100.0, running={"b": [3.0, 1.0], "a": [9.0]})
    assert (c.victim, c.drain_s, c.eviction_s) == ("b", 3.0, 0.0)  # nobody asked for b lately


def test_a_load_under_way_is_waited_for():
    res = Residency()
    res.of("n").poll(frozenset(), 100.0)
    res.sent("n", "c", cost(res, "c", 100.0), now=100.0)  # loading c: ready at 106
    assert cost(res, "c", 102.0) == ColdCost(load_s=4.0)  # another request for c: what is left
    assert cost(res, "d", 102.0, capacity=3) == ColdCost(load_s=2.0, queued_load_s=4.0)  # one load at a time
    res.finished("n", "c", ok=True, now=105.0)
    assert res.is_loaded("n", "c") and cost(res, "d", 105.0, capacity=3) == ColdCost(load_s=2.0)


def test_sending_a_cold_request_to_a_full_node_evicts_the_victim_at_once():
    res = full_node()
    res.sent("n", "c", cost(res, "c", 101.0), now=101.0)
    assert not res.is_loaded("n", "b")  # b went (first path, idle), before any report says so
    assert res.of("n").evictions["b"] == 1


def test_demand_decays():
    demand = Demand(tau_s=60.0)
    demand.note("a", 0.0)
    demand.note("a", 60.0)  # 1/60 * e^-1 + 1/60
    assert demand.rate("a", 60.0) == pytest.approx((math.exp(-1) + 1) / 60)
    assert demand.rate("b", 60.0) == 0.0


def test_a_cold_models_waits_run_beside_the_slot_wait_and_the_eviction_is_charged_to_the_score():
    # slot wait 2 s; the load path: 1 s queued load + 3 s drain + 6 s load = 10 s, so the slot
    # is free by then. prefill 10/1000 = 0.01 s, decode 100/50 = 2 s; eviction charge 4 s.
    # total = 0 + 4 + (6 + 0.01 + 2) + 4 = 16.01
    cold = ColdCost(load_s=6.0, queued_load_s=1.0, drain_s=3.0, eviction_s=4.0, victim="a")
    p = predict("n", 1, prof(10, 100), None, Priors(prefill_tps=1000, decode_tps=50), [2.0], False, 1.0, 0, cold)
    assert (p.wait_s, p.load_s, p.total_s) == (0.0, 6.0, pytest.approx(16.01))
    assert p.factors["cold_wait_s"] == 4.0 and p.factors["eviction_s"] == 4.0
    assert p.as_dict()["cold"]["victim"] == "a"


def test_a_request_waits_for_its_warm_node_when_that_is_sooner_than_a_load():
    # a: the model loaded, one slot, busy for 3 more s; b: the model cold there (5 s load).
    # Both decode at 100 tokens/s: 1 s of work. a: 3 + 1 = 4 s; b: 5 + 1 = 6 s: wait for a.
    def ranked(busy_s: float) -> list[str]:
        core = RoutingCore(RoutingConfig(strategy="intelligent"), seed=0)
        core.wall = lambda: 1000.0
        a, b = nv("a", slots=1), nv("b", slots=1, loaded=())
        core.snapshot = {"a": a, "b": b}
        core.book = book_of(speed("a", 10000, 100), speed("b", 10000, 100))
        fid = start(core, core.rank(prof(10, 100), {"b"}, now=0.0)[0], prof(10, 100), now=0.0)
        core.flights["a"][fid].predicted_end = busy_s
        return [s.node.name for s in core.rank(prof(10, 100), set(), now=0.0)]

    assert ranked(3.0)[0] == "a"
    assert ranked(8.0)[0] == "b"  # a's wait (8 + 1 s) is longer than b's load (5 + 1 s)


def _scored(name: str, wait_s: float, cold: ColdCost | None, total_s: float = 1.0) -> Scored:
    p = Prediction(name, total_s, wait_s, cold.load_s if cold else 0.0, 0.0, 1.0, wait_s == 0.0, {}, cold)
    return Scored(nv(name), total_s, 0, "", 1, p)


def test_a_model_is_loaded_ahead_on_the_least_disturbed_node_when_its_warm_nodes_keep_it_waiting():
    # a: warm, 9 s to wait. b: cold, room (5 s load). c: cold, evicts a wanted model (3 s charge).
    # 9 > 5 and 0.5 req/s * 5 s = 2.5 more requests while it loads: load it on b.
    ranked = [_scored("a", 9.0, None), _scored("b", 0.0, ColdCost(load_s=5.0)),
              _scored("c", 0.0, ColdCost(load_s=4.0, eviction_s=3.0, victim="x"))]
    plan = warm_ahead("m", ranked, demand_rps=0.5, loading_anywhere=False)
    assert (plan.node, plan.model, plan.wait_s) == ("b", "m", 9.0)
    assert warm_ahead("m", ranked, 0.5, loading_anywhere=True) is None  # one load of it at a time
    assert warm_ahead("m", ranked, demand_rps=0.1, loading_anywhere=False) is None  # 0.5 more: not worth it
    sooner = [_scored("a", 4.0, None), *ranked[1:]]
    assert warm_ahead("m", sooner, 0.5, False) is None  # 4 s of waiting beats a 5 s load
    # Only nodes that evict: c, if the saving (9 s * 0.5/s * 30 s) outweighs its 3 s charge.
    assert warm_ahead("m", [ranked[0], ranked[2]], 0.5, False).node == "c"
    assert warm_ahead("m", [_scored("a", 9.0, None), _scored("c", 0.0, ColdCost(load_s=4.0, eviction_s=200.0))],
                      0.5, False) is None


def test_capacity_is_learned_from_an_eviction_between_two_reports():
    # Report: c loaded. An answer says d loaded at 5 (the router sent it there). The next report
    # (at 9) has d and not c: c was evicted for d, so the node holds 1.
    node = NodeResidency()
    node.poll(frozenset({"c"}), 1.0)
    node.learn("d", True, 5.0)
    node.poll(frozenset({"d"}), 9.0)
    assert node.capacity(None) == 1 and node.capacity_source(None) == "learned"
    expired = NodeResidency()  # c gone with nothing arriving: it expired, nothing learned
    expired.poll(frozenset({"c", "d"}), 1.0)
    expired.poll(frozenset({"d"}), 9.0)
    assert expired.capacity(None) == DEFAULT_MAX_LOADED


def test_the_keep_alive_sent_grows_with_demand_and_a_pin_keeps_the_model_for_good():
    # 300 s (the nodes' default) + 600 s per request/s, an hour at most; a pin: -1 (forever)
    assert keep_alive_s(0.0, pinned=False, base_s=300.0) == 300
    assert keep_alive_s(0.05, pinned=False, base_s=300.0) == 330
    assert keep_alive_s(2.0, pinned=False, base_s=300.0) == 1500
    assert keep_alive_s(9.0, pinned=False, base_s=300.0) == 3600
    assert keep_alive_s(9.0, pinned=True, base_s=300.0) == FOREVER == -1
    assert session_s(-1) == math.inf and session_s(330) == 330.0


def test_ollama_evicts_the_model_whose_last_keep_alive_was_shortest_before_path_order():
    # b is first in path order, but was last sent with 900 s (wanted); a with 330 s: a goes.
    res = full_node()
    res.of("n").keep_s.update({"b": 900.0, "a": 330.0})
    assert cost(res, "c", 100.0).victim == "a"
    # a pinned (forever) and b idle: b goes whatever its keep-alive
    res.of("n").keep_s["a"] = math.inf
    assert cost(res, "c", 100.0).victim == "b"
    # A model kept 900 s is still loaded 600 s after it was last seen, one with 330 s is not.
    res.of("n").keep_s["a"] = 330.0
    assert res.is_loaded("n", "b", now=100.0 + 600) and not res.is_loaded("n", "a", now=100.0 + 600)


def test_a_pinned_model_is_loaded_on_one_more_node_at_a_time_until_it_has_its_minimum():
    # a: warm. b: room (5 s load). c: evicts something wanted (3 s charge): b, which disturbs none.
    ranked = [_scored("a", 9.0, None), _scored("b", 0.0, ColdCost(load_s=5.0)),
              _scored("c", 0.0, ColdCost(load_s=4.0, eviction_s=3.0, victim="x"))]
    plan = pin_target("m", ranked, min_nodes=2, loading_anywhere=False)
    assert (plan.node, plan.model) == ("b", "m")
    assert pin_target("m", ranked, min_nodes=1, loading_anywhere=False) is None  # has its one
    assert pin_target("m", ranked, min_nodes=2, loading_anywhere=True) is None  # one load at a time
    # with b warm too, a third node is c, even at the price of an eviction: the operator asked
    warm_b = [ranked[0], _scored("b", 0.0, None), ranked[2]]
    assert pin_target("m", warm_b, min_nodes=3, loading_anywhere=False).node == "c"
    assert pin_target("m", warm_b, min_nodes=2, loading_anywhere=False) is None


def test_evicting_a_pin_from_one_of_its_last_nodes_costs_an_hour():
    # a is pinned to 1 node and loaded only here: evicting it is priced PIN_EVICTION_S
    res = full_node()
    res.pins = {"a": 1}
    res.of("n").keep_s["b"] = 900.0  # b kept longer: a, the pin, is the victim by keep-alive
    assert cost(res, "c", 100.0) == ColdCost(load_s=6.0, eviction_s=PIN_EVICTION_S, victim="a")
    res.of("m").poll(frozenset({"a"}), 100.0)  # loaded on a second node: above its minimum
    assert cost(res, "c", 100.0).eviction_s == 0.0  # and nobody asked for it lately
