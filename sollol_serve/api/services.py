"""What the HTTP routes use, and the dependencies that give it to them.

`Services` is built once per Ingress replica (its handles, actors, config); the routes get it
with `Depends(services)`, and a caller's identity with `authorized(permission)`, which also
applies the key's rate limit. Tests override `services` to drive the routes without Ray.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, Request
from ray import serve
from ray.actor import ActorHandle
from ray.serve.handle import DeploymentHandle

from sollol_serve.analysis.output_lengths import OutputLengths
from sollol_serve.api.actor_calls import survive
from sollol_serve.api.auth import SESSION_COOKIE, Authenticator, Principal, Unauthorized
from sollol_serve.api.body import json_object
from sollol_serve.api.origin import check_request_origin
from sollol_serve.api.ratelimit import RateLimited, TooManyInFlight
from sollol_serve.api.recorder import RequestRecorder
from sollol_serve.api.shared_limits import SharedLimits
from sollol_serve.config import GatewayConfig, Permission
from sollol_serve.observability.applications import application_of
from sollol_serve.observability.tracing import span
from sollol_serve.routing.dispatch import Dispatcher


@dataclass
class Services:
    config: GatewayConfig
    router: DeploymentHandle
    batch: DeploymentHandle
    dispatch: Dispatcher  # requests to the node's worker on the router's ticket
    lengths: OutputLengths
    auth: Authenticator
    limiter: SharedLimits | None  # None when no key has a limit
    limited: frozenset[str]  # the keys that have one
    recorder: RequestRecorder
    metrics_book: ActorHandle
    cache: ActorHandle
    sessions: ActorHandle  # the dashboard sessions' secret and revocations
    loopback_bind: bool = True  # Serve's HTTP bind: host names are checked only on loopback
    machine_names: frozenset[str] = frozenset()

    async def body(self, request: Request) -> dict:
        return await json_object(request, self.config.max_body_bytes)

    async def model_body(self, request: Request) -> dict:
        """A request's body with its `model` as the nodes name it (the config's aliases resolved)."""
        body = await self.body(request)
        model = body.get("model")
        if isinstance(model, str) and self.config.aliases and (target := self.config.model_for(model)) != model:
            return {**body, "model": target}
        return body

    async def lease(self, principal: Principal) -> Callable[[], None]:
        """One of the key's `max_concurrent` requests in flight, and how to give it back."""
        if principal.name not in self.limited:
            return _nothing
        lease = await self.limiter.acquire(principal.name, self.config.timeouts.total_s + 60)
        if lease is None:
            raise TooManyInFlight(f"key '{principal.name}' has its most requests in flight; retry when one ends",
                                  retry_after_s=1)
        if not lease:
            return _nothing
        return lambda: self.limiter.release(principal.name, lease)

    def charger(self, principal: Principal) -> Callable[[int], None]:
        """Charges the tokens a response used to its key, if the key is rate limited."""
        if principal.name not in self.limited:
            return lambda tokens: None
        return lambda tokens: self.limiter.charge(principal.name, tokens)


def _nothing() -> None:
    return None


# The dependencies are coroutines: FastAPI runs a plain `def` one in a thread, a hop per request.
async def services() -> Services:
    """This Ingress replica's services."""
    return serve.get_replica_context().servable_object.services


def session_of(request: Request) -> str | None:
    """The session cookie, honoured only on reads: a forged cross-site POST carries it too."""
    return request.cookies.get(SESSION_COOKIE) if request.method in ("GET", "HEAD") else None


async def admit(svc: Services, request: Request, permission: Permission | None) -> Principal:
    """The caller, if its key (or session) has `permission` and its rate limit lets it in."""
    with span("sollol.admission", permission=permission) as admission:
        principal = await _admit(svc, request, permission)
        admission.set_attribute("sollol.key", principal.name)
    return principal


async def _admit(svc: Services, request: Request, permission: Permission | None) -> Principal:
    principal = svc.auth.authorize(request.headers, permission, session_of(request))
    if principal.session:
        revoked = await survive(lambda: svc.sessions.revoked.remote(principal.session, svc.auth.secret_id),
                                "session store")
        if isinstance(revoked, bytes):  # the session actor restarted: its sessions ended with it
            svc.auth.rekey(revoked)
        if revoked:
            raise Unauthorized("session ended: log in again")
    if principal.name in svc.limited:
        wait = await svc.limiter.admit(principal.name)
        if wait:
            raise RateLimited(f"rate limit of key '{principal.name}' reached; retry in {wait} s", retry_after_s=wait)
    request.state.principal = principal
    request.state.application = application_of(principal.name if svc.auth.enabled else None, request.headers)
    return principal


async def same_site(request: Request, svc: Services = Depends(services)) -> None:
    """Every route's first dependency: refuse a hostile page's request before anything else."""
    security = svc.config.security
    check_request_origin(request.headers.get("origin"), request.headers.get("host"), security.allowed_origins,
                         svc.loopback_bind, security.allowed_hosts, svc.machine_names)


def authorized(permission: Permission | None):
    """A route's dependency: the caller, admitted for `permission` (None: any valid key)."""
    async def dependency(request: Request, svc: Services = Depends(services)) -> Principal:
        return await admit(svc, request, permission)

    return Depends(dependency)


async def counted(request: Request, svc: Services = Depends(services)) -> None:
    """For the inference routes: start the clock, and have an error answer counted in the
    metrics too (an auth or rate-limit refusal included)."""
    request.state.started = time.perf_counter()
    request.state.recorder = svc.recorder
    request.state.application = application_of(None, request.headers)  # until a key says who it is
