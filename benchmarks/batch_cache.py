"""The response cache and batch jobs, measured through the whole gateway.

    python benchmarks/batch_cache.py [--out benchmarks/results]

Two simulated Ollama nodes (2 slots each, 2000 prefill tokens/s, an embedding model and a
chat model, no cold load), the gateway on a local Ray with its batch files in a temporary
directory. Three measurements, each a ratio within this one run:

1. cache: 100 distinct ~200-token texts embedded one at a time (misses), then the same 100
   again (hits): latency of each, and how many requests reached a node during the hits.
2. batch vs one by one: 800 distinct short texts as 800 `/api/embed` calls at concurrency 4,
   and as one batch job (4 calls in flight, 16 texts a call): items per second.
3. live traffic beside a batch: 30 priority-8 chats on the idle cluster, then the same 30 while
   a 400-chat batch job runs at priority 1: latency p50 / p95; with the router's default
   reserve (background work leaves one slot free) and, on a second app over the same nodes,
   without it (`routing.reserved_slots: 0`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from ray import serve

from sollol_serve.app import build_gateway
from sollol_serve.config import GatewayConfig
from sollol_serve.local import start_local_gateway, stop_local_gateway, wait_for_nodes
from sollol_serve.processes import free_port
from sollol_serve.sim.process import SimProcess

NODE_ARGS = ["--models", "nomic-embed-text@0.3,llama3.2", "--slots", "2", "--prefill-tps", "2000",
             "--decode-tps", "100", "--load-s", "0"]
EMBED = "nomic-embed-text"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def ms(values: list[float]) -> dict:
    return {"p50_ms": round(percentile(values, 50) * 1000, 1), "p95_ms": round(percentile(values, 95) * 1000, 1),
            "mean_ms": round(statistics.fmean(values) * 1000, 1)}


def words(tag: str, i: int, n: int) -> str:
    return f"{tag} {i} " + " ".join(f"w{(i * 7 + j) % 97}" for j in range(n))


def timed_post(client: httpx.Client, path: str, body: dict) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = client.post(path, json=body)
    response.raise_for_status()
    return time.perf_counter() - started, response


def received(nodes: list[SimProcess]) -> int:
    return sum(node.state()["received"] for node in nodes)


def cache_run(client: httpx.Client, nodes: list[SimProcess]) -> dict:
    texts = [words("cache", i, 200) for i in range(100)]
    misses = [timed_post(client, "/api/embed", {"model": EMBED, "input": t})[0] for t in texts]
    before = received(nodes)
    hits = []
    for text in texts:
        seconds, response = timed_post(client, "/api/embed", {"model": EMBED, "input": text})
        assert response.headers["x-sollol-cache"] == "hit"
        hits.append(seconds)
    return {"miss": ms(misses), "hit": ms(hits), "node_requests_during_hits": received(nodes) - before,
            "hit_over_miss_p50": round(percentile(hits, 50) / percentile(misses, 50), 3)}


def wait_job(client: httpx.Client, job_id: str, limit_s: float = 600) -> dict:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        status = client.get(f"/api/batch/jobs/{job_id}").json()
        if status["state"] not in ("queued", "running"):
            return status
        time.sleep(0.1)
    raise TimeoutError(f"batch job {job_id} still running after {limit_s} s")


def batch_run(url: str) -> dict:
    import asyncio

    texts = [words("one-by-one", i, 40) for i in range(800)]

    async def one_by_one() -> float:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            queue = list(texts)

            async def worker() -> None:
                while queue:
                    (await client.post("/api/embed", json={"model": EMBED, "input": queue.pop()})).raise_for_status()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(4)))
            return time.perf_counter() - started

    single_s = asyncio.run(one_by_one())
    with httpx.Client(base_url=url, timeout=120) as client:
        started = time.perf_counter()
        job = client.post("/api/batch/embed", json={"model": EMBED, "input": [words("batch", i, 40) for i in range(800)]})
        job.raise_for_status()
        status = wait_job(client, job.json()["id"])
        batch_s = time.perf_counter() - started
    assert status["state"] == "completed" and status["done"] == 800, status
    return {"items": 800, "one_by_one_s": round(single_s, 2), "one_by_one_items_per_s": round(800 / single_s, 1),
            "batch_s": round(batch_s, 2), "batch_items_per_s": round(800 / batch_s, 1),
            "speedup": round(single_s / batch_s, 2), "nodes": status["nodes"]}


def interactive(client: httpx.Client, tag: str) -> list[float]:
    return [timed_post(client, "/api/chat", {
        "model": "llama3.2", "stream": False, "priority": 8, "options": {"num_predict": 16},
        "messages": [{"role": "user", "content": f"{tag} {i}"}]})[0] for i in range(30)]


def live_beside_batch(client: httpx.Client) -> dict:
    idle = interactive(client, "idle")
    requests = [{"messages": [{"role": "user", "content": f"background {i}"}], "options": {"num_predict": 64}}
                for i in range(400)]
    job = client.post("/api/batch/chat", json={"model": "llama3.2", "requests": requests}).json()
    time.sleep(1.0)  # let the job fill its slots
    busy = interactive(client, "busy")
    status = client.get(f"/api/batch/jobs/{job['id']}").json()
    client.delete(f"/api/batch/jobs/{job['id']}")
    return {"idle": ms(idle), "beside_batch": ms(busy), "batch_items_done_meanwhile": status["done"],
            "p50_ratio": round(percentile(busy, 50) / percentile(idle, 50), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    os.environ["SOLLOL_DATA_DIR"] = tempfile.mkdtemp(prefix="sollol-bench-data-")  # before Ray starts

    nodes = [SimProcess(name, NODE_ARGS).start() for name in ("e1", "e2")]
    try:
        config = GatewayConfig.model_validate({"nodes": [{"name": n.name, "url": n.url, "slots": 2} for n in nodes]})
        url = start_local_gateway(config, port=free_port())
        wait_for_nodes(url, len(nodes))
        with httpx.Client(base_url=url, timeout=120) as client:
            results = {"cache": cache_run(client, nodes)}
            print(json.dumps(results["cache"]), flush=True)
            results["batch"] = batch_run(url)
            print(json.dumps(results["batch"]), flush=True)
            results["live"] = live_beside_batch(client)
            print(json.dumps(results["live"]), flush=True)
        unreserved = config.model_copy(update={
            "routing": config.routing.model_copy(update={"reserved_slots": 0}),
            "state_actor_name": "bench_no_reserve"})
        serve.run(build_gateway(unreserved), name="no_reserve", route_prefix="/no-reserve")
        wait_for_nodes(url + "/no-reserve", len(nodes))
        with httpx.Client(base_url=url + "/no-reserve", timeout=120) as client:
            results["live_without_reserve"] = live_beside_batch(client)
            print(json.dumps(results["live_without_reserve"]), flush=True)
    finally:
        stop_local_gateway()
        for node in nodes:
            node.stop()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "node": " ".join(NODE_ARGS)}
    (out / "batch_cache.json").write_text(json.dumps({"meta": meta, **results}, indent=2) + "\n")
    c, b, live, bare = results["cache"], results["batch"], results["live"], results["live_without_reserve"]
    lines = [
        f"Measured {meta['when']} on {meta['machine']}; two simulated nodes ({meta['node']}).", "",
        "| measure | result |", "|---|---|",
        f"| embed, cache miss p50 / p95 | {c['miss']['p50_ms']} / {c['miss']['p95_ms']} ms |",
        f"| embed, cache hit p50 / p95 | {c['hit']['p50_ms']} / {c['hit']['p95_ms']} ms "
        f"({c['hit_over_miss_p50']}x the miss p50; {c['node_requests_during_hits']} node requests during 100 hits) |",
        f"| 800 texts, one `/api/embed` each at concurrency 4 | {b['one_by_one_s']} s ({b['one_by_one_items_per_s']} items/s) |",
        f"| 800 texts as one batch job | {b['batch_s']} s ({b['batch_items_per_s']} items/s, {b['speedup']}x; "
        f"per node {b['nodes']}) |",
        f"| priority-8 chat on the idle cluster p50 / p95 | {live['idle']['p50_ms']} / {live['idle']['p95_ms']} ms |",
        f"| the same beside a running batch chat job p50 / p95 | {live['beside_batch']['p50_ms']} / "
        f"{live['beside_batch']['p95_ms']} ms ({live['p50_ratio']}x; {live['batch_items_done_meanwhile']} batch items done meanwhile) |",
        f"| the same without the reserve (`reserved_slots: 0`), idle / beside the batch p50 | "
        f"{bare['idle']['p50_ms']} / {bare['beside_batch']['p50_ms']} ms ({bare['p50_ratio']}x; "
        f"{bare['batch_items_done_meanwhile']} batch items done meanwhile) |",
    ]
    (out / "batch_cache.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
