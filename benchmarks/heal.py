"""The `heal` scenario's measurement: the fastest node slowed 6x for a while, then healed; the
share of requests it receives per time window, before, during and after.

The share per window is read the same way for every contender: a poll of the simulators'
`received` counters at each window edge (what each node was sent in that window, hedged
copies included). For the gateway the share by arrival time from its `X-SOLLOL-Node`
headers is kept as well.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from contenders import Cluster
from loadgen import replay, summarize
from workload import Job

WINDOW_S = 5.0
SLOW_FACTOR = 6.0
RECOVERED = 0.8  # back to this fraction of its share before the slow-down


def phases(duration_s: float) -> tuple[float, float]:
    """When the node is slowed and healed: 10 s and 35 s into a 70 s run, scaled with it."""
    return duration_s / 7, duration_s / 2


async def _until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.monotonic()))


def fault_schedule(cluster: Cluster, node: str, slow_at: float, heal_at: float):
    sim = cluster.sims[node]

    async def run(t0: float) -> dict:
        await _until(t0 + slow_at)
        await asyncio.to_thread(sim.faults, mode="slow", slow_factor=SLOW_FACTOR)
        slowed = time.monotonic() - t0
        await _until(t0 + heal_at)
        await asyncio.to_thread(sim.faults, mode="none")
        return {"slowed_at_s": round(slowed, 2), "healed_at_s": round(time.monotonic() - t0, 2)}

    return run


def received_poller(cluster: Cluster, duration_s: float):
    """`received` of every node at each window edge, 0 .. duration_s (a bounded number of polls)."""
    edges = int(duration_s // WINDOW_S) + 1

    async def run(t0: float) -> list[dict]:
        samples = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            for k in range(edges):
                await _until(t0 + k * WINDOW_S)
                counts = {}
                for name, sim in cluster.sims.items():
                    async with session.get(sim.url + "/_sim/state") as response:
                        counts[name] = (await response.json())["received"]
                samples.append({"t": k * WINDOW_S, "received": counts})
        return samples

    return run


def _share(part: int, total: int) -> float | None:
    return round(part / total, 3) if total else None


def polled_windows(samples: list[dict], node: str) -> list[dict]:
    out = []
    for a, b in zip(samples, samples[1:]):
        got = {n: b["received"][n] - a["received"][n] for n in b["received"]}
        out.append({"start_s": a["t"], "node": got[node], "total": sum(got.values())})
    return out


def header_windows(results: list[dict], node: str, duration_s: float) -> list[dict]:
    out = []
    for k in range(int(duration_s // WINDOW_S)):
        lo, hi = k * WINDOW_S, (k + 1) * WINDOW_S
        answered = [r for r in results if r["ok"] and r.get("node") and lo <= r["at"] < hi]
        out.append({"start_s": lo, "node": sum(1 for r in answered if r["node"] == node), "total": len(answered)})
    return out


def recovery(windows: list[dict], slow_at: float, heal_at: float) -> dict:
    """The node's share before the slow-down, and seconds after healing until a window
    (ending then) has it back to RECOVERED x that share; None if no window did."""
    before = [w for w in windows if w["start_s"] + WINDOW_S <= slow_at]
    pre = _share(sum(w["node"] for w in before), sum(w["total"] for w in before))
    back = None
    if pre is not None:
        for w in windows:
            share = _share(w["node"], w["total"])
            if w["start_s"] >= heal_at and share is not None and share >= RECOVERED * pre:
                back = round(w["start_s"] + WINDOW_S - heal_at, 1)
                break
    for w in windows:
        w["share"] = _share(w["node"], w["total"])
    return {"pre_slow_share": pre, "recovered_after_s": back, "windows": windows}


def measure_heal(url: str, cluster: Cluster, jobs: list[Job], node: str, duration_s: float,
                 drain_cap_s: float) -> dict:
    """Replay `jobs` while `node` is slowed and healed; the summary plus the share over time."""
    slow_at, heal_at = phases(duration_s)
    try:
        results, wall, (faults, samples) = replay(
            url, jobs, side=[fault_schedule(cluster, node, slow_at, heal_at), received_poller(cluster, duration_s)],
            drain_cap_s=drain_cap_s)
    finally:
        cluster.sims[node].faults(mode="none")
    row = summarize(results, wall)
    row["faults"] = faults
    row["share"] = recovery(polled_windows(samples or [], node), slow_at, heal_at)
    if any(r.get("node") for r in results):
        row["share_by_header"] = recovery(header_windows(results, node, duration_s), slow_at, heal_at)
    return row
