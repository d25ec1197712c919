"""Names the layers share: which named actors belong to which gateway."""

from __future__ import annotations

from sollol_serve.names import host_port, is_gateway_actor, normalize_model, runtime_worker_name


def test_a_gateways_actors_are_its_state_actor_and_those_named_after_it():
    mine = ["sollol_state_a", "sollol_state_a_metrics", "sollol_state_a_cache", "sollol_state_a_ratelimits",
            "sollol_state_a_sessions", "sollol_state_a_discovery", "sollol_state_a_shards",
            runtime_worker_name("sollol_state_a", "gpu-7")]
    assert all(is_gateway_actor(name, "sollol_state_a") for name in mine)


def test_another_gateway_whose_name_starts_the_same_is_not_mine():
    theirs = ["sollol_state_ab", "sollol_state_ab_metrics", "sollol_state_a_b", "sollol_state",
              "SERVE_REPLICA::a#Router#x"]
    assert not any(is_gateway_actor(name, "sollol_state_a") for name in theirs)


def test_model_aliases_and_node_addresses():
    assert normalize_model("llama3.2") == "llama3.2:latest"
    assert normalize_model("hf.co/x/y:q4") == "hf.co/x/y:q4"
    assert host_port("http://user:secret@10.0.0.3:11434/x") == "10.0.0.3:11434"
