"""Added latency and CPU of the gateway versus calling the node directly, as users run it.

    python benchmarks/overhead.py [--mode shipped|fast|both] [--ingress-replicas 1,2]
                                  [--rates 25,50,100,200,400] [--quick] [--out benchmarks/results]

The gateway is started the way `serve run serve_config.yaml` starts it: `sollol_serve.app:build_app`
with the shipped serve_config.yaml's args, the node list replaced by one simulated node given
without `slots` (so the gateway learns them, as it does for users), and only the HTTP port and
(for `--ingress-replicas`) `sizing.ingress_replicas` changed.

- `--mode shipped` (default): `serve run <temp copy of serve_config.yaml>` as a subprocess, with
  a Ray of its own (RAY_ADDRESS=local) and Ray Serve's default settings.
- `--mode fast`: `sollol_serve.local.start_local_gateway` in a subprocess, which applies
  `FAST_SERVE_ENV` (HAProxy, gRPC between replicas, ...) before its Ray starts.
- `--mode both`: one after the other, against the same node, in one run.

The node (NODE_ARGS) never queues (128 slots, no cold load, no slowdown per busy slot) and gives
fixed short answers, so its own time is constant and the difference is the gateway's. Each cell
runs against the node directly and then through the gateway, in the same run:

- non-streamed embed, distinct inputs (the gateway's embedding cache never answers), concurrency 32;
- non-streamed chat at concurrency 1 and 32 (8-token answers);
- 32 concurrent streams of 150 tokens: time to first chunk, total stream time, gaps between chunks;
- CPU per request (per chunk for streams) of every process, from /proc, summed over the
  gateway's process tree (the `serve run` or local driver, gcs, raylet, every `ray::` worker,
  the dashboard, HAProxy if used); the sim node, the load generator and the rest of the machine
  are listed apart;
- scaling: open-loop (Poisson) non-streamed chat at increasing rates, direct then gateway at each,
  until the gateway's added p99 passes ADDED_P99_LIMIT_MS or errors appear; repeated for each
  `--ingress-replicas` count, each on a freshly started gateway.

Every loop is bounded in count and time, and all traffic goes to 127.0.0.1. `--quick` is a smoke
run of a few minutes (its results go to a temp directory unless `--out` is given).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from sollol_serve.config import DATA_DIR_ENV, NODES_ENV, load_config
from sollol_serve.processes import die_with_parent, free_port
from sollol_serve.sim.process import SimProcess

REPO = Path(__file__).resolve().parents[1]
SERVE_CONFIG = REPO / "serve_config.yaml"
NODE_NAME = "bench"
NODE_ARGS = ["--models", "llama3.2,nomic-embed-text", "--slots", "128", "--decode-tps", "400",
             "--prefill-tps", "100000", "--load-s", "0", "--slot-slowdown", "0"]
CHAT_TOKENS = 8  # non-streamed answers: 20 ms of decode at 400 tokens/s
STREAM_TOKENS = 150
CONCURRENCY = 32
ADDED_P99_LIMIT_MS = 50.0
OLLAMA_PORT = 11434  # where the shipped config's discovery looks for a local Ollama


# -- run sizes ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """How much traffic each part sends; every figure also has a time bound."""

    requests: int = 1000  # per concurrency-32 cell (embed, chat)
    requests_c1: int = 200  # chat at concurrency 1
    stream_rounds: int = 6  # 32 streams each
    warmup_rounds: int = 3  # of `concurrency` requests before each measured cell
    idle_s: float = 10.0  # the gateway's CPU with no traffic at all, measured this long
    rates: tuple[float, ...] = (10, 25, 50, 100, 200, 400)
    step_s: float = 10.0  # an open-loop step sends for this long ...
    step_max: int = 1500  # ... or this many requests, whichever comes first
    drain_s: float = 30.0  # then waits this long at most for the answers
    cell_timeout_s: float = 240.0  # a closed-loop cell stops sending after this
    learn_s: float = 90.0  # longest warm-up spent letting the gateway learn the node's slots
    start_timeout_s: float = 300.0  # gateway start (Ray, Serve, the app, a healthy node)


QUICK = Plan(requests=96, requests_c1=20, stream_rounds=1, warmup_rounds=1, idle_s=3.0, rates=(10, 50), step_s=3.0,
             step_max=300, drain_s=15.0, cell_timeout_s=60.0, learn_s=15.0)


# -- numbers --------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(seconds: list[float]) -> dict:
    if not seconds:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "mean_ms": None}
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 2), "p99_ms": round(percentile(ms, 99), 2),
            "mean_ms": round(statistics.fmean(ms), 2)}


def added(via: dict, direct: dict, key: str) -> float | None:
    if via[key] is None or direct[key] is None:
        return None
    return round(via[key] - direct[key], 2)


# -- requests (aiohttp: httpx costs several ms of CPU per request, which on 2 cores would
# -- measure the load generator instead of the gateway) -------------------------------------
_texts = itertools.count()
_RUN_TAG = f"{os.getpid()}-{time.time_ns()}"


def chat_body(tokens: int, streamed: bool) -> dict:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": "hello"}], "stream": streamed,
            "options": {"num_predict": tokens}}


async def chat(session: aiohttp.ClientSession, url: str) -> float:
    """Seconds to the full non-streamed answer."""
    started = time.perf_counter()
    async with session.post(url + "/api/chat", json=chat_body(CHAT_TOKENS, False)) as response:
        response.raise_for_status()
        await response.read()
    return time.perf_counter() - started


async def embed(session: aiohttp.ClientSession, url: str) -> float:
    """Seconds to a non-streamed embedding of a text never sent before: a cached answer would
    measure the gateway's cache, not its request path."""
    body = {"model": "nomic-embed-text", "input": [f"overhead {_RUN_TAG} text {next(_texts)}"]}
    started = time.perf_counter()
    async with session.post(url + "/api/embed", json=body) as response:
        response.raise_for_status()
        await response.read()
    return time.perf_counter() - started


