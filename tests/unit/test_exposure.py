"""The start-up audit: one line per listener, saying who can reach it."""

from __future__ import annotations

from sollol_serve.api.auth import hash_key
from sollol_serve.config import GatewayConfig
from sollol_serve.exposure import exposure_lines, reach


def test_reach_of_each_kind_of_address():
    assert reach("127.0.0.1") == reach("localhost") == reach("::1") == "this machine only"
    assert reach("0.0.0.0") == reach("::") == "every interface"
    assert reach("10.0.0.3") == "the private network"
    assert reach("8.8.8.8") == "the internet, if routed"


def test_the_shipped_default_and_a_sharded_open_gateway():
    shipped = exposure_lines(GatewayConfig(), "127.0.0.1", 8000, None)
    assert shipped[0] == ("exposed: HTTP API and dashboard on 127.0.0.1:8000 (this machine only; "
                          "no API keys: every caller is admin)")
    assert len(shipped) == 2 and "RAY_AUTH_MODE=token" in shipped[1]
    config = GatewayConfig.model_validate({
        "security": {"keys": [{"name": "a", "sha256": hash_key("k"), "role": "admin"}]},
        "shard": {"models": ["big"]}})
    lines = exposure_lines(config, "0.0.0.0", 8000, 9000)
    assert "every interface; 1 API keys" in lines[0]
    assert any("gRPC on port 9000" in line for line in lines)
    assert any("ggml-rpc-server (no authentication)" in line and "firewall it" in line for line in lines)
    assert any("llama-server" in line and "api key" in line for line in lines)
