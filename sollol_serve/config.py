"""Configuration of the gateway: pydantic models, the SOLLOL_NODES parser and env overrides.

`serve_config.yaml` passes its `args:` to `app.build_app`, which validates them into
`GatewayConfig`; nodes listed in the `SOLLOL_NODES` environment variable are merged in.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sollol_serve.names import normalize_model

NodeKind = Literal["auto", "ollama", "openai"]
Permission = Literal["chat", "generate", "embed", "batch", "models", "stats", "admin"]
ALL_PERMISSIONS: tuple[Permission, ...] = ("chat", "generate", "embed", "batch", "models", "stats", "admin")
DEFAULT_ROLES: dict[str, list[Permission]] = {
    "admin": list(ALL_PERMISSIONS),
    "user": ["chat", "generate", "embed", "batch", "models"],
    "reader": ["models", "stats"],
}
Strategy = Literal["intelligent", "least_busy", "round_robin", "random"]

NODES_ENV = "SOLLOL_NODES"
DATA_DIR_ENV = "SOLLOL_DATA_DIR"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,62}$")


MAX_BATCH_TTL_S = 366 * 86_400.0  # a year: beyond it, times stop fitting a calendar soon enough


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeConfig(_Strict):
    """One LLM server the gateway routes to."""

    name: str
    url: str
    kind: NodeKind = "auto"
    # Parallel requests the node serves at once (OLLAMA_NUM_PARALLEL / llama-server slots).
    # None = learn it from the node where it tells (llama-server /props), else assume 1.
    slots: int | None = Field(default=None, ge=1, le=1024)
    # Models the node keeps loaded at once (OLLAMA_MAX_LOADED_MODELS, or what its VRAM holds).
    # None = learn it from the evictions the node shows (until then, Ollama's default of 3).
    max_loaded: int | None = Field(default=None, ge=1, le=64)
    # The Ray custom resource that marks this node's Ray host; the worker is placed there.
    # None = `sollol-node:<name>` if a Ray host declares it, else the worker runs anywhere.
    ray_resource: str | None = Field(default=None, min_length=1, max_length=128)
    # Set by discovery: the Ray node this server was found on (its worker is pinned there).
    ray_node_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{8,64}$")
    # Sent as `Authorization: Bearer` to a node that wants one (llama-server --api-key).
    api_key: str | None = Field(default=None, min_length=1, max_length=512, repr=False)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"node name {v!r} must be 1-63 letters, digits, '.', '_', ':' or '-'")
        return v

    @field_validator("url")
    @classmethod
    def _url_ok(cls, v: str) -> str:
        parsed = urlparse(v)
        try:
            _ = parsed.port  # raises on a non-numeric or out-of-range port
        except ValueError:
            raise ValueError(f"node url {v!r} has an invalid port") from None
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"node url {v!r} must be http(s)://host:port")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _one_credential(self) -> "NodeConfig":
        if self.api_key and urlparse(self.url).username is not None:
            raise ValueError(f"node {self.name!r}: give either api_key or user:password in its url, not both")
        return self


# An idle router syncs with the shared state this many times less often, and at most this
# often, but never less often than configured.
IDLE_SYNC_FACTOR = 5
IDLE_SYNC_S = 2.5


class RoutingConfig(_Strict):
    strategy: Strategy = "intelligent"
    # How often each router replica refreshes its snapshot of the shared node state (an idle
    # one less often: `longest_sync_s`).
    snapshot_interval_s: float = Field(default=0.5, gt=0, le=60)
    # The priority queue that holds requests while every eligible node is full.
    queue_max: int = Field(default=1000, ge=0)
    # A waiting request gains one priority level per `aging_s` seconds: nothing starves.
    aging_s: float = Field(default=10.0, gt=0)
    # Background work (priority <= background_priority: batch jobs by default) never takes the
    # last `reserved_slots` free slots of the nodes that could serve it, so live requests find
    # one at once. Capped at one less than those nodes' slots, so background work still runs.
    background_priority: int = Field(default=2, ge=0, le=10)
    reserved_slots: int = Field(default=1, ge=0)
    # Longest time a request may wait in the queue before it is answered 503.
    queue_timeout_s: float = Field(default=300.0, gt=0)
    # A node removed through the admin API is drained first; it goes after this at the latest.
    drain_timeout_s: float = Field(default=600.0, gt=0)
    # A cold model goes to a GPU node only if its size times this fits in the node's free
    # VRAM (the KV cache and buffers need room beyond the weights).
    vram_headroom: float = Field(default=1.1, ge=1.0, le=4.0)
    # A generation model in demand whose speed on a node has had no sample for this long is
    # re-measured there with a short request of the router's own (when a slot is free), so a
    # node that was slow once, and healed, gets its share back.
    stale_after_s: float = Field(default=10.0, gt=0)
    # Follow-up turns of a conversation go to the node that holds its prefix in its KV cache
    # when that is predicted faster (prefill skipped) and the node has a free slot.
    affinity: bool = True
    # At equal priority the queue serves the application furthest behind its share (API key,
    # else X-SOLLOL-App, else client family; routing/fair_share.py), and refuses (429) only an
    # application over its part of the queue. False: by arrival, one queue bound for all.
    fair_share: bool = True
    # Requests to Ollama nodes that set no keep_alive get one that grows with their model's
    # demand (from `node_keep_alive_s` up to an hour), so a full node evicts the least wanted
    # model and a wanted one outlives a lull (routing/keep_alive.py).
    steer_keep_alive: bool = True
    # The nodes' own default keep_alive (OLLAMA_KEEP_ALIVE; Ollama's is 5 min): the least a
    # steered request gets, and how long a model the gateway sent nothing for stays loaded.
    node_keep_alive_s: float = Field(default=300.0, gt=0)

    @property
    def longest_sync_s(self) -> float:
        """The longest a router replica goes without adopting the shared state (idle)."""
        return max(self.snapshot_interval_s, min(self.snapshot_interval_s * IDLE_SYNC_FACTOR, IDLE_SYNC_S))


class HealthConfig(_Strict):
    """Active health checks and the circuit breaker per node."""

    # A worker re-reads its node's models this often; the interval stretches by half each
    # time the node is found unchanged and healthy, up to `probe_max_s`, and drops to
    # `probe_min_s` while the node is down or has just changed, so a recovered node is
    # back in rotation within about `probe_min_s`.
    probe_interval_s: float = Field(default=5.0, gt=0, le=3600)
    probe_min_s: float = Field(default=1.0, gt=0, le=3600)
    probe_max_s: float = Field(default=30.0, gt=0, le=3600)
    # Node faults in a row that open a node's breaker; how long it stays open at first
    # (doubling after each failed trial, up to the max).
    breaker_failures: int = Field(default=3, ge=1)
    breaker_open_s: float = Field(default=5.0, gt=0)
    breaker_max_open_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "HealthConfig":
        if not self.probe_min_s <= self.probe_interval_s <= self.probe_max_s:
            raise ValueError("health probes need probe_min_s <= probe_interval_s <= probe_max_s")
        return self


class DiscoveryConfig(_Strict):
    """Finding LLM servers besides the configured ones."""

    # Probe every alive Ray node, from that node, on these ports (loopback first, then the
    # node's own address); Ray nodes that join or leave are picked up every `interval_s`.
    ray_nodes: bool = True
    ports: list[int] = Field(default_factory=lambda: [11434], max_length=16)
    interval_s: float = Field(default=10.0, gt=0)
    # Optional bounded scan of an address range (e.g. "10.0.0.0/24"), off by default. Whatever
    # answers there becomes a node that receives prompts, so the range must lie inside
    # `cidr_allow`, the networks the operator confirms as theirs.
    cidr: str | None = None
    cidr_allow: list[str] = Field(default_factory=list)
    cidr_max_hosts: int = Field(default=256, ge=1, le=4096)
    probe_timeout_s: float = Field(default=0.5, gt=0, le=10)
    # A scan's probes run this many at once, and a round stops probing after interval_s.
    scan_concurrency: int = Field(default=32, ge=1, le=256)

    @model_validator(mode="after")
    def _cidr_confirmed(self) -> "DiscoveryConfig":
        try:
            allowed = [ipaddress.ip_network(c, strict=False) for c in self.cidr_allow]
            scanned = ipaddress.ip_network(self.cidr, strict=False) if self.cidr else None
        except ValueError as exc:
            raise ValueError(f"discovery: bad network: {exc}") from None
        if scanned is not None and not any(scanned.version == a.version and scanned.subnet_of(a) for a in allowed):
            raise ValueError(f"discovery.cidr {self.cidr} is not inside discovery.cidr_allow {self.cidr_allow}: "
                             "list the networks you confirm as yours there")
        return self

    @field_validator("ports")
    @classmethod
    def _ports_ok(cls, v: list[int]) -> list[int]:
        if any(not 0 < p < 65536 for p in v):
            raise ValueError("ports must be 1-65535")
        return v


class TelemetryConfig(_Strict):
    # Readings from this JSON file (gpustat's format, keyed by node name) instead of the
    # host's GPUs: for tests and demos on machines without one.
    readings_file: str | None = None


class LoggingSettings(_Strict):
    """The replicas' logs (Serve's own logging config). Every line a replica writes about a
    request carries its ID (the client's X-Request-ID, else Serve's): JSON lines let a log store
    search by it."""

    encoding: Literal["TEXT", "JSON"] = "TEXT"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # An access line per call on every internal hop (Router, node workers), not just
    # the Ingress: a request's whole way in the logs, at some CPU per request on each hop.
    every_hop: bool = False


class ShardConfig(_Strict):
    """Models served by a llama.cpp RPC shard group: one llama-server over rpc-servers on
    several Ray hosts, for a model no single node can hold."""

    # Always served by a shard group (Ollama names); other models only when too big for any node.
    models: list[str] = Field(default_factory=list)
    # Model name -> GGUF path, for models not in the Ollama store.
    gguf_paths: dict[str, str] = Field(default_factory=dict)
    # The Ollama model store to read GGUF blobs from (default: $OLLAMA_MODELS or ~/.ollama/models).
    ollama_models_dir: str | None = None
    # Ray resource that marks a host willing to run an rpc-server (`ray start --resources='{"sollol-rpc": 1}'`).
    rpc_label: str = "sollol-rpc"
    backends: int = Field(default=2, ge=1, le=16)
    # rpc-servers bind their host's cluster address ("node"), 127.0.0.1 ("loopback": one-machine
    # setups) or the address given. rpc-server has no authentication: a group whose rpc-servers
    # would listen on a wildcard (0.0.0.0, ::) or public address is refused unless
    # `allow_public_bind` (then firewall those ports yourself).
    bind: str = "node"
    allow_public_bind: bool = False
    ctx_size: int = Field(default=2048, ge=64)
    parallel: int = Field(default=2, ge=1, le=64)
    # Extra llama-server arguments; none that sets its address, api key or a log level or
    # file that would record prompts (the coordinator sets those).
    llama_server_args: list[str] = Field(default_factory=list)
    start_timeout_s: float = Field(default=300.0, gt=0)
    # Restarts after a crash (rpc-server or llama-server), with doubling backoff; then "failed".
    max_restarts: int = Field(default=5, ge=0)
    restart_backoff_s: float = Field(default=1.0, ge=0)
    # A group that has processed no token for this long is stopped (started again on demand).
    idle_stop_s: float = Field(default=900.0, gt=0)

    @field_validator("bind")
    @classmethod
    def _bind_ok(cls, v: str) -> str:
        import ipaddress

        if v in ("node", "loopback"):
            return v
        try:
            return str(ipaddress.ip_address(v.strip("[]")))
        except ValueError:
            raise ValueError(f"shard.bind {v!r} must be 'node', 'loopback' or an IP address") from None

    @field_validator("llama_server_args")
    @classmethod
    def _args_ok(cls, v: list[str]) -> list[str]:
        reserved = {"--host", "--port", "--api-key", "--api-key-file", "-v", "--verbose", "--log-verbose", "-lv",
                    "--verbosity", "--log-verbosity", "--log-file", "--log-prompts-dir", "--verbose-prompt", "--props"}
        for arg in v:
            flag = arg.split("=", 1)[0]
            if flag in reserved:
                raise ValueError(f"shard.llama_server_args may not contain {flag}: the coordinator sets the "
                                 "address, api key and log level (prompts must not be logged)")
        return v


class FailoverConfig(_Strict):
    # Nodes tried for one request (a failure before the first byte moves it to the next).
    max_attempts: int = Field(default=3, ge=1, le=32)
    # Wait before the next attempt: full jitter over base * 2**(attempt-1), capped.
    backoff_s: float = Field(default=0.05, ge=0)
    backoff_max_s: float = Field(default=1.0, ge=0)
    # Requests at or above this priority are hedged: with no first byte by the node's learned
    # p95 time to first byte, a copy goes to the next-best node and the first to answer wins.
    # None turns hedging off.
    hedge_priority: int | None = Field(default=9, ge=1, le=10)
    hedge_min_delay_s: float = Field(default=0.05, ge=0)
    # Hedge delay while the node's time to first byte is not yet measured.
    hedge_default_delay_s: float = Field(default=2.0, gt=0)


class TimeoutConfig(_Strict):
    connect_s: float = Field(default=3.0, gt=0)
    # Until the node sends its first chunk (queueing inside the node, cold load, prefill).
    first_byte_s: float = Field(default=300.0, gt=0)
    # Between two chunks of an answer; a node silent this long is taken as hung.
    idle_s: float = Field(default=60.0, gt=0)
    total_s: float = Field(default=900.0, gt=0)


class ModelTimeouts(_Strict):
    """Timeouts for a class of models, e.g. `{match: "*70b*", first_byte_s: 600}`: fields
    left out keep the gateway-wide value."""

    match: str = Field(min_length=1)  # shell-style pattern on the model name (`llama3.2:latest`)
    connect_s: float | None = Field(default=None, gt=0)
    first_byte_s: float | None = Field(default=None, gt=0)
    idle_s: float | None = Field(default=None, gt=0)
    total_s: float | None = Field(default=None, gt=0)


def timeouts_for(base: TimeoutConfig, rules: list[ModelTimeouts], model: str) -> TimeoutConfig:
    """The timeouts of `model`: the first rule whose pattern matches overrides the base."""
    name = normalize_model(model)
    for rule in rules:
        if fnmatch.fnmatchcase(name, rule.match) or fnmatch.fnmatchcase(model, rule.match):
            overrides = rule.model_dump(exclude={"match"}, exclude_none=True)
            return base.model_copy(update=overrides)
    return base


class ModelPolicy(_Strict):
    """What the operator asks of one model's placement (`models: {name: {min_nodes: 2}}`)."""

    # Kept loaded on at least this many Ollama nodes that have it (loaded ahead of requests,
    # sent with keep_alive -1 so the nodes evict it last and never let it expire).
    min_nodes: int = Field(default=0, ge=0, le=64)


