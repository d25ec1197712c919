"""The Analyzer deployment: profiles each request (thin shell over `profile.py`).

It keeps a copy of the answer lengths learned per model and task (from the shared node
state, refreshed in the background) for requests that set no output limit.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from sollol_serve.analysis.profile import RequestProfile, profile_request
from sollol_serve.protocol import Api, Operation
from sollol_serve.routing.state_actor import state_actor

logger = logging.getLogger("ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Analyzer:
    async def __init__(self, state_actor_name: str, refresh_s: float = 2.0):
        self.state = state_actor(state_actor_name)
        self.output_lengths: dict[tuple[str, str], int] = {}
        self.refresh_s = refresh_s
        self._refresher = asyncio.create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            try:
                self.output_lengths = await self.state.output_lengths.remote()
            except Exception:  # keep what we had
                logger.exception("refreshing learned output lengths failed")
            await asyncio.sleep(self.refresh_s)

    async def profile(self, api: Api, op: Operation, body: dict, priority: int) -> RequestProfile:
        return profile_request(api, op, body, priority, self.output_lengths)
