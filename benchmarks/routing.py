"""Routing strategies compared inside the same gateway, and against an omniscient bound.

    python benchmarks/routing.py [--duration 60] [--load 0.75] [--out benchmarks/results]

Starts simulated nodes of clearly different speeds and slots (`workload.HETEROGENEOUS`:
4/2/1 slots, 120/60/15 decode tokens/s), replays the same seeded open-loop workload (Poisson
arrivals of chat, streamed chat, generate and embed, mixed priorities) through each strategy
(after an unmeasured warm-up with another seed, the same for every strategy; each strategy
learns from scratch), then: the same on a homogeneous cluster (intelligent vs least_busy),
and a saturated run (120% of capacity) for the priority queue. The discrete-event model in
`omniscient.py` gives the bound. Writes routing.json, routing.md and routing.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import aiohttp
from omniscient import simulate
from workload import HETEROGENEOUS, HOMOGENEOUS, Job, NodeSpec, capacity_rps, make_workload

from sollol_serve.config import GatewayConfig, NodeConfig, RoutingConfig
from sollol_serve.local import deploy_gateway, start_local_serve, stop_local_gateway, wait_for_nodes
from sollol_serve.processes import free_port
from sollol_serve.sim.process import SimProcess

STRATEGIES = ["intelligent", "least_busy", "round_robin", "random"]
MEASURE_SEED, WARMUP_SEED = 7, 1234


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def request_of(job: Job) -> tuple[str, dict]:
    if job.kind == "embed":
        return "/api/embed", {"model": "nomic-embed-text", "input": [job.prompt], "priority": job.priority}
    if job.kind == "generate":
        return "/api/generate", {"model": "llama3.2", "prompt": job.prompt, "stream": False,
                                 "options": {"num_predict": job.num_predict}, "priority": job.priority}
    return "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": job.prompt}],
                         "stream": job.kind == "chat_stream", "options": {"num_predict": job.num_predict},
                         "priority": job.priority}


async def send(session: aiohttp.ClientSession, url: str, job: Job, t0: float) -> dict:
    await asyncio.sleep(max(0.0, t0 + job.at - time.monotonic()))
    path, body = request_of(job)
    started = time.monotonic()
    first = None
    node = None
    try:
        async with session.post(url + path, json=body) as response:
            node = response.headers.get("X-SOLLOL-Node")
            if response.status != 200:
                await response.read()
                return {"ok": False, "status": response.status, "priority": job.priority, "kind": job.kind}
            async for _line in response.content:
                if first is None:
                    first = time.monotonic() - started
            ok = True
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return {"ok": False, "status": type(exc).__name__, "priority": job.priority, "kind": job.kind}
    latency = time.monotonic() - started
    return {"ok": ok, "latency_s": latency, "ttfc_s": first if job.kind == "chat_stream" else latency,
            "priority": job.priority, "node": node, "kind": job.kind}


async def replay(url: str, jobs: list[Job]) -> tuple[list[dict], float]:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        t0 = time.monotonic()
        results = await asyncio.gather(*(send(session, url, job, t0) for job in jobs))
        return list(results), time.monotonic() - t0


def summarize(results: list[dict], wall_s: float) -> dict:
    ok = [r for r in results if r["ok"]]
    lat = [r["latency_s"] for r in ok]
    ttfc = [r["ttfc_s"] for r in ok if r["kind"] == "chat_stream"]
    high = [r["latency_s"] for r in ok if r["priority"] >= 9]
    nodes: dict[str, int] = {}
    for r in ok:
        nodes[r["node"]] = nodes.get(r["node"], 0) + 1
    return {
        "requests": len(results), "success": round(len(ok) / len(results), 4) if results else 0.0,
        "mean_s": round(statistics.fmean(lat), 3) if lat else None,
        "p50_s": round(percentile(lat, 50), 3), "p95_s": round(percentile(lat, 95), 3),
        "p99_s": round(percentile(lat, 99), 3),
        "ttfc_p50_s": round(percentile(ttfc, 50), 3), "ttfc_p95_s": round(percentile(ttfc, 95), 3),
        "high_priority_p95_s": round(percentile(high, 95), 3),
        "throughput_rps": round(len(ok) / wall_s, 3) if wall_s else None,
        "by_node": dict(sorted(nodes.items())),
    }


def deploy(specs: list[NodeSpec], sims: dict[str, SimProcess], strategy: str, tag: str,
           reserved_slots: int | None = None) -> None:
    routing = RoutingConfig(strategy=strategy)
    if reserved_slots is not None:
        routing = routing.model_copy(update={"reserved_slots": reserved_slots})
    config = GatewayConfig(
        nodes=[NodeConfig(name=s.name, url=sims[s.name].url, slots=s.slots) for s in specs],
        routing=routing,
        state_actor_name=f"bench_state_{tag}_{strategy}",  # every strategy learns from scratch
    )
    deploy_gateway(config)


def run_cluster(url: str, specs: list[NodeSpec], strategies: list[str], load: float, duration_s: float,
                warmup_s: float, tag: str, reserved_slots: int | None = None) -> dict:
    sims = {s.name: SimProcess(s.name, s.sim_args()).start() for s in specs}
    try:
        rate = load * capacity_rps(specs)
        jobs = make_workload(MEASURE_SEED, rate, duration_s)
        warmup = make_workload(WARMUP_SEED, rate, warmup_s)
        out: dict = {"rate_rps": round(rate, 3), "load": load, "jobs": len(jobs), "strategies": {}}
        for strategy in strategies:
            deploy(specs, sims, strategy, tag, reserved_slots)
            wait_for_nodes(url, len(specs))
            asyncio.run(replay(url, warmup))
            results, wall = asyncio.run(replay(url, jobs))
            out["strategies"][strategy] = summarize(results, wall)
            print(tag, strategy, json.dumps(out["strategies"][strategy]), flush=True)
        bound = simulate(specs, jobs)
        out["strategies"]["omniscient (model)"] = summarize(bound, duration_s)
        return out
    finally:
        for sim in sims.values():
            sim.stop()


def goals(hetero: dict, homo: dict, saturated: dict) -> dict[str, dict]:
    s, h, z = hetero["strategies"], homo["strategies"], saturated["strategies"]["intelligent"]
    bound = s["omniscient (model)"]
    checks = {
        "intelligent p95 <= 0.5 x least_busy p95": s["intelligent"]["p95_s"] / s["least_busy"]["p95_s"] <= 0.5,
        "intelligent mean <= 0.8 x least_busy mean": s["intelligent"]["mean_s"] / s["least_busy"]["mean_s"] <= 0.8,
        "intelligent success 100%": s["intelligent"]["success"] == 1.0,
        "intelligent mean within 1.25 x omniscient": s["intelligent"]["mean_s"] / bound["mean_s"] <= 1.25,
        "intelligent p95 within 1.25 x omniscient": s["intelligent"]["p95_s"] / bound["p95_s"] <= 1.25,
        "homogeneous: intelligent mean <= 1.05 x least_busy": h["intelligent"]["mean_s"] / h["least_busy"]["mean_s"] <= 1.05,
        "homogeneous: intelligent p95 <= 1.05 x least_busy": h["intelligent"]["p95_s"] / h["least_busy"]["p95_s"] <= 1.05,
        "saturated: high-priority p95 <= 0.5 x overall p95": z["high_priority_p95_s"] / z["p95_s"] <= 0.5,
    }
    return {name: {"met": bool(ok)} for name, ok in checks.items()}


def write_outputs(out_dir: Path, report: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "routing.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Measured {report['meta']['when']} on {report['meta']['machine']} with "
             f"`{report['meta']['command']}`.", ""]
    for title, key in (("Heterogeneous cluster", "heterogeneous"), ("Homogeneous cluster", "homogeneous"),
                       ("Saturated heterogeneous cluster", "saturated")):
        run = report[key]
        lines += [f"### {title}: {run['jobs']} requests at {run['rate_rps']} req/s ({run['load']:.0%} of capacity)", "",
                  "| strategy | mean s | p50 s | p95 s | p99 s | TTFC p50 / p95 s | high-prio p95 s | req/s | success | per node |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in run["strategies"].items():
            lines.append(f"| {name} | {r['mean_s']} | {r['p50_s']} | {r['p95_s']} | {r['p99_s']} | "
                         f"{r['ttfc_p50_s']} / {r['ttfc_p95_s']} | {r['high_priority_p95_s']} | "
                         f"{r['throughput_rps']} | {r['success']:.0%} | {r['by_node']} |")
        lines.append("")
    lines += ["### Goals", "", "| goal | met |", "|---|---|"]
    lines += [f"| {name} | {'yes' if g['met'] else 'NO'} |" for name, g in report["goals"].items()]
    (out_dir / "routing.md").write_text("\n".join(lines) + "\n")
    chart(out_dir / "routing.png", report)


def chart(path: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["heterogeneous"]["strategies"]
    names = list(runs)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.2
    for i, metric in enumerate(["mean_s", "p50_s", "p95_s", "p99_s"]):
        axes[0].bar([x + i * width for x in range(len(names))], [runs[n][metric] for n in names], width,
                    label=metric.replace("_s", ""))
    axes[0].set_xticks([x + 1.5 * width for x in range(len(names))], names, rotation=15)
    axes[0].set_ylabel("latency (s)")
    axes[0].set_title(f"Heterogeneous cluster, {report['heterogeneous']['load']:.0%} load")
    axes[0].legend()
    for i, metric in enumerate(["ttfc_p95_s", "high_priority_p95_s"]):
        axes[1].bar([x + i * 0.35 for x in range(len(names))], [runs[n][metric] for n in names], 0.35,
                    label={"ttfc_p95_s": "time to first chunk p95", "high_priority_p95_s": "priority>=9 p95"}[metric])
    axes[1].set_xticks([x + 0.175 for x in range(len(names))], names, rotation=15)
    axes[1].set_ylabel("seconds")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of measured arrivals per run")
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--load", type=float, default=0.75, help="offered load as a fraction of capacity")
    parser.add_argument("--saturated-load", type=float, default=1.2)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--compare-reserve", action="store_true",
                        help="only the saturated run, with routing.reserved_slots 0 and 1 (routing_reserve.md)")
    args = parser.parse_args()
    if args.compare_reserve:
        compare_reserve(args)
        return

    started = time.time()
    try:
        url = start_local_serve(free_port())
        hetero = run_cluster(url, HETEROGENEOUS, STRATEGIES, args.load, args.duration, args.warmup, "hetero")
        homo = run_cluster(url, HOMOGENEOUS, ["intelligent", "least_busy"], args.load, args.duration,
                           args.warmup, "homo")
        saturated = run_cluster(url, HETEROGENEOUS, ["intelligent"], args.saturated_load, args.duration,
                                args.warmup, "saturated")
    finally:
        stop_local_gateway()
    report = {
        "meta": {"when": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} cores",
                 "command": "python benchmarks/routing.py " + " ".join(
                     f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
                 "elapsed_s": round(time.time() - started)},
        "heterogeneous": hetero, "homogeneous": homo, "saturated": saturated,
    }
    report["goals"] = goals(hetero, homo, saturated)
    write_outputs(Path(args.out), report)
    print((Path(args.out) / "routing.md").read_text())


def compare_reserve(args: argparse.Namespace) -> None:
    """What the slot reserve for live traffic costs a saturated cluster: the same run without
    it and with it, one after the other on one Ray."""
    rows = {}
    try:
        url = start_local_serve(free_port())
        for reserved in (0, 1):
            run = run_cluster(url, HETEROGENEOUS, ["intelligent"], args.saturated_load, args.duration, args.warmup,
                              f"reserve{reserved}", reserved_slots=reserved)
            rows[reserved] = run["strategies"]["intelligent"]
    finally:
        stop_local_gateway()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "routing_reserve.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M')} with `python benchmarks/routing.py --compare-reserve`: "
             f"the saturated heterogeneous run ({args.saturated_load:.0%} of capacity), intelligent routing.", "",
             "| routing.reserved_slots | mean s | p50 s | p95 s | high-prio p95 s | req/s | per node |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {k} | {r['mean_s']} | {r['p50_s']} | {r['p95_s']} | {r['high_priority_p95_s']} | {r['throughput_rps']} | "
              f"{r['by_node']} |" for k, r in rows.items()]
    (out / "routing_reserve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
