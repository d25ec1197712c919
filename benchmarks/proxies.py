"""The gateway beside what users would put in front of their node instead, in one run: LiteLLM's
proxy and nginx `least_conn`, each against the node directly.

    python benchmarks/proxies.py [--quick] [--rounds 2] [--out benchmarks/results]

One simulated node that never queues (overhead.py's NODE_ARGS: 128 slots, fixed short answers).
In front of it, each started fresh:

- the gateway as shipped (`serve run` of serve_config.yaml, the node given without slots:
  overhead.py's `running_gateway`);
- LiteLLM's proxy (`litellm_proxy.py`: pinned, its own venv, a master key, one worker);
- nginx `least_conn` (`nginx.py`): it forwards bytes, the floor of what a proxy adds.

Each contender is measured right after the node directly, on the same machine state; the three
go one after the other, and the whole again (`--rounds`): on a shared machine the spread between
rounds says how far to trust a difference. Measured:

1. **Cold start**: the first chat through it (timed), then 32 streamed chats (150 tokens) sent
   at once: the added time to first chunk, and how many requests the node itself made wait
   for a slot (its `/_sim/state` `queued`).
2. **Added latency**: non-streamed 8-token chats, closed loop at concurrency 1, 8 and 32; p50
   and p99 minus the node's own. The gateway and LiteLLM are spoken to in the OpenAI API
   (`/v1/chat/completions`, translated to the node's Ollama API: the same work for both);
   nginx and the node directly in Ollama's `/api/chat`.
3. **CPU**: per request, of each contender's whole process tree, and that less its idle burn;
   and while idle, per process.

Every loop is bounded in count and time; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # nginx.py imports as a sibling

from benchmarks.litellm_proxy import VERSION as LITELLM_VERSION  # noqa: E402
from benchmarks.litellm_proxy import LiteLLMProxy  # noqa: E402
from benchmarks.overhead import (  # noqa: E402
    CHAT_TOKENS,
    STREAM_TOKENS,
    Outcome,
    Roots,
    StreamSample,
    added,
    chat,
    closed_loop,
    cpu_between,
    git_state,
    machine,
    read_procs,
    running_gateway,
    session,
    sim_node,
    stream,
    summarize,
    write_report,
)
from benchmarks.overhead import Plan as GatewayPlan  # noqa: E402
from nginx import NginxProxy  # noqa: E402

BURST = 32
CONCURRENCIES = (1, 8, 32)


@dataclass(frozen=True)
class Plan:
    requests: dict[int, int]  # per concurrency
    warmup_rounds: int = 2
    idle_s: float = 10.0
    cell_timeout_s: float = 240.0


FULL = Plan(requests={1: 200, 8: 800, 32: 1000})
QUICK = Plan(requests={1: 20, 8: 64, 32: 96}, warmup_rounds=1, idle_s=3.0, cell_timeout_s=60.0)


# -- the OpenAI API, as the gateway and LiteLLM are spoken to ------------------------------------
def openai_body(tokens: int, streamed: bool) -> dict:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": "hello"}], "stream": streamed,
            "max_tokens": tokens}


def openai_chat(headers: dict[str, str]) -> Callable:
    async def call(client: aiohttp.ClientSession, url: str) -> float:
        started = time.perf_counter()
        async with client.post(url + "/v1/chat/completions", json=openai_body(CHAT_TOKENS, False),
                               headers=headers) as response:
            response.raise_for_status()
            await response.read()
        return time.perf_counter() - started
    return call


def openai_stream(headers: dict[str, str]) -> Callable:
    async def call(client: aiohttp.ClientSession, url: str) -> StreamSample:
        started = time.perf_counter()
        arrivals: list[float] = []
        done = False
        async with client.post(url + "/v1/chat/completions", json=openai_body(STREAM_TOKENS, True),
                               headers=headers) as response:
            response.raise_for_status()
            async for line in response.content:
                line = line.strip()
                if line.startswith(b"data:"):
                    arrivals.append(time.perf_counter())
                    done = done or line == b"data: [DONE]"
        if not done:
            raise RuntimeError("stream ended without [DONE]")
        return StreamSample(arrivals[0] - started, arrivals[-1] - started, len(arrivals),
                            [b - a for a, b in zip(arrivals, arrivals[1:])])
    return call


@dataclass(frozen=True)
class Contender:
    name: str
    url: str
    pid: int
    chat: Callable
    stream: Callable


# -- measuring -------------------------------------------------------------------------------
def node_queued(node_url: str) -> int:
    return httpx.get(node_url + "/_sim/state", timeout=10).json()["queued"]


async def burst(url: str, call: Callable) -> Outcome:
    async with session(BURST) as client:
        return await closed_loop(client, url, call, BURST, BURST, 120.0)


async def one(url: str, call: Callable) -> Outcome:
    async with session(1) as client:
        return await closed_loop(client, url, call, 1, 1, 60.0)


def cold_burst(node_url: str, contender: Contender) -> dict:
    """The first traffic but one: a single chat first (it opens connections and warms code
    paths, which costs a fresh Python proxy a second or more, and proves no more than one
    slot), then the burst: what is left is learning the node's capacity."""
    asyncio.run(one(node_url, chat))
    first = asyncio.run(one(contender.url, contender.chat))
    direct = asyncio.run(burst(node_url, stream))
    before = node_queued(node_url)
    via = asyncio.run(burst(contender.url, contender.stream))
    queued = node_queued(node_url) - before
    d, g = summarize([s.first_s for s in direct.samples]), summarize([s.first_s for s in via.samples])
    row = {"contender": contender.name, "first_chat_ms": summarize(first.samples)["p50_ms"],
           "direct_first_chunk": d, "first_chunk": g,
           "added_first_chunk_p50_ms": added(g, d, "p50_ms"), "added_first_chunk_p99_ms": added(g, d, "p99_ms"),
           "queued_inside_node": queued, "errors": dict(via.errors)}
    print(json.dumps(row), flush=True)
    return row


