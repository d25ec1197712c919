"""Added latency of the gateway versus calling the node directly.

    python benchmarks/overhead.py [--requests 400] [--out benchmarks/results]

One simulated Ollama node (64 slots, no cold load, fixed 8-token answers so the node's own
time is constant), the whole gateway on a local Ray (Ingress -> Analyzer -> Router ->
OllamaWorker), and the same bounded workload sent directly and through the gateway, at
concurrency 1 and 32, non-streamed (full latency) and streamed (time to first chunk).
Added latency = gateway percentile - direct percentile, measured in one run, on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path

import aiohttp

from sollol_serve.config import GatewayConfig, NodeConfig
from sollol_serve.local import start_local_gateway, stop_local_gateway, wait_for_nodes
from sollol_serve.processes import free_port
from sollol_serve.sim.process import SimProcess

NODE_ARGS = ["--models", "llama3.2", "--slots", "64", "--decode-tps", "400", "--prefill-tps", "100000",
             "--load-s", "0", "--slot-slowdown", "0"]
BODY = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello"}], "options": {"num_predict": 8}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def one(session: aiohttp.ClientSession, url: str, stream: bool) -> float:
    """Seconds to the full answer (non-streamed) or to the first chunk (streamed)."""
    started = time.perf_counter()
    async with session.post(url + "/api/chat", json={**BODY, "stream": stream}) as response:
        response.raise_for_status()
        if not stream:
            await response.read()
            return time.perf_counter() - started
        first = None
        async for _line in response.content:
            if first is None:
                first = time.perf_counter() - started
        return first


async def run_cell(url: str, stream: bool, concurrency: int, requests: int) -> list[float]:
    # aiohttp, not httpx, as the load generator: httpx costs ~6 ms of CPU per request at this
    # concurrency, which on 2 cores would measure the client instead of the gateway.
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        for _ in range(3):  # open every connection and warm the code paths before measuring
            await asyncio.gather(*(one(session, url, stream) for _ in range(concurrency)))
        remaining = requests
        samples: list[float] = []

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                samples.append(await one(session, url, stream))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples


def cpu_seconds_by_process() -> dict[str, tuple[float, str]]:
    """pid -> (user+system CPU seconds, command line) for every process we can read."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out[stat.parent.name] = ((int(fields[11]) + int(fields[12])) / tick, cmd[:60])
    return out


def cpu_per_request(url: str, requests: int) -> list[dict]:
    """CPU milliseconds per request spent by each process while the gateway serves
    `requests` non-streamed requests at concurrency 32."""
    before = cpu_seconds_by_process()
    asyncio.run(run_cell(url, False, 32, requests))
    after = cpu_seconds_by_process()
    rows = []
    for pid, (seconds, cmd) in after.items():
        spent = seconds - before.get(pid, (seconds, cmd))[0]
        if spent > 0:
            rows.append({"process": cmd, "cpu_ms_per_request": round(spent * 1000 / requests, 2)})
    return sorted(rows, key=lambda r: -r["cpu_ms_per_request"])[:10]


def summarize(samples: list[float]) -> dict:
    ms = [s * 1000 for s in samples]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 2), "p99_ms": round(percentile(ms, 99), 2),
            "mean_ms": round(statistics.fmean(ms), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="requests per cell at concurrency 32")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    node = SimProcess("bench", NODE_ARGS).start()
    rows = []
    try:
        # Slots configured as a user would: this measures overhead, not slot learning.
        config = GatewayConfig(nodes=[NodeConfig(name="bench", url=node.url, slots=64)])
        gateway = start_local_gateway(config, port=free_port())
        wait_for_nodes(gateway, 1)
        for stream in (False, True):
            for concurrency in (1, 32):
                n = args.requests if concurrency > 1 else max(50, args.requests // 4)
                direct = summarize(asyncio.run(run_cell(node.url, stream, concurrency, n)))
                via = summarize(asyncio.run(run_cell(gateway, stream, concurrency, n)))
                row = {
                    "measure": "time to first chunk" if stream else "full response",
                    "concurrency": concurrency,
                    "direct": direct,
                    "gateway": via,
                    "added_p50_ms": round(via["p50_ms"] - direct["p50_ms"], 2),
                    "added_p99_ms": round(via["p99_ms"] - direct["p99_ms"], 2),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
        cpu = cpu_per_request(gateway, args.requests)
    finally:
        stop_local_gateway()
        node.stop()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.machine()}, "
            f"{os.cpu_count()} cores", "node": " ".join(NODE_ARGS), "requests": args.requests}
    (out / "overhead.json").write_text(json.dumps({"meta": meta, "rows": rows, "cpu": cpu}, indent=2) + "\n")
    lines = ["| measure | concurrency | direct p50 / p99 (ms) | gateway p50 / p99 (ms) | added p50 | added p99 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['measure']} | {r['concurrency']} | {r['direct']['p50_ms']} / {r['direct']['p99_ms']} | "
                     f"{r['gateway']['p50_ms']} / {r['gateway']['p99_ms']} | {r['added_p50_ms']} ms | "
                     f"{r['added_p99_ms']} ms |")
    lines += ["", "CPU per request by process (non-streamed, concurrency 32; includes the load generator):", "",
              "| process | CPU ms / request |", "|---|---|"]
    lines += [f"| `{r['process']}` | {r['cpu_ms_per_request']} |" for r in cpu]
    (out / "overhead.md").write_text(f"Measured {meta['when']} on {meta['machine']}.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
