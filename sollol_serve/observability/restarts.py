"""Deaths of the gateway's own processes, as the Router sees them (the node state actor
restarting, a node's worker replica dying), so that one that keeps dying raises an alert."""

from __future__ import annotations

from collections import deque

KEEP_S = 3600.0  # the longest window an alert may ask about


class RestartLog:
    def __init__(self) -> None:
        self._deaths: dict[str, deque[float]] = {}

    def note(self, process: str, now: float) -> None:
        deaths = self._deaths.setdefault(process, deque())
        deaths.append(now)
        while deaths and deaths[0] < now - KEEP_S:
            deaths.popleft()

    def times(self) -> dict[str, list[float]]:
        """Process -> when it died (wall clock), oldest first."""
        return {process: list(deaths) for process, deaths in self._deaths.items() if deaths}
