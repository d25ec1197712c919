"""How many requests a node serves at once, learned from what it shows.

Ollama does not report its parallel slots (llama-server does: /props, /slots). For a node
that doesn't tell, two facts are kept:

- `proven`: the most requests seen running on the node at once without waiting inside it.
  A request proves its concurrency when the node's own timings show no queue time (total
  minus load, prompt-eval and eval durations), or, earlier, when its first byte arrives while
  every other request sent there before it is still running (a FIFO node starts a queued
  request only when one of those finishes). Either proves no more than the node's worker
  counted running at once (`nodes.inflight`): the router hears of a request's end later,
  batched, and would otherwise credit the node with a slot a request had just freed.
- `ceiling`: the fewest concurrent requests at which the node was seen to queue: it has fewer
  slots than that. Forgotten after `CEILING_TTL_S`, so a node that was reconfigured, or that
  was busy with other clients, is explored again.

The predictor believes only `proven`. One request above it at a time may go as a probe, while
the ceiling says the node may have more: a deliberate, counted exploration. So a node never
has more than one request stacked above what it has proved, and a node that has shown it
queues gets none.
"""

from __future__ import annotations

from dataclasses import dataclass

# A request that waited longer than this inside the node, or than this share of its work,
# has queued. By the node's own clock the figure is exact but for the node's bookkeeping; by
# the gateway's wall clock it carries the hops, so it is read more loosely.
QUEUED_MIN_S = 0.05
QUEUED_SHARE = 0.05
WALL_QUEUED_MIN_S = 0.1
WALL_QUEUED_SHARE = 0.25
CEILING_TTL_S = 300.0
MAX_SLOTS = 1024


def has_queued(queued_s: float, work_s: float, node_clock: bool = True) -> bool:
    if node_clock:
        return queued_s > max(QUEUED_SHARE * work_s, QUEUED_MIN_S)
    return queued_s > max(WALL_QUEUED_SHARE * work_s, WALL_QUEUED_MIN_S)


@dataclass(slots=True)
class Capacity:
    """One node's learned parallel capacity."""

    proven: int = 1
    ceiling: int | None = None  # the node has fewer slots than this
    ceiling_at: float = 0.0  # wall-clock time the ceiling was last seen
    probes: int = 0  # explorations sent above `proven`
    probes_proved: int = 0  # of which showed a slot more
    probes_queued: int = 0  # of which waited inside the node

    def may_probe(self, now: float) -> bool:
        """Whether one request above `proven` may go to find out if the node has more."""
        if self.proven >= MAX_SLOTS:
            return False
        return self.ceiling is None or self.ceiling > self.proven + 1 or now - self.ceiling_at > CEILING_TTL_S

    def ran(self, concurrent: int) -> bool:
        """`concurrent` requests (this one included) ran at once without queueing. True if
        that proves more than was known."""
        if concurrent <= self.proven:
            return False
        self.proven = min(concurrent, MAX_SLOTS)
        if self.ceiling is not None and self.ceiling <= self.proven:
            self.ceiling = None  # the node has grown (or the old reading was wrong)
        return True

    def queued(self, concurrent: int, at: float) -> None:
        """A request sent when `concurrent` were in flight waited inside the node."""
        if concurrent <= self.proven:
            # It queued where we had seen room: the node has fewer slots now (reconfigured,
            # or serving other clients too), or that wait was something else (a cold load it
            # shared). Believe less, but set no ceiling: probing finds out which.
            self.proven = max(1, concurrent - 1)
            return
        self.ceiling = concurrent
        self.ceiling_at = at

    def as_dict(self) -> dict:
        return {"proven": self.proven, "ceiling": self.ceiling, "probes": self.probes,
                "probes_proved": self.probes_proved, "probes_queued": self.probes_queued}
