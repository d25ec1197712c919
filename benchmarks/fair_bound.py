"""What an ideal fair scheduler would give the fairshare scenario: a bound, not a contender.

    python benchmarks/fair_bound.py       # seconds; writes benchmarks/results/fair_bound.{md,json}

An event-driven model of the simulated cluster as `sollol sim-node` serves unstreamed chats:
a request takes a slot, prefills at prefill tokens/s, then decodes all its tokens at the speed
the node had when it started (`slot_slowdown` per other request in a slot). The scheduler knows
every node's slots and every request's exact length, pays no overhead and never lets a request
wait inside a node. Its queue serves the applications that are not backlogged first (what fair
share gives an application that never uses its share), each by arrival; a request waits for the
node where it would finish first, booking its place there so that the ones behind it see the
longer wait, as the gateway's own plan does. Run on the benchmark's own seeded arrivals:

- `modest alone (model)`: the three modest applications alone;
- `ideal fair (model)`: beside the flood, work-conserving;
- `ideal fair, a fast slot held back (model)`: the flood never takes the fastest node's last
  free slot, which waits for a modest request (not work-conserving: what it costs the flood);
- `..., lengths unknown (model)`: the scheduler expects every answer to be of the mean length
  (the requests still take their true time), as a gateway must when requests set no limit; the
  benchmark's requests set `num_predict`, so the gateway knows their lengths as the first rows do.
"""

from __future__ import annotations

import argparse
import heapq
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from workload import Job, NodeSpec


@dataclass
class NodeState:
    spec: NodeSpec
    ends: list[float] = field(default_factory=list)  # when each request in a slot ends
    expected_ends: list[float] = field(default_factory=list)  # the same as the scheduler expects them

    def service_s(self, job: Job, others: int, output_tokens: float | None = None) -> float:
        decode_tps = self.spec.decode_tps / (1 + self.spec.slot_slowdown * others)
        output = job.output_tokens if output_tokens is None else output_tokens
        return job.prompt_tokens / self.spec.prefill_tps + output / decode_tps

    def free(self) -> int:
        return self.spec.slots - len(self.ends)


def _finish_if_waiting(node: NodeState, job: Job, now: float, booked: int, output_tokens: float | None) -> float:
    """When `job` is expected to end on `node` if it took the slot that frees after `booked`
    others already waiting for this node took theirs (the node full again by then).
    `output_tokens`: what the scheduler expects of every answer (None: it knows each one's)."""
    if node.free() > booked:
        return now + node.service_s(job, len(node.ends) + booked, output_tokens)
    ends = sorted(node.ends if output_tokens is None else node.expected_ends)
    slot_at = ends[min(booked - node.free(), len(ends) - 1)]
    return max(slot_at, now) + node.service_s(job, node.spec.slots - 1, output_tokens)


def simulate(nodes: list[NodeSpec], jobs: list[Job], backlogged: set[str],
             hold_back: str | None = None, output_tokens: float | None = None) -> list[dict]:
    """Per job (in `jobs`' order): latency and the node that served it. `backlogged` apps go
    after the others; `hold_back` names a node whose last free slot they may not take;
    `output_tokens`: how long the scheduler expects every answer to be (None: it knows)."""
    states = {spec.name: NodeState(spec) for spec in nodes}
    events: list[tuple[float, int, int, str]] = [(job.at, 0, i, "") for i, job in enumerate(jobs)]
    heapq.heapify(events)
    waiting: list[tuple[int, float, int]] = []  # (backlogged?, arrival, index)
    results: dict[int, dict] = {}
    while events:
        now, kind, i, name = heapq.heappop(events)
        if kind == 0:
            waiting.append((jobs[i].app in backlogged, jobs[i].at, i))
        else:
            node = states[name]
            del node.expected_ends[node.ends.index(now)]
            node.ends.remove(now)
            results[i] = {"ok": True, "latency_s": now - jobs[i].at, "node": name}
        waiting.sort()
        booked = {name: 0 for name in states}
        still = []
        for entry in waiting:
            job = jobs[entry[2]]
            options = [s for s in states.values()
                       if not (entry[0] and s.spec.name == hold_back and s.free() - booked[s.spec.name] <= 1)]
            if not options:
                still.append(entry)
                continue
            best = min(options, key=lambda s: _finish_if_waiting(s, job, now, booked[s.spec.name], output_tokens))
            if best.free() > booked[best.spec.name]:
                end = now + best.service_s(job, len(best.ends))
                best.expected_ends.append(now + best.service_s(job, len(best.ends), output_tokens))
                best.ends.append(end)
                heapq.heappush(events, (end, 1, entry[2], best.spec.name))
            else:
                booked[best.spec.name] += 1
                still.append(entry)
        waiting = still
    return [results[i] for i in range(len(jobs))]


def rows(nodes: list[NodeSpec], jobs: list[Job], flood: str, mean_output: float, per_app, fairness) -> dict[str, dict]:
    """The model's runs as fairshare rows (`per_app`, `fairness`: the scenario's own)."""
    modest = [j for j in jobs if j.app != flood]
    fastest = max(nodes, key=lambda n: n.decode_tps).name
    runs = {"modest alone (model)": (modest, None, None),
            "ideal fair (model)": (jobs, None, None),
            "ideal fair, a fast slot held back (model)": (jobs, fastest, None),
            "modest alone, lengths unknown (model)": (modest, None, mean_output),
            "ideal fair, lengths unknown (model)": (jobs, None, mean_output)}
    out = {}
    for name, (some, hold_back, output_tokens) in runs.items():
        results = simulate(nodes, some, {flood}, hold_back, output_tokens)
        out[name] = {"apps": per_app(some, results),
                     "jain_by_window": fairness(some, results, [j.at + r["latency_s"] for j, r in zip(some, results)]),
                     "by_node": {}, "notes": ["a model: no gateway, never a wait inside a node"]}
    return out


def _alone_of(name: str) -> str:
    return "modest alone, lengths unknown (model)" if "lengths unknown" in name else "modest alone (model)"


def main() -> None:
    from fairshare import DURATION_S, FLOOD, MEASURE_SEED, NODES, OUTPUT_TOKENS, fairness, make_jobs, per_app

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    jobs = make_jobs(MEASURE_SEED, DURATION_S, flood=True)
    result = rows(NODES, jobs, FLOOD, sum(OUTPUT_TOKENS) / 2, per_app, fairness)
    lines = [f"Computed {time.strftime('%Y-%m-%d %H:%M')} with `python benchmarks/fair_bound.py`: the fairshare "
             "scenario's own arrivals through the model in `benchmarks/fair_bound.py` (no gateway, no cluster).", "",
             "| model | application | p50 s | p95 s | p95 / alone | completions/s | answered by |",
             "|---|---|---|---|---|---|---|"]
    for name, row in result.items():
        alone = result[_alone_of(name)]["apps"]
        for app, a in row["apps"].items():
            ratio = f"{a['p95_s'] / alone[app]['p95_s']:.2f}" if app in alone else "-"
            lines.append(f"| {name} | {app} | {a['p50_s']} | {a['p95_s']} | {ratio} | {a['completions_per_s']} | "
                         + " ".join(f"{n}:{c}" for n, c in a["by_node"].items()) + " |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fair_bound.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "fair_bound.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
