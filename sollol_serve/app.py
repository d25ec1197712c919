"""`build_app(args)`: the Serve application that `serve_config.yaml` imports.

Ingress (asks the Router, state in a named actor, for a ticket) -> the ticket's OllamaWorker,
one per node; BatchJobs runs batch jobs the same way.
"""

from __future__ import annotations

import ray
from ray.serve import Application
from ray.serve.config import RequestRouterConfig
from ray.serve.schema import LoggingConfig

from sollol_serve.api.ingress import Ingress
from sollol_serve.batch.deployment import BatchJobs
from sollol_serve.config import GatewayConfig, LoggingSettings, load_config
from sollol_serve.nodes.placement import worker_resources
from sollol_serve.nodes.worker import OllamaWorker
from sollol_serve.routing.replica_choice import OwnerFirstRequestRouter
from sollol_serve.routing.router import Router


def worker_deployment_name(node_name: str) -> str:
    return f"OllamaWorker-{node_name}"


def replica_logging(settings: LoggingSettings, hop: bool) -> LoggingConfig:
    """Serve's logging config of a replica. The internal hops log no line per call unless
    asked (`logging.every_hop`): the Ingress's access log says what a client asked, and a
    line per hop costs each replica CPU on every request."""
    return LoggingConfig(encoding=settings.encoding, log_level=settings.level,
                         enable_access_log=settings.every_hop or not hop)


# Serve notices a replica that died (an OOM kill) at its next health check, and only then starts
# another: at Serve's default of 10 s, the only Ingress or Router replica was gone for up to 10 s.
# A check a second costs each replica a trivial call.
HEALTH_CHECK_PERIOD_S = 1.0


def build_gateway(config: GatewayConfig) -> Application:
    sizing = config.sizing
    dumped = config.model_dump(mode="json")
    cluster = ray.cluster_resources() if ray.is_initialized() else {}
    hop, edge = replica_logging(config.logging, hop=True), replica_logging(config.logging, hop=False)
    workers = {
        node.name: OllamaWorker.options(
            name=worker_deployment_name(node.name),
            max_ongoing_requests=sizing.max_ongoing_requests, logging_config=hop,
            health_check_period_s=HEALTH_CHECK_PERIOD_S,
            # On the node's own Ray host when one declares the node's label.
            ray_actor_options={"num_cpus": 0,
                               "resources": worker_resources(node.name, node.ray_resource, cluster)},
        ).bind(node.model_dump(mode="json"), dumped)
        for node in config.nodes
    }
    router = Router.options(
        num_replicas=sizing.router_replicas, max_ongoing_requests=sizing.max_ongoing_requests, logging_config=hop,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        # a try's outcome goes back to the replica that holds its slot
        request_router_config=RequestRouterConfig(request_router_class=OwnerFirstRequestRouter),
    ).bind(dumped, workers)
    batch = BatchJobs.options(logging_config=edge).bind(router, workers, dumped)
    return Ingress.options(
        num_replicas=sizing.ingress_replicas, max_ongoing_requests=sizing.max_ongoing_requests,
        health_check_period_s=HEALTH_CHECK_PERIOD_S, logging_config=edge,
    ).bind(router, workers, batch, dumped)


def build_app(args: dict) -> Application:
    """Application builder for `serve run` / `serve deploy` (args from serve_config.yaml)."""
    config = load_config(args)
    if not config.nodes:
        raise ValueError("no nodes configured: list them under args.nodes in serve_config.yaml or in SOLLOL_NODES")
    return build_gateway(config)
