"""GPU and memory readings of the host a worker runs on, without Redis or a reporter daemon.

Each worker samples its own host (it is placed on its node's Ray host) with gpustat, which
reads NVIDIA's NVML, and psutil for system memory. A host without a GPU, or without NVML,
reports no GPUs: that is an answer, not an error. Where no GPU exists (tests, demos) readings
can be injected from a JSON file of gpustat's own format, keyed by node name.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass(slots=True)
class GpuReading:
    index: int
    name: str
    memory_total_mb: int
    memory_used_mb: int
    utilization_pct: float | None = None
    temperature_c: float | None = None

    @property
    def memory_free_mb(self) -> int:
        return max(0, self.memory_total_mb - self.memory_used_mb)


@dataclass(slots=True)
class HostTelemetry:
    gpus: list[GpuReading] = field(default_factory=list)
    ram_total_mb: int | None = None
    ram_available_mb: int | None = None
    source: str = "none"  # gpustat | injected | none
    sampled_at: float = field(default_factory=time.time)

    @property
    def vram_total_mb(self) -> int | None:
        return sum(g.memory_total_mb for g in self.gpus) if self.gpus else None

    @property
    def vram_free_mb(self) -> int | None:
        """Free VRAM over all GPUs (Ollama splits a model over them), None without GPUs."""
        return sum(g.memory_free_mb for g in self.gpus) if self.gpus else None

    def as_dict(self) -> dict:
        return {"source": self.source, "vram_total_mb": self.vram_total_mb, "vram_free_mb": self.vram_free_mb,
                "ram_total_mb": self.ram_total_mb, "ram_available_mb": self.ram_available_mb,
                "gpus": [{"index": g.index, "name": g.name, "memory_total_mb": g.memory_total_mb,
                          "memory_used_mb": g.memory_used_mb, "utilization_pct": g.utilization_pct,
                          "temperature_c": g.temperature_c} for g in self.gpus]}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def gpus_from_gpustat(payload: dict) -> list[GpuReading]:
    """GPUs from gpustat's JSON (`gpustat --json`, `GPUStatCollection.jsonify()`)."""
    readings = []
    for gpu in payload.get("gpus") or []:
        total, used = _number(gpu.get("memory.total")), _number(gpu.get("memory.used"))
        if total is None or used is None:
            continue
        readings.append(GpuReading(index=int(gpu.get("index", len(readings))), name=str(gpu.get("name", "gpu")),
                                   memory_total_mb=int(total), memory_used_mb=int(used),
                                   utilization_pct=_number(gpu.get("utilization.gpu")),
                                   temperature_c=_number(gpu.get("temperature.gpu"))))
    return readings


def _query_gpustat() -> list[GpuReading]:
    import gpustat  # imported here: it loads NVML bindings, which a CPU-only host may lack

    try:
        return gpus_from_gpustat(gpustat.new_query().jsonify())
    except Exception:  # no NVIDIA driver / NVML on this host: no GPUs, cleanly
        return []


def _memory() -> tuple[int, int]:
    memory = psutil.virtual_memory()
    return memory.total // 2**20, memory.available // 2**20


def injected(readings_file: str, node: str) -> HostTelemetry | None:
    """The readings the file holds for `node` (None if it has none)."""
    try:
        payload = json.loads(Path(readings_file).read_text())
    except (OSError, ValueError):
        return None
    entry = payload.get(node) if isinstance(payload, dict) else None
    if not isinstance(entry, dict):
        return None
    return HostTelemetry(gpus=gpus_from_gpustat(entry), ram_total_mb=entry.get("ram_total_mb"),
                         ram_available_mb=entry.get("ram_available_mb"), source="injected")


def sample_host(node: str, readings_file: str | None = None) -> HostTelemetry:
    """This host's readings (blocking: call it in a thread)."""
    if readings_file:
        reading = injected(readings_file, node)
        if reading is not None:
            return reading
    gpus = _query_gpustat()
    total, available = _memory()
    return HostTelemetry(gpus=gpus, ram_total_mb=total, ram_available_mb=available,
                         source="gpustat" if gpus else "none")
