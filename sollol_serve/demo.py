"""`sollol demo`: a local Ray, three simulated heterogeneous nodes, the gateway, its URLs.

The nodes are simulators (they emit pseudo-words, not model output) standing in for a
GPU box, a smaller GPU box and a CPU-only machine.
"""

from __future__ import annotations

import argparse
import signal
import threading

from sollol_serve.config import DiscoveryConfig, GatewayConfig, NodeConfig
from sollol_serve.local import start_local_gateway, stop_local_gateway, wait_for_nodes
from sollol_serve.sim.process import SimProcess

MODELS = "llama3.2,qwen2.5:7b@4.7,nomic-embed-text@0.3"

DEMO_NODES: dict[str, list[str]] = {
    # A 4-slot GPU-like node: fast prefill and decode.
    "gpu-big": ["--models", MODELS, "--slots", "4", "--decode-tps", "120", "--prefill-tps", "3000", "--load-s", "2"],
    # A 2-slot, smaller GPU.
    "gpu-small": ["--models", MODELS, "--slots", "2", "--decode-tps", "60", "--prefill-tps", "1200", "--load-s", "3"],
    # A 1-slot CPU-only machine.
    "cpu": ["--models", "llama3.2,nomic-embed-text@0.3", "--slots", "1", "--decode-tps", "15",
            "--prefill-tps", "150", "--load-s", "6"],
}


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sollol demo", description=__doc__)
    p.add_argument("--port", type=int, default=8000, help="gateway port")
    p.add_argument("--node-port", type=int, default=21434, help="first port of the simulated nodes")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = arg_parser().parse_args(argv)
    sims = [SimProcess(name, flags, port=args.node_port + i) for i, (name, flags) in enumerate(DEMO_NODES.items())]
    stop = threading.Event()
    try:
        for sim in sims:
            sim.start()
            print(f"simulated node {sim.name:<10} {sim.url}  ({' '.join(DEMO_NODES[sim.name][2:])})", flush=True)
        # Nodes as users give them: no slots (Ollama doesn't report them; the router learns
        # them, see /api/nodes), default routing. Discovery off: the demo shows the simulated
        # nodes only, not an Ollama this machine may run.
        config = GatewayConfig(nodes=[NodeConfig(name=s.name, url=s.url) for s in sims],
                               discovery=DiscoveryConfig(ray_nodes=False))
        url = start_local_gateway(config, port=args.port, num_cpus=args.num_cpus, include_dashboard=True)
        # After ray.init, which installs a SIGTERM handler of its own that aborts the process.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        wait_for_nodes(url, len(sims))
        print(
            "\nsollol_serve is running (simulated nodes, not real models):\n"
            f"  Ollama API     {url}/api/chat  (and /api/generate, /api/embed, /api/tags, /api/ps ...)\n"
            f"  OpenAI API     {url}/v1/chat/completions\n"
            f"  Dashboard      {url}/dashboard\n"
            f"  Node state     {url}/api/nodes\n"
            "  Ray dashboard  http://127.0.0.1:8265\n\n"
            f"Try:  curl {url}/api/chat -d '{{\"model\": \"llama3.2\", \"messages\": "
            "[{\"role\": \"user\", \"content\": \"hello\"}]}'\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        try:
            stop.wait(args.duration)
        except KeyboardInterrupt:
            pass
    finally:
        stop_local_gateway()
        for sim in sims:
            sim.stop()
