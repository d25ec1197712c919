"""The keep_alive the gateway sends with a request to an Ollama node: its lever on which model
the node evicts, and on how long a wanted model stays loaded.

To make room, Ollama unloads the idle runner whose last request's keep_alive was shortest, then
the first by model path (`server/sched.go`, `findRunnerToUnload` sorting `ByDurationAndName`,
durations compared as unsigned, so -1 sorts last); and it unloads a runner idle for its
keep_alive. With no keep_alive every model gets the node's default, and the victim is whichever
model's blob digest sorts first, wanted or not. So where the client sets none, the gateway
sends one that grows with the model's demand: the node evicts the least wanted model, and a
wanted one outlives a lull. A pinned model gets -1: never expires, evicted last. Never shorter
than the node's default (`base_s`): nothing unloads sooner than it would without the gateway.
"""

from __future__ import annotations

FOREVER = -1  # Ollama: keep loaded until the server stops
BONUS_S_PER_RPS = 600.0  # a model asked for once a second is kept 10 min longer
MAX_BONUS_S = 3300.0  # an hour at most in all (with Ollama's default 5 min)


def keep_alive_s(demand_rps: float, pinned: bool, base_s: float) -> int:
    """Seconds to keep the model loaded after this request (FOREVER for a pinned model)."""
    if pinned:
        return FOREVER
    return round(base_s + min(MAX_BONUS_S, demand_rps * BONUS_S_PER_RPS))


def session_s(keep_alive: int) -> float:
    """What Ollama sorts runners by: FOREVER as the longest of all."""
    return float("inf") if keep_alive < 0 else float(keep_alive)
