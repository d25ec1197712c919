"""The `sollol` command: `demo`, `sim-node`, `keys`, `build-llamacpp`, `status`, `nodes`, `warm`,
`batch-embed`, `pull`."""

from __future__ import annotations

import argparse
import sys

# Subcommands that own their flags (their modules parse the rest of the line).
DELEGATED = {"sim-node": "sollol_serve.sim.server", "demo": "sollol_serve.demo"}


def keys_command(argv: list[str]) -> None:
    from sollol_serve.api.auth import generate_key, hash_key

    parser = argparse.ArgumentParser(prog="sollol keys", description="API keys: only their SHA-256 goes in the config")
    sub = parser.add_subparsers(dest="action", required=True)
    new = sub.add_parser("new", help="create a key and print it once, with its config entry")
    new.add_argument("--name", required=True)
    new.add_argument("--role", default="user", help="admin, user, reader or a role of your config")
    existing = sub.add_parser("hash", help="print the SHA-256 of an existing key (read from stdin)")
    existing.add_argument("--name", default="my-key")
    existing.add_argument("--role", default="user")
    args = parser.parse_args(argv)
    if args.action == "new":
        key = generate_key()
        print(f"API key (shown once, store it now): {key}")
    else:
        key = sys.stdin.readline().strip()
    print("Add under args.security.keys in serve_config.yaml:")
    print(f"  - name: {args.name}\n    sha256: {hash_key(key)}\n    role: {args.role}")


def build_llamacpp_command(argv: list[str]) -> None:
    from sollol_serve.shard.build import (
        LLAMA_CPP_PYTHON_VERSION,
        build,
        cache_dir,
        find_binaries,
    )

    parser = argparse.ArgumentParser(prog="sollol build-llamacpp",
                                     description="build llama-server and ggml-rpc-server (RPC on) into the cache")
    parser.add_argument("--version", default=LLAMA_CPP_PYTHON_VERSION, help="llama-cpp-python sdist to build from")
    parser.add_argument("--force", action="store_true", help="build even if binaries are found")
    args = parser.parse_args(argv)
    found = None if args.force else find_binaries(args.version)
    if found is None:
        print(f"building llama.cpp from llama-cpp-python=={args.version} into {cache_dir(args.version)} "
              "(several minutes)", flush=True)
        found = build(args.version)
    print(f"llama-server     {found.llama_server}\nggml-rpc-server  {found.rpc_server}")


def _gateway_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway")
    parser.add_argument("--api-key", default=None, help="a key with the permission the command needs, when keys are on")
    return parser


def _gateway_args(prog: str, description: str, argv: list[str]) -> argparse.Namespace:
    return _gateway_parser(prog, description).parse_args(argv)


def status_command(argv: list[str]) -> None:
    from sollol_serve.client import connect

    args = _gateway_args("sollol status", "the gateway's health in one line", argv)
    with connect(args.url, args.api_key) as sollol:
        health = sollol.health()
    print(f"{args.url}: {health['status']} ({health.get('healthy', 0)} of {health.get('nodes', 0)} nodes healthy)")
    if health["http_status"] != 200:
        raise SystemExit(1)


def nodes_command(argv: list[str]) -> None:
    from sollol_serve.client import connect

    args = _gateway_args("sollol nodes", "the nodes as the router sees them", argv)
    with connect(args.url, args.api_key) as sollol:
        nodes = sollol.nodes()
    print(f"{'node':<24} {'health':<8} {'breaker':<10} {'busy':>9}  models")
    for n in nodes:
        health = "up" if n["healthy"] else "DOWN"
        print(f"{n['name']:<24} {health:<8} {n['breaker']:<10} {n['in_flight']:>4}/{n['slots']:<4}  "
              f"{', '.join(n['models'])}")


