"""What each caller sees of the cluster's insides: admins everything, others names only."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sollol_serve.api.auth import ANONYMOUS, Principal
from sollol_serve.api.visibility import shown_nodes, shown_routing, shown_shards
from sollol_serve.config import NodeConfig
from sollol_serve.names import host_port

READER = Principal("grafana", "reader", frozenset({"stats", "models"}))
NODES = [{"name": "gpu-1", "url": "http://ops:pw@10.0.0.3:11434", "worker_ip": "10.0.0.3", "worker_node_id": "ab",
          "healthy": True, "slots": 4}]
SHARDS = [{"model": "big:latest", "state": "running", "url": "http://127.0.0.1:5000", "pid": 42, "log": "/tmp/x.log",
           "layers": 32, "backends": [{"address": "10.0.0.4:50052", "pid": 7, "node_id": "cd", "free_mb": 900}]}]


def test_admins_see_addresses_others_see_names():
    routing = {"node": "gpu-1", "host": "10.0.0.3:11434", "score": 1.0}
    assert shown_routing(routing, ANONYMOUS) == routing  # keyless: every caller is admin
    assert shown_routing(routing, READER) == {"node": "gpu-1", "host": "gpu-1", "score": 1.0}
    assert shown_routing({"node": "n", "cache": "hit"}, READER) == {"node": "n", "cache": "hit"}
    assert shown_nodes(NODES, ANONYMOUS) == NODES
    assert shown_nodes(NODES, READER) == [{"name": "gpu-1", "healthy": True, "slots": 4}]
    assert shown_shards(SHARDS, READER) == [{"model": "big:latest", "state": "running", "layers": 32,
                                             "backends": [{"free_mb": 900}]}]
    assert shown_shards(SHARDS, ANONYMOUS) == SHARDS


def test_host_is_host_and_port_without_credentials():
    assert host_port("http://ops:pw@10.0.0.3:11434") == "10.0.0.3:11434"
    assert host_port("https://gpu.lan") == "gpu.lan"


def test_a_node_has_one_credential_at_most():
    assert NodeConfig(name="a", url="http://10.0.0.3:8080", api_key="s3cr3t").api_key == "s3cr3t"
    assert "s3cr3t" not in repr(NodeConfig(name="a", url="http://10.0.0.3:8080", api_key="s3cr3t"))
    with pytest.raises(ValidationError, match="not both"):
        NodeConfig(name="a", url="http://u:p@10.0.0.3:8080", api_key="k")
