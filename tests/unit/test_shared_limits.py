"""An Ingress replica's limits: the shared actor's answers, and its own copy's while the actor
restarts (without Ray: a fake actor that answers, dies or hangs)."""

from __future__ import annotations

import asyncio

from ray.exceptions import ActorDiedError

from sollol_serve.api.ratelimit import RateLimits
from sollol_serve.api.shared_limits import LOCAL_LEASE, SharedLimits
from sollol_serve.config import ApiKeyConfig

H = "0" * 64
KEYS = [ApiKeyConfig(name="k", sha256=H, requests_per_minute=3, max_concurrent=1)]


class FakeActor:
    """The RateLimiterActor's methods over a real RateLimits, until `dead` (each call then
    raises the death Ray reports) or `hung` (each call never answers)."""

    def __init__(self):
        self.limits, self.dead, self.hung, self.calls = RateLimits(KEYS), False, False, []

    def __getattr__(self, method: str):
        actor = self

        class Method:
            @staticmethod
            def remote(*args):
                actor.calls.append(method)

                async def answer():
                    if actor.dead:
                        raise ActorDiedError()
                    if actor.hung:
                        await asyncio.sleep(3600)
                    return getattr(actor.limits, method)(*args, 0.0)
                return Lazy(answer)
        return Method()


class Lazy:
    """Awaitable like a Ray ref, and like one harmless when never awaited (fire and forget)."""

    def __init__(self, make):
        self.make = make

    def __await__(self):
        return self.make().__await__()


def run(coro):
    return asyncio.run(coro)


def test_the_actor_answers_and_the_replicas_copy_follows_what_it_let_through():
    actor = FakeActor()
    limits = SharedLimits(actor, KEYS, wait_s=0.3)
    answers = [run(limits.admit("k")) for _ in range(4)]
    assert answers[:3] == [None, None, None] and answers[3] == 20  # 1 of 3 a minute: back in 20 s
    assert actor.calls == ["admit"] * 4
    # the copy took the three admitted, not the refused one: it has nothing left either
    assert limits.local.admit("k", 0.0) is not None


def test_a_dead_actor_is_answered_for_from_the_copy_without_a_fresh_minute():
    actor = FakeActor()
    limits = SharedLimits(actor, KEYS, wait_s=0.3)
    assert run(limits.admit("k")) is None and run(limits.admit("k")) is None
    actor.dead = True
    assert run(limits.admit("k")) is None  # the third of three: not a 503
    assert run(limits.admit("k")) is not None  # the copy knew of the first two


def test_a_hung_actor_is_waited_for_only_so_long():
    actor = FakeActor()
    actor.hung = True
    limits = SharedLimits(actor, KEYS, wait_s=0.05)
    assert run(limits.admit("k")) is None


def test_a_lease_from_the_copy_is_given_back_to_the_copy():
    actor = FakeActor()
    limits = SharedLimits(actor, KEYS, wait_s=0.05)
    actor.dead = True
    lease = run(limits.acquire("k", 60))
    assert lease.startswith(LOCAL_LEASE)
    assert run(limits.acquire("k", 60)) is None  # max_concurrent 1 holds in the copy too
    limits.release("k", lease)
    assert run(limits.acquire("k", 60)).startswith(LOCAL_LEASE)
    assert "release" not in actor.calls


def test_an_actors_lease_goes_back_to_the_actor():
    actor = FakeActor()
    limits = SharedLimits(actor, KEYS, wait_s=0.3)
    lease = run(limits.acquire("k", 60))
    assert lease and not lease.startswith(LOCAL_LEASE)
    limits.release("k", lease)
    assert actor.calls == ["acquire", "release"]
