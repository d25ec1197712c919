"""What tracing costs the gateway: CPU per request and added latency with tracing off, at a
sampling ratio of 0.01 and at 1.0, in one run.

    python benchmarks/tracing_overhead.py [--quick] [--out benchmarks/results]

Each is the shipped gateway as overhead.py starts it (`serve run` of serve_config.yaml, one
simulated node that never queues, given without slots), with `tracing_config` turned on at that
ratio and its spans sent to Arize Phoenix on loopback (tests/trace_backend.py; Phoenix's own CPU
is not counted as the gateway's). Per gateway: its slots learned, then overhead.py's
non-streamed chat cells at concurrency 1 and 32 and its 32 streams, each measured against the
node directly and through the gateway, with the CPU of the gateway's whole process tree.
Every loop is bounded in count and time; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.trace_backend

from benchmarks.overhead import (  # noqa: E402
    QUICK,
    Plan,
    Roots,
    cells,
    git_state,
    latency_row,
    learn_slots,
    machine,
    run_cell,
    running_gateway,
    sim_node,
    stream_row,
    write_report,
)
from tests.trace_backend import phoenix  # noqa: E402

RATIOS: list[tuple[str, float | None]] = [("off", None), ("0.01", 0.01), ("1.0", 1.0)]
MEASURED = ("chat c1", "chat c32", "stream c32")


def measure(ratio: float | None, backend: str, node, plan: Plan, workdir: Path) -> dict:
    tracing = (ratio, f"{backend}/v1/traces") if ratio is not None else None
    with running_gateway("shipped", 1, node.url, workdir, 2, plan, tracing=tracing) as gateway:
        learned = asyncio.run(learn_slots(gateway.url, plan))
        rows = {}
        for cell in [c for c in cells(plan) if c.name in MEASURED]:
            direct, _ = asyncio.run(run_cell(node.url, cell, plan, None))
            via, cpu = asyncio.run(run_cell(gateway.url, cell, plan, Roots(gateway.proc.pid, node.proc.pid)))
            row = (stream_row if cell.streamed else latency_row)(cell, direct, via)
            rows[cell.name] = {"gateway_cpu_ms": cpu["gateway_ms"], "unit": "chunk" if cell.streamed else "request",
                               "added_p50_ms": row.get("added_p50_ms", row.get("added_first_chunk_p50_ms")),
                               "errors": row["errors"]}
            print(json.dumps({"tracing": ratio, "cell": cell.name, **rows[cell.name]}), flush=True)
        return {"learning": learned, "cells": rows, "gateway": gateway.info}


def markdown(report: dict) -> str:
    meta, runs = report["meta"], report["runs"]
    lines = [f"# Tracing overhead{' (QUICK smoke run: not for citing)' if meta['quick'] else ''}", "",
             f"`{meta['command']}`, {meta['when']}, tree {meta['git']}; {meta['machine']['cores']} cores, load "
             f"average at start / end {meta['loadavg_start']} / {meta['loadavg_end']}: the machine is shared, "
             "figures are noisy; compare within this run.", "",
             "The shipped gateway (`serve run` of serve_config.yaml) in front of overhead.py's simulated node, "
             "one gateway per setting, started fresh; spans sent to Arize Phoenix on loopback. CPU: the "
             "gateway's whole process tree per request (per chunk for streams).", "",
             "| cell | " + " | ".join(f"tracing {label}: CPU ms (vs off) / added p50 ms" for label, _ in RATIOS) + " |",
             "|---|" + "---|" * len(RATIOS)]
    for cell in MEASURED:
        off = runs["off"]["cells"][cell]["gateway_cpu_ms"]
        parts = []
        for label, _ in RATIOS:
            row = runs[label]["cells"][cell]
            vs = f" ({row['gateway_cpu_ms'] / off - 1:+.1%})" if label != "off" and off else ""
            parts.append(f"{row['gateway_cpu_ms']}{vs} / {row['added_p50_ms']}")
        unit = runs["off"]["cells"][cell]["unit"]
        lines.append(f"| {cell} (per {unit}) | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    parser.add_argument("--out", default=None, help="directory for tracing_overhead.json and .md "
                                                    "(default benchmarks/results; --quick: a temp dir)")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="sollol-tracing-quick-")) if args.quick
                                           else REPO / "benchmarks" / "results")
    meta = {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "quick": args.quick,
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "git": git_state(), "machine": machine(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    workdir = Path(tempfile.mkdtemp(prefix="sollol-tracing-"))
    runs = {}
    with sim_node() as node, phoenix(workdir) as backend:
        for label, ratio in RATIOS:
            print(f"== tracing {label}", flush=True)
            runs[label] = measure(ratio, backend, node, plan, workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    write_report(out, "tracing_overhead", meta, runs, markdown)


if __name__ == "__main__":
    main()
