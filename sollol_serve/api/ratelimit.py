"""Per-key limits: requests and tokens per minute (token buckets), and requests in flight.

Pure logic here; `RateLimiterActor` holds the state for every ingress replica. A request
takes one from the request bucket when it arrives; the tokens it uses are charged as they
come (a stream every few chunks, so a client that disconnects has paid for what it got; the
bucket may go negative, which holds the key's next requests back until refilled). A batch
job takes one request per item and its inputs' tokens up front, and is refused if the key's
budget does not hold them. A key with `max_concurrent` holds a lease per request in flight;
leases expire, so a replica that dies holding some cannot block the key for good.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

import ray
from ray.actor import ActorHandle

from sollol_serve.config import ApiKeyConfig
from sollol_serve.names import named_actor
from sollol_serve.protocol import GatewayError


class RateLimited(GatewayError):
    status = 429
    code = "rate_limit_exceeded"


@dataclass(slots=True)
class TokenBucket:
    per_minute: float
    level: float
    updated: float

    @classmethod
    def full(cls, per_minute: float, now: float) -> "TokenBucket":
        return cls(per_minute, per_minute, now)

    def refill(self, now: float) -> None:
        self.level = min(self.per_minute, self.level + (now - self.updated) * self.per_minute / 60)
        self.updated = now

    def wait_s(self, needed: float) -> float:
        """Seconds until `needed` is available (0 if it is)."""
        missing = needed - self.level
        return max(0.0, missing * 60 / self.per_minute)


class TooManyInFlight(RateLimited):
    code = "too_many_requests_in_flight"


class RateLimits:
    def __init__(self, keys: list[ApiKeyConfig]):
        self.limits: dict[str, tuple[int | None, int | None]] = {}
        self.concurrency: dict[str, int] = {}
        self.buckets: dict[tuple[str, str], TokenBucket] = {}
        self.leases: dict[str, dict[str, float]] = {}  # key -> lease -> expiry
        self.configure(keys)

    def configure(self, keys: list[ApiKeyConfig]) -> None:
        """Take the keys' limits (again, on a redeploy): a bucket whose limit is unchanged keeps
        its level, so restarting the gateway does not hand every key a fresh minute."""
        self.limits = {k.name: (k.requests_per_minute, k.tokens_per_minute) for k in keys}
        self.concurrency = {k.name: k.max_concurrent for k in keys if k.max_concurrent}
        for (key, kind), bucket in list(self.buckets.items()):
            rpm, tpm = self.limits.get(key, (None, None))
            if bucket.per_minute != (rpm if kind == "requests" else tpm):
                del self.buckets[(key, kind)]

    def _bucket(self, key: str, kind: str, per_minute: int, now: float) -> TokenBucket:
        bucket = self.buckets.setdefault((key, kind), TokenBucket.full(per_minute, now))
        bucket.refill(now)
        return bucket

    def admit(self, key: str, now: float) -> int | None:
        """None if the request may go; else seconds to wait (Retry-After)."""
        rpm, tpm = self.limits.get(key, (None, None))
        waits = []
        if tpm:
            waits.append(self._bucket(key, "tokens", tpm, now).wait_s(1))
        requests = self._bucket(key, "requests", rpm, now) if rpm else None
        if requests:
            waits.append(requests.wait_s(1))
        wait = max(waits, default=0.0)
        if wait > 0:
            return max(1, math.ceil(wait))
        if requests:
            requests.level -= 1
        return None

    def charge(self, key: str, tokens: int, now: float) -> None:
        tpm = self.limits.get(key, (None, None))[1]
        if tpm and tokens > 0:
            self._bucket(key, "tokens", tpm, now).level -= tokens

    def admit_batch(self, key: str, items: int, tokens: int, now: float) -> str | None:
        """Take a batch job's items (one request each) and input tokens, or say why not (and
        take nothing)."""
        rpm, tpm = self.limits.get(key, (None, None))
        needs = [("requests", rpm, items), ("tokens", tpm, tokens)]
        for kind, per_minute, needed in needs:
            if per_minute and needed > self._bucket(key, kind, per_minute, now).level:
                level = max(0, int(self.buckets[(key, kind)].level))
                return (f"a batch job of {items} items ({tokens} input tokens) exceeds what key '{key}' may "
                        f"send now: {level} of its {per_minute} {kind} per minute")
        for kind, per_minute, needed in needs:
            if per_minute:
                self.buckets[(key, kind)].level -= needed
        return None

    def acquire(self, key: str, lease_s: float, now: float) -> str | None:
        """A lease for one more request in flight, or None if the key has `max_concurrent` out."""
        cap = self.concurrency.get(key)
        if cap is None:
            return ""
        held = self.leases.setdefault(key, {})
        for lease in [lease for lease, expiry in held.items() if expiry <= now]:
            del held[lease]
        if len(held) >= cap:
            return None
        lease = uuid.uuid4().hex
        held[lease] = now + lease_s
        return lease

    def release(self, key: str, lease: str) -> None:
        self.leases.get(key, {}).pop(lease, None)


def token_counts(body: dict) -> tuple[int, int]:
    """Prompt and completion tokens of a response (or final chunk) in either API."""
    usage = body.get("usage")
    if isinstance(usage, dict):
        prompt = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        total = int(usage.get("total_tokens") or 0)
        return prompt, max(total - prompt, int(usage.get("completion_tokens") or 0))
    return int(body.get("prompt_eval_count") or 0), int(body.get("eval_count") or 0)


def tokens_used(body: dict) -> int:
    """Prompt + completion tokens of a response (or final chunk) in either API."""
    return sum(token_counts(body))


@ray.remote(num_cpus=0, max_restarts=-1)
class RateLimiterActor:
    def __init__(self, keys: list[ApiKeyConfig]):
        self.limits = RateLimits(keys)

    def configure(self, keys: list[ApiKeyConfig]) -> None:
        self.limits.configure(keys)

    def admit(self, key: str) -> int | None:
        return self.limits.admit(key, time.monotonic())

    def charge(self, key: str, tokens: int) -> None:
        self.limits.charge(key, tokens, time.monotonic())

    def admit_batch(self, key: str, items: int, tokens: int) -> str | None:
        return self.limits.admit_batch(key, items, tokens, time.monotonic())

    def acquire(self, key: str, lease_s: float) -> str | None:
        return self.limits.acquire(key, lease_s, time.monotonic())

    def release(self, key: str, lease: str) -> None:
        self.limits.release(key, lease)


def rate_limiter(name: str, keys: list[ApiKeyConfig]) -> ActorHandle:
    return named_actor(RateLimiterActor, name, keys)
