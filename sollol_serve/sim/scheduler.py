"""Ollama's model scheduler, as the simulated node runs it (read from Ollama's `server/sched.go`).

- A request for a model that is loaded (with the context it asks for) uses it at once, even
  while another model waits to be loaded (`getRunner`'s fast path).
- Otherwise the request joins the scheduler's pending queue, served one at a time: so one model
  loads at a time (`processPending`).
- With `max_loaded` models loaded (`OLLAMA_MAX_LOADED_MODELS`; Ollama's default is 3 per GPU),
  one is evicted first (`findRunnerToUnload`): the loaded runners sorted by their session
  duration (the `keep_alive` of the last request that used them) and then by model path; the
  first idle one in that order, else the first one, which is then waited for: it is unloaded
  the moment its last running request ends. Not LRU: with equal keep-alives, the order is the
  model paths' (blob digests), whatever was used last. While the victim drains, requests for it
  keep using it (and extend the wait).
- A runner with no request running expires `keep_alive` after its last request ended; a
  `keep_alive` of 0 unloads it as soon as it is idle.
- A request that asks for another context than the model is loaded with reloads it (after its
  running requests end); one that asks for none asks for the default context (`needsReload`
  compares the request's options, defaults filled in, with the runner's).

What the simulator leaves out: VRAM fit (a load evicts only by count), and Ollama's per-model
parallel slots (the node's slots are shared by its models; `engine.SimEngine`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

FOREVER_S = 10 * 365 * 86400.0


def model_path(model: str) -> str:
    """What Ollama sorts runners by after their session duration: the model's blob path,
    named by its digest. The simulator's stands in with the name's sha256."""
    return "sha256-" + hashlib.sha256(model.encode()).hexdigest()


@dataclass
class Runner:
    model: str
    context: int
    session_s: float  # keep_alive of the last request that used it
    refs: int = 0  # requests using it now
    idle_since: float | None = None  # monotonic; None while in use
    evicting: bool = False  # chosen to make room: unloaded when it goes idle

    def expired(self, now: float) -> bool:
        return self.refs == 0 and self.idle_since is not None and now - self.idle_since >= self.session_s

    @property
    def expires_at(self) -> float:
        """Monotonic time it unloads if nobody uses it (far ahead while in use)."""
        return self.idle_since + self.session_s if self.idle_since is not None else time.monotonic() + FOREVER_S


def victim(runners: list[Runner]) -> Runner | None:
    """`findRunnerToUnload`: by session duration, then model path; the first idle, else the first."""
    ordered = sorted(runners, key=lambda r: (r.session_s, model_path(r.model)))
    return next((r for r in ordered if r.refs == 0), ordered[0] if ordered else None)


class ModelScheduler:
    def __init__(self, load_s: Callable[[str], float], max_loaded: int | None, default_keep_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.load_s = load_s  # seconds to load a model (faults may stretch it)
        self.max_loaded = max_loaded
        self.default_keep_s = default_keep_s
        self.clock = clock  # keep-alives and waits are timed on it (tests drive a fake one)
        self.runners: dict[str, Runner] = {}
        self.loads: Counter[str] = Counter()
        self.evictions: Counter[str] = Counter()
        self.generation: Counter[str] = Counter()  # bumped by every load: caches of an earlier one are gone
        self._pending = asyncio.Lock()  # processPending: one request at a time, so one load at a time
        self._changed = asyncio.Condition()

    # -- views -------------------------------------------------------------------------
    def loaded(self) -> dict[str, Runner]:
        """The runners loaded now (expired idle ones are unloaded first)."""
        now = self.clock()
        for model in [m for m, r in self.runners.items() if r.expired(now)]:
            del self.runners[model]
        return dict(self.runners)

    def is_loaded(self, model: str) -> bool:
        return model in self.loaded()

    def context_of(self, model: str) -> int | None:
        runner = self.loaded().get(model)
        return runner.context if runner else None

    def unload(self, model: str) -> None:
        """`keep_alive: 0` with no prompt: unloaded now if idle, else as soon as it is."""
        runner = self.runners.get(model)
        if runner is not None:
            runner.session_s = 0.0
            if runner.refs == 0:
                del self.runners[model]

    # -- use ---------------------------------------------------------------------------
    @asynccontextmanager
    async def use(self, model: str, keep_alive_s: float | None, context: int) -> AsyncIterator[float]:
        """Hold the model loaded for one request; yields the seconds the request waited for it
        (Ollama's `load_duration`: 0 when it was loaded already)."""
        keep = self.default_keep_s if keep_alive_s is None else keep_alive_s
        started = self.clock()
        runner, waited = self.loaded().get(model), 0.0
        if runner is None or runner.context != context:
            queued = self._pending.locked()
            async with self._pending:
                runner, loaded_s, evicted = await self._load(model, context)
            # Its own load, exactly, if it waited for nothing else; else all it waited.
            waited = loaded_s if loaded_s is not None and not queued and not evicted else self.clock() - started
        runner.refs += 1
        runner.idle_since = None
        runner.session_s = keep
        try:
            yield waited
        finally:
            await self._release(runner)

    async def _load(self, model: str, context: int) -> tuple[Runner, float | None, bool]:
        """The runner; the seconds this request spent loading it (None: loaded by another);
        whether it waited for a busy runner to be evicted."""
        evicted = False
        while True:
            runners = self.loaded()
            runner = runners.get(model)
            if runner is not None and runner.context == context:
                return runner, None, evicted  # loaded meanwhile by the request ahead of this one
            if runner is not None:
                evict = runner  # another context: Ollama reloads it
            elif self.max_loaded is not None and len(runners) >= self.max_loaded:
                evict = victim(list(runners.values()))
            else:
                seconds = self.load_s(model)
                await asyncio.sleep(seconds)
                runner = self.runners[model] = Runner(model, context, self.default_keep_s, idle_since=self.clock())
                self.loads[model] += 1
                self.generation[model] += 1
                return runner, seconds, evicted
            evicted = await self._unload_when_idle(evict, counted=evict.model != model) or evicted

    async def _unload_when_idle(self, runner: Runner, counted: bool) -> bool:
        """Unload `runner` once no request uses it; whether that meant waiting."""
        runner.evicting = True
        busy = runner.refs > 0
        async with self._changed:
            await self._changed.wait_for(lambda: runner.refs == 0)
        if self.runners.get(runner.model) is runner:
            del self.runners[runner.model]
            if counted:
                self.evictions[runner.model] += 1
        return busy

    async def _release(self, runner: Runner) -> None:
        runner.refs -= 1
        if runner.refs == 0:
            runner.idle_since = self.clock()
            if runner.session_s <= 0 and not runner.evicting and self.runners.get(runner.model) is runner:
                del self.runners[runner.model]  # keep_alive 0: unloaded once idle
        async with self._changed:
            self._changed.notify_all()  # an eviction may be waiting for this runner to go idle
