"""Helpers for the child processes the gateway starts (simulated nodes, llama.cpp servers)."""

from __future__ import annotations

import ctypes
import random
import signal
import socket
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM when the thread that started it dies,
    so a demo, test or actor that crashes leaves no server behind."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# Ray's workers take ports 10002-19999 by default, and its gRPC servers (and every client
# socket on the machine) take the kernel's ephemeral range: a port chosen from either can be
# taken by Ray between choosing it and binding it (seen in CI: HAProxy found its HTTP port in
# use). Ports handed out are chosen between the two.
_RESERVED_BELOW = 20000
_handed_out: set[int] = set()


def _ephemeral_low(default: int = 32768) -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, outside Ray's worker range and the kernel's ephemeral range, not
    handed out before by this process."""
    low, high = _RESERVED_BELOW, _ephemeral_low() - 1
    rng = random.Random()
    for _ in range(200 if high > low else 0):
        port = rng.randint(low, high)
        if port not in _handed_out and _bindable(host, port):
            _handed_out.add(port)
            return port
    with socket.socket() as s:  # no room between the ranges: let the kernel choose
        s.bind((host, 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, signum: int = signal.SIGTERM, wait_s: float = 10.0) -> None:
    """Ask a child process to stop (`signum`), and kill it if it has not within `wait_s`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signum)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
