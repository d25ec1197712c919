"""The timing model of a simulated LLM node (not a real model: it emits pseudo-words).

A node has `slots` parallel decode slots and a FIFO wait queue (full -> QueueFull, which the
APIs turn into Ollama's 503). Work costs prefill time (prompt tokens / prefill tokens/s),
decode time per token (decode tokens/s, slowed mildly by every other active slot) and a cold
load the first time a model is used, after its keep-alive expires or when a request asks for
another context length. Like llama.cpp's slots, each slot keeps the text it last held (its KV
cache): a prompt that starts with it prefills only the rest. A prompt longer than the loaded
context is cut to its last tokens, as Ollama does. Faults are injected at run time (`Faults`).
The HTTP facades (`ollama_api`, `openai_api`) sit on top of this.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from sollol_serve.sim.scheduler import ModelScheduler

FaultMode = Literal["none", "error", "hang", "slow"]

_WORDS = (
    "the cluster routes each request to a node that finishes it soonest while queues stay short "
    "and every model answers with tokens streamed back in order from local hardware without loss "
    "of work when machines fail or slow down under load across many slots"
).split()

CHARS_PER_TOKEN = 4  # the simulator's tokenizer (count_tokens)
DEFAULT_CONTEXT = 8192
# A shorter shared start (a greeting, a chat template's header) is not a conversation reused.
MIN_PREFIX_CHARS = 16


class SimModel(BaseModel):
    name: str
    size_bytes: int = 2_000_000_000
    family: str = "llama"
    parameter_size: str = "3B"
    quantization_level: str = "Q4_K_M"
    context_length: int = Field(default=DEFAULT_CONTEXT, ge=1)
    embedding_dim: int = 64


class SimNodeConfig(BaseModel):
    name: str = "sim"
    kind: Literal["ollama", "openai"] = "ollama"
    models: list[SimModel] = Field(default_factory=lambda: [SimModel(name="llama3.2:latest")])
    slots: int = Field(default=1, ge=1)
    max_queue: int = Field(default=512, ge=0)
    prefill_tps: float = Field(default=400.0, gt=0)
    decode_tps: float = Field(default=40.0, gt=0)
    # Each additional active slot slows decoding by this fraction (batching is not free).
    slot_slowdown: float = Field(default=0.08, ge=0)
    load_s: float = Field(default=1.0, ge=0)
    # A model's load takes this many seconds per GB of it instead of `load_s` (a load reads it all).
    load_s_per_gb: float | None = Field(default=None, ge=0)
    # OLLAMA_MAX_LOADED_MODELS (Ollama's default: 3 per GPU); None: no limit.
    max_loaded: int | None = Field(default=3, ge=1)
    # Count every embedded text (GET /_sim/inputs): lets tests see work repeated; grows with use.
    record_inputs: bool = False
    keep_alive_s: float = Field(default=300.0, ge=0)
    default_output_tokens: tuple[int, int] = (16, 96)


class Faults(BaseModel):
    mode: FaultMode = "none"
    error_status: int = Field(default=500, ge=400, le=599)
    slow_factor: float = Field(default=5.0, ge=1)
    # Break a stream after this many tokens (connection drop mid-stream).
    break_after_tokens: int | None = Field(default=None, ge=0)
    # Pad the first token with this many bytes: an answer (and a stream line) of any size.
    pad_bytes: int = Field(default=0, ge=0, le=256 * 2**20)


class QueueFull(Exception):
    """The node's wait queue is full (Ollama answers 503)."""


class InjectedError(Exception):
    def __init__(self, status: int):
        super().__init__(f"simulated failure (HTTP {status})")
        self.status = status


class BrokenStream(Exception):
    """Injected mid-stream failure: the facade drops the connection."""


@dataclass
class Plan:
    model: str
    prompt_tokens: int
    output_tokens: int
    seed: int
    limited: bool  # True when the caller capped the output length
    prompt: str = ""
    num_ctx: int | None = None  # Ollama's options.num_ctx: the context to run the model with
    script: str | None = None  # the answer's text when it is fixed (JSON, tool arguments), else pseudo-words


@dataclass
class Stats:
    load_ns: int = 0
    prompt_eval_ns: int = 0  # the time of the evaluated (not cached) prompt tokens
    eval_ns: int = 0
    total_ns: int = 0
    tokens: list[str] = field(default_factory=list)
    prompt_tokens: int = 0  # the prompt as the model saw it (after truncation to the context)
    prompt_n: int = 0  # of those, evaluated
    cache_n: int = 0  # of those, taken from the slot's KV cache