def warm_command(argv: list[str]) -> None:
    from sollol_serve.client import connect

    parser = _gateway_parser("sollol warm", "load a model into memory now, on chosen nodes (admin permission)")
    parser.add_argument("model")
    parser.add_argument("--nodes", default=None, help="comma-separated node names (default: every node with the model)")
    parser.add_argument("--keep-alive", default=None, help="how long the node keeps it loaded, e.g. 30m or -1")
    args = parser.parse_args(argv)
    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()] if args.nodes else None
    keep_alive = int(args.keep_alive) if args.keep_alive and args.keep_alive.lstrip("-").isdigit() else args.keep_alive
    with connect(args.url, args.api_key) as sollol:
        failed = _print_warm(sollol.warm(args.model, nodes=nodes, keep_alive=keep_alive))
    if failed:
        raise SystemExit(1)


def _print_warm(events) -> int:
    """Progress as each node finishes; returns how many failed."""
    total, finished, failed = 0, 0, 0
    for event in events:
        if event.get("status") == "loading":
            total = len(event["nodes"])
            print(f"loading {event['model']} on {total} node(s): {', '.join(event['nodes'])}", flush=True)
        elif "node" in event:
            finished += 1
            if event["status"] == "loaded":
                took = "resident (no load step)" if event["load_s"] is None else f"loaded in {event['load_s']:.2f} s"
                print(f"[{finished}/{total}] {event['node']}: {took}", flush=True)
            else:
                failed += 1
                print(f"[{finished}/{total}] {event['node']}: FAILED: {event['error']}", flush=True)
        elif event.get("status") == "error":
            failed += 1
            print(f"FAILED: {event['error']}", flush=True)
    return failed


class PullProgress:
    """`sollol pull`'s lines: one each time a node moves on (a new step, or ten more percent
    of a layer), not one per progress line of Ollama's (hundreds a second on a fast link)."""

    def __init__(self) -> None:
        self._shown: dict[str, tuple[str, int]] = {}  # node -> (status, tenths of the layer) shown last

    def line(self, event: dict) -> str | None:
        node, status = event.get("node"), str(event.get("status", ""))
        if node is None:  # the cluster's summary
            skipped = f" (skipped: {', '.join(event['skipped'])})" if event.get("skipped") else ""
            return f"pulled {event.get('model')} on {len(event.get('nodes', []))} node(s): " \
                   f"{', '.join(event.get('nodes', []))}{skipped}"
        total, completed = event.get("total"), event.get("completed")
        tenths = int(completed * 10 // total) if isinstance(total, int) and total > 0 and isinstance(completed, int) else -1
        if self._shown.get(node) == (status, tenths):
            return None
        self._shown[node] = (status, tenths)
        if tenths < 0:
            return f"{node}: {status}"
        return f"{node}: {status} {completed * 100 // total:3d}% of {total / 1e9:.2f} GB"


def pull_command(argv: list[str]) -> None:
    from sollol_serve.client import connect

    parser = _gateway_parser("sollol pull", "pull a model onto every Ollama node, with progress (admin permission)")
    parser.add_argument("model")
    parser.add_argument("--nodes", default=None, help="comma-separated node names (default: every Ollama node)")
    args = parser.parse_args(argv)
    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()] if args.nodes else None
    progress = PullProgress()
    with connect(args.url, args.api_key) as sollol:  # failures: main() prints them as one line
        for event in sollol.pull(args.model, nodes=nodes):
            if (line := progress.line(event)) is not None:
                print(line, flush=True)


