"""A discrete-event (time-stepped) model of the simulated cluster with an omniscient router.

Each node behaves as `sollol sim-node` does: `slots` parallel slots and a FIFO queue, prefill
at prefill tokens/s, decode at decode tokens/s slowed by `slot_slowdown` per other active
slot. The router sees every node's exact state and sends each arriving job to the node where,
simulating forward from that exact state, it would finish first. It does not know future
arrivals and pays no gateway overhead: a bound to aim at, not a reachable target.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from dataclasses import dataclass, field

from loadgen import summarize
from workload import Job, NodeSpec

DT = 0.01


@dataclass
class Work:
    job: Job
    prefill_left: float
    decode_left: float
    first_token_at: float | None = None
    done_at: float | None = None


@dataclass
class NodeModel:
    spec: NodeSpec
    active: list[Work] = field(default_factory=list)
    waiting: deque[Work] = field(default_factory=deque)

    def admit(self) -> None:
        while self.waiting and len(self.active) < self.spec.slots:
            self.active.append(self.waiting.popleft())

    def step(self, now: float) -> list[Work]:
        """Advance by DT; return the work finished in this step."""
        self.admit()
        if not self.active:
            return []
        rate = self.spec.decode_tps / (1 + self.spec.slot_slowdown * (len(self.active) - 1))
        finished = []
        for w in self.active:
            if w.prefill_left > 0:
                w.prefill_left -= DT * self.spec.prefill_tps
            elif w.decode_left > 0:
                w.decode_left -= DT * rate
                if w.first_token_at is None:
                    w.first_token_at = now + DT
            if w.prefill_left <= 0 and w.decode_left <= 0:
                w.done_at = now + DT
                if w.first_token_at is None:
                    w.first_token_at = w.done_at
                finished.append(w)
        self.active = [w for w in self.active if w.done_at is None]
        return finished


def _work(job: Job) -> Work:
    return Work(job, float(job.prompt_tokens), float(job.output_tokens))


def _finish_time_if_sent(node: NodeModel, job: Job, now: float, horizon_s: float = 120.0) -> float:
    trial = copy.deepcopy(node)
    mine = _work(job)
    trial.waiting.append(mine)
    t = now
    while mine.done_at is None and t < now + horizon_s:
        trial.step(t)
        t += DT
    return mine.done_at if mine.done_at is not None else float("inf")


class OverBudget(Exception):
    """The model took longer than its wall-clock budget (it copies node state per arrival)."""


def simulate(nodes: list[NodeSpec], jobs: list[Job], budget_s: float | None = None) -> list[dict]:
    """Per job: latency and time to first chunk (seconds) under the omniscient router.
    Raises OverBudget once more than `budget_s` seconds of wall time have gone by."""
    deadline = None if budget_s is None else time.monotonic() + budget_s
    models = [NodeModel(spec) for spec in nodes]
    pending = deque(sorted(jobs, key=lambda j: j.at))
    results: dict[int, dict] = {}
    now = 0.0
    while pending or any(m.active or m.waiting for m in models):
        while pending and pending[0].at <= now:
            if deadline is not None and time.monotonic() > deadline:
                raise OverBudget(f"the omniscient model took more than {budget_s} s")
            job = pending.popleft()
            best = min(models, key=lambda m: _finish_time_if_sent(m, job, now))
            best.waiting.append(_work(job))
        for m in models:
            for w in m.step(now):
                first = w.first_token_at if w.job.kind == "chat_stream" else w.done_at
                results[w.job.id] = {"latency_s": w.done_at - w.job.at, "ttfc_s": first - w.job.at,
                                     "priority": w.job.priority, "node": m.spec.name, "ok": True,
                                     "kind": w.job.kind}
        now += DT
    return [results[j.id] for j in jobs]


def bound(specs: list[NodeSpec], jobs: list, duration_s: float, budget_s: float) -> dict:
    """The model's run as a benchmark row (latency figures, requests per node), or why skipped."""
    started = time.monotonic()
    try:
        results = simulate(specs, jobs, budget_s=budget_s)
    except OverBudget:
        return {"skipped": f"the model took more than {budget_s:.0f} s on this machine"}
    row = summarize(results, duration_s)
    nodes: dict[str, int] = {}
    for r in results:
        nodes[r["node"]] = nodes.get(r["node"], 0) + 1
    row["by_node"] = dict(sorted(nodes.items()))
    row["elapsed_s"] = round(time.monotonic() - started, 1)
    return row