@dataclass
class StreamSample:
    first_s: float  # to the first chunk
    total_s: float  # to the last
    chunks: int
    gaps_s: list[float]  # between consecutive chunks


async def stream(session: aiohttp.ClientSession, url: str, tokens: int = STREAM_TOKENS) -> StreamSample:
    """One streamed chat of `tokens` tokens, timed chunk by chunk (NDJSON lines)."""
    started = time.perf_counter()
    arrivals: list[float] = []
    last = b""
    async with session.post(url + "/api/chat", json=chat_body(tokens, True)) as response:
        response.raise_for_status()
        async for line in response.content:
            if line.strip():
                arrivals.append(time.perf_counter())
                last = line
    if not arrivals or not json.loads(last).get("done"):
        raise RuntimeError("stream ended without its done chunk")
    return StreamSample(arrivals[0] - started, arrivals[-1] - started, len(arrivals),
                        [b - a for a, b in zip(arrivals, arrivals[1:])])


async def short_stream(session: aiohttp.ClientSession, url: str) -> StreamSample:
    """A warm-up for the stream cell: the same path, connections and all, in 1/20 of the time."""
    return await stream(session, url, CHAT_TOKENS)


Call = Callable[[aiohttp.ClientSession, str], Awaitable[Any]]


@dataclass
class Outcome:
    samples: list = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0

    def failed(self, exc: BaseException) -> None:
        self.errors[f"{type(exc).__name__}: {exc}"[:120]] += 1


def session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                 timeout=aiohttp.ClientTimeout(total=60))


async def closed_loop(client: aiohttp.ClientSession, url: str, call: Call, concurrency: int, count: int,
                      timeout_s: float) -> Outcome:
    """`count` calls, `concurrency` at a time, no new one started after `timeout_s`."""
    out = Outcome()
    remaining = count
    started = time.perf_counter()
    deadline = started + timeout_s

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            try:
                out.samples.append(await call(client, url))
            except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError, ValueError) as exc:
                out.failed(exc)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    out.elapsed_s = time.perf_counter() - started
    return out


@dataclass
class OpenLoopOutcome(Outcome):
    sent: int = 0
    late_s: list[float] = field(default_factory=list)  # how far behind schedule each call started
    span_s: float = 0.0  # from the first scheduled arrival to the last answer


async def open_loop(client: aiohttp.ClientSession, url: str, call: Call, rate: float, plan: Plan,
                    seed: int) -> OpenLoopOutcome:
    """Poisson arrivals at `rate`/s for `plan.step_s` or `plan.step_max` calls, whichever ends
    first. Latency counts from the scheduled arrival, not from when the call got to start: a
    load generator that falls behind must not hide the queueing it would have seen."""
    out = OpenLoopOutcome()
    rng = random.Random(seed)  # the same arrivals for the direct and the gateway run

    async def one(due: float) -> None:
        out.late_s.append(time.perf_counter() - due)
        try:
            await call(client, url)
            now = time.perf_counter()
            out.samples.append(now - due)
            out.span_s = max(out.span_s, now - started)
        except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError, ValueError) as exc:
            out.failed(exc)

    tasks: list[asyncio.Task] = []
    started = due = time.perf_counter()
    while len(tasks) < plan.step_max:
        due += rng.expovariate(rate)
        if due - started > plan.step_s:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    out.sent = len(tasks)
    out.elapsed_s = time.perf_counter() - started
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=plan.drain_s)
        for task in pending:
            task.cancel()
        if pending:
            out.errors[f"no answer {plan.drain_s:.0f} s after the step"] += len(pending)
    return out


# -- CPU from /proc ---------------------------------------------------------------------------
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    started: int  # start time in ticks since boot: with the pid, tells a reused pid apart
    cpu_s: float  # user + system, all threads
    cmd: str


def read_procs() -> dict[tuple[int, int], Proc]:
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # exited meanwhile
        proc = Proc(int(stat.parent.name), int(fields[1]), int(fields[19]),
                    (int(fields[11]) + int(fields[12])) / TICK, cmd)
        out[(proc.pid, proc.started)] = proc
    return out


def tree(procs: dict[tuple[int, int], Proc], root: int) -> set[tuple[int, int]]:
    """`root` and every process below it."""
    children: dict[int, list[Proc]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p)
    found, todo = set(), [p for p in procs.values() if p.pid == root]
    while todo:
        p = todo.pop()
        found.add((p.pid, p.started))
        todo.extend(children.get(p.pid, []))
    return found