def batch_embed_command(argv: list[str]) -> None:
    import json

    from sollol_serve.client import connect

    parser = _gateway_parser("sollol batch-embed", "embed a file's lines as a batch job, with progress")
    parser.add_argument("model")
    parser.add_argument("file", help="one text per line ('-' for stdin)")
    parser.add_argument("--out", default="-",
                        help="JSON lines of {index, line, embedding}, one per input line ('-' for stdout)")
    args = parser.parse_args(argv)
    source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    with source:
        lines = [line.rstrip("\n") for line in source]
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise ValueError(f"{args.file} has no text to embed (every line is blank)")
    if len(texts) < len(lines):
        print(f"{len(lines) - len(texts)} blank line(s) not embedded: their records say so", file=sys.stderr)

    def progress(status: dict) -> None:
        print(f"\r{status['id']}: {status['state']} {status['done'] + status['failed']}/{status['total']} "
              f"({status['progress']['percent']:.0f}%)", end="", file=sys.stderr, flush=True)

    with connect(args.url, args.api_key) as sollol:
        vectors = sollol.batch_embed(args.model, texts, progress=progress)
    print(file=sys.stderr)
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")
    with out:
        for record in line_records(lines, vectors):
            out.write(json.dumps(record) + "\n")


def line_records(lines: list[str], vectors: list[list[float]]) -> list[dict]:
    """A record per input line, in order, so that record `index` is line `index` of the file
    (`line` counts from 1): the vectors of the non-blank lines, and a blank line said to be one."""
    found = iter(vectors)
    return [{"index": i, "line": i + 1, "embedding": next(found)} if text.strip()
            else {"index": i, "line": i + 1, "embedding": None, "skipped": "blank line"}
            for i, text in enumerate(lines)]


def error_line(command: str, exc: BaseException) -> str:
    """An ordinary failure (the gateway refused, is not running, a file is missing) as the one
    line a user reads; a traceback only with --debug."""
    import httpx

    from sollol_serve.client import SollolError

    if isinstance(exc, SollolError):
        why = f"{exc.message} (HTTP {exc.status})"
    elif isinstance(exc, httpx.TransportError):
        try:
            where = f"{exc.request.url.scheme}://{exc.request.url.netloc.decode()}"
        except RuntimeError:  # an error raised before its request was made
            where = "the gateway"
        why = f"no answer from {where} ({type(exc).__name__}): is the gateway running? (sollol demo, or " \
              "serve run serve_config.yaml; --url for another address)"
    elif isinstance(exc, OSError):
        why = f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return f"sollol {command}: {' '.join(why.split())}"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    command = argv[0] if argv else ""
    try:
        run(argv)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as exc:
        if debug:
            raise
        print(error_line(command, exc), file=sys.stderr)
        raise SystemExit(1) from None


def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="sollol", description="sollol_serve: one endpoint for a cluster of LLM nodes",
                                     epilog="Errors are one line on stderr; --debug (anywhere) shows the traceback.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sim-node", help="run a simulated Ollama / llama-server node (no real model)", add_help=False)
    sub.add_parser("demo", help="local Ray + three simulated nodes + the gateway", add_help=False)
    sub.add_parser("keys", help="create API keys / hash existing ones", add_help=False)
    sub.add_parser("build-llamacpp", help="build llama.cpp's llama-server and ggml-rpc-server", add_help=False)
    sub.add_parser("status", help="the gateway's health", add_help=False)
    sub.add_parser("nodes", help="the gateway's nodes", add_help=False)
    sub.add_parser("warm", help="load a model on nodes now, with progress", add_help=False)
    sub.add_parser("batch-embed", help="embed a file's lines as a batch job, with progress", add_help=False)
    sub.add_parser("pull", help="pull a model onto every Ollama node, with a progress line per node", add_help=False)
    own = {"keys": keys_command, "build-llamacpp": build_llamacpp_command, "status": status_command,
           "nodes": nodes_command, "warm": warm_command, "batch-embed": batch_embed_command, "pull": pull_command}
    if not argv or argv[0] not in (*DELEGATED, *own):
        parser.parse_args(argv)
        return
    command, rest = argv[0], argv[1:]
    if command in own:
        own[command](rest)
        return
    module = __import__(DELEGATED[command], fromlist=["main"])
    module.main(rest)


if __name__ == "__main__":
    main()
