"""The SDK's pure parts: priorities by name and role, error parsing from both API formats,
and how the original SOLLOL's calls map onto the gateway's."""

from __future__ import annotations

import pytest

from sollol_serve.client import (
    DEFAULT_URL,
    SOLLOLConfig,
    SollolError,
    _chunk,
    _error,
    chat_call,
    default_models,
    is_embedding_model,
)
from sollol_serve.pool import check_settings
from sollol_serve.priority_helpers import Priority, get_priority_for_role


def test_priorities_have_the_original_sollol_numbers():
    assert [Priority.BATCH, Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.URGENT, Priority.CRITICAL] == \
        [1, 3, 5, 7, 9, 10]


def test_roles_map_to_priorities():
    # The original's examples: researcher 8, editor 6, summarizer 5.
    assert [get_priority_for_role(r) for r in ("researcher", "editor", "summarizer")] == [8, 6, 5]
    assert get_priority_for_role(" Batch ") == Priority.BATCH
    assert get_priority_for_role("unknown") == Priority.NORMAL
    assert get_priority_for_role("unknown", default=2) == 2


def test_errors_in_either_format_become_sollol_errors():
    assert _error(404, '{"error": "model x not found"}').message == "model x not found"
    assert _error(429, '{"error": {"message": "slow down", "type": "rate_limit"}}').message == "slow down"
    assert _error(502, "Bad Gateway").message == "Bad Gateway"
    with pytest.raises(SollolError, match="broke"):
        _chunk('{"error": "stream broke", "done": true}')


def test_a_chat_takes_a_model_and_messages_or_the_originals_bare_prompt():
    messages = [{"role": "user", "content": "hi"}]
    assert chat_call("llama3.2", messages, None) == ("llama3.2", messages)
    assert chat_call(None, messages, "llama3.2") == ("llama3.2", messages)
    assert chat_call("Explain quantum computing", None, None) == (None, [{"role": "user",
                                                                           "content": "Explain quantum computing"}])
    assert chat_call("hi", None, "qwen2.5") == ("qwen2.5", messages)
    with pytest.raises(TypeError, match="twice"):
        chat_call("a", messages, "b")
    with pytest.raises(TypeError, match="prompt"):
        chat_call(None, None, "llama3.2")


def test_default_models_are_the_first_chat_and_the_first_embedding_model_listed():
    tags = [{"name": "nomic-embed-text:latest", "details": {"family": "nomic-bert"}},
            {"name": "llama3.2:latest", "details": {"family": "llama"}},
            {"name": "mxbai-large:latest", "details": {"family": "bert"}},
            {"name": "qwen2.5:0.5b", "details": {"family": "qwen2"}}]
    assert default_models(tags) == ("llama3.2:latest", "nomic-embed-text:latest")
    assert default_models([]) == (None, None)
    assert is_embedding_model({"model": "all-minilm:l6"}) and not is_embedding_model({"name": "llama3.2"})


def test_the_gateway_and_defaults_come_from_the_environment(monkeypatch):
    for name in ("SOLLOL_URL", "SOLLOL_API_KEY", "SOLLOL_MODEL", "SOLLOL_EMBED_MODEL"):
        monkeypatch.delenv(name, raising=False)
    assert SOLLOLConfig().resolved().base_url == DEFAULT_URL
    monkeypatch.setenv("SOLLOL_URL", "http://gw:9000")
    monkeypatch.setenv("SOLLOL_MODEL", "llama3.2")
    resolved = SOLLOLConfig(api_key="k").resolved()
    assert (resolved.base_url, resolved.api_key, resolved.default_model, resolved.default_embed_model) == \
        ("http://gw:9000", "k", "llama3.2", None)
    assert SOLLOLConfig(base_url="http://other").resolved().base_url == "http://other"


def test_the_originals_pool_settings_are_accepted_and_nodes_are_refused():
    check_settings({"enable_cache": True, "enable_hedging": True, "num_rpc_backends": 3})
    with pytest.raises(TypeError, match="SOLLOL_NODES"):
        check_settings({"nodes": [{"host": "gpu-1.local", "port": 11434}]})
    with pytest.raises(TypeError, match="unknown setting"):
        check_settings({"enable_magic": True})