@dataclass
class Slot:
    """One parallel slot and what its KV cache holds: the text of the last request it ran
    (prompt + "\n" + output) for one load (`generation`) of one model."""

    id: int
    busy: bool = False
    model: str | None = None
    generation: int = 0
    text: str = ""
    last_used: int = 0  # when its cache was last written; ties go to the least recently used


@dataclass
class _Waiter:
    model: str | None
    prompt: str | None
    admitted: asyncio.Future[Slot]


def count_tokens(text: str) -> int:
    """Rough tokenizer: ~4 characters per token, at least one token."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def requested_context(options: dict | None) -> int | None:
    """Ollama's options.num_ctx when it is a positive integer (anything else: not asked)."""
    value = (options or {}).get("num_ctx")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def script_tokens(text: str) -> list[str]:
    """A fixed answer cut into the simulator's tokens (`CHARS_PER_TOKEN` characters each)."""
    return [text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)] or [""]


def truncate_to_context(prompt: str, context: int) -> str:
    """The last `context` tokens of `prompt`: Ollama drops the start of a prompt that doesn't fit."""
    limit = context * CHARS_PER_TOKEN
    return prompt if len(prompt) <= limit else prompt[-limit:]


def stable_seed(*parts: object) -> int:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def embedding_for(model: SimModel, text: str) -> list[float]:
    """Deterministic unit vector per (model, text), so equal inputs embed equally."""
    rng = random.Random(stable_seed(model.name, text))
    vec = [rng.gauss(0, 1) for _ in range(model.embedding_dim)]
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [x / norm for x in vec]


