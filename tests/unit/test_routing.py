"""sollol_serve.cluster.state and sollol_serve.routing.policy."""

from __future__ import annotations

import random

import pytest

from sollol_serve.cluster.breaker import BreakerPolicy
from sollol_serve.cluster.learning import Observation, PerfBook
from sollol_serve.cluster.state import ClusterState, NodeView
from sollol_serve.names import normalize_model
from sollol_serve.protocol import NodeReport
from sollol_serve.routing.policy import (
    Chooser,
    Scored,
    candidates,
    model_known,
    model_loaded,
    score_least_busy,
    score_predicted,
)
from sollol_serve.routing.predict import Prediction


def view(name: str, *, models=("llama3.2:latest",), loaded=None, kind="ollama", healthy=True,
         slots=1, slots_known=True, elsewhere=0) -> NodeView:
    models = {normalize_model(m): m for m in models}
    loaded = frozenset(normalize_model(m) for m in (models if loaded is None else loaded))
    return NodeView(name=name, url=f"http://{name}:1", kind=kind, healthy=healthy, models=models,
                    loaded=loaded, slots=slots, slots_known=slots_known, in_flight_elsewhere=elsewhere)


def names(items) -> list[str]:
    return [getattr(i, "node", i).name for i in items]


def least_busy(nodes: list[NodeView], busy: dict[str, int], model: str) -> list[Scored]:
    """What RoutingCore feeds the Chooser for least_busy: busy = own + elsewhere, the view's
    slots, resident = loaded (or not an Ollama node)."""
    return [score_least_busy(v, busy.get(v.name, 0) + v.in_flight_elsewhere, v.slots, model_loaded(v, model))
            for v in nodes]


def fixed(scores: dict[str, float]) -> list[Scored]:
    """Candidates with given scores, in the given order."""
    return [Scored(view(n), score, 0, f"score {score}") for n, score in scores.items()]


# =======================================================================================
# state
# =======================================================================================
@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("llama3.2:latest", "llama3.2:latest"),
        ("  qwen2.5:0.5b  ", "qwen2.5:0.5b"),
        ("hf.co/org/model", "hf.co/org/model:latest"),
        ("hf.co/org/model:Q4_K_M", "hf.co/org/model:Q4_K_M"),
        ("localhost:5000/library/model", "localhost:5000/library/model:latest"),
        ("tiny-llama", "tiny-llama:latest"),
    ],
)
def test_normalize_model(name, normalized):
    assert normalize_model(name) == normalized


def _report(name: str, *, healthy=True, models=(), loaded=(), kind="ollama", slots=None, error=None) -> NodeReport:
    return NodeReport(name=name, url=f"http://{name}:1", kind=kind, healthy=healthy,
                      models=[{"name": m, "model": m} for m in models],
                      loaded=[{"name": m} for m in loaded], slots=slots, error=error)


def test_register_creates_unhealthy_unprobed_node():
    state = ClusterState()
    state.register("a", "http://a:1", slots=None)
    snap = state.snapshot()
    assert list(snap) == ["a"]
    v = snap["a"]
    assert (v.url, v.kind, v.healthy, v.models, v.loaded, v.slots, v.slots_known, v.in_flight_elsewhere,
            v.error) == ("http://a:1", None, False, {}, frozenset(), 1, False, 0, "not probed yet")


def test_register_keeps_existing_report():
    state = ClusterState()
    state.register("a", "http://a:1", slots=None)
    state.report(_report("a", models=["llama3.2:latest"]))
    state.register("a", "http://a:1", slots=3)
    v = state.snapshot()["a"]
    assert v.healthy is True
    assert (v.slots, v.slots_known) == (3, True)


