"""Which process holds each ticket a router issued, so that a holder's death frees its slots.

A ticket's slot comes back when its holder (the Ingress or BatchJobs replica that carries the
request to the node) reports the try's outcome. A holder killed mid-request reports nothing:
without this its slots would stay taken for good, and a few such deaths leave the router
thinking every node is full (the soak saw the gateway stall after an Ingress kill). The
router checks now and then which holders are still alive (`Router._reclaim_dead_holders`).
"""

from __future__ import annotations

from collections import defaultdict

Flight = tuple[str, int]  # (node, flight id)


class Holders:
    def __init__(self) -> None:
        self._flights: dict[str, set[Flight]] = defaultdict(set)
        self._holder_of: dict[Flight, str] = {}

    def hold(self, holder: str | None, node: str, flight_id: int) -> None:
        if holder is not None:
            self._flights[holder].add((node, flight_id))
            self._holder_of[(node, flight_id)] = holder

    def release(self, node: str, flight_id: int) -> None:
        holder = self._holder_of.pop((node, flight_id), None)
        if holder is not None:
            flights = self._flights[holder]
            flights.discard((node, flight_id))
            if not flights:
                del self._flights[holder]

    def holders(self) -> set[str]:
        return set(self._flights)

    def orphaned(self, alive: set[str]) -> list[Flight]:
        """The flights of holders not in `alive` (forgotten here; the caller frees their slots)."""
        lost = [flight for holder in self.holders() - alive for flight in self._flights[holder]]
        for node, flight_id in lost:
            self.release(node, flight_id)
        return lost