class SimEngine:
    def __init__(self, config: SimNodeConfig):
        self.config = config
        self.faults = Faults()
        self.models = {m.name: m for m in config.models}
        self.active = 0
        self.waiting = 0
        self.served = 0
        self.received = 0  # work requests that arrived (chat, generate, embed), served or not
        self.queued = 0  # of which waited for a slot (sent while every slot was busy)
        self.embedded: Counter[str] = Counter()  # every text an embed request carried
        self.prefix_hits = 0  # requests whose prompt started with what their slot cached
        self.cached_tokens = 0  # prompt tokens those hits did not evaluate
        self.slots = [Slot(i) for i in range(config.slots)]
        self._queue: deque[_Waiter] = deque()
        self._writes = 0  # stamps Slot.last_used
        self.scheduler = ModelScheduler(self._load_seconds, config.max_loaded, config.keep_alive_s)
        self._fault_changed = asyncio.Event()

    # -- models -------------------------------------------------------------------------
    def resolve(self, name: str) -> SimModel | None:
        if name in self.models:
            return self.models[name]
        if ":" not in name:
            return self.models.get(f"{name}:latest")
        return None

    def _load_seconds(self, model: str) -> float:
        per_gb = self.config.load_s_per_gb
        m = self.models.get(model)
        seconds = per_gb * m.size_bytes / 1e9 if per_gb is not None and m else self.config.load_s
        return seconds * self._slow()

    def loaded_models(self) -> dict[str, float]:
        """Model -> monotonic time it unloads if unused (`scheduler.ModelScheduler`)."""
        return {model: runner.expires_at for model, runner in self.scheduler.loaded().items()}

    def unload(self, model: str) -> None:
        self.scheduler.unload(model)

    def _is_loaded(self, model: str) -> bool:
        return self.scheduler.is_loaded(model)

    def default_context(self, model: str) -> int:
        """The context a request that asks for no `num_ctx` runs `model` with (Ollama's default
        num_ctx, whatever the model is loaded with: `routes.go` fills the request's options
        from the defaults, and `sched.go` `needsReload` reloads where they differ)."""
        m = self.models.get(model)
        return m.context_length if m else DEFAULT_CONTEXT

    def context_of(self, model: str) -> int:
        """The context `model` is loaded with now (its configured one while it is not loaded)."""
        loaded = self.scheduler.context_of(model)
        return loaded if loaded is not None else self.default_context(model)

    @asynccontextmanager
    async def using(self, model: str, keep_alive_s: float | None, num_ctx: int | None = None) -> AsyncIterator[float]:
        """The model loaded (or reloaded for another context) and held for one request, as
        Ollama's scheduler does; yields the seconds waited for it (`load_duration`: a request
        that waited for another's load, or for an eviction, counts that wait too)."""
        async with self.scheduler.use(model, keep_alive_s, num_ctx or self.default_context(model)) as waited:
            yield waited

    async def ensure_loaded(self, model: str, keep_alive_s: float | None, num_ctx: int | None = None) -> float:
        """Load `model` if it is cold (an empty prompt: Ollama only loads); the seconds it took."""
        async with self.using(model, keep_alive_s, num_ctx) as waited:
            return waited

    # -- faults -------------------------------------------------------------------------
    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self._fault_changed.set()
        self._fault_changed = asyncio.Event()

    def _slow(self) -> float:
        return self.faults.slow_factor if self.faults.mode == "slow" else 1.0

    async def check_faults(self) -> None:
        """Applied when a request arrives: fail it, or hold it while the node 'hangs'."""
        while self.faults.mode == "hang":
            await self._fault_changed.wait()
        if self.faults.mode == "error":
            raise InjectedError(self.faults.error_status)

    # -- slots --------------------------------------------------------------------------
    @asynccontextmanager
    async def slot(self, model: str | None = None, prompt: str | None = None) -> AsyncIterator[Slot]:
        """Hold a slot for the work. Arrivals are admitted in order; the one admitted takes the
        free slot that caches most of `prompt` (None: no cache use, e.g. embeddings)."""
        slot = await self._acquire(model, prompt)
        self.active += 1
        try:
            yield slot
        finally:
            self.active -= 1
            self.served += 1
            self._release(slot)

    async def _acquire(self, model: str | None, prompt: str | None) -> Slot:
        if not self._queue and any(not s.busy for s in self.slots):
            return self._take(model, prompt)
        if self.waiting >= self.config.max_queue:
            raise QueueFull("server busy, please try again.  maximum pending requests exceeded")
        waiter = _Waiter(model, prompt, asyncio.get_running_loop().create_future())
        self._queue.append(waiter)
        self.waiting += 1
        self.queued += 1
        try:
            return await waiter.admitted
        except asyncio.CancelledError:
            if waiter.admitted.done() and not waiter.admitted.cancelled():
                self._release(waiter.admitted.result())  # given a slot as it gave up: pass it on
            elif waiter in self._queue:
                self._queue.remove(waiter)
            raise
        finally:
            self.waiting -= 1

    def _release(self, slot: Slot) -> None:
        """Free `slot` and hand a free slot to the earliest waiter still waiting."""
        slot.busy = False
        while self._queue and any(not s.busy for s in self.slots):
            waiter = self._queue.popleft()
            if not waiter.admitted.done():  # done: cancelled while queued
                waiter.admitted.set_result(self._take(waiter.model, waiter.prompt))

    def _take(self, model: str | None, prompt: str | None) -> Slot:
        """The free slot sharing the longest cached prefix with `prompt`; ties: least recently used."""
        free = [s for s in self.slots if not s.busy]
        best = max(free, key=lambda s: (len(self.cached_prefix(s, model, prompt)), -s.last_used))
        best.busy = True
        return best

    def cached_prefix(self, slot: Slot, model: str | None, prompt: str | None) -> str:
        """The start of `prompt` that `slot` already holds for the loaded `model` ('' if none
        worth reusing). The cache is per (slot, model) and dies with the model's load."""
        if prompt is None or model is None or slot.model != model:
            return ""
        if not self._is_loaded(model) or slot.generation != self.scheduler.generation[model]:
            return ""
        prefix = os.path.commonprefix([slot.text, prompt])
        return prefix if len(prefix) >= MIN_PREFIX_CHARS else ""

    def _remember(self, slot: Slot, model: str, text: str) -> None:
        slot.model, slot.generation, slot.text = model, self.scheduler.generation[model], text
        self._writes += 1
        slot.last_used = self._writes

    def _count_prompt(self, stats: Stats, prompt: str, cached: str) -> None:
        """Split the prompt into cached and evaluated tokens; the last prompt token is always
        evaluated (llama.cpp needs its logits), so a hit evaluates at least one."""
        stats.prompt_tokens = count_tokens(prompt)
        stats.prompt_n = max(1, stats.prompt_tokens - count_tokens(cached)) if cached else stats.prompt_tokens
        stats.cache_n = stats.prompt_tokens - stats.prompt_n
        if cached:
            self.prefix_hits += 1
            self.cached_tokens += stats.cache_n

    # -- work ---------------------------------------------------------------------------
    def plan(self, model: str, prompt: str, options: dict | None, max_tokens: int | None = None,
             script: str | None = None) -> Plan:
        options = options or {}
        cap = max_tokens if max_tokens is not None else options.get("num_predict")
        seed = stable_seed(model, prompt, options.get("seed", ""))
        capped = isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0
        if script is not None:  # a fixed answer: as long as it is, cut at the cap like any other
            needed = len(script_tokens(script))
            output, limited = (min(cap, needed), cap < needed) if capped else (needed, False)
        elif capped:
            output, limited = cap, True
        else:
            lo, hi = self.config.default_output_tokens
            output, limited = random.Random(seed).randint(lo, hi), False
        return Plan(model, count_tokens(prompt), output, seed, limited, prompt, requested_context(options), script)

    async def prefill(self, tokens: int) -> int:
        seconds = tokens / self.config.prefill_tps * self._slow()
        await asyncio.sleep(seconds)
        return int(seconds * 1e9)

    def _token_interval(self) -> float:
        others = max(self.active - 1, 0)
        tps = self.config.decode_tps / (1 + self.config.slot_slowdown * others)
        return self._slow() / tps

    async def decode(self, plan: Plan, stats: Stats, stream: bool = True) -> AsyncIterator[str]:
        """Yield the plan's tokens at the node's current decode speed. Unstreamed work sleeps
        once for the whole answer: same timing, far fewer wake-ups under load."""
        rng = random.Random(plan.seed)
        start = time.monotonic()
        due = start
        breaker = self.faults.break_after_tokens
        pieces = script_tokens(plan.script) if plan.script is not None else None
        if not stream:
            await asyncio.sleep(self._token_interval() * plan.output_tokens)
        for i in range(plan.output_tokens):
            if breaker is not None and i >= breaker:
                raise BrokenStream(f"simulated connection drop after {i} tokens")
            if stream:
                due += self._token_interval()
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if pieces is not None:
                token = pieces[i]
            else:
                word = rng.choice(_WORDS)
                token = word + "x" * self.faults.pad_bytes if i == 0 else " " + word
            stats.tokens.append(token)
            yield token
        stats.eval_ns = int((time.monotonic() - start) * 1e9)

    async def run(self, plan: Plan, keep_alive_s: float | None, stats: Stats, stream: bool = True) -> AsyncIterator[str]:
        """Wait for a slot, load, prefill what the slot hasn't cached, then decode. Errors raise
        before the first token."""
        self.received += 1
        await self.check_faults()
        started = time.monotonic()
        # The model first (Ollama's scheduler), then a slot: waiting for a load takes no slot.
        async with self.using(plan.model, keep_alive_s, plan.num_ctx) as waited, \
                self.slot(plan.model, truncate_to_context(plan.prompt, self.context_of(plan.model))) as slot:
            stats.load_ns = int(waited * 1e9)
            prompt = truncate_to_context(plan.prompt, self.context_of(plan.model))
            self._count_prompt(stats, prompt, self.cached_prefix(slot, plan.model, prompt))
            stats.prompt_eval_ns = await self.prefill(stats.prompt_n)
            try:
                async for token in self.decode(plan, stats, stream):
                    yield token
            finally:
                # What a client sends back as the assistant's message continues this text.
                self._remember(slot, plan.model, prompt + "\n" + "".join(stats.tokens))
        stats.total_ns = int((time.monotonic() - started) * 1e9)

    async def embed(self, model: SimModel, texts: list[str], keep_alive_s: float | None,
                    num_ctx: int | None = None) -> tuple[list[list[float]], Stats, int]:
        self.received += 1
        if self.config.record_inputs:
            self.embedded.update(texts)
        await self.check_faults()
        stats = Stats()
        started = time.monotonic()
        tokens = sum(count_tokens(t) for t in texts)
        async with self.using(model.name, keep_alive_s, num_ctx) as waited, self.slot():
            stats.load_ns = int(waited * 1e9)
            stats.prompt_eval_ns = await self.prefill(tokens)
        stats.total_ns = int((time.monotonic() - started) * 1e9)
        return [embedding_for(model, t) for t in texts], stats, tokens


def parse_keep_alive(value: object) -> float | None:
    """Ollama's keep_alive: seconds as a number, or a duration like '5m', '30s', '1h'.
    Negative means forever. None means the node's default."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        for suffix in sorted(units, key=len, reverse=True):
            if text.endswith(suffix):
                seconds = float(text[: -len(suffix)]) * units[suffix]
                break
        else:
            seconds = float(text)
    return 10 * 365 * 86400.0 if seconds < 0 else seconds
