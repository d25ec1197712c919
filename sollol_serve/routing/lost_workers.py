"""Nodes whose worker process died: routed around until a newer worker reports.

A node's worker is one Serve replica. When it dies (an OOM kill), Serve starts another within
seconds, but until then a call to it waits in the handle for a replica that is not there: a
request routed to that node stalls for the whole restart. The dispatcher tells the router
that issued the ticket; the router keeps the node out of its choices until a worker started
after the one it saw die has reported the node (`NodeView.worker_started_at`). The node itself
is fine, so this is no fault of its: no breaker counts it.
"""

from __future__ import annotations

from sollol_serve.cluster.state import NodeView


class LostWorkers:
    def __init__(self) -> None:
        # node -> start time of the worker seen dying (None: it had not reported yet)
        self._dead: dict[str, float | None] = {}

    def died(self, view: NodeView) -> None:
        """The worker that last reported `view`'s node died."""
        self._dead[view.name] = view.worker_started_at
        view.worker_down = True

    def mark(self, snapshot: dict[str, NodeView]) -> None:
        """Flag the views whose worker is still the dead one; forget those with a new one."""
        for name in list(self._dead):
            view = snapshot.get(name)
            if view is None:
                del self._dead[name]
                continue
            dead = self._dead[name]
            if view.worker_started_at is not None and (dead is None or view.worker_started_at > dead):
                del self._dead[name]  # a worker started since has reported: route to it again
            else:
                view.worker_down = True

    def __contains__(self, name: str) -> bool:
        return name in self._dead
