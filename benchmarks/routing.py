"""The gateway as users ship it against what they would run instead: nginx in front of the same nodes.

    apt-get install -y nginx-light     # once: Debian's nginx, /usr/sbin/nginx
    python benchmarks/routing.py       # every scenario, about 27 minutes on 2 cores
    python benchmarks/routing.py --scenarios hetero,heal [--duration 45] [--warmup 15] [--load 0.75]
        [--strategies least_busy,...] [--out benchmarks/results]

Simulated nodes (`sollol sim-node`), one local Ray for the whole run, and per scenario the same
unmeasured warm-up workload then the same seeded measured workload through each contender
(`contenders.py`): `shipped` (serve_config.yaml's args, nodes from SOLLOL_NODES, discovery of
Ray nodes off), `configured` (the same with every node's true slots), `nginx least_conn`,
`nginx round_robin` (`nginx.py`), and the `omniscient (model)` bound (`omniscient.py`).
`--strategies` adds the shipped config with another routing.strategy (`gw:<strategy>`).
Before each contender the nodes are reset (idle, models cold, no prompt cached); a gateway is
deployed with a fresh state actor and learns during its warm-up; nginx, with nothing to learn,
gets its models loaded instead (`--nginx-warmup full`: the whole warm-up). Per-node counts are
the simulators' `received` counters, for every contender alike. A replay is cut `--drain-cap`
seconds after its last arrival (what still runs is "unfinished"; its latency a lower bound).

Scenarios (`scenarios.py`):
- hetero: 60/30/15 decode tok/s, 4/2/1 slots, prefill 1500/800/150 tok/s, the mixed workload
  (chat, streamed chat, generate, embed; mixed priorities) at `--load` of capacity: what routing
  by speed buys over counting connections (nginx least_conn) or taking turns (round_robin).
- homo: 3 identical nodes: what the gateway costs where there is nothing to be smart about.
- slots: nodes of 1, 4, 16 and 64 slots: whether the shipped gateway finds each node's slots
  (GET /api/nodes after the run) and uses the big ones.
- heal: the hetero cluster at 0.6 req/s and at `--load`; its fast node slowed 6x from 10 s to
  35 s of a 70 s run (`--heal-duration`), then healed: its share of requests per 5 s window
  over time (routing_heal.png) and how long after healing it is back to its share (`heal.py`).
- multiturn: 4-turn streamed chats with a long first message on the hetero cluster; shipped
  (affinity on) vs affinity off vs nginx: time to first token of the follow-up turns.
- large: 12 nodes (1 fast, 3 mid, 8 slow): shipped vs nginx least_conn (+ the bound if it
  computes within `--bound-budget` seconds).

Each scenario prints its rows as it finishes and rewrites routing.json, routing.md (tables and
the goals, met yes/NO), routing.png (latency per contender), routing_heal.png and
routing_multiturn.png in `--out`. `--compare-reserve` is the old one-off (routing_reserve.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import get_args

import report
from contenders import Contender, strategy_contender
from scenarios import SCENARIOS, Bench, jobs_scenario
from workload import HETEROGENEOUS

from sollol_serve.config import Strategy
from sollol_serve.local import start_local_serve, stop_local_gateway
from sollol_serve.processes import free_port


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, from: " + ", ".join(SCENARIOS))
    p.add_argument("--duration", type=float, default=45.0, help="seconds of measured arrivals per run")
    p.add_argument("--warmup", type=float, default=15.0, help="seconds of unmeasured arrivals before each run")
    p.add_argument("--load", type=float, default=0.75, help="offered load as a fraction of capacity")
    p.add_argument("--heal-duration", type=float, default=70.0, help="heal: seconds of arrivals per run")
    p.add_argument("--heal-low-rate", type=float, default=0.6, help="heal: requests/s of the low-load run")
    p.add_argument("--multiturn-duration", type=float, default=90.0,
                   help="multiturn: seconds of conversation starts (a conversation runs ~30 s)")
    p.add_argument("--drain-cap", type=float, default=60.0,
                   help="seconds after a replay's last arrival before what still runs is cut (counted unfinished)")
    p.add_argument("--nginx-warmup", choices=["prime", "full"], default="prime",
                   help="nginx's warm-up: load the models on every node (prime), or the whole warm-up workload")
    p.add_argument("--bound-budget", type=float, default=60.0, help="seconds the omniscient model may take")
    p.add_argument("--strategies", default="", help="in-gateway routing strategies to add, e.g. least_busy")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--compare-reserve", action="store_true",
                   help="only a saturated run with routing.reserved_slots 0 and 1 (routing_reserve.md)")
    p.add_argument("--saturated-load", type=float, default=1.2, help="--compare-reserve: offered load")
    args = p.parse_args(argv)
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(args.scenario_list) - set(SCENARIOS))
    if unknown:
        p.error(f"unknown scenarios: {', '.join(unknown)}")
    args.strategy_list = [s.strip() for s in args.strategies.split(",") if s.strip()]
    bad = sorted(set(args.strategy_list) - set(get_args(Strategy)))
    if bad:
        p.error(f"unknown strategies: {', '.join(bad)} (one of {', '.join(get_args(Strategy))})")
    return args


def command_line(args: argparse.Namespace) -> str:
    shown = ("scenarios", "duration", "warmup", "load", "heal_duration", "heal_low_rate", "multiturn_duration",
             "drain_cap", "nginx_warmup",
             "bound_budget", "strategies")
    return "python benchmarks/routing.py " + " ".join(
        f"--{k.replace('_', '-')} {getattr(args, k)}" for k in shown if getattr(args, k) != "")


def start_ray() -> str:
    """This process's own Ray and Serve; never a cluster someone else started on the machine
    (`ray start` leaves its address in /tmp/ray/ray_current_cluster, which ray.init would join)."""
    os.environ["RAY_ADDRESS"] = "local"
    return start_local_serve(free_port())


def run(args: argparse.Namespace) -> dict:
    started = time.time()
    result = {"meta": {"when": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} cores",
                       "command": command_line(args), "elapsed_s": 0, "drain_cap_s": args.drain_cap,
                       "nginx_warmup": args.nginx_warmup}, "scenarios": {}, "errors": {}}
    out = Path(args.out)
    url = start_ray()
    try:
        bench = Bench(url, args, [strategy_contender(s) for s in args.strategy_list])
        for name in args.scenario_list:
            print(f"== {name}", flush=True)
            try:
                result["scenarios"][name] = SCENARIOS[name](bench)
            except Exception:  # one broken scenario must not cost the others' results
                result["errors"][name] = traceback.format_exc(limit=8)
                print(result["errors"][name], file=sys.stderr, flush=True)
            result["meta"]["elapsed_s"] = round(time.time() - started)
            report.write(out, result)
    finally:
        stop_local_gateway()
    return result


def compare_reserve(args: argparse.Namespace) -> None:
    """What the slot reserve for live traffic costs a saturated cluster (intelligent routing on
    workload.HETEROGENEOUS, as when it was first measured): without it and with it."""
    args.load = args.saturated_load
    contenders = [Contender(f"reserved_slots={n}", "gateway", routing={"strategy": "intelligent", "reserved_slots": n})
                  for n in (0, 1)]
    url = start_ray()
    try:
        run_ = jobs_scenario(Bench(url, args), "reserve", "Saturated heterogeneous cluster", HETEROGENEOUS, contenders)
    finally:
        stop_local_gateway()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "routing_reserve.json").write_text(json.dumps(run_, indent=2) + "\n")
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M')} with `python benchmarks/routing.py --compare-reserve`: "
             f"the saturated heterogeneous run ({args.saturated_load:.0%} of capacity), intelligent routing.", "",
             "| routing.reserved_slots | mean s | p50 s | p95 s | high-prio p95 s | req/s | received per node |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {name.split('=')[1]} | {r['mean_s']} | {r['p50_s']} | {r['p95_s']} | {r['high_priority_p95_s']} | "
              f"{r['throughput_rps']} | {r['by_node']} |" for name, r in run_["contenders"].items()]
    (out / "routing_reserve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    args = parse_args()
    if args.compare_reserve:
        compare_reserve(args)
        return
    result = run(args)
    print((Path(args.out) / "routing.md").read_text())
    if result["errors"]:
        sys.exit(f"scenarios failed: {', '.join(result['errors'])}")


if __name__ == "__main__":
    main()
