"""Which Router replica a call goes to: a try's outcome goes back to the replica that issued
its ticket (that replica holds the slot and the flight to learn from); everything else is
Serve's power-of-two choice. Serve runs this in the caller's process."""

from __future__ import annotations

from ray.serve._private.request_router.pow_2_router import (
    PowerOfTwoChoicesRequestRouter,
)
from ray.serve.request_router import PendingRequest, RunningReplica


def owner_of(pending: PendingRequest | None) -> str | None:
    return pending.kwargs.get("owner") if pending is not None else None


class OwnerFirstRequestRouter(PowerOfTwoChoicesRequestRouter):
    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        owner = owner_of(pending_request)
        if owner is not None:
            mine = [r for r in candidate_replicas if r.replica_id.unique_id == owner]
            if mine:
                return [mine]
            # The issuing replica is gone, and its slots with it: any replica will drop the outcome.
        return await super().choose_replicas(candidate_replicas, pending_request)