def label(cmd: str) -> str:
    """A short, stable name for a process: `ray::ServeReplica:sollol:Router`, `raylet`,
    `python dashboard.py`, `haproxy`, ..."""
    parts = cmd.split()
    if not parts:
        return "?"
    if parts[0].startswith("ray::"):
        # A busy actor's title names the method it runs (`ray::ProxyActor.receive_asgi_messages`,
        # `ray::ServeReplica:app:Router.handle_request_with_rejection`). A replica's deployment
        # name may hold dots (`OllamaWorker-host.lan`), so only a snake_case method is cut.
        name = parts[0]
        if ":" not in name:
            return name.split(".", 1)[0]
        return re.sub(r"\.[a-z]+(_[a-z]+)+$", "", name)
    if parts[0].startswith("ray-dashboard-"):
        return parts[0]
    exe = Path(parts[0]).name
    if not exe.startswith("python"):
        return exe
    args = iter(parts[1:])
    for arg in args:
        if arg == "-c":
            return "python -c"
        if arg == "-m":
            return f"python -m {next(args, '')}"
        if not arg.startswith("-"):
            return f"python {Path(arg).name}"
    return "python"


@dataclass(frozen=True)
class Roots:
    """Whose CPU is whose: the gateway's process tree, the sim node's, the load generator."""

    gateway: int
    node: int
    loadgen: int = field(default_factory=os.getpid)


def cpu_between(before: dict, after: dict, roots: Roots, units: float, wall_s: float) -> dict:
    """CPU milliseconds per unit (request, chunk or second) by gateway process label, with the
    node, the load generator and everything else on the machine apart."""
    gateway = tree(after, roots.gateway) | tree(before, roots.gateway)
    node = tree(after, roots.node)
    loadgen = tree(after, roots.loadgen) - gateway - node
    by_label: dict[str, dict] = {}
    totals = Counter()
    for key, proc in after.items():
        spent = proc.cpu_s - (before[key].cpu_s if key in before else 0.0)
        if key in gateway:
            # The root is `serve run` or the fast mode's child: named so, not mistaken for the load generator.
            name = f"driver: {label(proc.cmd)}" if proc.pid == roots.gateway else label(proc.cmd)
            row = by_label.setdefault(name, {"cpu_s": 0.0, "processes": 0})
            row["cpu_s"] += spent
            row["processes"] += 1
            totals["gateway"] += spent
        elif key in node:
            totals["node"] += spent
        elif key in loadgen:
            totals["loadgen"] += spent
        else:
            totals["other"] += spent
    per = 1000 / units if units else 0.0
    return {
        "units": units, "wall_s": round(wall_s, 2),
        "gateway_ms": round(totals["gateway"] * per, 3),
        "by_process_ms": {name: {"ms": round(row["cpu_s"] * per, 3), "processes": row["processes"]}
                          for name, row in sorted(by_label.items(), key=lambda kv: -kv[1]["cpu_s"])},
        "node_ms": round(totals["node"] * per, 3),
        "loadgen_ms": round(totals["loadgen"] * per, 3),
        # the shared machine's other work, as cores kept busy: how noisy the cell's figures are
        "other_cores_busy": round(totals["other"] / max(wall_s, 1e-9), 2),
    }


# -- the gateway as a subprocess ----------------------------------------------------------------
def _child_setup() -> None:
    # A benchmark started in the background (`... &` from a script) ignores SIGINT and its
    # children inherit that: `serve run` would never see the SIGINT that stops it cleanly.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    die_with_parent()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def gateway_config(node_url: str, port: int, ingress_replicas: int,
                   tracing_ratio: float | None = None) -> tuple[dict, list[str]]:
    """serve_config.yaml with the one sim node, the port and the ingress replicas changed (and
    tracing turned on at `tracing_ratio`, if given); and what was changed, for the report."""
    doc = yaml.safe_load(SERVE_CONFIG.read_text())
    args = doc["applications"][0]["args"]
    shipped = args.get("nodes", [{}])[0]
    # Given as the shipped config gives its node: name, url, kind, and no `slots`.
    args["nodes"] = [{"name": NODE_NAME, "url": node_url, "kind": shipped.get("kind", "auto")}]
    doc["http_options"]["port"] = port
    changes = [f"args.nodes = [{NODE_NAME} {node_url} kind={args['nodes'][0]['kind']}, no slots]",
               f"http_options.port = {port}"]
    if ingress_replicas != args.get("sizing", {}).get("ingress_replicas", 1):
        args.setdefault("sizing", {})["ingress_replicas"] = ingress_replicas
        changes.append(f"args.sizing.ingress_replicas = {ingress_replicas}")
    if tracing_ratio is not None:
        doc["tracing_config"].update(enabled=True, sampling_ratio=tracing_ratio)
        changes.append(f"tracing_config.enabled = true, sampling_ratio = {tracing_ratio:g}")
    if port_open(OLLAMA_PORT):
        # Discovery would add this machine's Ollama as a second node and split the traffic.
        args.setdefault("discovery", {})["ray_nodes"] = False
        changes.append(f"args.discovery.ray_nodes = false (something listens on {OLLAMA_PORT})")
    return doc, changes