def test_report_becomes_view_with_normalized_models():
    state = ClusterState()
    state.register("a", "http://a:1", slots=None)
    state.report(_report("a", models=["llama3.2:latest", "tiny-llama"], loaded=["llama3.2"], kind="ollama", slots=4))
    v = state.snapshot()["a"]
    assert v.healthy is True
    assert v.kind == "ollama"
    assert v.models == {"llama3.2:latest": "llama3.2:latest", "tiny-llama:latest": "tiny-llama"}
    assert v.loaded == frozenset({"llama3.2:latest"})
    assert (v.slots, v.slots_known) == (4, True)  # reported slots used when none configured
    assert v.error is None


def test_configured_slots_win_over_reported():
    state = ClusterState()
    state.register("a", "http://a:1", slots=2)
    state.report(_report("a", slots=8))
    v = state.snapshot()["a"]
    assert (v.slots, v.slots_known) == (2, True)


def test_slots_unknown_when_neither_configured_nor_reported():
    state = ClusterState()
    state.register("a", "http://a:1", slots=None)
    state.report(_report("a", models=["llama3.2"], slots=None))
    v = state.snapshot()["a"]
    assert (v.slots, v.slots_known) == (1, False)  # 1 is a placeholder; the router learns the real number
    state.report(_report("a", models=["llama3.2"], slots=2))
    assert (state.snapshot()["a"].slots, state.snapshot()["a"].slots_known) == (2, True)


def test_report_entries_named_by_model_key():
    state = ClusterState()
    state.register("a", "http://a:1", None)
    state.report(NodeReport(name="a", url="http://a:1", kind="openai", healthy=True, models=[{"model": "m1"}]))
    assert state.snapshot()["a"].models == {"m1:latest": "m1"}


def test_sync_counts_other_routers_in_flight_and_excludes_own():
    state = ClusterState()
    for n in ("a", "b"):
        state.register(n, f"http://{n}:1", None)
    v1, _ = state.sync("r1", {"a": 2, "b": 1})
    assert (v1["a"].in_flight_elsewhere, v1["b"].in_flight_elsewhere) == (0, 0)
    v2, _ = state.sync("r2", {"a": 3})
    assert (v2["a"].in_flight_elsewhere, v2["b"].in_flight_elsewhere) == (2, 1)
    v3, _ = state.sync("r3", {"b": 5})
    assert (v3["a"].in_flight_elsewhere, v3["b"].in_flight_elsewhere) == (5, 1)
    v1, _ = state.sync("r1", {"a": 0})  # r1's counts replaced, not added
    assert (v1["a"].in_flight_elsewhere, v1["b"].in_flight_elsewhere) == (3, 5)
    assert state.snapshot()["a"].in_flight_elsewhere == 3  # no exclusion: everyone counted
    state.forget_router("r2")
    assert state.snapshot()["a"].in_flight_elsewhere == 0
    state.forget_router("never-seen")  # no error


def test_a_router_that_stops_syncing_no_longer_holds_slots():
    # r1 syncs every 2 s: gone after 10 missed syncs (20 s); r2 every 0.1 s: after the 5 s floor.
    state = ClusterState()
    state.register("a", "http://a:1", None)
    state.sync("r1", {"a": 2}, every_s=2.0, now=100.0)
    state.sync("r2", {"a": 1}, every_s=0.1, now=100.0)
    views, _ = state.sync("r3", {}, now=104.9)
    assert views["a"].in_flight_elsewhere == 3
    views, _ = state.sync("r3", {}, now=105.1)  # r2 silent for more than 5 s
    assert views["a"].in_flight_elsewhere == 2
    views, _ = state.sync("r3", {}, now=119.9)
    assert views["a"].in_flight_elsewhere == 2
    state.sync("r1", {"a": 1}, every_s=2.0, now=119.95)  # one more sync: kept another 20 s
    views, _ = state.sync("r3", {}, now=139.0)
    assert views["a"].in_flight_elsewhere == 1
    views, _ = state.sync("r3", {}, now=140.0)
    assert views["a"].in_flight_elsewhere == 0 and set(state.in_flight) == {"r3"}


