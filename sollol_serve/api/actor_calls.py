"""The request path's calls to the gateway's shared detached actors (rate limits, cache,
sessions): any of them may be killed at any moment and Ray restarts it in a second or two.

A call that the actor's death cut short is sent again until the restarted actor answers (a
call made while it restarts can fail too); a call is never left waiting longer than
`ACTOR_CALL_S` in all. What only speeds a
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

# A restart takes 1-3 s here, more on a busy machine; past this the client gets a 503, not a hang.
ACTOR_CALL_S = 10.0
RETRY_EVERY_S = 0.25
OPTIONAL_CALL_S = 0.5


class SharedStateUnavailable(GatewayError):
    status = 503


async def survive(call: Callable[[], Awaitable[T]], what: str, timeout_s: float = ACTOR_CALL_S) -> T:
    """`call()`'s answer; sent again (every `RETRY_EVERY_S`) while its actor is dead or
    restarting. A 503 (retry in a second) if no answer comes within `timeout_s` in all: a
    limit that cannot be checked is not skipped."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    attempt = 0
    while (left := deadline - loop.time()) > 0:
        attempt += 1
        try:
            return await asyncio.wait_for(call(), left)
        except asyncio.TimeoutError:
            break
        except Exception as exc:
            if not is_process_death(exc):
                raise
            if attempt == 1:
                logger.warning("%s died under a call (%s): asking until it is back", what, error_message(exc))
            await asyncio.sleep(min(RETRY_EVERY_S, max(deadline - loop.time(), 0.0)))
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
