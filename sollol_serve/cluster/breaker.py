"""A circuit breaker per node: stop sending work to a node that keeps failing.

closed -> open after `failures` node faults in a row; open -> half_open once `open_s` has
passed (or at once when a health probe finds the node answering again); half_open lets one
trial request through per router: success closes the breaker, failure opens it again for
twice as long (up to `max_open_s`). Pure logic: the state actor owns one per node and every
router sees its state in the snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int = 3
    open_s: float = 5.0
    max_open_s: float = 60.0


DEFAULT_POLICY = BreakerPolicy()


@dataclass(slots=True)
class Breaker:
    policy: BreakerPolicy
    consecutive_failures: int = 0
    opened_at: float | None = None  # None = not open
    open_for_s: float = 0.0
    trial: bool = False  # half-open: the next outcome decides

    def state(self, now: float) -> BreakerState:
        if self.trial:
            return "half_open"
        if self.opened_at is None:
            return "closed"
        if now - self.opened_at >= self.open_for_s:
            return "half_open"
        return "open"

    def record(self, ok: bool, now: float) -> None:
        """A request's outcome on the node (node faults only; client errors don't count)."""
        state = self.state(now)
        if ok:
            self.consecutive_failures = 0
            if state != "open":  # a late success from before the opening proves nothing
                self._close()
            return
        self.consecutive_failures += 1
        if state == "half_open":
            self._open(now, min(max(self.open_for_s, self.policy.open_s) * 2, self.policy.max_open_s))
        elif state == "closed" and self.consecutive_failures >= self.policy.failures:
            self._open(now, self.policy.open_s)

    def probe_succeeded(self, now: float) -> None:
        """The node answers its health check again: let a trial request find out the rest."""
        if self.state(now) == "open":
            self.trial = True

    def _open(self, now: float, for_s: float) -> None:
        self.opened_at, self.open_for_s, self.trial = now, for_s, False

    def _close(self) -> None:
        self.opened_at, self.open_for_s, self.trial = None, 0.0, False
