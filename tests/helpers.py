"""Small helpers the integration tests share."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx


def wait_until(check: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.2) -> None:
    """Poll `check` until it is truthy; fail the test with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(every_s)


def nodes_of(url: str, path: str = "/api/nodes") -> dict[str, dict]:
    """The gateway's nodes by name."""
    return {n["name"]: n for n in httpx.get(url + path, timeout=10).json()["nodes"]}
