"""Bounded soak: mixed load for minutes while simulated nodes are killed and restarted.

    python benchmarks/soak.py [--duration 300] [--concurrency 8] [--seed 7] [--out benchmarks/results]

Four simulated Ollama nodes (2-4 slots, decode speeds 40-200 tokens/s, `llama3.2` on all,
`nomic-embed-text` on the two fastest), the whole gateway on a local Ray (num_cpus=2), and a
closed-loop load of `--concurrency` clients for `--duration` seconds (at most `--max-requests`,
each with a client timeout): non-streamed and streamed /api/chat, /api/generate and
/v1/chat/completions, and /api/embed. A chaos task SIGKILLs a random node every 15-30 s
(never the last one alive) and restarts it on the same port 5-10 s later. With
`--gateway-kills` (on by default) a second chaos task SIGKILLs one of the gateway's own
processes by PID every 30-60 s (the Router or Ingress replica, a node's worker replica, the
node state, metrics or cache actor: Serve or Ray restarts each).

Counted: every request sent, succeeded or failed (by kind, by HTTP status, with sample
messages); streams that failed before their first chunk (lost) apart from streams that
broke after it with an error chunk (allowed when their node was killed meanwhile); latency of
successful non-streamed requests; kills, restarts and re-admission times; the summed RSS of
the gateway's processes (Serve replicas, Serve controller and proxies, the node state actor,
HAProxy) after the warm-up and at the end. Always exits 0 once results are written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
import psutil
import ray

from sollol_serve.config import GatewayConfig, NodeConfig
from sollol_serve.local import (
    APP_NAME,
    gateway_pid,
    start_local_gateway,
    stop_local_gateway,
    wait_for_nodes,
)
from sollol_serve.processes import free_port
from sollol_serve.sim.process import SimProcess

# name, slots, decode tokens/s, prefill tokens/s, models
NODES = [
    ("n1-fast", 4, 200.0, 4000.0, "llama3.2,nomic-embed-text@0.3"),
    ("n2-mid", 3, 120.0, 2500.0, "llama3.2,nomic-embed-text@0.3"),
    ("n3-slow", 2, 80.0, 1500.0, "llama3.2"),
    ("n4-slower", 2, 40.0, 800.0, "llama3.2"),
]
LOAD_S = 0.3  # cold load of a model: every restarted node pays it again

KIND_WEIGHTS = {
    "chat": 0.20, "chat_stream": 0.16, "generate": 0.12, "generate_stream": 0.08,
    "openai_chat": 0.12, "openai_chat_stream": 0.14, "embed": 0.18,
}
STREAMED = {"chat_stream", "generate_stream", "openai_chat_stream"}
WORDS = "route every request to the node that finishes it soonest across a cluster that keeps failing".split()
SAMPLES_PER_STATUS = 5

# Deployments and actors of the gateway whose memory is watched (Serve's and ours).
GATEWAY_ACTOR_PREFIXES = ("ServeReplica:", "ServeController", "ProxyActor", "HAProxyManager", "NodeStateActor",
                          "RateLimiter")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def sim_args(slots: int, decode: float, prefill: float, models: str) -> list[str]:
    return ["--kind", "ollama", "--models", models, "--slots", str(slots), "--decode-tps", str(decode),
            "--prefill-tps", str(prefill), "--load-s", str(LOAD_S)]


# -- the load ----------------------------------------------------------------------------------
def request_of(kind: str, rng: random.Random) -> tuple[str, dict]:
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40)))
    tokens = rng.randint(16, 96)
    if kind == "embed":
        return "/api/embed", {"model": "nomic-embed-text", "input": [prompt, prompt[::-1]]}
    if kind.startswith("openai_chat"):
        return "/v1/chat/completions", {"model": "llama3.2", "messages": [{"role": "user", "content": prompt}],
                                        "stream": kind.endswith("_stream"), "max_tokens": tokens}
    if kind.startswith("generate"):
        return "/api/generate", {"model": "llama3.2", "prompt": prompt, "stream": kind.endswith("_stream"),
                                 "options": {"num_predict": tokens}}
    return "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": prompt}],
                         "stream": kind.endswith("_stream"), "options": {"num_predict": tokens}}


def error_text(payload: object) -> str | None:
    """The error message of an Ollama (`{"error": str}`) or OpenAI (`{"error": {...}}`) body."""
    if not isinstance(payload, dict) or "error" not in payload:
        return None
    err = payload["error"]
    return str(err.get("message", err)) if isinstance(err, dict) else str(err)


def valid_body(kind: str, body: object) -> bool:
    if not isinstance(body, dict) or error_text(body) is not None:
        return False
    if kind == "embed":
        return isinstance(body.get("embeddings"), list) and len(body["embeddings"]) == 2
    if kind == "openai_chat":
        return bool(body.get("choices"))
    if kind == "generate":
        return "response" in body and body.get("done") is True
    return isinstance(body.get("message"), dict) and body.get("done") is True


def attempts_of(payload: object) -> int:
    routing = payload.get("_sollol_routing") if isinstance(payload, dict) else None
    return len(routing.get("attempts") or []) if isinstance(routing, dict) else 0


async def one(session: aiohttp.ClientSession, url: str, kind: str, rng: random.Random) -> dict:
    """One request's result, stamped with when it ended (a kill during it may explain a failure)."""
    result = await _one(session, url, kind, rng)
    return {**result, "ended": result.get("ended", time.monotonic())}