def idle(contender: Contender, node_pid: int, seconds: float) -> dict:
    before = read_procs()
    time.sleep(seconds)
    return cpu_between(before, read_procs(), Roots(contender.pid, node_pid), seconds, seconds)


async def loop(url: str, call: Callable, concurrency: int, count: int, plan: Plan) -> Outcome:
    async with session(concurrency) as client:
        await closed_loop(client, url, call, concurrency, concurrency * plan.warmup_rounds, plan.cell_timeout_s)
        return await closed_loop(client, url, call, concurrency, count, plan.cell_timeout_s)


def cell(node_url: str, node_pid: int, contender: Contender, concurrency: int, plan: Plan,
         idle_ms_per_s: float) -> dict:
    count = plan.requests[concurrency]
    direct = asyncio.run(loop(node_url, chat, concurrency, count, plan))
    before = read_procs()
    via = asyncio.run(loop(contender.url, contender.chat, concurrency, count, plan))
    cpu = cpu_between(before, read_procs(), Roots(contender.pid, node_pid), len(via.samples), via.elapsed_s)
    d, g = summarize(direct.samples), summarize(via.samples)
    # The measured part only (warm-up excluded from `via.elapsed_s` but not from the CPU window:
    # the idle burn is taken off for the whole window, measured from /proc like the rest).
    net = None
    if via.samples:
        net = round(cpu["gateway_ms"] - idle_ms_per_s * cpu["wall_s"] / len(via.samples), 3)
    row = {"contender": contender.name, "concurrency": concurrency, "direct": d, "via": g,
           "added_p50_ms": added(g, d, "p50_ms"), "added_p99_ms": added(g, d, "p99_ms"),
           "cpu_ms_per_request": cpu["gateway_ms"], "cpu_ms_per_request_less_idle": net,
           "cpu_by_process_ms": {name: v["ms"] for name, v in cpu["by_process_ms"].items() if v["ms"] >= 0.1},
           "errors": {"direct": dict(direct.errors), "via": dict(via.errors)}}
    print(json.dumps(row), flush=True)
    return row


def measure(contender: Contender, node, plan: Plan) -> dict:
    cold = cold_burst(node.url, contender)
    quiet = idle(contender, node.proc.pid, plan.idle_s)
    idle_ms_per_s = quiet["gateway_ms"]  # per unit = per second here
    print(json.dumps({"contender": contender.name, "idle_cpu_ms_per_s": idle_ms_per_s}), flush=True)
    rows = [cell(node.url, node.proc.pid, contender, c, plan, idle_ms_per_s) for c in CONCURRENCIES]
    return {"cold_burst": cold, "idle": quiet, "cells": rows}


