"""Shard group planning: hosts, split, command lines, log and metrics parsing, the hybrid decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from sollol_serve.cluster.state import NodeView
from sollol_serve.routing.policy import needs_shard
from sollol_serve.shard.plan import (
    Backend,
    Host,
    PlanError,
    activity,
    choose_hosts,
    llama_server_command,
    rpc_buffers,
    rpc_server_command,
    tensor_split,
)

HOSTS = [Host("a1", "10.0.0.1", 16000), Host("b2", "10.0.0.2", 8000), Host("c3", "10.0.0.3", 12000)]


def test_hosts_with_most_free_memory_are_chosen_if_together_they_hold_the_model():
    assert [h.ip for h in choose_hosts(HOSTS, 2, 20000)] == ["10.0.0.1", "10.0.0.3"]
    with pytest.raises(PlanError, match="28000 MB together"):
        choose_hosts(HOSTS, 2, 30000)
    with pytest.raises(PlanError, match="needs 4 hosts"):
        choose_hosts(HOSTS, 4, 1)


def test_layers_split_by_free_memory():
    backends = [Backend(HOSTS[0], 50052), Backend(HOSTS[1], 50053)]
    assert tensor_split(backends) == [pytest.approx(0.6667, abs=1e-4), pytest.approx(0.3333, abs=1e-4)]


def test_command_lines_offload_everything_to_the_rpc_backends():
    assert rpc_server_command(Path("/bin/ggml-rpc-server"), "10.0.0.1", 50052) == [
        "/bin/ggml-rpc-server", "-H", "10.0.0.1", "-p", "50052"]
    cmd = llama_server_command(Path("/bin/llama-server"), Path("/m.gguf"), "big:latest",
                               [Backend(HOSTS[0], 1), Backend(HOSTS[1], 2)], "10.0.0.9", 8080, 2048, 2, ["--foo"])
    assert cmd[cmd.index("--rpc") + 1] == "10.0.0.1:1,10.0.0.2:2"
    assert cmd[cmd.index("-ngl") + 1] == "99"  # -ngl 0 would offload nothing, RPC devices included
    assert cmd[cmd.index("--tensor-split") + 1] == "0.6667,0.3333"
    assert cmd[cmd.index("--alias") + 1] == "big:latest" and cmd[-1] == "--foo"


def test_rpc_buffers_and_activity_are_read_from_llama_server_output():
    log = ("load_tensors: RPC0[127.0.0.2:40001] model buffer size =     1.52 MiB\n"
           "load_tensors: RPC1[127.0.0.3:40002] model buffer size =     0.78 MiB\n"
           "load_tensors:   CPU_Mapped model buffer size =     0.50 MiB\n")
    assert rpc_buffers(log) == {"127.0.0.2:40001": 1.52, "127.0.0.3:40002": 0.78}
    metrics = "# HELP x\nllamacpp:prompt_tokens_total 12\nllamacpp:tokens_predicted_total 30\nllamacpp:other 5\n"
    assert activity(metrics) == 42


def _view(name: str, size_gb: float, vram: int | None = None, ram: int | None = None) -> NodeView:
    return NodeView(name=name, url=f"http://{name}:1", kind="ollama", healthy=True, models={"big:latest": "big"},
                    loaded=frozenset(), slots=1, slots_known=True, in_flight_elsewhere=0, vram_free_mb=vram,
                    ram_available_mb=ram, model_sizes={"big:latest": int(size_gb * 2**30)})


def test_hybrid_decision_shards_listed_models_and_models_no_node_can_hold():
    small = {"a": _view("a", 40, vram=16000), "b": _view("b", 40, ram=24000)}
    assert needs_shard(small, "big", set(), 1.1)  # 44 GB with headroom > every node's free memory
    roomy = {**small, "c": _view("c", 40, vram=48000)}
    assert not needs_shard(roomy, "big", set(), 1.1)
    unknown = {**small, "d": _view("d", 40)}  # no readings: it may hold it
    assert not needs_shard(unknown, "big", set(), 1.1)
    assert needs_shard(roomy, "big", {"big:latest"}, 1.1)  # listed in the config
    assert not needs_shard(roomy, "other", set(), 1.1)


def test_a_node_advertising_a_huge_size_cannot_push_a_model_onto_a_shard_group():
    honest = {"a": _view("a", 4, vram=16000), "b": _view("b", 4, vram=8000)}
    assert not needs_shard(honest, "big", set(), 1.1)
    rogue = {**honest, "evil": _view("evil", 10**6, vram=1)}  # found by a scan, claims a petabyte
    assert not needs_shard(rogue, "big", set(), 1.1)
    alone = {"evil": _view("evil", 10**6, vram=1)}  # no honest holder: the claim is all there is
    assert needs_shard(alone, "big", set(), 1.1)