async def _one(session: aiohttp.ClientSession, url: str, kind: str, rng: random.Random) -> dict:
    path, body = request_of(kind, rng)
    streamed = kind in STREAMED
    result = {"kind": kind, "streamed": streamed, "started": time.monotonic(), "node": None, "attempts": 0}
    chunks = 0
    try:
        async with session.post(url + path, json=body) as response:
            result["node"] = response.headers.get("X-SOLLOL-Node")
            if response.status != 200:
                text = (await response.read()).decode("utf-8", "replace")
                try:
                    message = error_text(json.loads(text)) or text
                except ValueError:
                    message = text
                return {**result, "outcome": "failed", "status": str(response.status), "message": message[:300]}
            if not streamed:
                payload = await response.json(content_type=None)
                result["attempts"] = attempts_of(payload)
                if not valid_body(kind, payload):
                    return {**result, "outcome": "failed", "status": "200-invalid-body",
                            "message": (error_text(payload) or json.dumps(payload))[:300]}
                return {**result, "outcome": "ok", "latency_s": time.monotonic() - result["started"]}
            finished = False
            async for raw in response.content:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                if line.startswith("data:"):  # OpenAI server-sent events
                    data = line[5:].strip()
                    if data == "[DONE]":
                        finished = True
                        break
                    chunk = json.loads(data)
                else:
                    chunk = json.loads(line)
                message = error_text(chunk)
                if message is not None:
                    outcome = "broken_mid_stream" if chunks else "failed_before_first_chunk"
                    return {**result, "outcome": outcome, "status": "200-error-chunk", "message": message[:300],
                            "chunks": chunks, "ended": time.monotonic()}
                if chunks == 0:
                    result["ttfc_s"] = time.monotonic() - result["started"]
                chunks += 1
                if isinstance(chunk, dict) and "_sollol_routing" in chunk:
                    result["attempts"] = attempts_of(chunk)
                if isinstance(chunk, dict) and chunk.get("done") is True:
                    finished = True
            if not finished:
                outcome = "broken_no_error_chunk" if chunks else "failed_before_first_chunk"
                return {**result, "outcome": outcome, "status": "200-truncated",
                        "message": f"stream ended after {chunks} chunks without its final chunk",
                        "chunks": chunks, "ended": time.monotonic()}
            return {**result, "outcome": "ok", "latency_s": time.monotonic() - result["started"], "chunks": chunks}
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        status = "client-timeout" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__
        if streamed:
            outcome = "broken_no_error_chunk" if chunks else "failed_before_first_chunk"
        else:
            outcome = "failed"
        return {**result, "outcome": outcome, "status": status, "message": str(exc)[:300] or status,
                "chunks": chunks, "ended": time.monotonic()}


