"""A tiny model sharded over two rpc-servers against the same model on one llama-server.

    python benchmarks/shard.py [--requests 10] [--tokens 64] [--out benchmarks/results]

Writes a llama-architecture GGUF with random weights (8 layers, embedding 256), starts two
`ggml-rpc-server`s on loopback and `llama-server --rpc a,b -ngl 99` over them (the layout a
shard group uses), and a plain `llama-server` with the same model, then sends the same bounded
streamed `/completion` requests to each: time to first token, decode tokens/s, and the group's
start-up time (processes launched -> /health 200). Everything runs on this machine's cores, so
the sharded figures carry the RPC hops without the benefit of more hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from sollol_serve.processes import die_with_parent, free_port
from sollol_serve.shard.build import cache_dir, ensure_binaries
from sollol_serve.shard.plan import (
    Backend,
    Host,
    llama_server_command,
    rpc_buffers,
    rpc_server_command,
)
from sollol_serve.shard.tiny_model import write_tiny_llama


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("llama-server not healthy in time")


def measure(url: str, requests: int, tokens: int) -> dict:
    ttft, tps = [], []
    for i in range(requests):
        body = {"prompt": f"request {i}: the cluster", "n_predict": tokens, "stream": True, "ignore_eos": True,
                "cache_prompt": False}
        started = time.perf_counter()
        first = None
        with httpx.stream("POST", url + "/completion", json=body, timeout=120) as response:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                first = first or time.perf_counter() - started
                event = json.loads(line[5:])
                if event.get("stop"):
                    timings = event.get("timings") or {}
                    tps.append(timings.get("predicted_per_second") or 0.0)
        ttft.append(first)
    return {"requests": requests, "tokens": tokens, "ttft_ms_p50": round(statistics.median(ttft) * 1000, 2),
            "ttft_ms_max": round(max(ttft) * 1000, 2), "decode_tps_mean": round(statistics.mean(tps), 1)}


def run(args: argparse.Namespace) -> dict:
    binaries = ensure_binaries()
    work = Path(tempfile.mkdtemp(prefix="sollol-shard-bench-"))
    model = write_tiny_llama(work / "tiny.gguf", cache_dir() / "ggml-vocab-llama-spm.gguf", n_layer=8, n_embd=256,
                             n_head=8, n_ff=512, n_ctx=512)
    procs: list[subprocess.Popen] = []
    try:
        launched = time.perf_counter()
        backends = []
        for i in range(2):
            port = free_port()
            procs.append(start(rpc_server_command(binaries.rpc_server, "127.0.0.1", port), work / f"rpc{i}.log"))
            backends.append(Backend(Host(f"local{i}", "127.0.0.1", 1000), port))
        time.sleep(0.5)  # rpc-servers listen almost at once; llama-server retries nothing
        shard_port = free_port()
        shard_log = work / "shard.log"
        procs.append(start(llama_server_command(binaries.llama_server, model, "tiny", backends, "127.0.0.1",
                                                shard_port, 512, 1, []), shard_log))
        shard_url = f"http://127.0.0.1:{shard_port}"
        wait_healthy(shard_url, procs[-1])
        group_start_s = time.perf_counter() - launched

        single_port = free_port()
        single_launched = time.perf_counter()
        procs.append(start([str(binaries.llama_server), "-m", str(model), "--host", "127.0.0.1", "--port",
                            str(single_port), "-c", "512", "-np", "1"], work / "single.log"))
        single_url = f"http://127.0.0.1:{single_port}"
        wait_healthy(single_url, procs[-1])
        single_start_s = time.perf_counter() - single_launched

        measure(single_url, 2, 8)  # warm both
        measure(shard_url, 2, 8)
        single = measure(single_url, args.requests, args.tokens)
        sharded = measure(shard_url, args.requests, args.tokens)
        return {"single": {**single, "start_s": round(single_start_s, 3)},
                "sharded_2_rpc": {**sharded, "start_s": round(group_start_s, 3),
                                  "model_buffer_mib": rpc_buffers(shard_log.read_text(errors="replace"))},
                "model": {"layers": 8, "embedding": 256, "size_mb": round(model.stat().st_size / 2**20, 1)}}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def write(out: Path, result: dict, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"measured": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "command": command}
    (out / "shard.json").write_text(json.dumps({**meta, **result}, indent=2))
    s, g = result["single"], result["sharded_2_rpc"]
    lines = [f"Measured {meta['measured']} on {meta['machine']} with `{command}`.", "",
             f"Tiny llama model ({result['model']['layers']} layers, embedding {result['model']['embedding']}, "
             f"{result['model']['size_mb']} MB, random weights), streamed `/completion`, one request at a time.", "",
             "| setup | start-up s | TTFT p50 ms | TTFT max ms | decode tok/s |", "|---|---|---|---|---|",
             f"| one llama-server | {s['start_s']} | {s['ttft_ms_p50']} | {s['ttft_ms_max']} | {s['decode_tps_mean']} |",
             f"| shard group: llama-server over 2 rpc-servers | {g['start_s']} | {g['ttft_ms_p50']} | "
             f"{g['ttft_ms_max']} | {g['decode_tps_mean']} |", "",
             f"Model weights per RPC backend (llama-server's log): {g['model_buffer_mib']} MiB.", ""]
    (out / "shard.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    command = f"python benchmarks/shard.py --requests {args.requests} --tokens {args.tokens}"
    write(args.out, run(args), command)


if __name__ == "__main__":
    main()
