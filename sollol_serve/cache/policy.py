"""Which requests the response cache may answer, and the key that identifies one.

Embeddings are a pure function of model, input and options: cached when the config allows.
A chat or completion is cached only if it cannot vary: temperature 0 with a fixed seed,
not streamed, and only when the config opts in (`cache.deterministic_completions`).
"""

from __future__ import annotations

import hashlib
import json

from sollol_serve.config import CacheConfig
from sollol_serve.names import normalize_model

# Fields that change how a request is scheduled or delivered, never what it answers.
NOT_IN_KEY = frozenset({"model", "priority", "keep_alive", "stream", "stream_options", "user"})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_deterministic(api: str, body: dict) -> bool:
    """Temperature 0 and a seed: Ollama puts both in `options`, OpenAI at the top level."""
    knobs = body.get("options") if api == "ollama" else body
    if not isinstance(knobs, dict):
        return False
    return knobs.get("temperature") in (0, 0.0) and _is_int(knobs.get("seed"))


def cacheable(api: str, op: str, body: dict, stream: bool, config: CacheConfig) -> bool:
    if op in ("embed", "embeddings"):
        return config.embeddings
    return config.deterministic_completions and not stream and is_deterministic(api, body)


def cache_key(api: str, op: str, body: dict) -> str:
    """Same model (tag normalised), endpoint, input and options -> same key."""
    material = {k: v for k, v in body.items() if k not in NOT_IN_KEY}
    canonical = json.dumps([api, op, normalize_model(str(body.get("model"))), material],
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