class Load:
    def __init__(self, url: str, args: argparse.Namespace):
        self.url = url
        self.args = args
        self.rng = random.Random(args.seed * 7919 + 1)
        self.results: list[dict] = []
        self.sent = 0
        self.kinds = list(KIND_WEIGHTS)
        self.weights = list(KIND_WEIGHTS.values())

    async def run(self, stop_at: float) -> None:
        timeout = aiohttp.ClientTimeout(total=self.args.request_timeout)
        connector = aiohttp.TCPConnector(limit=self.args.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            async def client() -> None:
                while time.monotonic() < stop_at and self.sent < self.args.max_requests:
                    self.sent += 1
                    kind = self.rng.choices(self.kinds, self.weights)[0]
                    self.results.append(await one(session, self.url, kind, self.rng))

            await asyncio.gather(*(client() for _ in range(self.args.concurrency)))


# -- chaos ---------------------------------------------------------------------------------------
class Chaos:
    def __init__(self, url: str, sims: dict[str, SimProcess], args: argparse.Namespace):
        self.url = url
        self.sims = sims
        self.args = args
        self.rng = random.Random(args.seed)
        self.events: list[dict] = []
        self.kills: dict[str, list[float]] = defaultdict(list)  # node -> monotonic kill times
        self.down: set[str] = set()
        self.restarts: list[asyncio.Task] = []
        self.t0 = time.monotonic()

    async def run(self, stop_at: float) -> None:
        while True:
            wait = self.rng.uniform(self.args.kill_every_min, self.args.kill_every_max)
            if time.monotonic() + wait >= stop_at:
                break
            await asyncio.sleep(wait)
            alive = [name for name in self.sims if name not in self.down]
            if len(alive) <= 1:  # never all nodes at once
                self.events.append({"at_s": self._now(), "skipped": "only one node alive"})
                continue
            victim = self.rng.choice(alive)
            down_s = self.rng.uniform(self.args.down_min, self.args.down_max)
            self.down.add(victim)
            self.kills[victim].append(time.monotonic())
            await asyncio.to_thread(self.sims[victim].kill)
            event = {"node": victim, "killed_at_s": self._now(), "down_s": round(down_s, 1)}
            self.events.append(event)
            print(f"[chaos] t={event['killed_at_s']:.0f}s SIGKILL {victim}; restart in {down_s:.1f} s", flush=True)
            self.restarts.append(asyncio.create_task(self._restart(victim, down_s, event)))
        await self.settle()

    async def settle(self) -> None:
        """Wait for pending restarts (they never outlive the run by more than down_max + start)."""
        if self.restarts:
            await asyncio.gather(*self.restarts)

    async def _restart(self, name: str, down_s: float, event: dict) -> None:
        await asyncio.sleep(down_s)
        try:
            await asyncio.to_thread(self.sims[name].start)
        except Exception as exc:  # recorded, the soak goes on with one node fewer
            event["restart_error"] = f"{type(exc).__name__}: {exc}"
            print(f"[chaos] restart of {name} failed: {exc}", flush=True)
            return
        self.down.discard(name)
        event["restarted_at_s"] = self._now()
        event["readmitted_after_s"] = await self._readmitted(name)
        print(f"[chaos] t={event['restarted_at_s']:.0f}s restarted {name}; healthy in the gateway after "
              f"{event['readmitted_after_s']} s", flush=True)

    async def _readmitted(self, name: str, limit_s: float = 60.0) -> float | None:
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while time.monotonic() - started < limit_s:
                try:
                    async with session.get(self.url + "/api/nodes") as response:
                        nodes = (await response.json())["nodes"]
                    if any(n["name"] == name and n["healthy"] for n in nodes):
                        return round(time.monotonic() - started, 2)
                except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
                    pass
                await asyncio.sleep(0.5)
        return None

    def killed_during(self, node: str | None, start: float, end: float) -> bool:
        return any(start - 1.0 <= k <= end + 1.0 for k in self.kills.get(node or "", []))

    def _now(self) -> float:
        return round(time.monotonic() - self.t0, 1)


class GatewayChaos:
    """SIGKILLs one of the gateway's own processes at a time, as an OOM kill would."""

    ROLES = ("router", "ingress", "worker", "state", "metrics", "cache")

    def __init__(self, args: argparse.Namespace, t0: float):
        self.args, self.t0 = args, t0
        self.rng = random.Random(args.seed + 1)
        self.events: list[dict] = []
        self.kills: dict[str, list[float]] = defaultdict(list)  # role (worker:<node>) -> monotonic kill times
        self._order: list[str] = []

    async def run(self, stop_at: float) -> None:
        while True:
            wait = self.rng.uniform(self.args.gateway_kill_every_min, self.args.gateway_kill_every_max)
            if time.monotonic() + wait >= stop_at:
                return
            await asyncio.sleep(wait)
            if not self._order:  # every process in turn, in a shuffled order, before any again
                self._order = self.rng.sample(self.ROLES, len(self.ROLES))
            role = self._order.pop()
            if role == "worker":
                role = f"worker:{self.rng.choice([name for name, *_ in NODES])}"
            event = {"process": role, "killed_at_s": round(time.monotonic() - self.t0, 1)}
            try:
                pid = await asyncio.to_thread(gateway_pid, role, APP_NAME)
                os.kill(pid, 9)
                self.kills[role].append(time.monotonic())
                event["pid"] = pid
            except Exception as exc:  # not found (being restarted): recorded, the soak goes on
                event["error"] = f"{type(exc).__name__}: {exc}"
            self.events.append(event)
            print(f"[chaos] t={event['killed_at_s']:.0f}s SIGKILL the gateway's {role} "
                  f"{event.get('pid', event.get('error'))}", flush=True)

    def killed_during(self, role: str, start: float, end: float) -> bool:
        return any(start - 1.0 <= k <= end + 1.0 for k in self.kills.get(role, []))


# -- gateway memory ----------------------------------------------------------------------------
class Memory:
    """RSS of the gateway's Ray actors (found in Ray's actor table) and of their children."""

    def __init__(self) -> None:
        self.state_api_ok = True
        self.source = "ray.util.state.list_actors"

    def _actors(self) -> list[tuple[str, int]]:
        if self.state_api_ok:
            try:
                from ray.util.state import list_actors

                actors = list_actors(detail=True, limit=10000, timeout=5, raise_on_missing_output=False)
                return [(a.class_name, a.pid) for a in actors if a.state == "ALIVE" and a.pid]
            except Exception:  # the state API needs the dashboard, which the local gateway doesn't start
                self.state_api_ok = False
                self.source = "GCS actor table (ray._private.state.actors)"
        table = ray._private.state.actors()
        return [(a["ActorClassName"], a["Pid"]) for a in table.values() if a.get("State") == "ALIVE" and a.get("Pid")]

    def sample(self) -> dict:
        processes: dict[str, int] = {}
        for class_name, pid in self._actors():
            if not class_name.startswith(GATEWAY_ACTOR_PREFIXES):
                continue
            label = class_name.split(":")[-1] if class_name.startswith("ServeReplica:") else class_name
            try:
                proc = psutil.Process(pid)
                processes[f"{label} (pid {pid})"] = proc.memory_info().rss
                for child in proc.children(recursive=True):  # HAProxy under HAProxyManager
                    processes[f"{child.name()} under {label} (pid {child.pid})"] = child.memory_info().rss
            except psutil.Error:
                continue
        return {"total_mib": round(sum(processes.values()) / 2**20, 1),
                "processes": {k: round(v / 2**20, 1) for k, v in sorted(processes.items())}}


async def sample_memory(memory: Memory, t0: float, warmup_s: float, stop_at: float, interval_s: float,
                        series: list[dict], marks: dict) -> None:
    """A sample at the end of the warm-up, every `interval_s` after it, and at `stop_at`."""
    await asyncio.sleep(max(0.0, t0 + warmup_s - time.monotonic()))
    marks["baseline"] = await asyncio.to_thread(memory.sample)
    series.append({"at_s": round(time.monotonic() - t0), **marks["baseline"]})
    while True:
        await asyncio.sleep(max(0.0, min(interval_s, stop_at - time.monotonic())))
        sample = await asyncio.to_thread(memory.sample)
        series.append({"at_s": round(time.monotonic() - t0), **sample})
        if time.monotonic() >= stop_at - 0.5:
            marks["end"] = sample
            return


# -- the run -----------------------------------------------------------------------------------
async def soak(url: str, sims: dict[str, SimProcess], args: argparse.Namespace) -> dict:
    t0 = time.monotonic()
    stop_at = t0 + args.duration
    load = Load(url, args)
    chaos = Chaos(url, sims, args)
    chaos.t0 = t0
    memory = Memory()
    series: list[dict] = []
    marks: dict = {}
    mem_task = asyncio.create_task(sample_memory(memory, t0, min(args.warmup, args.duration / 2), stop_at,
                                                 args.mem_interval, series, marks))
    chaos_task = asyncio.create_task(chaos.run(stop_at))
    gateway_chaos = GatewayChaos(args, t0)
    gateway_task = asyncio.create_task(gateway_chaos.run(stop_at) if args.gateway_kills else asyncio.sleep(0))

    async def progress() -> None:
        while True:
            await asyncio.sleep(30)
            done = Counter(r["outcome"] for r in load.results)
            print(f"[load] t={time.monotonic() - t0:.0f}s sent {load.sent} {dict(done)}", flush=True)

    progress_task = asyncio.create_task(progress())
    await load.run(stop_at)
    load_wall = time.monotonic() - t0
    progress_task.cancel()
    await mem_task
    await chaos_task
    await gateway_task
    return {"results": load.results, "sent": load.sent, "load_wall_s": load_wall, "chaos": chaos,
            "gateway_chaos": gateway_chaos,
            "memory": marks, "memory_series": series, "memory_source": memory.source}


def summarize(run: dict) -> dict:
    results: list[dict] = run["results"]
    chaos: Chaos = run["chaos"]
    gateway_chaos: GatewayChaos = run["gateway_chaos"]
    # Only what was in flight on a killed Ingress replica may be lost with it.
    on_killed_ingress = [r for r in results if r["outcome"] != "ok"
                         and gateway_chaos.killed_during("ingress", r["started"], r["ended"])]
    by_kind: dict[str, Counter] = defaultdict(Counter)
    failures: dict[str, dict] = {}
    per_node: Counter = Counter()
    for r in results:
        by_kind[r["kind"]]["sent"] += 1
        by_kind[r["kind"]][r["outcome"]] += 1
        if r["outcome"] == "ok":
            per_node[r["node"]] += 1
            if r["attempts"] > 1:
                by_kind[r["kind"]]["ok_after_failover"] += 1
            continue
        key = f"{r['status']} ({'streamed' if r['streamed'] else 'non-streamed'}: {r['outcome']})"
        entry = failures.setdefault(key, {"count": 0, "kinds": Counter(), "samples": []})
        entry["count"] += 1
        entry["kinds"][r["kind"]] += 1
        if len(entry["samples"]) < SAMPLES_PER_STATUS and r["message"] not in entry["samples"]:
            entry["samples"].append(r["message"])
    for entry in failures.values():
        entry["kinds"] = dict(entry["kinds"])

    plain = [r for r in results if not r["streamed"]]
    streams = [r for r in results if r["streamed"]]
    broken = [r for r in streams if r["outcome"] in ("broken_mid_stream", "broken_no_error_chunk")]
    explained = [r for r in broken if r["outcome"] == "broken_mid_stream"
                 and (chaos.killed_during(r["node"], r["started"], r["ended"])
                      or gateway_chaos.killed_during(f"worker:{r['node']}", r["started"], r["ended"]))]
    latency_ms = [r["latency_s"] * 1000 for r in plain if r["outcome"] == "ok"]
    ttfc_ms = [r["ttfc_s"] * 1000 for r in streams if r["outcome"] == "ok"]
    non_streamed = {
        "sent": len(plain), "succeeded": sum(r["outcome"] == "ok" for r in plain),
        "failed": sum(r["outcome"] != "ok" for r in plain),
        "failed_in_flight_on_killed_ingress": sum(not r["streamed"] for r in on_killed_ingress),
        "succeeded_after_failover": sum(r["outcome"] == "ok" and r["attempts"] > 1 for r in plain),
    }
    streamed = {
        "sent": len(streams), "succeeded": sum(r["outcome"] == "ok" for r in streams),
        "failed_before_first_chunk": sum(r["outcome"] == "failed_before_first_chunk" for r in streams),
        "failed_in_flight_on_killed_ingress": sum(r["streamed"] for r in on_killed_ingress),
        "broke_mid_stream_with_error_chunk": sum(r["outcome"] == "broken_mid_stream" for r in streams),
        "broke_mid_stream_with_error_chunk_node_killed": len(explained),
        "broke_mid_stream_unexplained": sum(r not in explained and r not in on_killed_ingress for r in broken),
        "broke_mid_stream_without_error_chunk": sum(r["outcome"] == "broken_no_error_chunk" for r in streams
                                                    if r not in on_killed_ingress),
        "succeeded_after_failover": sum(r["outcome"] == "ok" and r["attempts"] > 1 for r in streams),
    }
    mem = run["memory"]
    baseline, end = mem.get("baseline"), mem.get("end")
    growth = None
    per_process = []
    if baseline and end and baseline["total_mib"]:
        growth = round((end["total_mib"] - baseline["total_mib"]) / baseline["total_mib"] * 100, 2)
        for name in sorted(set(baseline["processes"]) | set(end["processes"])):
            before, after = baseline["processes"].get(name), end["processes"].get(name)
            per_process.append({"process": name, "warmup_mib": before, "end_mib": after,
                                "growth_pct": round((after - before) / before * 100, 1) if before and after else None})
    kills = [e for e in chaos.events if "node" in e]
    readmit = [e["readmitted_after_s"] for e in kills if e.get("readmitted_after_s") is not None]
    return {
        "requests": {"sent": run["sent"], "completed": len(results),
                     "succeeded": sum(r["outcome"] == "ok" for r in results),
                     "failed": sum(r["outcome"] != "ok" for r in results),
                     "throughput_rps": round(len(results) / run["load_wall_s"], 2)},
        "non_streamed": non_streamed,
        "streamed": streamed,
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "succeeded_by_node": dict(sorted((str(k), v) for k, v in per_node.items())),
        "failures": dict(sorted(failures.items(), key=lambda kv: -kv[1]["count"])),
        "latency_non_streamed_ms": {
            "n": len(latency_ms), "p50": _r(percentile(latency_ms, 50)), "p95": _r(percentile(latency_ms, 95)),
            "p99": _r(percentile(latency_ms, 99)), "max": _r(max(latency_ms) if latency_ms else None),
            "mean": _r(statistics.fmean(latency_ms) if latency_ms else None)},
        "ttfc_streamed_ms": {"n": len(ttfc_ms), "p50": _r(percentile(ttfc_ms, 50)),
                             "p95": _r(percentile(ttfc_ms, 95)), "p99": _r(percentile(ttfc_ms, 99))},
        "gateway_chaos": {"kills": sum("pid" in e for e in gateway_chaos.events), "events": gateway_chaos.events,
                          "failed_in_flight_on_killed_ingress": len(on_killed_ingress),
                          "failed_otherwise": sum(r["outcome"] != "ok" for r in results) - len(on_killed_ingress)
                          - len(explained)},
        "chaos": {"kills": len(kills), "restarts": sum("restarted_at_s" in e for e in kills),
                  "restart_failures": sum("restart_error" in e for e in kills),
                  "readmitted_after_s_max": max(readmit) if readmit else None, "events": chaos.events},
        "memory": {"source": run["memory_source"], "warmup_total_mib": baseline and baseline["total_mib"],
                   "end_total_mib": end and end["total_mib"], "growth_pct": growth, "per_process": per_process,
                   "series": run["memory_series"]},
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def goals(summary: dict) -> dict[str, dict]:
    ns, st, growth = summary["non_streamed"], summary["streamed"], summary["memory"]["growth_pct"]
    lost = summary["gateway_chaos"]["failed_otherwise"]
    return {
        "0 requests lost but those in flight on a killed Ingress or broken with an error chunk by a killed node "
        "or worker": {"met": lost == 0, "value": lost},
        "0 lost non-streamed requests (but on a killed Ingress)": {
            "met": ns["failed"] == ns["failed_in_flight_on_killed_ingress"],
            "value": ns["failed"] - ns["failed_in_flight_on_killed_ingress"]},
        "0 streams failed before their first chunk (but on a killed Ingress)": {
            "met": st["failed_before_first_chunk"] <= st["failed_in_flight_on_killed_ingress"],
            "value": st["failed_before_first_chunk"]},
        "0 streams broken without a killed node or without an error chunk": {
            "met": st["broke_mid_stream_unexplained"] + st["broke_mid_stream_without_error_chunk"] == 0,
            "value": st["broke_mid_stream_unexplained"] + st["broke_mid_stream_without_error_chunk"]},
        "gateway memory growth < 10%": {"met": growth is not None and growth < 10,
                                        "value": None if growth is None else f"{growth}%"},
    }


def machine() -> dict:
    return {"arch": platform.machine(), "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "ray": ray.__version__, "os": platform.platform()}


def write_outputs(out_dir: Path, report: dict) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    m, s = report["meta"], report["summary"]
    ns, st, mem, ch = s["non_streamed"], s["streamed"], s["memory"], s["chaos"]
    lat, ttfc = s["latency_non_streamed_ms"], s["ttfc_streamed_ms"]
    mach = m["machine"]
    lines = [f"Measured {m['when']} on {mach['arch']}, {mach['cores']} cores, {mach['memory_gib']} GiB "
             f"(Python {mach['python']}, Ray {mach['ray']}) with `{m['command']}`; "
             f"{m['elapsed_s']} s in all, load for {m['load_wall_s']} s.", "",
             "Nodes (simulated Ollama, `sollol sim-node`): " + "; ".join(
                 f"{n['name']} {n['slots']} slots, {n['decode_tps']:g} tok/s, {n['models']}" for n in m["nodes"])
             + ". Gateway: whole app on a local Ray (num_cpus=2), slots configured, other settings default.", "",
             "### Goals", "", "| goal | value | met |", "|---|---|---|"]
    lines += [f"| {name} | {g['value']} | {'yes' if g['met'] else 'NO'} |" for name, g in report["goals"].items()]
    lines += ["", "### Requests", "",
              f"Sent {s['requests']['sent']}, completed {s['requests']['completed']}, succeeded "
              f"{s['requests']['succeeded']}, failed {s['requests']['failed']} "
              f"({s['requests']['throughput_rps']} req/s at concurrency {m['args']['concurrency']}).", "",
              "| | sent | succeeded | failed | succeeded after a failover |", "|---|---|---|---|---|",
              f"| non-streamed | {ns['sent']} | {ns['succeeded']} | {ns['failed']} | {ns['succeeded_after_failover']} |",
              f"| streamed | {st['sent']} | {st['succeeded']} | {st['sent'] - st['succeeded']} | "
              f"{st['succeeded_after_failover']} |", "",
              "| streams | count |", "|---|---|",
              f"| failed before the first chunk (lost) | {st['failed_before_first_chunk']} |",
              f"| broke after the first chunk with an error chunk | {st['broke_mid_stream_with_error_chunk']} |",
              f"| ... of which their node was killed meanwhile (allowed) | "
              f"{st['broke_mid_stream_with_error_chunk_node_killed']} |",
              f"| broke with an error chunk, node not killed | {st['broke_mid_stream_unexplained']} |",
              f"| broke without an error chunk (connection dropped / truncated) | "
              f"{st['broke_mid_stream_without_error_chunk']} |", "",
              "| kind | " + " | ".join(["sent", "ok", "ok after failover", "failed", "failed before first chunk",
                                        "broken mid-stream", "broken, no error chunk"]) + " |",
              "|---|---|---|---|---|---|---|---|"]
    for kind, c in s["by_kind"].items():
        lines.append(f"| {kind} | {c.get('sent', 0)} | {c.get('ok', 0)} | {c.get('ok_after_failover', 0)} | "
                     f"{c.get('failed', 0)} | {c.get('failed_before_first_chunk', 0)} | "
                     f"{c.get('broken_mid_stream', 0)} | {c.get('broken_no_error_chunk', 0)} |")
    lines += ["", f"Succeeded by node: {s['succeeded_by_node']}", "", "### Failures by status", ""]
    if not s["failures"]:
        lines.append("None.")
    for key, f in s["failures"].items():
        lines.append(f"- **{key}**: {f['count']} ({f['kinds']})")
        lines += [f"  - `{sample}`" for sample in f["samples"]]
    lines += ["", "### Latency", "",
              "| | n | p50 ms | p95 ms | p99 ms | max ms |", "|---|---|---|---|---|---|",
              f"| successful non-streamed, full response | {lat['n']} | {lat['p50']} | {lat['p95']} | {lat['p99']} | "
              f"{lat['max']} |",
              f"| successful streams, time to first chunk | {ttfc['n']} | {ttfc['p50']} | {ttfc['p95']} | "
              f"{ttfc['p99']} | |", "",
              "### The gateway's own processes killed", "",
              f"{s['gateway_chaos']['kills']} SIGKILLs by PID; requests failed in flight on a killed Ingress "
              f"(allowed): {s['gateway_chaos']['failed_in_flight_on_killed_ingress']}; failed otherwise: "
              f"{s['gateway_chaos']['failed_otherwise']}.", "",
              "| process | killed at s | pid |", "|---|---|---|",
              *[f"| {e['process']} | {e['killed_at_s']} | {e.get('pid', e.get('error'))} |"
                for e in s["gateway_chaos"]["events"]], "",
              "### Chaos", "",
              f"{ch['kills']} SIGKILLs, {ch['restarts']} restarts on the same port ({ch['restart_failures']} failed); "
              f"longest time from restart to healthy in the gateway: {ch['readmitted_after_s_max']} s.", "",
              "| node | killed at s | down s | restarted at s | healthy in gateway after s |", "|---|---|---|---|---|"]
    for e in ch["events"]:
        if "node" in e:
            lines.append(f"| {e['node']} | {e['killed_at_s']} | {e['down_s']} | {e.get('restarted_at_s', '-')} | "
                         f"{e.get('readmitted_after_s', e.get('restart_error', '-'))} |")
    lines += ["", "### Gateway memory (RSS)", "",
              f"Summed RSS of the gateway's processes (found via {mem['source']}): "
              f"{mem['warmup_total_mib']} MiB after the {m['args']['warmup']:g} s warm-up, {mem['end_total_mib']} MiB "
              f"at the end: growth {mem['growth_pct']}%.", "",
              "| process | after warm-up MiB | end MiB | growth |", "|---|---|---|---|"]
    for p in mem["per_process"]:
        lines.append(f"| {p['process']} | {p['warmup_mib']} | {p['end_mib']} | "
                     f"{'-' if p['growth_pct'] is None else str(p['growth_pct']) + '%'} |")
    lines += ["", "Summed RSS over time (s: MiB): " + ", ".join(f"{x['at_s']}: {x['total_mib']}"
                                                              for x in mem["series"])]
    for label in ("Ingress", "Router"):  # the request path's stateful replicas, sample by sample
        points = [(x["at_s"], v) for x in mem["series"] for k, v in x["processes"].items() if k.startswith(label)]
        if points:
            lines.append(f"{label} RSS over time (s: MiB): " + ", ".join(f"{at}: {v}" for at, v in points))
    text = "\n".join(lines) + "\n"
    (out_dir / "soak.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load (warm-up included)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients, each with one request in flight")
    parser.add_argument("--max-requests", type=int, default=20000, help="stop sending after this many")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="client timeout per request, s")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before the baseline memory sample")
    parser.add_argument("--mem-interval", type=float, default=20.0, help="seconds between memory samples")
    parser.add_argument("--kill-every-min", type=float, default=15.0)
    parser.add_argument("--kill-every-max", type=float, default=30.0)
    parser.add_argument("--down-min", type=float, default=5.0)
    parser.add_argument("--down-max", type=float, default=10.0)
    parser.add_argument("--gateway-kills", type=int, default=1, help="1: also kill the gateway's own processes")
    parser.add_argument("--gateway-kill-every-min", type=float, default=30.0)
    parser.add_argument("--gateway-kill-every-max", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    started = time.time()
    sims = {name: SimProcess(name, sim_args(slots, decode, prefill, models)).start()
            for name, slots, decode, prefill, models in NODES}
    try:
        config = GatewayConfig(nodes=[NodeConfig(name=name, url=sims[name].url, slots=slots)
                                      for name, slots, *_ in NODES])
        url = start_local_gateway(config, port=free_port(), num_cpus=2)
        wait_for_nodes(url, len(NODES))
        print(f"gateway at {url}; soaking for {args.duration:g} s at concurrency {args.concurrency}", flush=True)
        run = asyncio.run(soak(url, sims, args))
    finally:
        stop_local_gateway()
        for sim in sims.values():
            sim.stop()

    summary = summarize(run)
    report = {
        "meta": {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
                 "command": "python benchmarks/soak.py " + " ".join(
                     f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}"
                     for k, v in vars(args).items() if k != "out"),
                 "args": vars(args), "elapsed_s": round(time.time() - started),
                 "load_wall_s": round(run["load_wall_s"], 1),
                 "nodes": [{"name": n, "slots": sl, "decode_tps": d, "prefill_tps": p, "models": mo, "load_s": LOAD_S}
                           for n, sl, d, p, mo in NODES]},
        "summary": summary,
    }
    report["goals"] = goals(summary)
    text = write_outputs(Path(args.out), report)
    print("\n" + text)
    met = sum(g["met"] for g in report["goals"].values())
    print(f"SOAK SUMMARY: {met}/{len(report['goals'])} goals met; "
          f"non-streamed {summary['non_streamed']['succeeded']}/{summary['non_streamed']['sent']} ok, "
          f"streams {summary['streamed']['succeeded']}/{summary['streamed']['sent']} ok "
          f"({summary['streamed']['failed_before_first_chunk']} lost before the first chunk, "
          f"{summary['streamed']['broke_mid_stream_with_error_chunk']} broke mid-stream), "
          f"{summary['chaos']['kills']} kills, memory growth {summary['memory']['growth_pct']}%", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
