"""The fairshare scenario: one application floods the cluster, three others chat at a modest rate.

Three simulated nodes of different speeds (the hetero cluster: 60/30/15 tok/s, 4/2/1 slots).
`flood` sends non-streamed chats at about twice what the cluster serves; `chat-a`, `chat-b`
and `chat-c` send one each every 2.5 s (Poisson), all at the same priority, told apart by
`X-SOLLOL-App` (as the gateway ships: no keys). Same seeded arrivals for every contender:

- `modest alone`: the gateway as shipped with the three modest applications only (their
  latency when nobody floods);
- `shipped`: the gateway as shipped (fair share between applications);
- `fair share off`: the same with `routing.fair_share: false` (the queue by arrival, as
  before): the flood's throughput with the old queue;
- `nginx least_conn`;
- the bounds of `fair_bound.py` (`(model)` rows): an ideal fair scheduler on the same arrivals,
  with no gateway and no overhead: what the goals leave the gateway.

Per application: latency, 429s, completions/s. Jain's fairness index per `WINDOW_S` window over
the applications that sent in it: each one's served tokens (prompt + 2 x output, of requests
completed in the window) divided by its max-min fair allocation of what the cluster served then
(no one is allocated more than it asked for in the window; a modest application that got all it
asked scores 1, as does a flood that got the rest).
"""

from __future__ import annotations

import random
import statistics

from contenders import NGINX_LC, SHIPPED, Cluster, Contender, delta, serving
from fair_bound import rows as model_rows
from loadgen import percentile, replay, rounded
from workload import WORDS, Job, NodeSpec, arrivals, capacity_rps

NODES = [NodeSpec("fast", 4, 60.0, 1500.0), NodeSpec("mid", 2, 30.0, 800.0), NodeSpec("slow", 1, 15.0, 150.0)]
FLOOD, MODEST = "flood", ("chat-a", "chat-b", "chat-c")
MODEST_EVERY_S = 2.5
FLOOD_LOAD = 2.0  # times what the cluster serves
DURATION_S = 60.0
WARMUP_S = 15.0
WINDOW_S = 60.0
# Every run is let finish (the flood's backlog drains at what the cluster serves), so that each
# application's throughput counts all it was served, not what a cut left.
DRAIN_S = 180.0
OUTPUT_TOKENS = (16, 128)  # the mean the cluster's capacity is computed for (workload.capacity_rps)
MEASURE_SEED, WARMUP_SEED = 25, 52
ALONE = Contender("modest alone", "gateway")
FAIR_OFF = Contender("fair share off", "gateway", routing={"fair_share": False})


def make_jobs(seed: int, duration_s: float, flood: bool) -> list[Job]:
    """Each application's Poisson arrivals, merged in time order."""
    rng = random.Random(seed)
    streams = [(app, 1 / MODEST_EVERY_S) for app in MODEST]
    if flood:
        streams.append((FLOOD, FLOOD_LOAD * capacity_rps(NODES)))
    timed = [(t, app) for app, rate in streams for t in arrivals(rng, rate, duration_s)]
    jobs = []
    for i, (t, app) in enumerate(sorted(timed)):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60)))
        jobs.append(Job(i, t, "chat", 5, rng.randint(*OUTPUT_TOKENS), words, app=app))
    return jobs


def cost(job: Job) -> float:
    return job.prompt_tokens + 2 * job.output_tokens


def max_min(demands: dict[str, float], total: float) -> dict[str, float]:
    """Water-filling: `total` shared so that nobody gets more than it asked for and the rest
    is split evenly among those who asked for more."""
    alloc, left, open_ = {}, total, sorted(demands, key=demands.get)
    while open_:
        even = left / len(open_)
        app = open_[0]
        if demands[app] <= even:
            alloc[app] = demands[app]
            left -= demands[app]
            open_.pop(0)
        else:
            for app in open_:
                alloc[app] = even
            break
    return alloc


def jain(values: list[float]) -> float | None:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if values and any(values) else None


