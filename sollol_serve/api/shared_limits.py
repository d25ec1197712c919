"""The keys' limits as an Ingress replica applies them: asked of the shared `RateLimiterActor`,
and answered from the replica's own copy while that actor is dead or restarting.

Ray restarts the actor in a second or two, longer on a busy machine, and a restarted actor
starts with full buckets anyway: so a client is not failed for the restart. The replica's copy
is kept in step with what this replica admitted and charged, so answering from it does not hand
a key a fresh minute; it sees only this replica's traffic, so with several Ingress replicas a
key may get up to one allowance per replica until the actor answers again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ray.actor import ActorHandle

from sollol_serve.api.actor_calls import SharedStateUnavailable, survive
from sollol_serve.api.ratelimit import RateLimits
from sollol_serve.config import ApiKeyConfig

logger = logging.getLogger("ray.serve")

T = TypeVar("T")

# How long a request waits for the restarting actor before this replica answers for it.
ACTOR_WAIT_S = 2.0
LOCAL_LEASE = "local:"  # a lease this replica's copy gave, released there


class SharedLimits:
    def __init__(self, actor: ActorHandle, keys: list[ApiKeyConfig], wait_s: float = ACTOR_WAIT_S):
        self.actor, self.local, self.wait_s = actor, RateLimits(keys), wait_s

    async def _ask(self, call: Callable[[], Awaitable[T]], local: Callable[[], T], mirror: bool) -> T:
        """The actor's answer, else the local copy's. If `mirror`, what the actor let through
        (None) is taken from the local copy too."""
        try:
            answer = await survive(call, "rate limiter", timeout_s=self.wait_s)
        except SharedStateUnavailable:
            logger.warning("rate limiter did not answer in %.0f s: this replica applies the limits itself", self.wait_s)
            return local()
        if mirror and answer is None:
            local()
        return answer

    async def admit(self, key: str) -> int | None:
        """None if the key's request may go; else seconds to wait."""
        return await self._ask(lambda: self.actor.admit.remote(key), lambda: self.local.admit(key, time.monotonic()),
                               mirror=True)

    async def admit_batch(self, key: str, items: int, tokens: int) -> str | None:
        """None if the key may send a batch of `items` (`tokens` in all); else why not."""
        return await self._ask(lambda: self.actor.admit_batch.remote(key, items, tokens),
                               lambda: self.local.admit_batch(key, items, tokens, time.monotonic()), mirror=True)

    async def acquire(self, key: str, lease_s: float) -> str | None:
        """A lease for one more request in flight ("" if the key has no cap), or None."""
        def local() -> str | None:
            lease = self.local.acquire(key, lease_s, time.monotonic())
            return LOCAL_LEASE + lease if lease else lease
        return await self._ask(lambda: self.actor.acquire.remote(key, lease_s), local, mirror=False)

    def release(self, key: str, lease: str) -> None:
        if lease.startswith(LOCAL_LEASE):
            self.local.release(key, lease.removeprefix(LOCAL_LEASE))
        else:
            self.actor.release.remote(key, lease)  # fire and forget: a lost lease expires

    def charge(self, key: str, tokens: int) -> None:
        self.local.charge(key, tokens, time.monotonic())
        self.actor.charge.remote(key, tokens)  # fire and forget