def gateway_env(mode: str, ray_cpus: int, data_dir: Path,
                traces_to: str | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """The child's environment (spans sent to `traces_to`, an OTLP/HTTP URL, if given), and
    the variables set or removed, for the report."""
    dropped = sorted(k for k in os.environ if k.startswith("RAY_SERVE_") or k in (NODES_ENV, "RAY_ADDRESS",
                                                                                   "RAY_OVERRIDE_RESOURCES"))
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    set_ = {
        # `serve run` would join a Ray that `ray start` left on the machine; "local" starts its own.
        "RAY_ADDRESS": "local",
        DATA_DIR_ENV: str(data_dir),  # batch jobs' SQLite in the run's temp dir, not ~/.local
    }
    if mode == "shipped":
        set_["RAY_OVERRIDE_RESOURCES"] = json.dumps({"CPU": ray_cpus})  # fast mode passes num_cpus
    if traces_to:
        set_["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = traces_to
    env.update(set_)
    return env, {**set_, **{k: "(removed)" for k in dropped}}


@dataclass
class Gateway:
    mode: str
    ingress_replicas: int
    node_url: str
    workdir: Path
    ray_cpus: int
    plan: Plan
    port: int = field(default_factory=free_port)
    attempt: int = 1
    tracing: tuple[float, str] | None = None  # (sampling ratio, OTLP/HTTP URL the spans go to)
    proc: subprocess.Popen | None = None
    log: Path | None = None
    info: dict = field(default_factory=dict)
    # Every process seen in its tree: those the driver leaves behind are reparented to init
    # and can no longer be found from it.
    family: dict[tuple[int, int], Proc] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, config_path: Path) -> list[str]:
        if self.mode == "shipped":
            serve = Path(sys.executable).with_name("serve")
            return [str(serve) if serve.exists() else shutil.which("serve") or "serve", "run", str(config_path)]
        return [sys.executable, str(Path(__file__).resolve()), "--serve-fast", str(config_path),
                "--ray-cpus", str(self.ray_cpus)]

    def start(self) -> "Gateway":
        ratio, traces_to = self.tracing or (None, None)
        # Each its own data dir: a gateway started later must not inherit what one learned.
        tag = f"{self.mode}-{self.ingress_replicas}-{self.attempt}" + (f"-traced-{ratio:g}" if self.tracing else "")
        doc, changes = gateway_config(self.node_url, self.port, self.ingress_replicas, ratio)
        config_path = self.workdir / f"serve_config.{tag}.yaml"
        config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        env, env_notes = gateway_env(self.mode, self.ray_cpus, self.workdir / f"data-{tag}", traces_to)
        cmd = self.command(config_path)
        self.log = self.workdir / f"gateway.{tag}.log"
        started = time.monotonic()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         preexec_fn=_child_setup)
        self.info = {"command": shlex.join(cmd), "config_changes": changes, "env": env_notes,
                     "args": doc["applications"][0]["args"]}
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.info["start_s"] = round(time.monotonic() - started, 1)
        self.info.update(self._raylet_facts())
        return self

    def _remember_family(self) -> dict[tuple[int, int], Proc]:
        procs = read_procs()
        self.family.update({key: procs[key] for key in tree(procs, self.proc.pid)})
        return procs

    def _wait_ready(self) -> None:
        """Until the app answers /api/nodes with the sim node healthy."""
        deadline = time.monotonic() + self.plan.start_timeout_s
        while time.monotonic() < deadline:
            self._remember_family()
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway ({self.mode}) exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                nodes = asyncio.run(get_nodes(self.url))
                if any(n["name"] == NODE_NAME and n["healthy"] for n in nodes):
                    return
            except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
                pass
            time.sleep(1)
        raise RuntimeError(f"gateway ({self.mode}) not ready within {self.plan.start_timeout_s} s:\n{self.log_tail()}")

    def _raylet_facts(self) -> dict:
        """What the gateway's Ray really got: the raylet's CPU count (--static_resource_list)
        and the RAY_SERVE_* settings in its environment (which every replica inherits)."""
        procs = self._remember_family()
        raylet = next((procs[k] for k in tree(procs, self.proc.pid) if "raylet/raylet" in procs[k].cmd), None)
        if raylet is None:
            return {"ray_cpus_seen": None, "ray_serve_env_seen": None}
        resources = next((a.split("=", 1)[1].split(",") for a in raylet.cmd.split()
                          if a.startswith("--static_resource_list=")), [])
        try:
            environ = Path(f"/proc/{raylet.pid}/environ").read_bytes().split(b"\0")
        except OSError:
            environ = []
        serve_env = dict(sorted(v.decode(errors="replace").split("=", 1) for v in environ
                                if v.startswith(b"RAY_SERVE_")))
        return {"ray_cpus_seen": dict(zip(resources[::2], resources[1::2])).get("CPU"),
                "ray_serve_env_seen": serve_env}

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGINT (serve run and the local driver shut Serve and their Ray down), SIGKILL after
        60 s; then whatever of its process tree outlived it, by pid."""
        if self.proc is None:
            return
        started = time.monotonic()
        if self.proc.poll() is None:
            self._remember_family()
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        kill_survivors(list(self.family.values()), grace_s=10)
        self.info["stop_s"] = round(time.monotonic() - started, 1)


@contextmanager
def running_gateway(mode: str, ingress_replicas: int, node_url: str, workdir: Path, ray_cpus: int,
                    plan: Plan, attempts: int = 2, tracing: tuple[float, str] | None = None) -> Iterator[Gateway]:
    """A started gateway, stopped on the way out. A failed start is tried once more: on a
    loaded machine Ray's own start can time out ("The current node timed out during startup")."""
    for attempt in range(1, attempts + 1):
        gateway = Gateway(mode, ingress_replicas, node_url, workdir, ray_cpus, plan, attempt=attempt, tracing=tracing)
        try:
            gateway.start()
            break
        except RuntimeError as exc:
            if attempt == attempts:
                raise
            print(f"gateway start failed ({str(exc).strip().splitlines()[-1][:200]}); trying again", flush=True)
    gateway.info["start_attempts"] = attempt
    try:
        yield gateway
    finally:
        gateway.stop()