class DeploymentSizing(_Strict):
    """Concurrency limits per replica. Every deployment on the request path only waits on
    I/O, so Serve's default of 5 ongoing requests per replica would queue requests inside
    Serve; these are sized for hundreds of concurrent streams."""

    max_ongoing_requests: int = Field(default=512, ge=1)
    ingress_replicas: int = Field(default=1, ge=1)
    router_replicas: int = Field(default=1, ge=1)


class BatchConfig(_Strict):
    """Batch jobs: run at low priority through the router, kept in SQLite under `data_dir`."""

    # "" = $SOLLOL_DATA_DIR, else ~/.local/share/sollol_serve (on the head node).
    data_dir: str = ""
    concurrency: int = Field(default=4, ge=1, le=256)  # upstream calls in flight, all jobs together
    embed_chunk: int = Field(default=16, ge=1, le=1024)  # inputs per /api/embed call
    max_items: int = Field(default=100_000, ge=1)
    priority: int = Field(default=1, ge=1, le=10)  # unless the job asks otherwise
    ttl_s: float = Field(default=86_400.0, gt=0, le=MAX_BATCH_TTL_S)  # a finished job's results are kept this long
    max_attempts: int = Field(default=8, ge=1)  # per chunk, for retryable failures
    retry_base_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)