def test_sync_copies_the_in_flight_dict():
    state = ClusterState()
    state.register("a", "http://a:1", None)
    mine = {"a": 4}
    state.sync("r1", mine)
    mine["a"] = 100
    views, _ = state.sync("r2", {})
    assert views["a"].in_flight_elsewhere == 4


def _obs(node: str, decode_tps: float, **kw) -> Observation:
    return Observation(node=node, model="llama3.2:latest", task_type="generation", ok=kw.pop("ok", True),
                       prompt_tokens=100,
                       completion_tokens=100, prefill_s=0.1, decode_s=100 / decode_tps, wall_s=0.1 + 100 / decode_tps,
                       **kw)


def test_sync_merges_observations_from_every_router_into_one_book():
    state = ClusterState()
    state.register("a", "http://a:1", None)
    views, book = state.sync("r1", {}, [_obs("a", 40.0)])
    assert isinstance(book, PerfBook) and book is state.book
    assert isinstance(views["a"], NodeView)
    assert book.perf("a", "llama3.2:latest").decode_tps.mean == pytest.approx(40.0)
    _, book = state.sync("r2", {}, [_obs("a", 60.0), _obs("b", 10.0)])
    perf = book.perf("a", "llama3.2:latest")
    assert perf.decode_tps.n == 2
    assert perf.decode_tps.mean == pytest.approx(50.0)  # second sample weighs 1/2
    assert book.perf("b", "llama3.2:latest").decode_tps.mean == pytest.approx(10.0)
    _, book = state.sync("r1", {})  # no observations: nothing changes
    assert book.perf("a", "llama3.2:latest").decode_tps.n == 2
    assert book.expected_output("llama3.2:latest", "generation") == 100


def test_tags_union_of_healthy_nodes_only():
    state = ClusterState()
    for name in "abc":
        state.register(name, f"http://{name}:1", None)
    state.report(_report("a", models=["llama3.2:latest", "qwen2.5:0.5b"]))
    state.report(_report("b", models=["llama3.2", "mistral:7b"]))  # llama3.2 == llama3.2:latest
    state.report(_report("c", healthy=False, models=["phi3:mini", "mistral:7b"]))
    tags = state.tags()
    assert [t["name"] for t in tags] == ["llama3.2:latest", "mistral:7b", "qwen2.5:0.5b"]
    state.report(_report("a", healthy=False, models=["llama3.2:latest", "qwen2.5:0.5b"]))
    assert [t["name"] for t in state.tags()] == ["llama3.2", "mistral:7b"]


def test_report_of_a_node_not_registered_or_removed_is_ignored():
    state = ClusterState()
    state.report(_report("ghost", models=["llama3.2"]))
    assert "ghost" not in state.snapshot()
    state.register("a", "http://a:1", None)
    state.report(_report("a", models=["llama3.2"]))
    state.remove("a")
    state.report(_report("a", models=["llama3.2"]))  # its last probe, arriving late
    assert state.snapshot() == {}


def test_node_that_goes_down_keeps_its_models_so_requests_get_503_not_404():
    state = ClusterState()
    state.register("a", "http://a:1", None)
    state.report(_report("a", models=["llama3.2"]))
    state.report(_report("a", healthy=False, error="cannot reach node"))
    view = state.snapshot()["a"]
    assert not view.healthy and view.has_model("llama3.2")
    assert state.tags() == []  # /api/tags lists what healthy nodes have


def test_drained_node_is_not_routable_until_undrained():
    state = ClusterState()
    state.register("a", "http://a:1", None)
    state.report(_report("a", models=["llama3.2"]))
    state.drain("a")
    view = state.snapshot()["a"]
    assert view.draining and not view.routable and view.healthy
    state.undrain("a")
    assert state.snapshot()["a"].routable


