"""The requests a worker has sent its node and not yet seen end, in the order sent.

A node starts requests in the order they arrive (Ollama's and llama-server's queues are
FIFO), so when one shows its first byte, every request sent before it that is still
unfinished is running beside it. One worker carries all of the gateway's traffic to its
node, so that count is a proof of parallel slots that no race between messages can fake:
the router hears of a request's end later, batched, and from its own clock a request that
ended just before another's first byte looks as if it were still running.
"""

from __future__ import annotations

import itertools


class InFlight:
    def __init__(self) -> None:
        self._serials = itertools.count()
        self._active: dict[int, None] = {}  # insertion order = the order sent

    def begin(self) -> int:
        """A request is being sent: its serial."""
        serial = next(self._serials)
        self._active[serial] = None
        return serial

    def end(self, serial: int) -> None:
        """The node finished it, failed it, or it was given up (twice is harmless)."""
        self._active.pop(serial, None)

    def running_with(self, serial: int) -> int:
        """The unfinished requests sent no later than `serial`, itself included."""
        return sum(1 for other in self._active if other <= serial)