def kill_survivors(family: list[Proc], grace_s: float) -> None:
    """SIGKILL, by pid, the processes of `family` still alive after `grace_s` (Ray's own
    processes normally follow their driver out within a second or two)."""
    deadline = time.monotonic() + grace_s
    while True:
        now = read_procs()
        alive = [p for p in family if (p.pid, p.started) in now]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for p in alive:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def serve_fast(config_path: Path, ray_cpus: int) -> None:
    """`--mode fast`'s child: build the config as build_app does, start the gateway with
    start_local_gateway (FAST_SERVE_ENV), and run until SIGINT or SIGTERM."""
    import ray

    from sollol_serve.local import start_local_gateway, stop_local_gateway

    doc = yaml.safe_load(config_path.read_text())
    config = load_config(doc["applications"][0]["args"])  # what sollol_serve.app:build_app does
    stopping = threading.Event()
    try:
        start_local_gateway(config, port=doc["http_options"]["port"], num_cpus=ray_cpus)
        # After ray.init, which installs a SIGTERM handler of its own.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.set())
        while not stopping.wait(0.5):
            pass
    finally:
        if ray.is_initialized():  # else serve.shutdown() would start a Ray just to stop it
            stop_local_gateway()
        # apply_fast_serve_env made HAProxy a temp directory of its own and leaves it behind.
        state = Path(os.environ.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", ""))
        if state.name.startswith("sollol-haproxy-") and state.parent == Path(tempfile.gettempdir()):
            shutil.rmtree(state, ignore_errors=True)


# -- measuring ----------------------------------------------------------------------------------
async def get_nodes(url: str) -> list[dict]:
    async with session(2) as client, client.get(url + "/api/nodes") as response:
        response.raise_for_status()
        return (await response.json())["nodes"]


def node_view(nodes: list[dict]) -> dict:
    """What the gateway believes about the sim node (learned slots above all)."""
    node = next((n for n in nodes if n["name"] == NODE_NAME), {})
    return {"nodes": [n["name"] for n in nodes], "slots": node.get("slots"), "slots_source": node.get("slots_source"),
            "capacity": node.get("capacity")}


async def learn_slots(url: str, plan: Plan) -> dict:
    """Warm the gateway up with chat at concurrency 32 until it believes the node has at least
    32 slots (it starts from 1 and proves one more at a time), or `plan.learn_s` has passed.
    Users' gateways are measured after that warm-up too: it is their steady state."""
    started = time.perf_counter()
    sent = 0
    view = node_view(await get_nodes(url))
    async with session(CONCURRENCY) as client:
        while (view["slots"] or 0) < CONCURRENCY and time.perf_counter() - started < plan.learn_s:
            out = await closed_loop(client, url, chat, CONCURRENCY, CONCURRENCY * 4, plan.learn_s)
            sent += len(out.samples) + sum(out.errors.values())
            view = node_view(await get_nodes(url))
    return {**view, "seconds": round(time.perf_counter() - started, 1), "requests": sent}


@dataclass(frozen=True)
class Cell:
    name: str
    call: Call
    concurrency: int
    count: int
    warmup: Call | None = None  # the call itself unless given
    streamed: bool = False


def cells(plan: Plan) -> list[Cell]:
    return [
        Cell("embed c32", embed, CONCURRENCY, plan.requests),
        Cell("chat c1", chat, 1, plan.requests_c1),
        Cell("chat c32", chat, CONCURRENCY, plan.requests),
        Cell("stream c32", stream, CONCURRENCY, CONCURRENCY * plan.stream_rounds, short_stream, streamed=True),
    ]


async def run_cell(url: str, cell: Cell, plan: Plan, roots: Roots | None) -> tuple[Outcome, dict | None]:
    """Warm up (open every connection, warm the code paths), then measure; with `roots`, the
    CPU of the measured part too."""
    async with session(cell.concurrency) as client:
        await closed_loop(client, url, cell.warmup or cell.call, cell.concurrency,
                          cell.concurrency * plan.warmup_rounds, plan.cell_timeout_s)
        before = read_procs() if roots else {}
        out = await closed_loop(client, url, cell.call, cell.concurrency, cell.count, plan.cell_timeout_s)
        if not roots:
            return out, None
        units = sum(s.chunks for s in out.samples) if cell.streamed else len(out.samples)
        return out, cpu_between(before, read_procs(), roots, units, out.elapsed_s)


def latency_row(cell: Cell, direct: Outcome, via: Outcome) -> dict:
    d, g = summarize(direct.samples), summarize(via.samples)
    return {"cell": cell.name, "concurrency": cell.concurrency, "direct": d, "gateway": g,
            "added_p50_ms": added(g, d, "p50_ms"), "added_p99_ms": added(g, d, "p99_ms"),
            "errors": {"direct": dict(direct.errors), "gateway": dict(via.errors)}}


def stream_summary(samples: list[StreamSample]) -> dict:
    gaps = [g for s in samples for g in s.gaps_s]
    return {"first_chunk": summarize([s.first_s for s in samples]), "total": summarize([s.total_s for s in samples]),
            "gap_mean_ms": round(statistics.fmean(gaps) * 1000, 3) if gaps else None,
            "gap_p99_ms": round(percentile(gaps, 99) * 1000, 3) if gaps else None,
            "chunks_per_stream": round(statistics.fmean(s.chunks for s in samples), 1) if samples else None}


def stream_row(cell: Cell, direct: Outcome, via: Outcome) -> dict:
    d, g = stream_summary(direct.samples), stream_summary(via.samples)
    ratio = None
    if d["total"]["p50_ms"] and g["total"]["p50_ms"]:
        ratio = round(g["total"]["p50_ms"] / d["total"]["p50_ms"], 3)
    return {"cell": cell.name, "concurrency": cell.concurrency, "tokens": STREAM_TOKENS, "direct": d, "gateway": g,
            "added_first_chunk_p50_ms": added(g["first_chunk"], d["first_chunk"], "p50_ms"),
            "added_first_chunk_p99_ms": added(g["first_chunk"], d["first_chunk"], "p99_ms"),
            "total_ratio_p50": ratio,
            "errors": {"direct": dict(direct.errors), "gateway": dict(via.errors)}}


def idle_cpu(roots: Roots, seconds: float) -> dict:
    """CPU per second of wall time with no traffic: health probes, discovery, snapshots,
    metrics, Ray's own housekeeping. Part of every per-request figure at low rates."""
    before = read_procs()
    time.sleep(seconds)
    return cpu_between(before, read_procs(), roots, seconds, seconds)


def measure_cells(node_url: str, gateway_url: str, plan: Plan, roots: Roots) -> tuple[list[dict], dict]:
    rows, cpu = [], {"idle": idle_cpu(roots, plan.idle_s)}
    for cell in cells(plan):
        # Direct first, then the gateway, cell by cell: both see the machine in the same state.
        direct, _ = asyncio.run(run_cell(node_url, cell, plan, None))
        via, cpu[cell.name] = asyncio.run(run_cell(gateway_url, cell, plan, roots))
        row = (stream_row if cell.streamed else latency_row)(cell, direct, via)
        row["gateway_view_after"] = node_view(asyncio.run(get_nodes(gateway_url)))
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "gateway_view_after"}), flush=True)
    return rows, cpu


