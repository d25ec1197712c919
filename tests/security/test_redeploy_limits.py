"""Limits changed by a redeploy hold at once, without killing any actor: the rate limiter is
detached and outlives the redeploy, and takes the new keys' limits (a key added on redeploy is
limited too, not unlimited)."""

from __future__ import annotations

import httpx
import pytest

from sollol_serve.api.auth import hash_key
from tests.helpers import FAST_HEALTH, wait_until

pytestmark = pytest.mark.integration
OLD, NEW = "sk-sollol-redeploy-old", "sk-sollol-redeploy-new"


ADMIN = "sk-sollol-redeploy-admin"


def _deploy(gateway, keys: list[dict]) -> str:
    from ray import serve

    from sollol_serve.app import build_gateway
    from sollol_serve.config import GatewayConfig

    config = GatewayConfig.model_validate({
        "nodes": [{"name": "fast", "url": gateway.nodes["fast"].url}], "state_actor_name": "sollol_state_redeploy",
        "health": FAST_HEALTH,
        "security": {"keys": [{"name": "root", "sha256": hash_key(ADMIN), "role": "admin"}, *keys]}})
    serve.run(build_gateway(config), name="redeploy", route_prefix="/redeploy")
    url = f"{gateway.url}/redeploy"
    wait_until(lambda: httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {ADMIN}"},
                                 timeout=10).status_code == 200, 30, "the redeployed app healthy")
    return url


def _tags(url: str, key: str) -> int:
    return httpx.get(f"{url}/api/tags", headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code


def test_a_redeploy_with_new_limits_is_enforced_at_once(gateway):
    from sollol_serve.local import delete_gateway

    try:
        url = _deploy(gateway, [
            {"name": "old", "sha256": hash_key(OLD), "role": "user", "requests_per_minute": 2}])
        assert [_tags(url, OLD) for _ in range(3)] == [200, 200, 429]
        # Redeploy: the old key gets a bigger budget, a new key arrives with a small one.
        _deploy(gateway, [
            {"name": "old", "sha256": hash_key(OLD), "role": "user", "requests_per_minute": 100},
            {"name": "new", "sha256": hash_key(NEW), "role": "user", "requests_per_minute": 1}])
        assert _tags(url, OLD) == 200
        assert [_tags(url, NEW) for _ in range(2)] == [200, 429]
    finally:
        delete_gateway("redeploy", "sollol_state_redeploy")
