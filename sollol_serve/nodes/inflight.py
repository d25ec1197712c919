"""The requests a worker has sent its node and not yet seen end, in the order sent.

A node starts requests in the order they arrive (Ollama's and llama-server's queues are
FIFO), so when one shows its first byte, every request sent before it that is still
unfinished is running beside it. One worker carries all of the gateway's traffic to its
node, so that count is a proof of parallel slots that no race between messages can fake:
the router hears of a request's end later, batched, and from its own clock a request that
ended just before another's first byte looks as if it were still running.

A request that did not wait inside the node started as it arrived, beside every earlier one
still running then. How long after its send each of those ended (`ends_after_send`) lets
learning tell "ran beside it" from "ended just as it arrived" (see cluster.learning).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

# Ends remembered for the requests sent beside them (a request outlives its neighbours by
# at most its own timeout; more than this many ends in that time is more than any node).
MAX_ENDS = 4096


class InFlight:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._serials = itertools.count()
        self._active: dict[int, float] = {}  # serial -> sent at; insertion order = the order sent
        self._earlier: dict[int, tuple[int, ...]] = {}  # serial -> unfinished ones sent before it
        self._ended: dict[int, float] = {}  # serial -> ended at (recent ones)

    def begin(self) -> int:
        """A request is being sent: its serial."""
        serial = next(self._serials)
        self._earlier[serial] = tuple(self._active)
        self._active[serial] = self._clock()
        return serial

    def end(self, serial: int) -> None:
        """The node finished it, failed it, or it was given up (twice is harmless)."""
        self._earlier.pop(serial, None)
        if self._active.pop(serial, None) is None:
            return
        self._ended[serial] = self._clock()
        while len(self._ended) > MAX_ENDS:
            del self._ended[next(iter(self._ended))]

    def running_with(self, serial: int) -> int:
        """The unfinished requests sent no later than `serial`, itself included."""
        return sum(1 for other in self._active if other <= serial)

    def ends_after_send(self, serial: int) -> tuple[float | None, ...]:
        """For each request unfinished when `serial` was sent: seconds after that send it was
        seen to end (None: still running). Call before ending `serial`."""
        sent = self._active.get(serial)
        if sent is None:
            return ()
        out: list[float | None] = []
        for other in self._earlier.get(serial, ()):
            if other in self._active:
                out.append(None)
            else:  # forgotten: long ago, taken as ended at once
                out.append(self._ended.get(other, sent) - sent)
        return tuple(out)
