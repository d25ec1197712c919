"""The dashboard sessions' shared secret and revocations, in one detached actor per gateway so
every Ingress replica signs and checks alike. The secret is random and never leaves Ray: a
restart of the actor (killed, or Ray restarted) makes a new one and forgets the revocations,
so it ends every session, the safe way to fail. An Ingress learns of the new secret at its
next session check (`revoked` hands it over) and signs with it from then on."""

from __future__ import annotations

import hashlib
import secrets
import time

import ray
from ray.actor import ActorHandle

from sollol_serve.api.auth import SESSION_TTL_S
from sollol_serve.names import named_actor


class Revocations:
    """Session ids logged out before their expiry, forgotten once no token of theirs can be
    valid any more (expiries are capped at the session TTL)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def revoke(self, session: str, now: float) -> None:
        self._prune(now)
        self._until[session] = now + SESSION_TTL_S

    def revoked(self, session: str) -> bool:
        return session in self._until

    def __len__(self) -> int:
        return len(self._until)

    def _prune(self, now: float) -> None:
        for session in [s for s, until in self._until.items() if until <= now]:
            del self._until[session]


@ray.remote(num_cpus=0, max_restarts=-1)
class SessionActor:
    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)
        self._revocations = Revocations()

    def secret(self) -> bytes:
        return self._secret

    def revoke(self, session: str) -> None:
        self._revocations.revoke(session, time.time())

    def revoked(self, session: str, secret_id: str) -> bool | bytes:
        """Whether the session was logged out; this actor's secret instead if the caller signs
        with another (an earlier incarnation's, whose revocations are gone: its session ends)."""
        if secret_id != hashlib.sha256(self._secret).hexdigest()[:16]:
            return self._secret
        return self._revocations.revoked(session)


def session_actor(state_actor_name: str) -> ActorHandle:
    return named_actor(SessionActor, f"{state_actor_name}_sessions")