class AlertsConfig(_Strict):
    """When the gateway raises an alert (GET /api/alerts, the dashboard, `sollol_alerts_active`).
    Rates and latencies are judged over the last `window_s`, and only on enough requests that
    one slow or failed request is not an alarm. An alert ends once its condition has been
    clear for `clear_after_s`, and a measured one only when the measure is `hysteresis` (a
    fraction) back inside its threshold, so a value hovering at the threshold does not flap."""

    window_s: float = Field(default=60.0, gt=0, le=3600)
    # A node answers fewer than this share of its tries (with at least `min_requests` tries).
    success_rate_below: float = Field(default=0.9, gt=0, le=1)
    min_requests: int = Field(default=10, ge=1)
    # A node's answers take this many times what the router predicted for them, and at least
    # `min_latency_excess_s` more per answer (a 20 ms answer predicted at 5 ms is no alarm).
    latency_ratio_above: float = Field(default=3.0, gt=1)
    min_latency_samples: int = Field(default=5, ge=1)
    min_latency_excess_s: float = Field(default=1.0, ge=0)
    # Requests of one priority waited this long in the router's queue, on average.
    queue_wait_above_s: float = Field(default=10.0, gt=0)
    hysteresis: float = Field(default=0.2, ge=0, lt=1)
    clear_after_s: float = Field(default=30.0, ge=0)
    recent: int = Field(default=50, ge=0, le=1000)  # ended alerts kept for GET /api/alerts
    # One of the gateway's own processes (the node state actor, a node's worker) died this
    # many times within `restarts_window_s`: it keeps dying, each death costs seconds.
    restarts_at_least: int = Field(default=3, ge=1)
    restarts_window_s: float = Field(default=600.0, gt=0, le=3600)


