"""The answer lengths learned per model and task, as the node state actor keeps them: what a
request that sets no limit is expected to answer (`profile.py`). The Ingress profiles live
requests in process and BatchJobs its items; both read the lengths through this."""

from __future__ import annotations

import logging
import math
import time

from ray.exceptions import RayError

from sollol_serve.cluster.state_actor import state_actor
from sollol_serve.config import GatewayConfig
from sollol_serve.loops import run_every

logger = logging.getLogger(__name__)


class OutputLengths:
    """(model, task) -> tokens. With `background`, `table` is kept fresh by a loop (the request
    path must not wait for it); without, `fresh()` asks again when the table has aged past
    `refresh_s`, so that a process idle most of the time asks nothing while it is idle."""

    def __init__(self, config: GatewayConfig, refresh_s: float = 2.0, background: bool = True):
        self.state = state_actor(config)
        self.refresh_s = refresh_s
        self.table: dict[tuple[str, str], int] = {}
        self._asked_at = -math.inf
        self._refresher = (run_every(refresh_s, self._refresh, "refreshing learned output lengths", first_now=True)
                           if background else None)

    async def _refresh(self) -> None:
        self.table = await self.state.output_lengths.remote()
        self._asked_at = time.monotonic()

    async def fresh(self) -> dict[tuple[str, str], int]:
        """The table, asked again if it is older than `refresh_s`; the last one while the state
        actor cannot answer (it restarts: a length estimate is no reason to fail a request)."""
        if time.monotonic() - self._asked_at >= self.refresh_s:
            try:
                await self._refresh()
            except RayError as exc:
                logger.warning("learned output lengths unavailable, using the last ones: %s", exc)
        return self.table
