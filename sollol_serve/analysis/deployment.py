"""The Analyzer deployment: profiles requests for the batch jobs (thin shell over `profile.py`).

Live requests are profiled inside the Ingress (a pure function: a hop of its own would cost
more than the work); batch items come through here, off the interactive path. Both use the
answer lengths learned per model and task, refreshed from the shared node state.
"""

from __future__ import annotations

from ray import serve

from sollol_serve.analysis.profile import RequestProfile, profile_request
from sollol_serve.cluster.state_actor import state_actor
from sollol_serve.config import GatewayConfig
from sollol_serve.loops import run_every
from sollol_serve.protocol import Api, Operation


class OutputLengths:
    """Learned answer lengths (model, task) -> tokens, kept fresh from the node state actor."""

    def __init__(self, config: GatewayConfig, refresh_s: float = 2.0):
        self.state = state_actor(config)
        self.table: dict[tuple[str, str], int] = {}
        self._refresher = run_every(refresh_s, self._refresh, "refreshing learned output lengths", first_now=True)

    async def _refresh(self) -> None:
        self.table = await self.state.output_lengths.remote()


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Analyzer:
    async def __init__(self, config: dict, refresh_s: float = 2.0):
        self.lengths = OutputLengths(GatewayConfig.model_validate(config), refresh_s)

    async def profile(self, api: Api, op: Operation, body: dict, priority: int) -> RequestProfile:
        return profile_request(api, op, body, priority, self.lengths.table)
