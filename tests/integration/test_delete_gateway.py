"""Deleting a gateway app from a Ray that goes on running takes its detached actors with it
(they outlive a redeploy on purpose, so `serve.delete` alone leaves them running their loops),
and leaves every other gateway's alone."""

from __future__ import annotations

import pytest
import ray

from sollol_serve.names import NAMESPACE, is_gateway_actor
from tests.helpers import side_app, wait_until

pytestmark = pytest.mark.integration

NODE_ARGS = ["--kind", "ollama", "--models", "llama3.2", "--slots", "1"]


def _actors(state_actor_name: str) -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == NAMESPACE and is_gateway_actor(a["name"], state_actor_name)}


def test_a_deleted_gateway_leaves_no_actor_and_the_others_keep_theirs(gateway):
    others = _actors(gateway.config.state_actor_name)
    with side_app(gateway, "deleted", NODE_ARGS, ("del1",), slots=1) as app:
        state = app.config.state_actor_name
        assert {state, f"{state}_metrics", f"{state}_cache", f"{state}_sessions"} <= _actors(state)
    wait_until(lambda: not _actors(state), 30, "the deleted gateway's actors gone")
    assert _actors(gateway.config.state_actor_name) == others
