"""Placement, discovery planning, GPU telemetry and the VRAM fit check (no Ray)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sollol_serve.analysis.profile import RequestProfile
from sollol_serve.cluster.state import NodeView
from sollol_serve.config import RoutingConfig
from sollol_serve.nodes.discovery import (
    MISSED_ROUNDS,
    Endpoint,
    known_key,
    plan,
    scan_targets,
)
from sollol_serve.nodes.placement import RESOURCE_SLIVER, local_url, worker_resources
from sollol_serve.nodes.telemetry import gpus_from_gpustat, injected, sample_host
from sollol_serve.routing.core import RoutingCore

GPUSTAT = {"hostname": "gpu-1", "gpus": [
    {"index": 0, "name": "RTX 4090", "memory.total": 24564, "memory.used": 20000, "utilization.gpu": 87,
     "temperature.gpu": 71},
    {"index": 1, "name": "RTX 3060", "memory.total": 12288, "memory.used": 288, "utilization.gpu": None,
     "temperature.gpu": 40},
    {"index": 2, "name": "broken", "memory.total": None},
]}


# --- placement ------------------------------------------------------------------------------
def test_worker_asks_for_its_label_only_when_a_ray_host_declares_it():
    cluster = {"CPU": 8.0, "sollol-node:gpu-1": 1.0}
    assert worker_resources("gpu-1", None, cluster) == {"sollol-node:gpu-1": RESOURCE_SLIVER}
    assert worker_resources("laptop", None, cluster) == {}  # not a Ray host: runs anywhere
    assert worker_resources("x", "rack-3", {}) == {"rack-3": RESOURCE_SLIVER}  # explicit: wait for the host


def test_local_url_only_for_the_workers_own_host():
    assert local_url("http://10.0.0.5:11434", {"10.0.0.5"}) == "http://127.0.0.1:11434"
    assert local_url("http://10.0.0.6:11434", {"10.0.0.5"}) == "http://10.0.0.6:11434"
    assert local_url("http://127.0.0.1:11434", {"10.0.0.5"}) == "http://127.0.0.1:11434"


# --- discovery ------------------------------------------------------------------------------
def _ep(ip: str, port: int = 11434, node: str | None = "aa11bb22", loopback: bool = True) -> Endpoint:
    return Endpoint(f"http://{'127.0.0.1' if loopback else ip}:{port}", "ollama", node, ip)


def test_plan_adds_new_servers_once_and_skips_known_ones():
    found = [_ep("10.0.0.5"), _ep("10.0.0.5"), _ep("10.0.0.6"), _ep("10.0.0.7", loopback=False)]
    known = {known_key("http://127.0.0.1:11434", "10.0.0.6")}  # a config node on 10.0.0.6's loopback
    to_add, to_retire = plan(found, known, {}, {"aa11bb22"}, {})
    assert [e.name for e in to_add] == ["10.0.0.5-11434", "10.0.0.7-11434"] and to_retire == []
    assert to_add[0].node_config().ray_node_id == "aa11bb22"


def test_plan_retires_servers_whose_ray_node_left_or_that_stopped_answering():
    discovered = {"10.0.0.5-11434": "aa11bb22", "10.0.0.8-11434": "cc33dd44"}
    missed: dict[str, int] = {}
    # cc33dd44 is gone: retired at once; 10.0.0.5 still answers
    assert plan([_ep("10.0.0.5")], set(), discovered, {"aa11bb22"}, missed)[1] == ["10.0.0.8-11434"]
    discovered = {"10.0.0.5-11434": "aa11bb22"}
    for _ in range(MISSED_ROUNDS - 1):
        assert plan([], set(), discovered, {"aa11bb22"}, missed)[1] == []
    assert plan([], set(), discovered, {"aa11bb22"}, missed)[1] == ["10.0.0.5-11434"]


def test_scan_targets_are_bounded():
    targets = scan_targets("10.0.0.0/24", [11434, 8080], max_hosts=3)
    assert targets == [f"http://10.0.0.{h}:{p}" for h in (1, 2, 3) for p in (11434, 8080)]
    assert scan_targets("10.0.0.9/32", [11434], 5) == ["http://10.0.0.9:11434"]


# --- telemetry ------------------------------------------------------------------------------
def test_gpustat_json_is_read_and_bad_entries_skipped():
    gpus = gpus_from_gpustat(GPUSTAT)
    assert [g.name for g in gpus] == ["RTX 4090", "RTX 3060"]
    assert gpus[0].memory_free_mb == 4564 and gpus[0].utilization_pct == 87 and gpus[0].temperature_c == 71
    assert gpus[1].utilization_pct is None


def test_injected_readings_by_node_name(tmp_path):
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps({"gpu-1": GPUSTAT}))
    reading = injected(str(path), "gpu-1")
    assert reading.source == "injected" and reading.vram_total_mb == 24564 + 12288
    assert reading.vram_free_mb == 4564 + 12000
    assert injected(str(path), "other") is None
    assert sample_host("other", str(path)).source in ("gpustat", "none")  # falls back to the host


def test_host_without_gpu_reports_none_cleanly():
    reading = sample_host("cpu-box")
    if reading.source == "gpustat":
        pytest.skip("this machine has an NVIDIA GPU")
    assert reading.gpus == [] and reading.vram_free_mb is None and reading.ram_total_mb > 0
    assert reading.as_dict()["gpus"] == []


# --- the VRAM fit check -----------------------------------------------------------------------
def _view(name: str, vram_free_mb: int | None, loaded: bool = False) -> NodeView:
    return NodeView(name=name, url=f"http://{name}:1", kind="ollama", healthy=True, models={"big:latest": "big"},
                    loaded=frozenset({"big:latest"} if loaded else ()), slots=2, slots_known=True,
                    in_flight_elsewhere=0, vram_free_mb=vram_free_mb, model_sizes={"big:latest": 6 * 2**30})


def _profile() -> RequestProfile:
    return RequestProfile(task_type="generation", complexity="low", tokens_in=10, tokens_out_est=10,
                          output_capped=True, requires_gpu=False, model="big", priority=5)


def test_cold_model_is_not_sent_to_a_node_without_the_vram_for_it():
    core = RoutingCore(RoutingConfig(strategy="least_busy"))
    core.snapshot = {"small": _view("small", 4000), "roomy": _view("roomy", 16000)}
    assert [s.node.name for s in core.rank(_profile(), set(), 0.0)] == ["roomy"]
    core.snapshot["small"] = _view("small", 4000, loaded=True)  # already resident: fits
    assert {s.node.name for s in core.rank(_profile(), set(), 0.0)} == {"small", "roomy"}
    core.snapshot = {"small": _view("small", 4000), "cpu": _view("cpu", None)}  # no readings: not judged
    assert [s.node.name for s in core.rank(_profile(), set(), 0.0)] == ["cpu"]
    core.snapshot = {"small": _view("small", 4000)}  # nothing fits: it may still evict an idle model
    assert [s.node.name for s in core.rank(_profile(), set(), 0.0)] == ["small"]
    core.snapshot = {"roomy": dataclasses.replace(_view("roomy", 6700))}  # 6 GiB x 1.1 > 6700 MiB
    assert core.fits(core.snapshot["roomy"], "big", 0.0) is False


def test_a_scan_range_must_be_confirmed_and_valid():
    from pydantic import ValidationError

    from sollol_serve.config import DiscoveryConfig

    assert DiscoveryConfig(cidr="10.0.0.0/24", cidr_allow=["10.0.0.0/16"]).cidr == "10.0.0.0/24"
    for bad, allow in (("10.0.0.0/24", []), ("10.1.0.0/24", ["10.0.0.0/16"]), ("10.0.0.0/8", ["10.0.0.0/16"]),
                       ("10.0.0.300/24", ["10.0.0.0/8"]), ("10.0.0.0/24", ["not-a-net"]), ("fd00::/120", ["10.0.0.0/8"])):
        with pytest.raises(ValidationError):
            DiscoveryConfig(cidr=bad, cidr_allow=allow)


def test_a_scan_probes_concurrently_within_its_budget():
    """16 servers on loopback that accept and never answer: probed one by one (two probes of
    0.5 s each) they would take 16 s; concurrently, within a 2 s round budget, far less."""
    import socket
    import time

    from sollol_serve.config import DiscoveryConfig
    from sollol_serve.nodes.discovery import scan

    silent = []
    for _ in range(16):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)  # the kernel completes connections; nobody reads or answers
        silent.append(sock)
    try:
        settings = DiscoveryConfig(ray_nodes=False, cidr="127.0.0.1/32", cidr_allow=["127.0.0.0/8"],
                                   ports=[s.getsockname()[1] for s in silent], probe_timeout_s=0.5, interval_s=2.0,
                                   scan_concurrency=16)
        started = time.monotonic()
        assert scan(settings) == []
        # Half the 16 s the timeouts alone make a one-by-one scan take: room for a busy machine.
        assert time.monotonic() - started < 8.0
    finally:
        for sock in silent:
            sock.close()
