"""The seeded workload and the simulated clusters of the routing benchmark.

The same list of jobs (arrival times, kinds, sizes, priorities) is replayed against every
routing strategy and fed to the omniscient discrete-event bound.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

Kind = Literal["chat", "chat_stream", "generate", "embed"]

WORDS = "route every request to the node that finishes it soonest across the cluster".split()


@dataclass(frozen=True)
class NodeSpec:
    """A simulated node; the same numbers drive `sollol sim-node` and the bound."""

    name: str
    slots: int
    decode_tps: float
    prefill_tps: float
    slot_slowdown: float = 0.08
    load_s: float = 1.0
    models: str = "llama3.2,nomic-embed-text@0.3"  # `sollol sim-node --models`
    max_loaded: int = 3  # OLLAMA_MAX_LOADED_MODELS
    load_s_per_gb: float | None = None  # a model's load time by its size instead of load_s

    def sim_args(self) -> list[str]:
        return ["--models", self.models, "--slots", str(self.slots),
                "--decode-tps", str(self.decode_tps), "--prefill-tps", str(self.prefill_tps),
                "--slot-slowdown", str(self.slot_slowdown), "--load-s", str(self.load_s),
                "--max-loaded", str(self.max_loaded),
                *(["--load-s-per-gb", str(self.load_s_per_gb)] if self.load_s_per_gb is not None else [])]

    def full_decode_tps(self) -> float:
        """Tokens/s the node decodes with every slot busy."""
        return self.slots * self.decode_tps / (1 + self.slot_slowdown * (self.slots - 1))


# A GPU box, a smaller GPU and a CPU-only machine: the fastest decodes 8x faster than the
# slowest; 4, 2 and 2 parallel slots.
HETEROGENEOUS = [
    NodeSpec("fast", 4, 120.0, 3000.0),
    NodeSpec("mid", 2, 60.0, 1200.0),
    NodeSpec("slow", 2, 15.0, 150.0),
]
HOMOGENEOUS = [NodeSpec(f"node{i}", 2, 60.0, 1200.0) for i in range(3)]

KIND_WEIGHTS: dict[Kind, float] = {"chat": 0.45, "chat_stream": 0.25, "generate": 0.15, "embed": 0.15}
OUTPUT_TOKENS = (16, 128)


@dataclass(frozen=True)
class Job:
    id: int
    at: float
    kind: Kind
    priority: int
    num_predict: int
    prompt: str
    model: str | None = None  # None: llama3.2 (nomic-embed-text for embeddings)
    app: str | None = None  # sent as X-SOLLOL-App

    @property
    def prompt_tokens(self) -> int:
        return max(1, -(-len(self.prompt) // 4))  # the simulator's tokenizer: ceil(chars / 4)

    @property
    def output_tokens(self) -> int:
        return 0 if self.kind == "embed" else self.num_predict


def _priority(rng: random.Random) -> int:
    draw = rng.random()
    if draw < 0.1:
        return rng.choice([9, 10])
    if draw < 0.4:
        return rng.choice([1, 2, 3])
    return 5


def mean_output_tokens() -> float:
    generating = 1 - KIND_WEIGHTS["embed"]
    return generating * sum(OUTPUT_TOKENS) / 2


def capacity_rps(nodes: list[NodeSpec]) -> float:
    """Requests/s the cluster sustains when every slot decodes (embeddings are nearly free)."""
    return sum(n.full_decode_tps() for n in nodes) / mean_output_tokens()


def arrivals(rng: random.Random, rate_rps: float, duration_s: float) -> Iterator[float]:
    """Poisson arrival times at `rate_rps` until `duration_s`."""
    t = rng.expovariate(rate_rps)
    while t < duration_s:
        yield t
        t += rng.expovariate(rate_rps)


def make_workload(seed: int, rate_rps: float, duration_s: float) -> list[Job]:
    """Poisson arrivals at `rate_rps` for `duration_s`, mixed kinds and priorities."""
    rng = random.Random(seed)
    jobs = []
    kinds, weights = zip(*KIND_WEIGHTS.items())
    for t in arrivals(rng, rate_rps, duration_s):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 120)))
        jobs.append(Job(len(jobs), t, rng.choices(kinds, weights)[0], _priority(rng),
                        rng.randint(*OUTPUT_TOKENS), words))
    return jobs
