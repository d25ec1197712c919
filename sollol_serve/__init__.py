"""sollol_serve: SOLLOL rebuilt as a Ray Serve application.

The original SOLLOL's Python API is importable from the package root, as its docs wrote it
(`from sollol_serve import OllamaPool, HybridRouter, connect, Priority, get_priority_for_role`).
Those names load on first use (PEP 562), so that the gateway's own processes, which import
this package everywhere, don't load the client.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "OllamaPool": "sollol_serve.pool", "HybridRouter": "sollol_serve.pool",
    "connect": "sollol_serve.client", "connect_async": "sollol_serve.client", "SOLLOLConfig": "sollol_serve.client",
    "SollolError": "sollol_serve.client", "DashboardClient": "sollol_serve.dashboard_client",
    "Priority": "sollol_serve.priority_helpers", "get_priority_for_role": "sollol_serve.priority_helpers",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sollol_serve' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