async def rate_step(url: str, rate: float, plan: Plan, seed: int) -> OpenLoopOutcome:
    async with session(1024) as client:
        await closed_loop(client, url, chat, 8, 16, plan.cell_timeout_s)  # connections open, paths warm
        return await open_loop(client, url, chat, rate, plan, seed)


def step_summary(out: OpenLoopOutcome) -> dict:
    return {**summarize(out.samples), "sent": out.sent, "answered_rps": round(len(out.samples) / out.span_s, 1) if out.span_s else None,
            "late_p99_ms": round(percentile(out.late_s, 99) * 1000, 2) if out.late_s else None,
            "errors": dict(out.errors)}


def scale(node_url: str, gateway_url: str, plan: Plan) -> dict:
    """Step the rate up until the added p99 passes the limit or anything fails."""
    steps, crossed_at = [], None
    for i, rate in enumerate(plan.rates):
        direct = step_summary(asyncio.run(rate_step(node_url, rate, plan, seed=i)))
        via = step_summary(asyncio.run(rate_step(gateway_url, rate, plan, seed=i)))
        step = {"rate": rate, "direct": direct, "gateway": via, "added_p99_ms": added(via, direct, "p99_ms"),
                "gateway_slots_after": node_view(asyncio.run(get_nodes(gateway_url)))["slots"]}
        steps.append(step)
        print(json.dumps(step), flush=True)
        over = step["added_p99_ms"] is None or step["added_p99_ms"] > ADDED_P99_LIMIT_MS
        if over or via["errors"] or direct["errors"]:
            crossed_at = rate
            break
    passed = [s["rate"] for s in steps if s["rate"] != crossed_at]
    return {"limit_ms": ADDED_P99_LIMIT_MS, "steps": steps, "crossed_at_rps": crossed_at,
            "last_under_rps": max(passed) if passed else None}


def measure_mode(mode: str, replicas: list[int], node: SimProcess, plan: Plan, workdir: Path,
                 ray_cpus: int) -> list[dict]:
    """One gateway per ingress-replica count: learn, cells and CPU (first count only), scaling."""
    runs = []
    for i, count in enumerate(replicas):
        print(f"== {mode}, {count} ingress replica(s)", flush=True)
        with running_gateway(mode, count, node.url, workdir, ray_cpus, plan) as gateway:
            run: dict = {"mode": mode, "ingress_replicas": count, "gateway": gateway.info}
            run["learning"] = asyncio.run(learn_slots(gateway.url, plan))
            print(json.dumps({"learning": run["learning"]}), flush=True)
            if i == 0:
                run["cells"], run["cpu"] = measure_cells(node.url, gateway.url, plan, Roots(gateway.proc.pid,
                                                                                          node.proc.pid))
            run["scaling"] = scale(node.url, gateway.url, plan)
            run["gateway_view_end"] = node_view(asyncio.run(get_nodes(gateway.url)))
        runs.append(run)  # gateway.info now has stop_s too
    return runs


# -- the report ---------------------------------------------------------------------------------
def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 1e6, 1),
            "platform": platform.platform(), "python": platform.python_version(), "ray": version("ray"),
            "aiohttp": aiohttp.__version__}


def git_state() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sollol_serve", "serve_config.yaml"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + (" (sollol_serve/ has uncommitted changes)" if dirty else "")


def fmt(value: object) -> str:
    return "-" if value is None else str(value)


def md_cells(run: dict) -> list[str]:
    lines = ["| cell | direct p50 / p99 (ms) | gateway p50 / p99 (ms) | added p50 | added p99 | errors gw | "
             "gateway's slots after |", "|---|---|---|---|---|---|---|"]
    for r in run["cells"]:
        if "first_chunk" in r["direct"]:
            continue
        d, g = r["direct"], r["gateway"]
        lines.append(f"| {r['cell']} | {fmt(d['p50_ms'])} / {fmt(d['p99_ms'])} | {fmt(g['p50_ms'])} / "
                     f"{fmt(g['p99_ms'])} | {fmt(r['added_p50_ms'])} ms | {fmt(r['added_p99_ms'])} ms | "
                     f"{sum(r['errors']['gateway'].values())} | {fmt(r['gateway_view_after']['slots'])} |")
    return lines


