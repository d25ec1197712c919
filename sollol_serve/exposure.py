"""What the gateway exposes to the network, one line per listener, for the start-up audit
(the Ingress logs it). Pure: it reads the config and the binds, and judges each address."""

from __future__ import annotations

import ipaddress

from sollol_serve.config import GatewayConfig

RAY_PORTS_NOTE = ("Ray's own ports (GCS 6379, dashboard 8265, raylets, object store) carry no sollol key: keep them "
                  "on the cluster network behind a firewall, and turn on Ray's token authentication "
                  "(RAY_AUTH_MODE=token on every `ray start`)")


def reach(host: str) -> str:
    """Who can connect to a listener bound to `host`."""
    if host in ("localhost", ""):
        return "this machine only" if host else "every interface"
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return "the interfaces that name resolves to"
    if ip.is_unspecified:
        return "every interface"
    if ip.is_loopback:
        return "this machine only"
    return "the private network" if ip.is_private else "the internet, if routed"


def exposure_lines(config: GatewayConfig, http_host: str, http_port: int | None, grpc_port: int | None) -> list[str]:
    keys = (f"{len(config.security.keys)} API keys" if config.security.keys
            else "no API keys: every caller is admin")
    lines = [f"exposed: HTTP API and dashboard on {http_host}:{http_port or 8000} ({reach(http_host)}; {keys})"]
    if grpc_port:
        lines.append(f"exposed: Serve gRPC on port {grpc_port} (every interface; not used by sollol, no keys)")
    shard = config.shard
    if shard.models or shard.gguf_paths:
        where = {"loopback": "127.0.0.1", "node": "each rpc host's cluster address"}.get(shard.bind, shard.bind)
        lines.append(f"exposed: ggml-rpc-server (no authentication) on {where} of hosts with '{shard.rpc_label}' "
                     f"({'this machine only' if shard.bind == 'loopback' else 'the cluster network: firewall it'})")
        lines.append("exposed: llama-server of each shard group on 127.0.0.1 with an api key only the gateway knows")
    lines.append(f"note: {RAY_PORTS_NOTE}")
    return lines
