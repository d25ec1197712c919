"""Planning a shard group, without Ray: which hosts, what split, which command lines.

A shard group is one `llama-server` (the coordinator of the model) that offloads every layer
(`-ngl 99`) to two or more `ggml-rpc-server` backends on other Ray hosts, with the layers split
in proportion to each backend's free memory.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Host:
    """A Ray node willing to host an rpc-server."""

    node_id: str
    ip: str
    free_mb: int


@dataclass(frozen=True, slots=True)
class Backend:
    host: Host
    port: int

    @property
    def address(self) -> str:
        return f"{self.host.ip}:{self.port}"


class PlanError(ValueError):
    """No shard group can be formed (too few willing hosts, or too little memory)."""


def choose_hosts(hosts: list[Host], count: int, needed_mb: int) -> list[Host]:
    """The `count` willing hosts with the most free memory, if together they hold the model."""
    if len(hosts) < count:
        raise PlanError(f"a shard group needs {count} hosts with the rpc label; {len(hosts)} found")
    chosen = sorted(hosts, key=lambda h: (-h.free_mb, h.ip))[:count]
    total = sum(h.free_mb for h in chosen)
    if total < needed_mb:
        raise PlanError(f"the {count} hosts with most free memory have {total} MB together; the model needs {needed_mb}")
    return chosen


def tensor_split(backends: list[Backend]) -> list[float]:
    """Each backend's share of the layers, proportional to its free memory (sums to 1)."""
    total = sum(max(b.host.free_mb, 1) for b in backends)
    return [round(max(b.host.free_mb, 1) / total, 4) for b in backends]


def rpc_server_command(binary: Path, bind: str, port: int) -> list[str]:
    return [str(binary), "-H", bind, "-p", str(port)]


def llama_server_command(binary: Path, model: Path, alias: str, backends: list[Backend], host: str, port: int,
                         ctx_size: int, parallel: int, extra: list[str]) -> list[str]:
    split = ",".join(f"{share:g}" for share in tensor_split(backends))
    return [str(binary), "-m", str(model), "--alias", alias, "--host", host, "--port", str(port),
            "--rpc", ",".join(b.address for b in backends), "-ngl", "99", "--tensor-split", split,
            "-c", str(ctx_size), "-np", str(parallel), "--metrics", "-lv", str(LLAMA_SERVER_VERBOSITY), *extra]


# llama-server's log level: 3 (info) logs the model load (the RPC buffers are read from it) and
# each request's slot and timings, never a prompt or an answer (4, trace, and up do).
LLAMA_SERVER_VERBOSITY = 3
# The api key goes in llama-server's environment (only its own user can read it), not its
# command line (every local user can read that in /proc/<pid>/cmdline).
API_KEY_ENV = "LLAMA_API_KEY"


def bind_refusal(address: str, allow_public: bool = False) -> str | None:
    """Why a shard group's process must not listen on `address`, or None if it may: an
    rpc-server has no authentication (whoever reaches it runs code in it), so only loopback
    and private addresses are allowed, a wildcard or public one only with `allow_public`."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return f"{address!r} is not an IP address"
    if allow_public:
        return None
    if ip.is_unspecified:
        return f"{address} is a wildcard address (every interface)"
    if not (ip.is_loopback or ip.is_private) or ip.is_multicast or ip.is_link_local:
        return f"{address} is not a loopback or private address"
    return None


_RPC_BUFFER = re.compile(r"RPC\d*\[(?P<address>[^\]]+)\]\s+model buffer size\s*=\s*(?P<mib>[\d.]+)\s*MiB")


def rpc_buffers(log: str) -> dict[str, float]:
    """MiB of model weights llama-server put on each RPC backend, from its log."""
    return {m["address"]: float(m["mib"]) for m in _RPC_BUFFER.finditer(log)}


_METRIC = re.compile(r"^llamacpp:(?P<name>prompt_tokens_total|tokens_predicted_total)\s+(?P<value>[\d.eE+]+)$", re.M)


def activity(metrics: str) -> float:
    """A number that grows with every token llama-server processes (its /metrics counters)."""
    return sum(float(m["value"]) for m in _METRIC.finditer(metrics))
