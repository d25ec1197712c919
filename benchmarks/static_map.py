"""The best static map for a workload: the hand placement an expert at their best would write.

Every map that fits (each node pins at most the models it holds at once, filled to what it
holds: a full node serves more; every model somewhere; nodes alike counted once) is played in
`omniscient.py`'s model of the simulated cluster with least-connections among each model's
pinned nodes (what `hand_placement.py` does live), and the one with the lowest mean latency
wins (ties: the lower p95). Searched on the first phase's jobs only, as an operator writes a
map for the traffic they see: it knows nothing of a later shift.
"""

from __future__ import annotations

import itertools
import statistics
from collections import deque

from omniscient import NodeModel, _work
from omniscient import DT as STEP_S
from workload import Job, NodeSpec


def play(nodes: list[NodeSpec], jobs: list[Job], placement: dict[str, list[str]]) -> tuple[float, float]:
    """Mean and p95 latency of `jobs` under `placement` (node -> models), least-connections
    among each model's nodes."""
    models = {spec.name: NodeModel(spec) for spec in nodes}
    pinned: dict[str, list[NodeModel]] = {}
    for node, names in placement.items():
        for name in names:
            pinned.setdefault(name, []).append(models[node])
    pending, done, now = deque(sorted(jobs, key=lambda j: j.at)), [], 0.0
    while pending or any(m.active or m.waiting for m in models.values()):
        while pending and pending[0].at <= now:
            job = pending.popleft()
            min(pinned[job.model], key=lambda m: len(m.active) + len(m.waiting)).waiting.append(_work(job))
        for m in models.values():
            done += [w.done_at - w.job.at for w in m.step(now)]
        now += STEP_S
    done.sort()
    return statistics.fmean(done), done[int(0.95 * len(done))]


def _fits(nodes: list[NodeSpec], models: list[str]) -> list[list[tuple[str, ...]]]:
    return [list(itertools.combinations(models, min(spec.max_loaded or len(models), len(models)))) for spec in nodes]


def best_map(nodes: list[NodeSpec], jobs: list[Job]) -> tuple[dict[str, list[str]], float, float]:
    """The map with the lowest mean latency on `jobs`, with its mean and p95."""
    models = sorted({job.model for job in jobs})
    seen, best = set(), None
    for combo in itertools.product(*_fits(nodes, models)):
        if set(models) - {m for pins in combo for m in pins}:
            continue
        # nodes of the same make are interchangeable: count each assignment to them once
        key = tuple(sorted(((s.slots, s.decode_tps, s.max_loaded), pins) for s, pins in zip(nodes, combo)))
        if key in seen:
            continue
        seen.add(key)
        placement = {spec.name: list(pins) for spec, pins in zip(nodes, combo)}
        mean, p95 = play(nodes, jobs, placement)
        if best is None or (mean, p95) < best[1:]:
            best = (placement, mean, p95)
    return best
