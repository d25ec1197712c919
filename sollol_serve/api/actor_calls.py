"""The request path's calls to the gateway's shared detached actors (rate limits, cache,
sessions): any of them may be killed at any moment and Ray restarts it in a second or two.

A call that the actor's death cut short is sent once more (Ray queues it until the restarted
actor is up); a call is never left waiting longer than `ACTOR_CALL_S`. What only speeds a
request up (a cache lookup) is skipped instead of waited for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sollol_serve.protocol import GatewayError, error_message, is_process_death

logger = logging.getLogger("ray.serve")

T = TypeVar("T")

ACTOR_CALL_S = 5.0  # a restart takes 1-3 s here; past this the client gets a 503, not a hang
OPTIONAL_CALL_S = 0.5


class SharedStateUnavailable(GatewayError):
    status = 503


async def survive(call: Callable[[], Awaitable[T]], what: str, timeout_s: float = ACTOR_CALL_S) -> T:
    """`call()`'s answer; sent again if the actor died under it. A 503 (retry in a second)
    if it cannot answer in time: a limit that cannot be checked is not skipped."""
    for attempt in (1, 2):
        try:
            return await asyncio.wait_for(call(), timeout_s)
        except asyncio.TimeoutError:
            break
        except Exception as exc:
            if not is_process_death(exc):
                raise
            logger.warning("%s died under a call (try %d): %s", what, attempt, error_message(exc))
    raise SharedStateUnavailable(f"the gateway's {what} is restarting; retry in a second", retry_after_s=1)


async def optional(call: Callable[[], Awaitable[T]], what: str, default: T, timeout_s: float = OPTIONAL_CALL_S) -> T:
    """`call()`'s answer, or `default` if the actor is dead, restarting or slow."""
    try:
        return await asyncio.wait_for(call(), timeout_s)
    except Exception as exc:
        if isinstance(exc, GatewayError):
            raise
        logger.warning("%s did not answer (%s): going on without it", what, error_message(exc))
        return default