class CacheConfig(_Strict):
    """Responses answered again from memory: embeddings always (when on); completions only if
    `deterministic_completions` and the request pins temperature 0 and a seed."""

    embeddings: bool = True
    deterministic_completions: bool = False
    max_entries: int = Field(default=10_000, ge=1)
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    ttl_s: float = Field(default=3600.0, gt=0)


class ApiKeyConfig(_Strict):
    """An API key, stored only as the SHA-256 of the key (`sollol keys new` prints both)."""

    name: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    role: str = "user"
    # Per-key limits, shared by every ingress replica; None = unlimited.
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    # Requests of this key in flight at once, over every replica (more: 429); None = unlimited.
    max_concurrent: int | None = Field(default=None, ge=1, le=100_000)
    # The highest priority this key may ask for (higher ones are lowered to it, and the
    # answer says so); None = the role's `max_priority`, else 10.
    max_priority: int | None = Field(default=None, ge=1, le=10)
    # This key's weight in fair share between applications at equal priority (a key with
    # share 2 gets twice the service of a key with 1 when both wait); None = its role's.
    share: float | None = Field(default=None, gt=0, le=1000)


class SecurityConfig(_Strict):
    keys: list[ApiKeyConfig] = Field(default_factory=list)
    roles: dict[str, list[Permission]] = Field(default_factory=lambda: dict(DEFAULT_ROLES))
    # Without keys the gateway only serves a loopback bind; this overrides that refusal.
    allow_remote_without_keys: bool = False
    # Web origins ("https://app.example:8443", or "*") whose pages may call the gateway; any
    # other page's request (browsers send `Origin` on every cross-site one) is refused.
    allowed_origins: list[str] = Field(default_factory=list)
    # Host names the gateway answers to on a loopback bind, besides IP addresses, localhost and
    # this machine's name: other names are DNS rebinding.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Per role, the highest priority its keys may ask for (a key's own max_priority wins).
    # Urgent requests jump the queue and are hedged (run twice): not every client's call.
    max_priority: dict[str, int] = Field(default_factory=lambda: {"user": 8})
    # Per role, the share in fair queueing of its keys (a key's own `share` wins); else 1.
    share: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _roles_exist(self) -> "SecurityConfig":
        unknown = sorted({k.role for k in self.keys} - set(self.roles))
        if unknown:
            raise ValueError(f"API keys use undefined roles: {', '.join(unknown)}")
        bad = {role: p for role, p in self.max_priority.items() if not 1 <= p <= 10}
        if bad:
            raise ValueError(f"security.max_priority must be 1-10 per role, got {bad}")
        bad_shares = {role: w for role, w in self.share.items() if not 0 < w <= 1000}
        if bad_shares:
            raise ValueError(f"security.share must be above 0 and at most 1000 per role, got {bad_shares}")
        return self

    def priority_cap(self, key: ApiKeyConfig) -> int:
        return key.max_priority or self.max_priority.get(key.role, 10)

    def share_of(self, name: str) -> float:
        """The fair-queueing share of the application `name` (a key's name; anything else: 1)."""
        key = next((k for k in self.keys if k.name == name), None)
        if key is None:
            return 1.0
        return key.share or self.share.get(key.role, 1.0)


