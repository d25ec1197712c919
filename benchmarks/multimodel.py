"""The multimodel scenario: five models on four Ollama nodes that hold one to three at once.

Every node has all five models installed; `--max-loaded` (OLLAMA_MAX_LOADED_MODELS) is 3, 2, 2
and 1; a cold load takes 1.25 s per GB (0.6 s for the embedder, 4 to 10 s for the others), one
at a time per node, and a model in use is evicted only once idle (the simulator's scheduler is
Ollama's). Requests arrive at 2.2 per second, short chats and embeddings; which model is wanted
shifts halfway through, as when a team starts coding. Answers of 32 to 256 tokens keep about
half of the cluster's decode capacity busy: where each model is loaded decides how long
requests wait, and on which node they run.

Contenders, same seeded workload, each after the same warm-up (the first phase's mix):
- `shipped`: `serve_config.yaml`'s args, nodes from SOLLOL_NODES with nothing about residency;
- `nginx least_conn`: what a load balancer that knows nothing does;
- `hand placement`: an expert's map (each model pinned to nodes that can hold it together,
  least-connections among them: `hand_placement.py`), made for the first phase's mix;
- `best static map`: the map that does best on the warm-up's traffic in the cluster's model
  (`static_map.py`, searched over every map that fits): an expert at their best, for the
  traffic they saw;
- `omniscient (model)`: a bound no router reaches: every model loaded on every node, free,
  and each request sent where it finishes first, in `omniscient.py`'s model of the nodes.
Cold loads are counted at the nodes (the simulators' load counters).
"""

from __future__ import annotations

import random

from contenders import NGINX_LC, OMNISCIENT, SHIPPED, Cluster, Contender, delta, gateway_nodes, serving
from hand_placement import HandPlacementProxy
from loadgen import replay, summarize
from omniscient import bound
from static_map import best_map
from workload import WORDS, Job, NodeSpec, arrivals

LOAD_S_PER_GB = 1.25
# name -> size in GB (sollol sim-node --models name@GB)
SIZES = {"chat:latest": 4.0, "coder:latest": 5.0, "reason:latest": 8.0, "second:latest": 3.2,
         "embed:latest": 0.5}
MODELS = ",".join(f"{name}@{gb}" for name, gb in SIZES.items())
NODES = [
    NodeSpec("big", 4, 80.0, 3000.0, models=MODELS, max_loaded=3, load_s_per_gb=LOAD_S_PER_GB),
    NodeSpec("mid1", 2, 50.0, 1500.0, models=MODELS, max_loaded=2, load_s_per_gb=LOAD_S_PER_GB),
    NodeSpec("mid2", 2, 50.0, 1500.0, models=MODELS, max_loaded=2, load_s_per_gb=LOAD_S_PER_GB),
    NodeSpec("small", 2, 30.0, 800.0, models=MODELS, max_loaded=1, load_s_per_gb=LOAD_S_PER_GB),
]
# Popularity before and after the shift.
PHASES = [
    {"chat:latest": 0.45, "embed:latest": 0.25, "second:latest": 0.12, "coder:latest": 0.10, "reason:latest": 0.08},
    {"coder:latest": 0.45, "chat:latest": 0.20, "embed:latest": 0.20, "reason:latest": 0.10, "second:latest": 0.05},
]
# The expert's map for the first phase: every node's pins fit in what it holds (3, 2, 2, 1).
HAND = {"big": ["chat:latest", "coder:latest", "embed:latest"], "mid1": ["chat:latest", "reason:latest"],
        "mid2": ["coder:latest", "second:latest"], "small": ["embed:latest"]}
HAND_PLACEMENT = Contender("hand placement", "hand")
BEST_MAP = Contender("best static map", "hand")
RATE_RPS = 2.2
DURATION_S = 76.0  # about 168 requests
WARMUP_S = 30.0
OUTPUT_TOKENS = (32, 256)  # about half the cluster's decode capacity at 2.2 requests/s
MEASURE_SEED, WARMUP_SEED = 24, 42


def make_jobs(seed: int, duration_s: float, phases: list[dict[str, float]]) -> list[Job]:
    """Poisson arrivals; the model drawn from the phase's popularity (phases split the time
    evenly); short non-streamed chats, or an embedding for the embedder."""
    rng = random.Random(seed)
    jobs = []
    for t in arrivals(rng, RATE_RPS, duration_s):
        phase = phases[min(int(t / duration_s * len(phases)), len(phases) - 1)]
        model = rng.choices(list(phase), list(phase.values()))[0]
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60)))
        kind = "embed" if model.startswith("embed") else "chat"
        jobs.append(Job(len(jobs), t, kind, 5, rng.randint(*OUTPUT_TOKENS), words, model))
    return jobs


