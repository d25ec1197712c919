"""Which applications use the cluster: every request is attributed to one, with no code on
the application's side (the original SOLLOL's "zero-config multi-app tracking"), and the
applications that also registered themselves (its `DashboardClient`) with their metadata.

An application is the API key's name when keys are on (the gateway knows who it is), else
the `X-SOLLOL-App` header (the Python client's `app_name` sends it), else the family of the
client's User-Agent (ollama-python, openai-python, langchain, curl...). Only key names are
trusted labels: header and User-Agent names are the caller's choice, so past
`MAX_APPLICATIONS` of them the rest count as `other` (every name is a time series in every
Prometheus scrape, for good).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

APP_HEADER = "x-sollol-app"
MAX_APPLICATIONS = 32
OTHER = "other"
WINDOW_S = 60.0  # "live": the last minute
SECOND_LATENCIES = 200  # latencies kept per application per second of the live window
Source = Literal["key", "header", "user-agent", "registered"]

# User-Agent families, most specific first: a framework names itself before the SDK it uses.
_FAMILIES = (
    ("langchain", re.compile(r"langchain", re.I)),
    ("llamaindex", re.compile(r"llama[-_ ]?index", re.I)),
    ("litellm", re.compile(r"litellm", re.I)),
    ("ollama-python", re.compile(r"ollama-python", re.I)),
    ("ollama-js", re.compile(r"ollama-js", re.I)),
    ("openai-python", re.compile(r"OpenAI/Python", re.I)),
    ("openai-js", re.compile(r"OpenAI/JS", re.I)),
    ("anthropic-python", re.compile(r"Anthropic/Python", re.I)),
    ("sollol-client", re.compile(r"sollol", re.I)),
    ("curl", re.compile(r"^curl/", re.I)),
    ("wget", re.compile(r"^wget/", re.I)),
    ("python-httpx", re.compile(r"python-httpx", re.I)),
    ("python-requests", re.compile(r"python-requests", re.I)),
    ("aiohttp", re.compile(r"aiohttp", re.I)),
    ("python-urllib", re.compile(r"Python-urllib", re.I)),
    ("go-http", re.compile(r"Go-http-client", re.I)),
    ("node", re.compile(r"node-fetch|undici|axios", re.I)),
    ("browser", re.compile(r"^Mozilla/", re.I)),
)
_NAME = re.compile(r"[^A-Za-z0-9 ._:/@+()-]")


def user_agent_family(user_agent: str | None) -> str:
    """The client's family, from its User-Agent: `unknown` without one, `other` if unrecognized."""
    if not user_agent:
        return "unknown"
    return next((family for family, pattern in _FAMILIES if pattern.search(user_agent)), OTHER)


def clean_name(raw: str | None) -> str | None:
    """A header's application name as a label: printable, at most 64 characters, or None."""
    name = _NAME.sub("", (raw or "").strip())[:64].strip()
    return name or None


def application_of(key_name: str | None, headers: Mapping[str, str]) -> tuple[str, Source]:
    """Who sent a request: its key's name (None when keys are off), its header, or its client."""
    if key_name:
        return key_name, "key"
    named = clean_name(headers.get(APP_HEADER))
    if named:
        return named, "header"
    return user_agent_family(headers.get("user-agent")), "user-agent"


@dataclass(slots=True)
class Use:
    """One answered request, as an application's usage."""

    application: str
    source: Source
    model: str  # the metrics label (a served model, or `unknown`)
    node: str
    status: int
    latency_s: float
    tokens_in: int = 0
    tokens_out: int = 0
    at: float = field(default_factory=time.time)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation between closest ranks."""
    if not sorted_values:
        return None
    rank = q * (len(sorted_values) - 1)
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


LATENCY_SAMPLE = 4096  # totals' percentiles: over the latest this many requests


@dataclass
class Second:
    """One second of an application's live window."""

    at: int
    requests: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    latencies: list[float] = field(default_factory=list)  # at most SECOND_LATENCIES

    def add(self, use: Use) -> None:
        self.requests += 1
        self.errors += use.status >= 400
        self.tokens_in += use.tokens_in
        self.tokens_out += use.tokens_out
        if len(self.latencies) < SECOND_LATENCIES:
            self.latencies.append(use.latency_s)