class GatewayConfig(_Strict):
    nodes: list[NodeConfig] = Field(default_factory=list)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)
    model_timeouts: list[ModelTimeouts] = Field(default_factory=list)
    models: dict[str, ModelPolicy] = Field(default_factory=dict)  # by model name
    health: HealthConfig = Field(default_factory=HealthConfig)
    failover: FailoverConfig = Field(default_factory=FailoverConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    shard: ShardConfig = Field(default_factory=ShardConfig)
    sizing: DeploymentSizing = Field(default_factory=DeploymentSizing)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    # Largest accepted request body; larger ones get 413.
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # Largest answer read from a node (and longest line of a stream); larger ones are a 502.
    max_node_response_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024, le=2**31)
    # Namespace-unique name of the node state actor, so two gateways on one Ray cluster
    # don't share state by accident.
    state_actor_name: str = "sollol_node_state"
    # Other names for served models: a request for a key is a request for its value
    # (`gpt-4o-mini: llama3.2:3b`), in routing, metrics, the dashboard and the cache.
    aliases: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_names(self) -> "GatewayConfig":
        names = [n.name for n in self.nodes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate node names: {', '.join(dupes)}")
        return self

    @field_validator("aliases")
    @classmethod
    def _aliases_name_models(cls, aliases: dict[str, str]) -> dict[str, str]:
        names = {normalize_model(alias) for alias in aliases}
        for alias, target in aliases.items():
            if not alias.strip() or not target.strip():
                raise ValueError("an alias and its model must both be named")
            if normalize_model(target) in names:  # one lookup, never a chain or a loop
                raise ValueError(f"alias '{alias}' names another alias ('{target}'): name the model itself")
        return aliases

    @field_validator("models")
    @classmethod
    def _models_by_full_name(cls, models: dict[str, ModelPolicy]) -> dict[str, ModelPolicy]:
        """`chat` and `chat:latest` name one model: keyed as the nodes list it."""
        return {normalize_model(name): policy for name, policy in models.items() if name.strip()}

    def pinned(self, model: str) -> int:
        """How many nodes the operator keeps `model` loaded on (0: none asked)."""
        policy = self.models.get(normalize_model(model))
        return policy.min_nodes if policy is not None else 0

    def model_for(self, name: str) -> str:
        """The model a client's name stands for: its alias's target, else the name itself."""
        wanted = normalize_model(name)
        return next((target for alias, target in self.aliases.items() if normalize_model(alias) == wanted), name)


def default_node_name(url: str) -> str:
    """`http://10.0.0.5:11434` -> `10.0.0.5-11434`: a stable name for an unnamed node.
    A URL that doesn't parse keeps a placeholder name; NodeConfig then rejects the URL."""
    parsed = urlparse(url)
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        return "invalid"
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", parsed.hostname or "node").strip("-") or "node"
    return f"{host}-{port}"


NODE_OPTIONS = ("slots", "max_loaded", "kind", "ray_resource")


def parse_nodes(spec: str) -> list[NodeConfig]:
    """Parse the SOLLOL_NODES format: comma-separated `[name=]http://host:port[;option=value...]`,
    options being `slots`, `max_loaded`, `kind` and `ray_resource` (e.g.
    `gpu-1=http://10.0.0.11:11434;slots=4;max_loaded=2`)."""
    nodes = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        address, *options = (p.strip() for p in item.split(";"))
        name, sep, url = address.partition("=")
        if not sep or "://" in name:
            name, url = "", address
        url = url.strip()
        fields: dict[str, str] = {}
        for option in filter(None, options):
            key, eq, value = (p.strip() for p in option.partition("="))
            if not eq or key not in NODE_OPTIONS:
                raise ValueError(f"{NODES_ENV}: unknown node option {option!r} in {item!r} "
                                 f"(options: {', '.join(NODE_OPTIONS)})")
            fields[key] = value
        nodes.append(NodeConfig(name=name.strip() or default_node_name(url), url=url, **fields))
    return nodes


def merge_nodes(configured: list[NodeConfig], extra: list[NodeConfig]) -> list[NodeConfig]:
    """Config nodes first; env nodes added unless a node with that name or URL exists."""
    merged = list(configured)
    names = {n.name for n in merged}
    urls = {n.url for n in merged}
    for node in extra:
        if node.name not in names and node.url not in urls:
            merged.append(node)
            names.add(node.name)
            urls.add(node.url)
    return merged


def data_dir(config: BatchConfig, environ: dict[str, str] | None = None) -> str:
    """Where batch jobs are kept: the config's directory, $SOLLOL_DATA_DIR, or the user's data dir."""
    environ = os.environ if environ is None else environ
    chosen = config.data_dir or environ.get(DATA_DIR_ENV) or os.path.join("~", ".local", "share", "sollol_serve")
    return os.path.expanduser(chosen)


def load_config(args: dict | None = None, environ: dict[str, str] | None = None) -> GatewayConfig:
    """Validate serve_config args and merge nodes from SOLLOL_NODES."""
    environ = os.environ if environ is None else environ
    config = GatewayConfig.model_validate(args or {})
    env_nodes = parse_nodes(environ.get(NODES_ENV, ""))
    if env_nodes:
        config = config.model_copy(update={"nodes": merge_nodes(config.nodes, env_nodes)})
    return config