def test_breaker_opens_from_routers_observations_and_a_recovery_probe_half_opens_it():
    state = ClusterState()
    state.register("a", "http://a:1", None, BreakerPolicy(failures=2, open_s=60.0))
    state.report(_report("a", models=["llama3.2"]))
    state.sync("r1", {}, [_obs("a", 40.0, ok=False)])
    assert state.snapshot()["a"].breaker == "closed"
    state.sync("r2", {}, [_obs("a", 40.0, ok=False)])
    view = state.snapshot()["a"]
    assert view.breaker == "open" and not view.routable
    state.report(_report("a", healthy=True, models=["llama3.2"]))  # was healthy all along: no trial yet
    assert state.snapshot()["a"].breaker == "open"
    state.report(_report("a", healthy=False, models=["llama3.2"]))
    state.report(_report("a", healthy=True, models=["llama3.2"]))  # came back: a trial request decides
    assert state.snapshot()["a"].breaker == "half_open"
    state.sync("r1", {}, [_obs("a", 40.0)])
    assert state.snapshot()["a"].breaker == "closed"


def test_node_view_node_model_and_has_model():
    v = view("a", models=["llama3.2:latest", "tiny-llama", "qwen2.5:0.5b"])
    assert v.node_model("llama3.2") == "llama3.2:latest"
    assert v.node_model("tiny-llama:latest") == "tiny-llama"
    assert v.node_model("tiny-llama") == "tiny-llama"
    assert v.node_model("unknown") == "unknown"
    assert v.has_model("llama3.2") and v.has_model("qwen2.5:0.5b")
    assert not v.has_model("qwen2.5")


# =======================================================================================
# policy: candidates
# =======================================================================================
def test_candidates_healthy_with_model_minus_excluded():
    snap = {v.name: v for v in [
        view("a"),
        view("b", healthy=False),
        view("c", models=["mistral:7b"]),
        view("d", models=["llama3.2"]),
        view("e"),
    ]}
    assert names(candidates(snap, "llama3.2")) == ["a", "d", "e"]
    assert names(candidates(snap, "llama3.2:latest", exclude={"a", "e"})) == ["d"]
    assert names(candidates(snap, "mistral:7b")) == ["c"]
    assert candidates(snap, "phi3") == []


def test_model_known_includes_unhealthy_nodes():
    snap = {"a": view("a", healthy=False, models=["phi3:mini"]), "b": view("b")}
    assert model_known(snap, "phi3:mini")
    assert model_known(snap, "llama3.2")
    assert not model_known(snap, "phi3")
    assert not model_known({}, "llama3.2")


# =======================================================================================
# policy: scoring and Chooser
# =======================================================================================
def test_score_least_busy():
    warm = score_least_busy(view("a", slots=4), 2, 4, resident=True)
    assert (warm.score, warm.busy, warm.slots, warm.reason) == (0.5, 2, 4, "2 in flight / 4 slots")
    assert warm.free and warm.prediction is None
    cold = score_least_busy(view("b", loaded=(), slots=2), 1, 2, resident=False)
    assert (cold.score, cold.reason) == (0.75, "1 in flight / 2 slots, model not loaded")
    # The slots argument is what counts, not the view's (the core passes learned slots).
    probed = score_least_busy(view("c", slots=1, slots_known=False), 1, 2, resident=True)
    assert (probed.score, probed.slots, probed.free) == (0.5, 2, True)
    full = score_least_busy(view("d", slots=2), 2, 2, resident=True)
    assert (full.score, full.free) == (1.0, False)
    assert cold.as_dict() == {"node": "b", "score": 0.75, "in_flight": 1, "slots": 2, "slots_source": "learned",
                              "predicted_s": None, "reason": "1 in flight / 2 slots, model not loaded"}


def test_model_loaded_normalizes_and_only_ollama_cold_loads():
    v = view("a", loaded=["llama3.2"])
    assert model_loaded(v, "llama3.2:latest")
    assert not model_loaded(v, "qwen2.5:0.5b")
    assert model_loaded(view("c", kind="openai", loaded=()), "llama3.2")  # only Ollama nodes cold-load
    assert model_loaded(view("d", kind=None, loaded=()), "llama3.2")