@dataclass
class AppStats:
    source: Source
    first_seen: float
    last_seen: float = 0.0
    requests: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    models: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLE))
    window: deque = field(default_factory=deque)  # Seconds of the last minute, oldest first

    def add(self, use: Use) -> None:
        self.last_seen = max(self.last_seen, use.at)
        self.requests += 1
        self.errors += use.status >= 400
        self.tokens_in += use.tokens_in
        self.tokens_out += use.tokens_out
        self.models[use.model] += 1
        self.latencies.append(use.latency_s)
        second = int(use.at)
        bucket = next((b for b in reversed(self.window) if b.at == second), None)
        if bucket is None:  # replicas flush a second apart: a late one lands in its own second
            bucket = Second(second)
            self.window.append(bucket)
            if len(self.window) > 1 and self.window[-2].at > second:
                self.window = deque(sorted(self.window, key=lambda b: b.at))
        bucket.add(use)

    def live(self, now: float) -> list[Second]:
        while self.window and self.window[0].at < now - WINDOW_S:
            self.window.popleft()
        return list(self.window)

    def as_json(self, name: str, now: float) -> dict:
        recent = self.live(now)
        totals = sorted(self.latencies)
        live = sorted(latency for b in recent for latency in b.latencies)
        return {
            "name": name, "source": self.source, "requests": self.requests, "errors": self.errors,
            "tokens_in": self.tokens_in, "tokens_out": self.tokens_out, "models": dict(self.models),
            "p50_ms": _ms(percentile(totals, 0.5)), "p95_ms": _ms(percentile(totals, 0.95)),
            "first_seen": self.first_seen, "last_seen": self.last_seen, "active": bool(recent),
            "last_minute": {"requests": sum(b.requests for b in recent), "errors": sum(b.errors for b in recent),
                            "tokens_in": sum(b.tokens_in for b in recent),
                            "tokens_out": sum(b.tokens_out for b in recent),
                            "p50_ms": _ms(percentile(live, 0.5)), "p95_ms": _ms(percentile(live, 0.95))},
        }


MAX_REGISTRATIONS = 64
STALE_AFTER_S = 30.0  # without a heartbeat (the client sends one every 5 s): shown as stale


@dataclass
class Registration:
    """An application that said who it is (`POST /api/applications/register`)."""

    name: str
    router_type: str
    version: str
    metadata: dict
    registered_at: float
    last_heartbeat: float

    def as_json(self, now: float) -> dict:
        return {"router_type": self.router_type, "version": self.version, "metadata": self.metadata,
                "registered_at": self.registered_at, "last_heartbeat": self.last_heartbeat,
                "status": "active" if now - self.last_heartbeat <= STALE_AFTER_S else "stale"}


@dataclass
class ApplicationCounters:
    """What `/metrics` shows of the applications: requests by node, model and status; tokens."""

    requests: dict[tuple[str, str, str, str], int] = field(default_factory=dict)  # app, node, model, status
    tokens: dict[tuple[str, str], int] = field(default_factory=dict)  # app, "in"/"out"


@dataclass
class Applications:
    """Every application's usage (the whole app's, merged from every Ingress replica), and its
    Prometheus counters."""

    apps: dict[str, AppStats] = field(default_factory=dict)
    requests: dict[tuple[str, str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    tokens: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))  # app, in/out
    registrations: dict[str, Registration] = field(default_factory=dict)  # by app id

    def register(self, app_id: str, registration: Registration) -> bool:
        """Keep a registration; False when there are too many (the oldest silent one makes room)."""
        if len(self.registrations) >= MAX_REGISTRATIONS:
            silent = min(self.registrations.values(), key=lambda r: r.last_heartbeat)
            if registration.registered_at - silent.last_heartbeat <= STALE_AFTER_S:
                return False
            self.registrations = {k: r for k, r in self.registrations.items() if r is not silent}
        self.registrations[app_id] = registration
        return True

    def heartbeat(self, app_id: str, now: float, metadata: dict | None = None) -> bool:
        registration = self.registrations.get(app_id)
        if registration is None:
            return False
        registration.last_heartbeat = now
        if metadata is not None:
            registration.metadata = metadata
        return True

    def deregister(self, app_id: str) -> bool:
        return self.registrations.pop(app_id, None) is not None

    def admit(self, use: Use) -> str:
        """The name `use` is counted under: its own, or `other` once the caller-chosen names are many."""
        if use.application in self.apps or use.source == "key":
            return use.application
        chosen = sum(1 for stats in self.apps.values() if stats.source != "key")
        return use.application if chosen < MAX_APPLICATIONS else OTHER

    def add(self, uses: list[Use]) -> None:
        for use in uses:
            name = self.admit(use)
            stats = self.apps.get(name)
            if stats is None:
                stats = self.apps[name] = AppStats(use.source if name != OTHER else "header", first_seen=use.at)
            stats.add(use)
            self.requests[(name, use.node or "none", use.model, str(use.status))] += 1
            self.tokens[(name, "in")] += use.tokens_in
            self.tokens[(name, "out")] += use.tokens_out

    def counters(self) -> ApplicationCounters:
        return ApplicationCounters(dict(self.requests), dict(self.tokens))

    def as_json(self, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        shown = {name: stats.as_json(name, now) for name, stats in self.apps.items()}
        for registration in sorted(self.registrations.values(), key=lambda r: r.last_heartbeat):
            entry = shown.get(registration.name) or {
                **AppStats("registered", first_seen=registration.registered_at).as_json(registration.name, now),
                "last_seen": None}
            entry["registered"] = registration.as_json(now)
            entry["active"] = entry["active"] or entry["registered"]["status"] == "active"
            shown[registration.name] = entry
        return {"window_s": WINDOW_S, "applications": sorted(shown.values(), key=_recency, reverse=True)}


def _recency(entry: dict) -> float:
    """When an application was last heard of: its last request or heartbeat."""
    return max(entry["last_seen"] or 0.0, (entry.get("registered") or {}).get("last_heartbeat", 0.0))
