"""Priority levels by name and by role, with the original SOLLOL's names and numbers
(`from sollol.priority_helpers import Priority, get_priority_for_role` keeps working with
the package name changed).

The gateway's priorities run 1-10, 10 most urgent; 9 and above may be hedged (tried on a
second node when the first is slow), so URGENT and CRITICAL cost duplicate work.
"""

from __future__ import annotations

from enum import IntEnum


class Priority(IntEnum):
    BATCH = 1  # can wait for any spare slot
    LOWEST = 2
    LOW = 3  # background work
    BELOW_NORMAL = 4
    NORMAL = 5  # the default
    ABOVE_NORMAL = 6
    HIGH = 7  # user-facing
    HIGHER = 8  # interactive
    URGENT = 9  # a fast answer is needed (hedged)
    CRITICAL = 10  # jumps everything (hedged)


# Agent roles as SynapticLlamas-style multi-agent code names them, and the original's numbers.
ROLE_PRIORITIES: dict[str, int] = {
    "researcher": Priority.HIGHER, "analyst": Priority.HIGHER, "assistant": Priority.HIGHER,
    "qa": Priority.HIGHER, "interactive": Priority.URGENT, "realtime": Priority.CRITICAL,
    "critic": Priority.HIGH, "reviewer": Priority.HIGH, "editor": Priority.ABOVE_NORMAL,
    "summarizer": Priority.NORMAL, "classifier": Priority.NORMAL, "extractor": Priority.NORMAL,
    "analysis": Priority.NORMAL, "indexer": Priority.LOW, "crawler": Priority.LOW,
    "background": Priority.LOWEST, "batch": Priority.BATCH,
}


def get_priority_for_role(role: str, default: int = Priority.NORMAL) -> int:
    """The priority an agent of this role should ask for (case and spaces ignored)."""
    return int(ROLE_PRIORITIES.get(role.strip().lower(), default))