def _prediction(**kw) -> Prediction:
    base = dict(node="a", total_s=1.5, wait_s=0.25, load_s=0.0, prefill_s=0.25, decode_s=1.0, free_slot=True,
                factors={"wait_s": 0.25, "service_s": 1.25, "failure_inflation": 1.0, "risk_s": 0.0})
    base.update(kw)
    return Prediction(**base)


def test_score_predicted_uses_total_and_explains_it():
    s = score_predicted(view("a", slots=2), 1, 2, _prediction())
    assert (s.score, s.busy, s.slots, s.free) == (1.5, 1, 2, True)
    assert s.reason == "predicted 1.50 s = wait 0.25 + load 0.00 + prefill 0.25 + decode 1.00"
    d = s.as_dict()
    assert (d["node"], d["score"], d["in_flight"], d["slots"], d["predicted_s"]) == ("a", 1.5, 1, 2, 1.5)
    assert (d["wait_s"], d["load_s"], d["prefill_s"], d["decode_s"], d["free_slot"]) == (0.25, 0.0, 0.25, 1.0, True)
    assert d["factors"] == {"wait_s": 0.25, "service_s": 1.25, "failure_inflation": 1.0, "risk_s": 0.0}


def test_score_predicted_reason_mentions_failures_risk_and_priors():
    p = _prediction(total_s=2.3, factors={"failure_inflation": 1.25, "risk_s": 0.4, "unmeasured": 1.0})
    s = score_predicted(view("a"), 0, 1, p)
    assert s.reason == ("predicted 2.30 s = wait 0.25 + load 0.00 + prefill 0.25 + decode 1.00, x1.25 for recent "
                        "failures, +0.40 s speed uncertainty, not measured yet (cluster prior)")
    # An inflation within 0.1 % of 1 is not mentioned.
    s = score_predicted(view("a"), 0, 1, _prediction(factors={"failure_inflation": 1.0005, "risk_s": 0.0}))
    assert "failures" not in s.reason and "uncertainty" not in s.reason


def test_least_busy_picks_lowest_in_flight_per_slot():
    nodes = [view("a", slots=1), view("b", slots=4), view("c", slots=2)]
    ranked = Chooser("least_busy").rank(least_busy(nodes, {"a": 1, "b": 2, "c": 2}, "llama3.2"))
    # b: 2/4 = 0.5; a: 1/1 = 1.0 and c: 2/2 = 1.0 tie, first turn keeps list order.
    assert [(s.node.name, s.score) for s in ranked] == [("b", 0.5), ("a", 1.0), ("c", 1.0)]


def test_least_busy_ranks_by_busy_including_other_routers():
    # busy passed to the scorer is all routers' in-flight (RoutingCore.busy adds in_flight_elsewhere).
    nodes = [view("a", elsewhere=3), view("b")]
    ranked = Chooser("least_busy").rank(least_busy(nodes, {"b": 1}, "llama3.2"))
    assert names(ranked) == ["b", "a"]
    assert [(s.busy, s.score) for s in ranked] == [(1, 1.0), (3, 3.0)]
    scored = least_busy([view("a", elsewhere=1, slots=2), view("b", slots=2)], {"b": 2}, "llama3.2")
    assert names(Chooser("least_busy").rank(scored)) == ["a", "b"]


