"""The Analyzer deployment: profiles each request (thin shell over `profile.py`)."""

from __future__ import annotations

from ray import serve

from sollol_serve.analysis.profile import RequestProfile, profile_request
from sollol_serve.protocol import Api, Operation


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Analyzer:
    async def profile(self, api: Api, op: Operation, body: dict, priority: int) -> RequestProfile:
        return profile_request(api, op, body, priority)
