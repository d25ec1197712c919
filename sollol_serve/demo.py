"""`sollol demo`: a local Ray, three simulated heterogeneous nodes, the gateway, its URLs.

The nodes are simulators (they emit pseudo-words, not model output) standing in for a
GPU box, a smaller GPU box and a CPU-only machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading

from sollol_serve.sim.process import SimProcess

# Four models on nodes that hold fewer at once (Ollama's OLLAMA_MAX_LOADED_MODELS): the router
# learns what each node keeps loaded and what a cold load costs there (GET /api/nodes).
MODELS = "llama3.2,qwen2.5:7b@4.7,qwen2.5-coder:1.5b@1.0,nomic-embed-text@0.3"

DEMO_NODES: dict[str, list[str]] = {
    # A 4-slot GPU-like node: fast prefill and decode; holds 3 of the 4 models at once.
    "gpu-big": ["--models", MODELS, "--slots", "4", "--decode-tps", "120", "--prefill-tps", "3000", "--load-s", "2",
                "--max-loaded", "3"],
    # A 2-slot, smaller GPU that holds 2.
    "gpu-small": ["--models", MODELS, "--slots", "2", "--decode-tps", "60", "--prefill-tps", "1200", "--load-s", "3",
                  "--max-loaded", "2"],
    # A 1-slot CPU-only machine with room for 1.
    "cpu": ["--models", "llama3.2,nomic-embed-text@0.3", "--slots", "1", "--decode-tps", "15",
            "--prefill-tps", "150", "--load-s", "6", "--max-loaded", "1"],
}


# Set before Ray is imported (it reads them then), for a terminal with the demo's lines only;
# values the user set win. Ray's and Serve's INFO lines go too (see main). Real errors still
# show: a task's or actor's final failure, a worker's crash, Ray's warnings and errors.
QUIET_RAY_ENV = {
    # Ray 2.60 turns token auth on for every new local Ray, with a WARNING saying so when the
    # mode is not set. Set, it is the same mode without the warning; the demo says it instead
    # (with the command that prints the token) next to the Ray dashboard's URL, the one place
    # that asks for it. RAY_AUTH_MODE=disabled: no token.
    "RAY_AUTH_MODE": "token",
    # "Task ServeController.graceful_shutdown failed. There are infinite retries remaining, so
    # the task will be retried" at every stop: a retry in progress, not a failure.
    "RAY_enable_output_error_log_if_still_retry": "0",
    # The raylet warns once its Python workers reach 4x its startup concurrency (num_cpus by
    # default): Serve's actors and the gateway's (router, batch jobs, one worker per node...) are
    # more than 8 on 2 CPUs, as designed. 8: up to 8 workers start at once, warned at 32.
    "RAY_worker_maximum_startup_concurrency": "8",
}


def apply_quiet_ray_env() -> None:
    for key, value in QUIET_RAY_ENV.items():
        os.environ.setdefault(key, value)
    if "ray" in sys.modules:  # imported already: have it read them again, as Ray does itself
        from ray._raylet import Config  # when it turns token auth on

        Config.initialize("")


def ray_temp_dir_of_our_own() -> str:
    """A temp directory (TMPDIR) for Ray's processes, which the demo removes when it stops: Ray's
    dashboard leaves a multiprocessing folder (pymp-*) in its temp directory at every stop (it
    exits with os._exit). Ray's own files (session logs, sockets) stay where Ray puts them
    (RAY_TMPDIR, else TMPDIR or /tmp) so that `ray` and `serve` commands find this Ray."""
    from ray._common.utils import get_default_system_temp_dir

    tempfile.gettempdir()  # this process keeps the user's
    os.environ.setdefault("RAY_TMPDIR", get_default_system_temp_dir())
    os.environ["TMPDIR"] = tempfile.mkdtemp(prefix="sollol-demo-")
    return os.environ["TMPDIR"]


def ray_dashboard_lines() -> list[str]:
    """The Ray dashboard's URL (8265, or the next free port) and, when Ray's token auth is on,
    how to get the token it asks for."""
    import ray._private.worker

    lines = [f"  Ray dashboard  http://{ray._private.worker.get_dashboard_url()}"]
    try:  # what Ray's dashboard itself asks (its 401 without a token)
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
        token_auth = is_token_auth_enabled()
    except ImportError:  # a Ray without token auth
        token_auth = False
    if token_auth:
        ray_cli = "ray" if shutil.which("ray") else os.path.join(os.path.dirname(sys.executable), "ray")
        lines.append(f"                 asks for Ray's token (RAY_AUTH_MODE=token): `{ray_cli} get-auth-token` prints it")
    return lines


def _stop_like_ctrl_c(signum, frame) -> None:
    raise KeyboardInterrupt


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sollol demo", description=__doc__)
    p.add_argument("--port", type=int, default=8000, help="gateway port")
    p.add_argument("--node-port", type=int, default=21434, help="first port of the simulated nodes")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = arg_parser().parse_args(argv)
    apply_quiet_ray_env()
    from sollol_serve.config import DiscoveryConfig, GatewayConfig, NodeConfig
    from sollol_serve.local import start_local_gateway, stop_local_gateway, wait_for_nodes

    ray_temp = ray_temp_dir_of_our_own()
    sims = [SimProcess(name, flags, port=args.node_port + i) for i, (name, flags) in enumerate(DEMO_NODES.items())]
    # SIGTERM stops the demo as Ctrl-C does: everything it started is stopped, its files removed.
    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    try:
        for sim in sims:
            sim.start()
            print(f"simulated node {sim.name:<10} {sim.url}  ({' '.join(DEMO_NODES[sim.name][2:])})", flush=True)
        # Nodes as users give them: no slots (Ollama doesn't report them; the router learns
        # them, see /api/nodes), default routing. Discovery off: the demo shows the simulated
        # nodes only, not an Ollama this machine may run.
        config = GatewayConfig(nodes=[NodeConfig(name=s.name, url=s.url) for s in sims],
                               discovery=DiscoveryConfig(ray_nodes=False))
        url = start_local_gateway(config, port=args.port, num_cpus=args.num_cpus, include_dashboard=True,
                                  logging_level=logging.WARNING)
        # Again: ray.init installs a SIGTERM handler of its own (sys.exit).
        signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
        wait_for_nodes(url, len(sims))
        print(
            "\nsollol_serve is running (simulated nodes, not real models):\n"
            f"  Ollama API     {url}/api/chat  (and /api/generate, /api/embed, /api/tags, /api/ps ...)\n"
            f"  OpenAI API     {url}/v1/chat/completions\n"
            f"  Dashboard      {url}/dashboard\n"
            f"  Node state     {url}/api/nodes\n"
            + "\n".join(ray_dashboard_lines()) + "\n\n"
            f"Try:  curl {url}/api/chat -d '{{\"model\": \"llama3.2\", \"messages\": "
            "[{\"role\": \"user\", \"content\": \"hello\"}]}'\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        try:
            threading.Event().wait(args.duration)
        except KeyboardInterrupt:
            pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # already stopping
        try:
            stop_local_gateway()
        finally:
            for sim in sims:
                sim.stop()
            shutil.rmtree(ray_temp, ignore_errors=True)
