"""The `sollol` command: `sollol demo`, `sollol sim-node`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="sollol", description="sollol_serve: one endpoint for a cluster of LLM nodes")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sim-node", help="run a simulated Ollama / llama-server node (no real model)", add_help=False)
    sub.add_parser("demo", help="local Ray + three simulated nodes + the gateway", add_help=False)
    if argv and argv[0] in ("sim-node", "demo"):
        command, rest = argv[0], argv[1:]
    else:
        parser.parse_args(argv)
        return
    if command == "sim-node":
        from sollol_serve.sim.server import main as sim_main

        sim_main(rest)
    elif command == "demo":
        from sollol_serve.demo import main as demo_main

        demo_main(rest)


if __name__ == "__main__":
    main()