def pins(cluster: Cluster, placement: dict[str, list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for node, models in placement.items():
        for model in models:
            out.setdefault(model, []).append(cluster.sims[node].url)
    return out


def recovery_s(results: list[dict], jobs: list[Job], shift_at: float, window_s: float = 10.0) -> float | None:
    """Seconds after the shift until a `window_s` window of arrivals has a mean latency within
    1.5x of the first phase's steady level (its second half), None if never."""
    done = [(job.at, r["latency_s"]) for r, job in zip(results, jobs) if r.get("ok")]
    steady = [lat for at, lat in done if shift_at / 2 <= at < shift_at]
    if not steady:
        return None
    level = 1.5 * sum(steady) / len(steady)
    t = shift_at
    while t < max((at for at, _ in done), default=shift_at):
        window = [lat for at, lat in done if t <= at < t + window_s]
        if window and sum(window) / len(window) <= level:
            return round(t - shift_at, 1)
        t += 1.0
    return None


def run_one(bench, cluster: Cluster, contender: Contender, warmup: list[Job], jobs: list[Job],
            placements: dict[str, dict[str, list[str]]]) -> dict:
    cluster.reset()
    if contender.kind == "hand":
        placement = placements[contender.name]
        with HandPlacementProxy(pins(cluster, placement)) as url:
            return _measure(cluster, url, warmup, jobs, bench.args.drain_cap, {"pins": placement})
    with serving(contender, cluster, bench.serve_url, "multimodel") as (url, notes):
        row = _measure(cluster, url, warmup, jobs, bench.args.drain_cap, notes)
        if contender.kind == "gateway":
            row["gateway_nodes"] = gateway_nodes(url)
        return row


def _measure(cluster: Cluster, url: str, warmup: list[Job], jobs: list[Job], drain_cap: float, notes: dict) -> dict:
    replay(url, warmup, drain_cap_s=drain_cap)
    before, loads_before = cluster.received(), cluster.loads()
    results, wall, _ = replay(url, jobs, drain_cap_s=drain_cap)
    row = summarize(results, wall)
    row["cold_loads"] = cluster.loads() - loads_before
    row["by_node"] = delta(before, cluster.received())
    row["recovery_after_shift_s"] = recovery_s(results, jobs, DURATION_S / 2)
    row["notes"] = notes
    return row


def multimodel(bench) -> dict:
    jobs = make_jobs(MEASURE_SEED, DURATION_S, PHASES)
    warmup = make_jobs(WARMUP_SEED, WARMUP_S, PHASES[:1])
    placements = {HAND_PLACEMENT.name: HAND, BEST_MAP.name: best_map(NODES, warmup)[0]}
    rows = {}
    with Cluster(NODES, models=tuple(SIZES)) as cluster:
        for contender in (SHIPPED, NGINX_LC, HAND_PLACEMENT, BEST_MAP, *bench.extra):
            rows[contender.name] = row = run_one(bench, cluster, contender, warmup, jobs, placements)
            print(f"[multimodel] {contender.name}: mean {row.get('mean_s')} p95 {row.get('p95_s')} "
                  f"success {row.get('success')} cold loads {row['cold_loads']} "
                  f"recovery {row['recovery_after_shift_s']} by node {row['by_node']}", flush=True)
    rows[OMNISCIENT.name] = bound(NODES, jobs, DURATION_S, bench.args.bound_budget)
    return {"title": "Five models on four nodes that hold 3/2/2/1, popularity shifting halfway",
            "cluster": [{"name": s.name, "slots": s.slots, "decode_tps": s.decode_tps, "max_loaded": s.max_loaded}
                        for s in NODES],
            "models_gb": SIZES, "load_s_per_gb": LOAD_S_PER_GB, "phases": PHASES, "hand_placement": HAND,
            "best_static_map": placements[BEST_MAP.name],
            "shift_to": max(PHASES[1], key=PHASES[1].get),
            "rate_rps": RATE_RPS, "jobs": len(jobs), "warmup_jobs": len(warmup), "contenders": rows}
