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

The predictor believes only `proven`. Requests above it go as probes, while the ceiling says the
node may have more: a deliberate, counted exploration that opens up as fast as the node proves
it can take more (`probes_allowed`), like TCP's slow start:

- A node that has shown it queues (`queues`) is explored one probe at a time, and not at all
  up to its ceiling: it never gets a stack of requests waiting inside it.
- An Ollama node (FIFO: a request beyond its slots waits for one to end) is also explored one
  probe at a time while it has proved no more than `STEP_UP_TO` slots. Ollama runs one request at a time
  unless `OLLAMA_NUM_PARALLEL` says more, and users who raise it mostly pick 2 or 4: on those,
  no more than one request ever waits inside the node.
- Past that, and from the start on an OpenAI-kind node that does not report its slots (vLLM,
  TGI: they batch continuously), as many probes may be out as have been proved: what may be in
  flight doubles with every round of first bytes that shows no queueing, so a burst to a wide
  node is let through in a few prefills instead of one prefill per request. The first probe
  that waits inside the node ends this: the node queues, and is explored one at a time after.
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
# A FIFO node is explored one probe at a time while it has proved no more than this many slots.
STEP_UP_TO = 4


# A request that ended this long after another's send, plus what that one may have waited
# unseen (`queue_tolerance_s`), was still running when the other started: the worker sees an
# end a little after the node (its loop, the hop), and a send reaches the node a little later.
BESIDE_SLACK_S = 0.1


def queue_tolerance_s(work_s: float, node_clock: bool = True) -> float:
    """The longest wait inside the node that does not count as having queued."""
    if node_clock:
        return max(QUEUED_SHARE * work_s, QUEUED_MIN_S)
    return max(WALL_QUEUED_SHARE * work_s, WALL_QUEUED_MIN_S)


def has_queued(queued_s: float, work_s: float, node_clock: bool = True) -> bool:
    return queued_s > queue_tolerance_s(work_s, node_clock)


def ran_beside(ends_after_send: tuple[float | None, ...], work_s: float, node_clock: bool = True) -> int:
    """Requests a request that did not queue ran beside (itself included): those unfinished
    as it was sent that ended after it had surely started (None: still running at its end)."""
    started_by = queue_tolerance_s(work_s, node_clock) + BESIDE_SLACK_S
    return 1 + sum(1 for end in ends_after_send if end is None or end > started_by)


@dataclass(slots=True)
class Capacity:
    """One node's learned parallel capacity."""

    proven: int = 1
    ceiling: int | None = None  # the node has fewer slots than this
    ceiling_at: float = 0.0  # wall-clock time the ceiling was last seen
    probes: int = 0  # explorations sent above `proven`
    probes_proved: int = 0  # of which showed a slot more
    probes_queued: int = 0  # of which waited inside the node
    queues: bool = False  # a request sent there was seen waiting inside it

    def may_probe(self, now: float) -> bool:
        """Whether one request above `proven` may go to find out if the node has more."""
        if self.proven >= MAX_SLOTS:
            return False
        return self.ceiling is None or self.ceiling > self.proven + 1 or now - self.ceiling_at > CEILING_TTL_S

    def probes_allowed(self, now: float, fifo: bool) -> int:
        """How many probes may be out at once (above `proven`, not yet proved): one on a node
        that has shown it queues, or on a FIFO node that has proved no more than `STEP_UP_TO`;
        else as many as it has proved (doubling)."""
        if not self.may_probe(now):
            return 0
        if self.queues or (fifo and self.proven <= STEP_UP_TO):
            return 1
        return min(self.proven, MAX_SLOTS - self.proven)

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
        self.queues = True
        if concurrent <= self.proven:
            # It queued where we had seen room: the node has fewer slots now (reconfigured,
            # or serving other clients too), or that wait was something else (a cold load it
            # shared). Believe less, but set no ceiling: probing finds out which.
            self.proven = max(1, concurrent - 1)
            return
        if self.ceiling is None or concurrent < self.ceiling or at - self.ceiling_at > CEILING_TTL_S:
            self.ceiling = concurrent  # several probes of one round may queue: the lowest tells
        self.ceiling_at = at

    def as_dict(self) -> dict:
        return {"proven": self.proven, "ceiling": self.ceiling, "probes": self.probes,
                "probes_proved": self.probes_proved, "probes_queued": self.probes_queued, "queues": self.queues}
