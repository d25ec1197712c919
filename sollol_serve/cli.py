"""The `sollol` command: `demo`, `sim-node`, `keys`, `build-llamacpp`."""

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
    from sollol_serve.shard.build import LLAMA_CPP_PYTHON_VERSION, build, cache_dir, find_binaries

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


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="sollol", description="sollol_serve: one endpoint for a cluster of LLM nodes")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sim-node", help="run a simulated Ollama / llama-server node (no real model)", add_help=False)
    sub.add_parser("demo", help="local Ray + three simulated nodes + the gateway", add_help=False)
    sub.add_parser("keys", help="create API keys / hash existing ones", add_help=False)
    sub.add_parser("build-llamacpp", help="build llama.cpp's llama-server and ggml-rpc-server", add_help=False)
    own = {"keys": keys_command, "build-llamacpp": build_llamacpp_command}
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
