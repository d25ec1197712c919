"""sollol_serve.config: the SOLLOL_NODES parser, merging and GatewayConfig validation."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from sollol_serve.config import (
    GatewayConfig,
    NodeConfig,
    RoutingConfig,
    default_node_name,
    load_config,
    merge_nodes,
    parse_nodes,
)


def _pairs(nodes: list[NodeConfig]) -> list[tuple[str, str]]:
    return [(n.name, n.url) for n in nodes]


# --- default_node_name ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://10.0.0.5:11434", "10.0.0.5-11434"),
        ("http://gpu-box:8080/", "gpu-box-8080"),
        ("http://gpu-box", "gpu-box-80"),
        ("https://gpu-box", "gpu-box-443"),
    ],
)
def test_default_node_name(url, name):
    assert default_node_name(url) == name


# --- parse_nodes ----------------------------------------------------------------------
def test_parse_nodes_unnamed_entry_gets_host_port_name():
    assert _pairs(parse_nodes("http://10.0.0.5:11434")) == [("10.0.0.5-11434", "http://10.0.0.5:11434")]


def test_parse_nodes_named_entry():
    nodes = parse_nodes("gpu1=http://10.0.0.5:11434")
    assert _pairs(nodes) == [("gpu1", "http://10.0.0.5:11434")]
    assert nodes[0].kind == "auto"
    assert nodes[0].slots is None


def test_parse_nodes_mixed_whitespace_and_empty_items():
    spec = "  gpu1 = http://a:1/ , ,http://b:2,,  cpu.2=https://c:3  ,"
    assert _pairs(parse_nodes(spec)) == [
        ("gpu1", "http://a:1"),  # name and url stripped, trailing slash removed
        ("b-2", "http://b:2"),
        ("cpu.2", "https://c:3"),
    ]


def test_parse_nodes_empty_spec_is_no_nodes():
    assert parse_nodes("") == []
    assert parse_nodes(" , ,, ") == []


def test_parse_nodes_equals_sign_inside_unnamed_url_query_is_not_a_name():
    # The text before '=' contains '://', so it is a URL, not a name.
    assert _pairs(parse_nodes("http://h:1/x?a=b")) == [("h-1", "http://h:1/x?a=b")]


def test_parse_nodes_named_url_may_contain_equals():
    assert _pairs(parse_nodes("n1=http://h:1/x?a=b")) == [("n1", "http://h:1/x?a=b")]


def test_parse_nodes_per_node_options():
    gpu, cpu, plain = parse_nodes("gpu-1=http://10.0.0.11:11434;slots=4;kind=ollama;ray_resource=gpu-box,"
                                  " http://10.0.0.13:8080 ; kind=openai ,cpu2=http://h:9")
    assert (gpu.name, gpu.url, gpu.slots, gpu.kind, gpu.ray_resource) == (
        "gpu-1", "http://10.0.0.11:11434", 4, "ollama", "gpu-box")
    assert (cpu.name, cpu.slots, cpu.kind, cpu.ray_resource) == ("10.0.0.13-8080", None, "openai", None)
    assert (plain.name, plain.slots, plain.kind) == ("cpu2", None, "auto")


@pytest.mark.parametrize(("spec", "message"), [
    ("a=http://h:1;slot=4", "unknown node option 'slot=4'"),
    ("a=http://h:1;slots", "unknown node option 'slots'"),
    ("a=http://h:1;slots=0", "greater than or equal to 1"),
    ("a=http://h:1;slots=four", "valid integer"),
    ("a=http://h:1;kind=vllm", "'auto', 'ollama' or 'openai'"),
])
def test_parse_nodes_bad_option_is_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_nodes(spec)


def test_parse_nodes_empty_name_falls_back_to_default_name():
    assert _pairs(parse_nodes("=http://h:7")) == [("h-7", "http://h:7")]


@pytest.mark.parametrize("spec", ["n=ftp://h:1", "n=h:1", "n=http://", "not-a-url", "ftp://host:21", "n="])
def test_parse_nodes_bad_url_is_validation_error(spec):
    with pytest.raises(ValidationError) as exc:
        parse_nodes(spec)
    assert "must be http(s)://host:port" in str(exc.value)


@pytest.mark.parametrize("spec", ["n=http://h:abc", "n=http://h:99999"])
def test_parse_nodes_named_url_with_bad_port_is_validation_error(spec):
    with pytest.raises(ValidationError):
        parse_nodes(spec)


@pytest.mark.parametrize("spec", ["http://h:abc", "http://h:99999"])
def test_parse_nodes_unnamed_url_with_bad_port_is_validation_error(spec):
    with pytest.raises(ValidationError):
        parse_nodes(spec)


def test_parse_nodes_unnamed_ipv6_url_is_accepted():
    nodes = parse_nodes("http://[::1]:11434")
    assert [n.url for n in nodes] == ["http://[::1]:11434"]


# --- NodeConfig names -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "node_1.x-y", "A" * 63, "9lives", "shard:llama3.3:70b"])
def test_good_node_names(name):
    assert NodeConfig(name=name, url="http://h:1").name == name


@pytest.mark.parametrize("name", ["", "-lead", ".lead", "_lead", "has space", "a/b", "A" * 64, "ü"])
def test_bad_node_names_rejected(name):
    with pytest.raises(ValidationError) as exc:
        NodeConfig(name=name, url="http://h:1")
    assert "must be 1-63 letters" in str(exc.value)


def test_bad_node_name_in_env_spec_rejected():
    with pytest.raises(ValidationError):
        parse_nodes("bad name=http://h:1")


def test_node_slots_bounds():
    assert NodeConfig(name="a", url="http://h:1", slots=1024).slots == 1024
    with pytest.raises(ValidationError):
        NodeConfig(name="a", url="http://h:1", slots=0)
    with pytest.raises(ValidationError):
        NodeConfig(name="a", url="http://h:1", slots=1025)


def test_node_extra_field_forbidden():
    with pytest.raises(ValidationError):
        NodeConfig(name="a", url="http://h:1", weight=3)


# --- merge_nodes ----------------------------------------------------------------------
def test_merge_nodes_dedupes_by_name_and_by_url():
    configured = [NodeConfig(name="a", url="http://a:1"), NodeConfig(name="b", url="http://b:1")]
    extra = [
        NodeConfig(name="a", url="http://other:9"),  # same name as a config node
        NodeConfig(name="zzz", url="http://b:1"),  # same URL as a config node
        NodeConfig(name="c", url="http://c:1"),  # new
        NodeConfig(name="c", url="http://c:2"),  # same name as an earlier extra
        NodeConfig(name="d", url="http://c:1"),  # same URL as an earlier extra
    ]
    merged = merge_nodes(configured, extra)
    assert _pairs(merged) == [("a", "http://a:1"), ("b", "http://b:1"), ("c", "http://c:1")]


def test_merge_nodes_does_not_mutate_inputs():
    configured = [NodeConfig(name="a", url="http://a:1")]
    merge_nodes(configured, [NodeConfig(name="b", url="http://b:1")])
    assert _pairs(configured) == [("a", "http://a:1")]


# --- load_config ----------------------------------------------------------------------
def test_load_config_defaults_with_empty_environ():
    config = load_config(None, environ={})
    assert config.nodes == []
    assert config.routing.strategy == "intelligent"
    assert config.routing.snapshot_interval_s == 0.5
    assert config.routing.longest_sync_s == 2.5  # an idle router syncs less often ...
    assert RoutingConfig(snapshot_interval_s=10).longest_sync_s == 10  # ... never less than configured
    assert RoutingConfig(snapshot_interval_s=0.2).longest_sync_s == 1.0  # and five times at most
    assert config.health.probe_interval_s == 5.0
    assert config.timeouts.connect_s == 3.0
    assert config.max_body_bytes == 32 * 1024 * 1024
    assert config.sizing.max_ongoing_requests == 512
    assert config.state_actor_name == "sollol_node_state"


def test_load_config_env_nodes_merged_after_config_nodes():
    args = {"nodes": [{"name": "cfg", "url": "http://cfg:1/", "kind": "ollama", "slots": 4}],
            "routing": {"strategy": "round_robin"}}
    environ = {"SOLLOL_NODES": "env1=http://e1:1, http://e2:2, dup=http://cfg:1, cfg=http://x:3"}
    config = load_config(args, environ=environ)
    assert _pairs(config.nodes) == [("cfg", "http://cfg:1"), ("env1", "http://e1:1"), ("e2-2", "http://e2:2")]
    assert config.nodes[0].kind == "ollama" and config.nodes[0].slots == 4
    assert config.routing.strategy == "round_robin"


def test_load_config_reads_only_given_environ():
    config = load_config({"nodes": []}, environ={"OTHER": "x"})
    assert config.nodes == []


def test_load_config_env_only():
    config = load_config({}, environ={"SOLLOL_NODES": "http://h:11434"})
    assert _pairs(config.nodes) == [("h-11434", "http://h:11434")]


def test_load_config_bad_env_node_raises():
    with pytest.raises(ValidationError):
        load_config({}, environ={"SOLLOL_NODES": "n=ftp://h:1"})


def test_duplicate_node_names_rejected():
    args = {"nodes": [{"name": "a", "url": "http://a:1"}, {"name": "b", "url": "http://b:1"},
                      {"name": "a", "url": "http://a:2"}]}
    with pytest.raises(ValidationError) as exc:
        load_config(args, environ={})
    assert "duplicate node names: a" in str(exc.value)
    with pytest.raises(ValidationError):
        GatewayConfig.model_validate(args)


def test_bad_node_name_in_config_rejected():
    with pytest.raises(ValidationError):
        load_config({"nodes": [{"name": "bad/name", "url": "http://a:1"}]}, environ={})


def test_unknown_config_key_and_bad_strategy_rejected():
    with pytest.raises(ValidationError):
        load_config({"nodez": []}, environ={})
    with pytest.raises(ValidationError):
        load_config({"routing": {"strategy": "fastest"}}, environ={})
    with pytest.raises(ValidationError):
        load_config({"max_body_bytes": 10}, environ={})


def test_aliases_name_served_models_in_one_step():
    config = GatewayConfig.model_validate({"aliases": {"gpt-4o-mini": "llama3.2:3b", "embedder": "nomic-embed-text"}})
    assert config.model_for("gpt-4o-mini") == "llama3.2:3b"
    assert config.model_for("gpt-4o-mini:latest") == "llama3.2:3b"  # Ollama's tag aliasing holds for aliases too
    assert config.model_for("llama3.2") == "llama3.2"  # not an alias: the name itself
    with pytest.raises(ValueError, match="another alias"):
        GatewayConfig.model_validate({"aliases": {"a": "b", "b": "llama3.2"}})
    with pytest.raises(ValueError, match="another alias"):
        GatewayConfig.model_validate({"aliases": {"loop": "loop:latest"}})
    with pytest.raises(ValueError, match="named"):
        GatewayConfig.model_validate({"aliases": {"x": " "}})


def test_a_pinned_model_is_named_as_the_nodes_list_it():
    config = GatewayConfig.model_validate({"models": {"chat": {"min_nodes": 2}, "coder:7b": {}}})
    assert config.pinned("chat:latest") == 2 and config.pinned("chat") == 2
    assert config.pinned("coder:7b") == 0 and config.pinned("other") == 0
    with pytest.raises(ValidationError):
        GatewayConfig.model_validate({"models": {"chat": {"min_nodes": -1}}})
    with pytest.raises(ValidationError):
        GatewayConfig.model_validate({"models": {"chat": {"nodes": 2}}})  # a typo is refused, not ignored


def test_fair_shares_come_from_the_key_else_its_role_else_one():
    keys = [{"name": "indexer", "sha256": "a" * 64, "role": "user", "share": 0.5},
            {"name": "webui", "sha256": "b" * 64, "role": "user"},
            {"name": "ops", "sha256": "c" * 64, "role": "admin"}]
    security = GatewayConfig.model_validate({"security": {"keys": keys, "share": {"admin": 3}}}).security
    assert security.share_of("indexer") == 0.5  # its own
    assert security.share_of("ops") == 3.0  # its role's
    assert security.share_of("webui") == 1.0 and security.share_of("curl") == 1.0
    for bad in ({"keys": [{**keys[0], "share": 0}]}, {"share": {"user": -1}}):
        with pytest.raises(ValidationError):
            GatewayConfig.model_validate({"security": bad})