# -- the contenders ----------------------------------------------------------------------------
@contextmanager
def gateway(node, workdir: Path) -> Iterator[Contender]:
    with running_gateway("shipped", 1, node.url, workdir, 2, GatewayPlan()) as gw:
        yield Contender("sollol_serve (shipped)", gw.url, gw.proc.pid, openai_chat({}), openai_stream({}))


@contextmanager
def litellm(node) -> Iterator[Contender]:
    with LiteLLMProxy(node.url) as proxy:
        yield Contender(f"LiteLLM {LITELLM_VERSION}", proxy.url, proxy.proc.pid, openai_chat(proxy.headers),
                        openai_stream(proxy.headers))


@contextmanager
def nginx(node) -> Iterator[Contender]:
    proxy = NginxProxy([node.url], "least_conn")
    with proxy:
        yield Contender("nginx least_conn", proxy.url, proxy.proc.pid, chat, stream)


# -- the report ----------------------------------------------------------------------------------
def fmt(value: object) -> str:
    return "-" if value is None else str(value)


def markdown(report: dict) -> str:
    meta, runs = report["meta"], report["runs"]
    names = list(runs)
    lines = [f"# The gateway beside LiteLLM and nginx{' (QUICK smoke run: not for citing)' if meta['quick'] else ''}",
             "", f"`{meta['command']}`, {meta['when']}, tree {meta['git']}; {meta['machine']['cores']} cores, load "
             f"average at start / end {meta['loadavg_start']} / {meta['loadavg_end']}: the machine is shared, "
             "figures are noisy; compare within this run.", "",
             "One simulated node that never queues (128 slots); each contender started fresh and measured right "
             "after the node directly. Added = through it minus directly. CPU: the contender's whole process "
             "tree.", "", "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(title: str, get: Callable[[dict], object]) -> None:
        lines.append(f"| {title} | " + " | ".join(fmt(get(runs[n])) for n in names) + " |")

    for i, c in enumerate(CONCURRENCIES):
        row(f"added p50 ms, concurrency {c}", lambda r, i=i: r["cells"][i]["added_p50_ms"])
        row(f"added p99 ms, concurrency {c}", lambda r, i=i: r["cells"][i]["added_p99_ms"])
    for i, c in enumerate(CONCURRENCIES):
        row(f"CPU ms per request, concurrency {c} (less idle)",
            lambda r, i=i: f"{r['cells'][i]['cpu_ms_per_request']} ({r['cells'][i]['cpu_ms_per_request_less_idle']})")
    row("CPU while idle, ms/s", lambda r: r["idle"]["gateway_ms"])
    row("cold start: the first chat through it, ms", lambda r: r["cold_burst"]["first_chat_ms"])
    row(f"then {BURST} streams at once: added first chunk p50 ms",
        lambda r: r["cold_burst"]["added_first_chunk_p50_ms"])
    row("... p99 ms", lambda r: r["cold_burst"]["added_first_chunk_p99_ms"])
    row("... requests that waited inside the node", lambda r: r["cold_burst"]["queued_inside_node"])
    row("errors", lambda r: sum(sum(c["errors"]["via"].values()) for c in r["cells"])
        + sum(r["cold_burst"]["errors"].values()))
    lines += ["", "Idle CPU by process (ms/s):", ""]
    for name in names:
        parts = ", ".join(f"{p} {v['ms']}" for p, v in runs[name]["idle"]["by_process_ms"].items() if v["ms"] >= 0.5)
        lines.append(f"- {name}: {parts}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    parser.add_argument("--rounds", type=int, default=2,
                        help="the three, one after the other, this many times (the machine's noise shows)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    out = args.out or (Path(tempfile.mkdtemp(prefix="proxies-")) if args.quick else REPO / "benchmarks" / "results")
    meta = {"command": "python benchmarks/proxies.py " + shlex.join(sys.argv[1:]), "quick": args.quick,
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "git": git_state(), "machine": machine(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()], "litellm": LITELLM_VERSION}
    runs: dict[str, dict] = {}
    with sim_node() as node, tempfile.TemporaryDirectory(prefix="proxies-") as tmp:
        for round_ in range(1, args.rounds + 1):
            for start in (lambda: gateway(node, Path(tmp)), lambda: litellm(node), lambda: nginx(node)):
                with start() as contender:
                    name = f"{contender.name}, round {round_}"
                    print(f"== {name}", flush=True)
                    runs[name] = measure(contender, node, plan)
    write_report(out, "proxies", meta, runs, markdown)


if __name__ == "__main__":
    main()
