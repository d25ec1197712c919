"""Where a node's worker runs: on the Ray host of that node, found by a custom resource.

A Ray host that runs an LLM server declares it when it starts Ray:
`ray start --resources='{"sollol-node:gpu-1": 1}'`. The worker of node `gpu-1` then asks for
a sliver of that resource, so Ray places it on that host; it reads that host's GPUs and talks
to the server over loopback. A node whose label no Ray host declares (a machine outside the
Ray cluster) gets a worker that may run anywhere.
"""

from __future__ import annotations

from urllib.parse import urlparse, urlunparse

RESOURCE_PREFIX = "sollol-node:"
# A worker asks for this much of its node's label: any number of workers (e.g. two gateways)
# fit on the host, and the label still pins them there.
RESOURCE_SLIVER = 0.001
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def node_resource(name: str, configured: str | None = None) -> str:
    return configured or f"{RESOURCE_PREFIX}{name}"


def worker_resources(name: str, configured: str | None, cluster_resources: dict[str, float]) -> dict[str, float]:
    """The custom resources the worker of `name` asks for: its label if a Ray host has it.
    A label set explicitly in the config is asked for even before its host has joined."""
    label = node_resource(name, configured)
    if configured or label in cluster_resources:
        return {label: RESOURCE_SLIVER}
    return {}


def local_url(url: str, own_ips: set[str]) -> str:
    """The node's URL as seen from its own host: loopback when the worker runs there, so a
    server bound to 127.0.0.1 (Ollama's default) is reachable and no traffic leaves the host."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if host in LOOPBACK_HOSTS or host not in own_ips:
        return url
    netloc = "127.0.0.1" + (f":{parsed.port}" if parsed.port else "")
    return urlunparse(parsed._replace(netloc=netloc))
