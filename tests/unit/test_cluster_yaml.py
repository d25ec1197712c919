"""cluster.yaml is a launcher config Ray accepts, and every host starts Ray with its label."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


def _config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_ray_validates_cluster_yaml_as_written_and_as_prepared():
    config = _config()
    validate_config(config)  # Ray's own JSON schema: raises on an unknown or mistyped field
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "local" and len(config["provider"]["worker_ips"]) >= 1


def _resources(command: str, hostname: str) -> dict:
    args = shlex.split(command.replace("$(hostname)", hostname))
    return json.loads(next(a.split("=", 1)[1] for a in args if a.startswith("--resources=")))


def test_every_host_starts_ray_with_its_sollol_node_label():
    config = _config()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if c.startswith("ray start"))
        assert _resources(start, "gpu-1") == {"sollol-node:gpu-1": 1}
    assert "--head" in config["head_start_ray_commands"][-1]


def test_setup_installs_sollol_ollama_and_the_llama_cpp_binaries():
    setup = "\n".join(_config()["setup_commands"])
    assert "sollol_serve" in setup and "ollama" in setup
    assert "sollol build-llamacpp" in setup  # the same command a user runs by hand