def fairness(jobs: list[Job], results: list[dict], t0_offsets: list[float]) -> list[float]:
    """Jain's index per window (see the module's docstring)."""
    out = []
    end = max([j.at for j in jobs] + [0.0])
    start = 0.0
    while start < end:
        demand: dict[str, float] = {}
        served: dict[str, float] = {}
        for job, r, done_at in zip(jobs, results, t0_offsets):
            if start <= job.at < start + WINDOW_S:
                demand[job.app] = demand.get(job.app, 0.0) + cost(job)
            if r.get("ok") and start <= done_at < start + WINDOW_S:
                served[job.app] = served.get(job.app, 0.0) + cost(job)
        alloc = max_min(demand, sum(served.values()))
        index = jain([served.get(app, 0.0) / alloc[app] for app in demand if alloc.get(app)])
        if index is not None:
            out.append(round(index, 4))
        start += WINDOW_S
    return out


def per_app(jobs: list[Job], results: list[dict]) -> dict[str, dict]:
    """Per application: latency, refusals, and completions per second from the first arrival
    to its last answer (every run is let finish: `DRAIN_S`), with the nodes that answered."""
    rows = {}
    for app in sorted({j.app for j in jobs}):
        mine = [r for j, r in zip(jobs, results) if j.app == app]
        ok = sorted((r["latency_s"], r.get("node")) for r in mine if r["ok"])
        done = [j.at + r["latency_s"] for j, r in zip(jobs, results) if j.app == app and r["ok"]]
        nodes = {r.get("node") for r in mine if r["ok"] and r.get("node")}
        lat = [r["latency_s"] for r in mine if r["ok"]] + [r["censored_s"] for r in mine if r.get("status") == "unfinished"]
        rows[app] = {"sent": len(mine), "ok": sum(r["ok"] for r in mine),
                     "refused_429": sum(r.get("status") == 429 for r in mine),
                     "unfinished": sum(r.get("status") == "unfinished" for r in mine),
                     "mean_s": rounded(statistics.fmean(lat)) if lat else None,
                     "p50_s": rounded(percentile(lat, 50)), "p95_s": rounded(percentile(lat, 95)),
                     "completions_per_s": rounded(len(done) / max(done)) if done else None,
                     "by_node": {n: sum(r.get("node") == n for r in mine if r["ok"]) for n in sorted(nodes)},
                     # the slowest answers and where they ran: what a p95 of a few dozen is made of
                     "slowest": [[rounded(lat), node] for lat, node in ok[-3:]]}
    return rows


def run_one(bench, cluster: Cluster, contender: Contender, warmup: list[Job], jobs: list[Job]) -> dict:
    cluster.reset()
    with serving(contender, cluster, bench.serve_url, "fairshare") as (url, notes):
        if contender.kind == "nginx":
            cluster.prime()
        else:
            replay(url, warmup, drain_cap_s=bench.args.drain_cap)
        before = cluster.received()
        results, wall, _ = replay(url, jobs, drain_cap_s=DRAIN_S)
        row = {"apps": per_app(jobs, results), "wall_s": round(wall, 1),
               "jain_by_window": fairness(jobs, results, [j.at + r.get("latency_s", 1e9) for j, r in zip(jobs, results)]),
               "by_node": delta(before, cluster.received()), "notes": notes}
    print(f"[fairshare] {contender.name}: " + "; ".join(
        f"{app} p95 {a['p95_s']} ok {a['ok']}/{a['sent']} 429 {a['refused_429']}" for app, a in row["apps"].items())
        + f"; Jain {row['jain_by_window']}", flush=True)
    return row


def fairshare(bench) -> dict:
    jobs = make_jobs(MEASURE_SEED, DURATION_S, flood=True)
    modest = [j for j in jobs if j.app != FLOOD]
    warmup = make_jobs(WARMUP_SEED, WARMUP_S, flood=False)
    rows = model_rows(NODES, jobs, FLOOD, sum(OUTPUT_TOKENS) / 2, per_app, fairness)
    with Cluster(NODES) as cluster:
        rows[ALONE.name] = run_one(bench, cluster, ALONE, warmup, modest)
        for contender in (SHIPPED, FAIR_OFF, NGINX_LC, *bench.extra):
            rows[contender.name] = run_one(bench, cluster, contender, warmup, jobs)
    return {"title": "One application flooding at 2x capacity beside three modest ones, same priority",
            "cluster": [{"name": s.name, "slots": s.slots, "decode_tps": s.decode_tps} for s in NODES],
            "capacity_rps": round(capacity_rps(NODES), 2), "flood_rps": round(FLOOD_LOAD * capacity_rps(NODES), 2),
            "modest_rps_each": 1 / MODEST_EVERY_S, "jobs": len(jobs), "contenders": rows}
