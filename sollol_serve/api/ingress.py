"""The Ingress deployment: the gateway's HTTP app (`api/http.py`) on Serve.

Each replica builds the `Services` its routes use: the Router and BatchJobs handles, the
dispatcher that carries requests to the nodes' workers, the shared actors (rate limits,
cache, metrics book), and the output lengths it profiles requests with.
"""

import asyncio
import logging

import ray
from ray import serve
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve.handle import DeploymentHandle

from sollol_serve.analysis.output_lengths import OutputLengths
from sollol_serve.api.auth import Authenticator, check_bind, is_loopback
from sollol_serve.api.origin import machine_names
from sollol_serve.api.http import app
from sollol_serve.api.ratelimit import rate_limiter
from sollol_serve.api.shared_limits import SharedLimits
from sollol_serve.api.recorder import RequestRecorder
from sollol_serve.api.services import Services
from sollol_serve.api.sessions import session_actor
from sollol_serve.cache.actor import cache_actor
from sollol_serve.config import GatewayConfig
from sollol_serve.exposure import exposure_lines
from sollol_serve.observability.metrics_actor import metrics_actor
from sollol_serve.routing.dispatch import Dispatcher
from sollol_serve.routing.links import ServeRouterLink, WorkerRegistry, this_replica


async def serve_listeners() -> tuple[str, int, int | None]:
    """Serve's HTTP bind as configured (http_options host and port), and its gRPC port if any."""
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    http = await controller.get_http_config.remote()
    try:
        grpc = await controller.get_grpc_config.remote()
        grpc_port = grpc.port if grpc.grpc_servicer_functions else None
    except Exception:  # an older controller without the call: no gRPC to report
        grpc_port = None
    return http.host, http.port, grpc_port


logger = logging.getLogger("ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Ingress:
    async def __init__(self, router: DeploymentHandle, workers: dict[str, DeploymentHandle], batch: DeploymentHandle,
                       config: dict):
        config = GatewayConfig.model_validate(config)
        bind, port, grpc_port = await serve_listeners()
        check_bind(bind, config.security)
        for line in exposure_lines(config, bind, port, grpc_port):
            logger.warning("start-up audit: %s", line)
        keys = config.security.keys
        limited = frozenset(k.name for k in keys if k.requests_per_minute or k.tokens_per_minute or k.max_concurrent)
        limiter = rate_limiter(f"{config.state_actor_name}_ratelimits", keys) if limited else None
        if limiter is not None:
            await limiter.configure.remote(keys)  # it outlives a redeploy: take the keys' limits again
            limiter = SharedLimits(limiter, keys)
        cache = cache_actor(config.state_actor_name, config.cache)
        await cache.configure.remote(config.cache.model_dump())
        book = metrics_actor(config.state_actor_name)
        await book.configure.remote(config.alerts.model_dump())
        sessions = session_actor(config.state_actor_name)
        auth = Authenticator(config.security, await sessions.secret.remote())
        self.services = Services(
            config=config, router=router, batch=batch,
            dispatch=Dispatcher(ServeRouterLink(router, this_replica()), WorkerRegistry(workers, config.state_actor_name),
                                config.failover),
            lengths=OutputLengths(config), auth=auth,
            limiter=limiter, limited=limited, recorder=RequestRecorder(book, router.model_names.remote),
            metrics_book=book, cache=cache,
            sessions=sessions, loopback_bind=is_loopback(bind), machine_names=await asyncio.to_thread(machine_names))
        await self.services.recorder.refresh_models()
        self._flusher = asyncio.create_task(self.services.recorder.flush_forever())