def test_least_busy_cold_model_counts_half_busy():
    warm_busy = view("warm", slots=1)
    cold_idle = view("cold", loaded=(), slots=1)
    # idle cold (0.5) beats busy warm (1.0) ...
    ranked = Chooser("least_busy").rank(least_busy([warm_busy, cold_idle], {"warm": 1}, "llama3.2"))
    assert names(ranked) == ["cold", "warm"]
    # ... but idle warm (0.0) beats idle cold (0.5), whatever the turn.
    chooser = Chooser("least_busy")
    for _ in range(4):
        assert names(chooser.rank(least_busy([cold_idle, warm_busy], {}, "llama3.2"))) == ["warm", "cold"]
    # With 4 slots the cold penalty is 0.5 / 4: one in flight warm (0.25) loses to idle cold (0.125).
    w4, c4 = view("w4", slots=4), view("c4", loaded=(), slots=4)
    ranked = Chooser("least_busy").rank(least_busy([w4, c4], {"w4": 1}, "llama3.2"))
    assert [(s.node.name, s.score) for s in ranked] == [("c4", 0.125), ("w4", 0.25)]


def test_least_busy_breaks_ties_by_rotating():
    nodes = [view("a"), view("b"), view("c")]
    chooser = Chooser("least_busy")
    firsts = [names(chooser.rank(least_busy(nodes, {}, "llama3.2")))[0] for _ in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]


def test_least_busy_rotation_only_among_ties():
    nodes = [view("a"), view("b"), view("busy")]
    chooser = Chooser("least_busy")
    results = [names(chooser.rank(least_busy(nodes, {"busy": 1}, "llama3.2"))) for _ in range(4)]
    assert [r[-1] for r in results] == ["busy"] * 4
    assert {r[0] for r in results} == {"a", "b"}
    assert results[0] == ["a", "b", "busy"]
    assert results[1] == ["b", "a", "busy"]


def test_chooser_empty_candidates():
    for strategy in ("intelligent", "least_busy", "round_robin", "random"):
        assert Chooser(strategy).rank([]) == []


def test_intelligent_sorts_by_predicted_score_without_rotating():
    chooser = Chooser("intelligent")
    scored = fixed({"a": 2.0, "b": 0.5, "c": 1.0, "d": 0.5})
    for _ in range(4):  # ties keep candidate order; no turn-taking between calls
        assert names(chooser.rank(scored)) == ["b", "d", "c", "a"]
    assert names(scored) == ["a", "b", "c", "d"]  # the input list is not reordered


def test_round_robin_rotates_ignoring_load():
    chooser = Chooser("round_robin")
    scored = least_busy([view("a"), view("b"), view("c")], {"a": 100}, "llama3.2")
    orders = [names(chooser.rank(scored)) for _ in range(4)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_random_is_reproducible_with_seed():
    nodes = fixed({n: 0.0 for n in "abcdef"})
    seq1 = [names(Chooser("random", seed=42).rank(nodes)) for _ in range(1)]
    c1, c2 = Chooser("random", seed=42), Chooser("random", seed=42)
    run1 = [names(c1.rank(nodes)) for _ in range(10)]
    run2 = [names(c2.rank(nodes)) for _ in range(10)]
    assert run1 == run2
    assert run1[0] == seq1[0]
    assert all(sorted(r) == list("abcdef") for r in run1)
    assert len({tuple(r) for r in run1}) > 1  # it does shuffle
    # Exactly random.Random(seed).shuffle of the candidate order.
    rng = random.Random(42)
    expected = []
    for _ in range(10):
        order = list("abcdef")
        rng.shuffle(order)
        expected.append(order)
    assert run1 == expected
    c3 = Chooser("random", seed=7)
    assert [names(c3.rank(nodes)) for _ in range(10)] != run1
    assert names(nodes) == list("abcdef")  # shuffles a copy


def test_a_node_removed_and_added_again_is_a_new_registration():
    """A router that missed the gap (the shard group's node after an idle stop) must see that
    the worker behind the name changed."""
    state = ClusterState()
    state.register("shard:m", "http://127.0.0.1:1", 2)
    first = state.snapshot()["shard:m"].registration
    state.register("shard:m", "http://127.0.0.1:1", 2)  # a worker's restart registers again: same node
    assert state.snapshot()["shard:m"].registration == first
    state.remove("shard:m")
    state.register("shard:m", "http://127.0.0.1:2", 2)
    assert state.snapshot()["shard:m"].registration == first + 1