def md_streams(run: dict) -> list[str]:
    lines = ["| cell | first chunk direct p50 / p99 | gateway p50 / p99 | added p50 / p99 | total p50 direct / "
             "gateway | ratio | mean gap direct / gateway | p99 gap direct / gateway | chunks | errors gw |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in run["cells"]:
        if "first_chunk" not in r["direct"]:
            continue
        d, g = r["direct"], r["gateway"]
        lines.append(
            f"| {r['cell']} ({r['tokens']} tokens) | {fmt(d['first_chunk']['p50_ms'])} / {fmt(d['first_chunk']['p99_ms'])} | "
            f"{fmt(g['first_chunk']['p50_ms'])} / {fmt(g['first_chunk']['p99_ms'])} | "
            f"{fmt(r['added_first_chunk_p50_ms'])} / {fmt(r['added_first_chunk_p99_ms'])} ms | "
            f"{fmt(d['total']['p50_ms'])} / {fmt(g['total']['p50_ms'])} ms | {fmt(r['total_ratio_p50'])}x | "
            f"{fmt(d['gap_mean_ms'])} / {fmt(g['gap_mean_ms'])} ms | {fmt(d['gap_p99_ms'])} / {fmt(g['gap_p99_ms'])} ms | "
            f"{fmt(d['chunks_per_stream'])} / {fmt(g['chunks_per_stream'])} | {sum(r['errors']['gateway'].values())} |")
    return lines


def md_cpu(run: dict, floor_ms: float = 0.05) -> list[str]:
    cpu = run["cpu"]
    names = list(cpu)
    units = ["s" if name == "idle" else "chunk" if name.startswith("stream") else "request" for name in names]
    head = " | ".join(f"{n} (ms / {u})" for n, u in zip(names, units))
    lines = [f"| process | {head} |", "|---|" + "---|" * len(names)]
    labels: dict[str, float] = Counter()
    for c in cpu.values():
        for name, row in c["by_process_ms"].items():
            labels[name] += row["ms"]
    small = [n for n in labels if max(cpu[c]["by_process_ms"].get(n, {"ms": 0})["ms"] for c in names) < floor_ms]
    for name in sorted(labels, key=lambda n: -labels[n]):
        if name in small:
            continue
        counts = {cpu[c]["by_process_ms"].get(name, {}).get("processes", 0) for c in names}
        shown = f"`{name}`" + (f" (x{max(counts)})" if max(counts) > 1 else "")
        lines.append(f"| {shown} | " + " | ".join(fmt(cpu[c]["by_process_ms"].get(name, {}).get("ms")) for c in names) + " |")
    if small:
        rest = [round(sum(cpu[c]["by_process_ms"].get(n, {"ms": 0})["ms"] for n in small), 3) for c in names]
        lines.append(f"| {len(small)} more gateway processes (each < {floor_ms}) | " + " | ".join(map(str, rest)) + " |")
    lines.append("| **gateway total** | " + " | ".join(f"**{cpu[c]['gateway_ms']}**" for c in names) + " |")
    lines.append("| sim node (not the gateway) | " + " | ".join(fmt(cpu[c]["node_ms"]) for c in names) + " |")
    lines.append("| load generator (not the gateway) | " + " | ".join(fmt(cpu[c]["loadgen_ms"]) for c in names) + " |")
    lines.append("| other processes on the machine, cores busy | " +
                 " | ".join(fmt(cpu[c]["other_cores_busy"]) for c in names) + " |")
    lines.append("| measured units / wall s | " + " | ".join(f"{cpu[c]['units']} / {cpu[c]['wall_s']}" for c in names)
                 + " |")
    return lines


def md_scaling(run: dict) -> list[str]:
    lines = ["| rate (req/s) | direct p50 / p99 | gateway p50 / p99 | added p99 | gateway answered req/s | "
             "sends late p99 (direct / gw) | errors gw | gateway's slots after |", "|---|---|---|---|---|---|---|---|"]
    for s in run["scaling"]["steps"]:
        d, g = s["direct"], s["gateway"]
        lines.append(f"| {s['rate']:g} | {fmt(d['p50_ms'])} / {fmt(d['p99_ms'])} | {fmt(g['p50_ms'])} / "
                     f"{fmt(g['p99_ms'])} | {fmt(s['added_p99_ms'])} ms | {fmt(g['answered_rps'])} | "
                     f"{fmt(d['late_p99_ms'])} / {fmt(g['late_p99_ms'])} ms | {sum(g['errors'].values())} | "
                     f"{fmt(s['gateway_slots_after'])} |")
    return lines


def scaling_verdict(scaling: dict, rates: tuple[float, ...]) -> str:
    if scaling["crossed_at_rps"] is None:
        return f"added p99 stayed under {scaling['limit_ms']:g} ms up to {max(rates):g} req/s (the highest tried)"
    return (f"added p99 passed {scaling['limit_ms']:g} ms (or errors appeared) at {scaling['crossed_at_rps']:g} req/s; "
            f"last rate under it: {fmt(scaling['last_under_rps'])} req/s")


def md_header(meta: dict) -> list[str]:
    m, plan = meta["machine"], meta["plan"]
    return [
        f"# Gateway overhead{' (QUICK smoke run: few requests, not for citing)' if meta['quick'] else ''}", "",
        f"`{meta['command']}` (cwd `{meta['cwd']}`, PYTHONPATH {fmt(meta['pythonpath'])}), {meta['when']}, "
        f"tree {fmt(meta['git'])}.", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; {m['platform']}; Python {m['python']}, "
        f"Ray {m['ray']}, aiohttp {m['aiohttp']} (load generator). Load average (1, 5, 15 min) at start / end: "
        f"{meta['loadavg_start']} / {meta['loadavg_end']}: the machine is shared, figures are noisy.", "",
        f"Node: `sollol sim-node {' '.join(NODE_ARGS)}` (never queues; {CHAT_TOKENS}-token non-streamed answers, "
        f"{STREAM_TOKENS}-token streams). Added = gateway percentile - direct percentile, same run. Scaling: Poisson "
        f"arrivals, latency from the scheduled arrival, steps of {plan['step_s']:g} s or {plan['step_max']} requests, "
        f"stopped at the first with added p99 > {ADDED_P99_LIMIT_MS:g} ms or errors.", ""]


def md_run(run: dict, rates: tuple[float, ...]) -> list[str]:
    gw, learning = run["gateway"], run["learning"]
    serve_env = gw.get("ray_serve_env_seen")
    lines = [
        f"## {run['mode']}, {run['ingress_replicas']} ingress replica(s)", "",
        f"Started as `{gw['command']}` in {fmt(gw.get('start_s'))} s (attempts: {fmt(gw.get('start_attempts'))}; "
        f"stopped in {fmt(gw.get('stop_s'))} s). Its raylet: {fmt(gw.get('ray_cpus_seen'))} CPUs; RAY_SERVE_* in its "
        "environment: " + (", ".join(f"`{k}={v}`" for k, v in serve_env.items()) if serve_env else "none") + ".",
        f"Config changes from serve_config.yaml: {'; '.join(gw['config_changes'])}.",
        "Environment set for it: " + ", ".join(f"`{k}={v}`" for k, v in gw["env"].items()) + ".", "",
        f"Slot-learning warm-up (chat, concurrency {CONCURRENCY}): {learning['requests']} requests in "
        f"{learning['seconds']} s, after which the gateway believed {fmt(learning['slots'])} slots "
        f"({fmt(learning['slots_source'])}); at the end of the run: {fmt(run['gateway_view_end']['slots'])}.", ""]
    if "cells" in run:
        lines += md_cells(run) + [""] + md_streams(run) + [""]
        lines += ["CPU by process (measured part of each gateway cell; idle: no traffic at all):", ""] + md_cpu(run) + [""]
    lines += [f"Scaling: {scaling_verdict(run['scaling'], rates)}.", ""] + md_scaling(run) + [""]
    return lines


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = md_header(meta)
    for run in report["runs"]:
        lines += md_run(run, tuple(meta["plan"]["rates"]))
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["shipped", "fast", "both"], default="shipped")
    parser.add_argument("--ingress-replicas", default="1", help="comma-separated counts, e.g. 1,2")
    parser.add_argument("--rates", default=None, help="open-loop request rates per second, e.g. 25,50,100,200,400")
    parser.add_argument("--requests", type=int, default=None, help="requests per concurrency-32 cell")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    parser.add_argument("--ray-cpus", type=int, default=2, help="CPUs the gateway's Ray is given")
    parser.add_argument("--out", default=None, help="directory for overhead.json and overhead.md "
                        "(default benchmarks/results; a temp directory with --quick)")
    parser.add_argument("--serve-fast", type=Path, help=argparse.SUPPRESS)  # the fast mode's child process
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else Plan()
    if args.rates:
        plan = replace(plan, rates=tuple(float(r) for r in args.rates.split(",")))
    if args.requests:
        plan = replace(plan, requests=args.requests)
    return plan


