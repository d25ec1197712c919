"""How often a worker probes its node: often while the node is unstable, rarely once it is.

A node that is down, or whose answer just changed, is probed every `probe_min_s` so that its
recovery is noticed at once; each probe that finds it healthy and unchanged stretches the
interval by half, from `probe_interval_s` up to `probe_max_s`.
"""

from __future__ import annotations

from collections.abc import Hashable

from sollol_serve.config import HealthConfig

STRETCH = 1.5


class ProbeSchedule:
    def __init__(self, config: HealthConfig):
        self.config = config
        self.interval_s = config.probe_interval_s
        self._last: Hashable | None = None

    def observe(self, healthy: bool, fingerprint: Hashable) -> None:
        """A probe's result; `fingerprint` is what would count as a change (health, models)."""
        changed = fingerprint != self._last
        self._last = fingerprint
        if not healthy or changed:
            self.interval_s = self.config.probe_min_s
        else:
            stretched = max(self.interval_s * STRETCH, self.config.probe_interval_s)
            self.interval_s = min(stretched, self.config.probe_max_s)

    def disturbed(self) -> None:
        """A request just failed to reach the node: look again soon."""
        self.interval_s = self.config.probe_min_s
