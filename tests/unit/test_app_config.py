"""serve_config.yaml is a valid Serve config and builds the deployment graph the design names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from sollol_serve.app import build_app, worker_deployment_name

ROOT = Path(__file__).resolve().parents[2]


def _deployment_names(app) -> set[str]:
    names: set[str] = set()

    def walk(deployment) -> None:
        names.add(deployment.name)
        for arg in [*deployment.init_args, *deployment.init_kwargs.values()]:
            for value in arg.values() if isinstance(arg, dict) else [arg]:
                if hasattr(value, "_bound_deployment"):
                    walk(value._bound_deployment)

    walk(app._bound_deployment)
    return names


def test_serve_config_is_valid_for_serve():
    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve_config.yaml").read_text()))
    assert [a.import_path for a in config.applications] == ["sollol_serve.app:build_app"]
    # Tracing is off as shipped; turned on, Serve loads our exporter (a function of no arguments
    # giving span processors) in every process.
    assert config.tracing_config.enabled is False
    from ray.serve._private.tracing_utils import _load_span_processors

    processors = _load_span_processors(config.tracing_config.exporter_import_path, "unused")
    assert [type(p).__name__ for p in processors] == ["BatchSpanProcessor"]
    for processor in processors:
        processor.shutdown()


def test_build_app_makes_the_graph_with_env_nodes(monkeypatch):
    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    monkeypatch.setenv("SOLLOL_NODES", "gpu-1=http://10.0.0.2:11434, http://10.0.0.3:8080")
    names = _deployment_names(build_app(args))
    assert names == {"Ingress", "Router", "BatchJobs", worker_deployment_name("local"),
                     worker_deployment_name("gpu-1"), worker_deployment_name("10.0.0.3-8080")}


def test_build_app_without_nodes_says_so(monkeypatch):
    monkeypatch.delenv("SOLLOL_NODES", raising=False)
    with pytest.raises(ValueError, match="no nodes configured"):
        build_app({})


def test_shipped_config_routes_with_the_default_strategy():
    # What `serve run serve_config.yaml` runs is the best strategy, the one a config
    # without `routing:` gets too (and `sollol demo`, which sets no routing).
    from sollol_serve.config import RoutingConfig, load_config

    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    shipped = load_config(args, environ={}).routing
    assert shipped == RoutingConfig() and shipped.strategy == "intelligent"
    assert all(node.slots is None for node in load_config(args, environ={}).nodes)  # learned, not written
