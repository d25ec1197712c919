"""The scenarios of the routing benchmark: clusters, workloads and who competes in each.

Every live contender of a scenario finds the nodes idle with their models cold and no prompt
cached, gets the same unmeasured warm-up workload, then the same seeded measured workload; a
gateway contender is deployed fresh (its own state actor) right before its warm-up and deleted
after its run, so nothing it learned carries over. A replay ends `--drain-cap` seconds after
its last arrival: what still runs then is `unfinished` and its latency an "at least".
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import heal
from contenders import (
    AFFINITY_OFF,
    CONFIGURED,
    NGINX_LC,
    NGINX_RR,
    OMNISCIENT,
    SHIPPED,
    Cluster,
    Contender,
    delta,
    gateway_nodes,
    serving,
)
from loadgen import (
    SYSTEM_PROMPT,
    by_header,
    make_conversations,
    replay,
    replay_conversations,
    summarize,
    summarize_turns,
)
from fairshare import fairshare
from multimodel import multimodel
from omniscient import bound
from workload import NodeSpec, capacity_rps, make_workload

from sollol_serve.sim.engine import count_tokens

MEASURE_SEED, WARMUP_SEED = 7, 1234

# 60 / 30 / 15 decode tokens/s, 4 / 2 / 1 slots; prefill 1500 / 800 / 150 tokens/s.
HETERO = [NodeSpec("fast", 4, 60.0, 1500.0), NodeSpec("mid", 2, 30.0, 800.0), NodeSpec("slow", 1, 15.0, 150.0)]
HOMO = [NodeSpec(f"node{i}", 2, 60.0, 1200.0) for i in range(3)]
# 1 to 64 slots. A single stream decodes faster on the bigger nodes (15 -> 30 tokens/s) but
# batching slows every stream down (slot_slowdown), so that a full node decodes 15 / 62 / 123 /
# 196 tokens/s: ~395 tokens/s for the cluster, what 2 cores simulate (and route) comfortably.
SLOTS = [NodeSpec("s1", 1, 15.0, 400.0), NodeSpec("s4", 4, 20.0, 800.0, slot_slowdown=0.1),
         NodeSpec("s16", 16, 25.0, 1500.0, slot_slowdown=0.15), NodeSpec("s64", 64, 30.0, 3000.0, slot_slowdown=0.14)]
# Twelve nodes of the hetero kinds, as a lab grows them: few GPUs, many CPU-only boxes.
# Where a conversation's follow-ups run matters: comparable CPU-like nodes whose prefill is
# slow, so that re-reading a conversation costs seconds unless the node still holds it.
MULTITURN = [NodeSpec(f"cpu{i}", 2, 20.0, 200.0) for i in range(3)]
LARGE = ([NodeSpec("fast1", 4, 60.0, 1500.0)] + [NodeSpec(f"mid{i}", 2, 30.0, 800.0) for i in range(1, 4)]
         + [NodeSpec(f"slow{i}", 1, 15.0, 150.0) for i in range(1, 9)])


@dataclass
class Bench:
    serve_url: str
    args: argparse.Namespace
    extra: list[Contender] = field(default_factory=list)  # --strategies


def describe(specs: list[NodeSpec]) -> list[dict]:
    return [asdict(s) for s in specs]


def one_line(row: dict) -> str:
    keys = ("mean_s", "p95_s", "success", "ttft_later_mean_s", "ttft_mean_s", "by_node")
    return json.dumps({k: row[k] for k in keys if k in row})


def live(bench: Bench, cluster: Cluster, contender: Contender, tag: str, warm: Callable[[str], object],
         measure: Callable[[str], dict], always_warm: bool = False) -> dict:
    """One contender: the nodes reset, the contender up, its warm-up, the measured run (per-node
    counts from the simulators), the contender down. nginx learns nothing: unless
    `always_warm` (the warm-up leaves caches that matter) or `--nginx-warmup full`, its warm-up
    is to load the models on every node (`Cluster.prime`), which is all a warm-up does for it."""
    cluster.reset()
    started = time.monotonic()
    with serving(contender, cluster, bench.serve_url, tag) as (url, notes):
        if contender.kind == "nginx" and not always_warm and bench.args.nginx_warmup == "prime":
            cluster.prime()
            notes["warmup"] = "models loaded on every node (nothing to learn)"
        else:
            warm(url)
        before = cluster.received()
        row = measure(url)
        row["by_node"] = delta(before, cluster.received())
        if contender.kind == "gateway":
            row["gateway_nodes"] = gateway_nodes(url)
        row["notes"] = notes
    row["elapsed_s"] = round(time.monotonic() - started, 1)
    print(f"[{tag}] {contender.name}: {one_line(row)}", flush=True)
    return row


def measure_jobs(url: str, jobs: list, drain_cap_s: float) -> dict:
    results, wall, _ = replay(url, jobs, drain_cap_s=drain_cap_s)
    row = summarize(results, wall)
    if any(r.get("node") for r in results):
        row["by_header"] = by_header(results)
    return row


def jobs_scenario(bench: Bench, tag: str, title: str, specs: list[NodeSpec], contenders: list[Contender]) -> dict:
    """The seeded mixed workload at `--load` of capacity through each contender."""
    a = bench.args
    rate = a.load * capacity_rps(specs)
    jobs, warmup = make_workload(MEASURE_SEED, rate, a.duration), make_workload(WARMUP_SEED, rate, a.warmup)
    rows = {}
    with Cluster(specs) as cluster:
        for c in (c for c in contenders if c.kind != "bound"):
            rows[c.name] = live(bench, cluster, c, tag, lambda url: replay(url, warmup, drain_cap_s=a.drain_cap),
                                lambda url: measure_jobs(url, jobs, a.drain_cap))
    if OMNISCIENT in contenders:
        rows[OMNISCIENT.name] = bound(specs, jobs, a.duration, a.bound_budget)
        print(f"[{tag}] {OMNISCIENT.name}: {one_line(rows[OMNISCIENT.name])}", flush=True)
    return {"title": title, "cluster": describe(specs), "rate_rps": round(rate, 3), "load": a.load,
            "jobs": len(jobs), "warmup_jobs": len(warmup), "contenders": rows}


def hetero(bench: Bench) -> dict:
    contenders = [SHIPPED, CONFIGURED, *bench.extra, NGINX_LC, NGINX_RR, OMNISCIENT]
    return jobs_scenario(bench, "hetero", "Heterogeneous cluster (60/30/15 tok/s, 4/2/1 slots)", HETERO, contenders)


def homo(bench: Bench) -> dict:
    return jobs_scenario(bench, "homo", "Homogeneous cluster (3 x 60 tok/s, 2 slots)", HOMO,
                         [SHIPPED, *bench.extra, NGINX_LC, OMNISCIENT])


def slots(bench: Bench) -> dict:
    return jobs_scenario(bench, "slots", "Nodes of 1, 4, 16 and 64 slots", SLOTS, [SHIPPED, NGINX_LC, OMNISCIENT])


def large(bench: Bench) -> dict:
    return jobs_scenario(bench, "large", "12 heterogeneous nodes (1 fast, 3 mid, 8 slow)", LARGE,
                         [SHIPPED, NGINX_LC, OMNISCIENT])


def heal_scenario(bench: Bench) -> dict:
    """The hetero cluster at a low and at a 0.75 load; its fast node slowed 6x, then healed."""
    a = bench.args
    node = HETERO[0].name
    slow_at, heal_at = heal.phases(a.heal_duration)
    loads = {"low": a.heal_low_rate, "loaded": a.load * capacity_rps(HETERO)}
    runs = {}
    with Cluster(HETERO) as cluster:
        for label, rate in loads.items():
            jobs = make_workload(MEASURE_SEED, rate, a.heal_duration)
            warmup = make_workload(WARMUP_SEED, rate, a.warmup)
            rows = {}
            for c in (SHIPPED, NGINX_LC):
                rows[c.name] = live(bench, cluster, c, f"heal/{label}",
                                    lambda url: replay(url, warmup, drain_cap_s=a.drain_cap),
                                    lambda url: heal.measure_heal(url, cluster, jobs, node, a.heal_duration,
                                                                  a.drain_cap))
            runs[label] = {"rate_rps": round(rate, 3), "jobs": len(jobs), "contenders": rows}
    return {"title": f"Heal: '{node}' slowed {heal.SLOW_FACTOR:g}x from {slow_at:g} s to {heal_at:g} s",
            "cluster": describe(HETERO), "node": node, "slow_at_s": slow_at, "heal_at_s": heal_at,
            "duration_s": a.heal_duration, "window_s": heal.WINDOW_S, "recovered_fraction": heal.RECOVERED,
            "runs": runs}


def conversation_capacity(specs: list[NodeSpec], convs: list) -> float:
    """Conversations/s the cluster sustains with every slot busy, prefill included (no prefix
    cache: every turn prefills the whole conversation; an answer re-reads as ~1.5 tokens per
    generated token, the simulator's ~4 characters per token)."""
    def slot_seconds(spec: NodeSpec, conv) -> float:
        decode_tps = spec.full_decode_tps() / spec.slots
        context = count_tokens(SYSTEM_PROMPT) + count_tokens(conv.first)
        total = 0.0
        for turn, out in enumerate(conv.num_predict):
            total += context / spec.prefill_tps + out / decode_tps
            if turn < len(conv.followups):
                context += round(1.5 * out) + count_tokens(conv.followups[turn])
        return total

    return sum(s.slots / (sum(slot_seconds(s, c) for c in convs) / len(convs)) for s in specs)


def multiturn(bench: Bench) -> dict:
    """4-turn streamed chats on comparable slow-prefill nodes (every contender starts with empty
    prefix caches)."""
    a = bench.args
    rate = a.load * conversation_capacity(MULTITURN, make_conversations(99, 1.0, 200.0))
    convs = make_conversations(MEASURE_SEED, rate, a.multiturn_duration)
    warmup = make_conversations(WARMUP_SEED, rate, a.warmup)
    rows = {}
    with Cluster(MULTITURN) as cluster:
        for c in (SHIPPED, AFFINITY_OFF, NGINX_LC):
            rows[c.name] = live(bench, cluster, c, "multiturn",
                                lambda url: replay_conversations(url, warmup, a.drain_cap),
                                lambda url: summarize_turns(replay_conversations(url, convs, a.drain_cap)[0]),
                                always_warm=True)  # its caches hold the shared system prompt
    return {"title": "Multi-turn chats (4 turns, streamed, long first message) on 3 CPU-like nodes "
                     "(2 slots, 200 prefill / 20 decode tok/s)",
            "cluster": describe(MULTITURN), "rate_per_s": round(rate, 3), "load": a.load,
            "conversations": len(convs), "contenders": rows}


SCENARIOS: dict[str, Callable[[Bench], dict]] = {
    "hetero": hetero, "homo": homo, "slots": slots, "heal": heal_scenario, "multiturn": multiturn, "large": large,
    "multimodel": multimodel, "fairshare": fairshare,
}