@contextmanager
def sim_node() -> Iterator[SimProcess]:
    node = SimProcess(NODE_NAME, NODE_ARGS).start()
    try:
        yield node
    finally:
        node.stop()


def main() -> None:
    args = parse_args()
    if args.serve_fast:
        serve_fast(args.serve_fast, args.ray_cpus)
        return
    # SIGTERM unwinds like an exception, so the gateways and the node are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = make_plan(args)
    modes = ["shipped", "fast"] if args.mode == "both" else [args.mode]
    replicas = [int(n) for n in args.ingress_replicas.split(",")]
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="sollol-overhead-quick-")) if args.quick
                                           else REPO / "benchmarks" / "results")
    meta = {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "cwd": os.getcwd(), "quick": args.quick,
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "git": git_state(), "machine": machine(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()], "node_args": NODE_ARGS,
            "plan": {k: v for k, v in vars(plan).items()}, "pythonpath": os.environ.get("PYTHONPATH")}
    workdir = Path(tempfile.mkdtemp(prefix="sollol-overhead-"))
    runs: list[dict] = []
    try:
        with sim_node() as node:
            for mode in modes:
                runs += measure_mode(mode, replicas, node, plan, workdir, args.ray_cpus)
    except BaseException:
        print(f"failed; gateway logs and configs kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    write_report(out, "overhead", meta, runs, markdown)


def write_report(out: Path, name: str, meta: dict, runs: object, render: Callable[[dict], str]) -> None:
    """`<name>.json` and `<name>.md` in `out`, the load average at the end in `meta`."""
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {"meta": meta, "runs": runs}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(render(report))
    print(render(report))
    print(f"written to {out}/{name}.json and {name}.md")


if __name__ == "__main__":
    main()
