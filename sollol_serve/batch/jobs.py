"""Batch job payloads (what a client submits) and the status a job is reported with."""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sollol_serve.api import schemas


class BatchEmbedRequest(BaseModel):
    """`POST /api/batch/embed`: Ollama's /api/embed body with many inputs, run as a job."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    input: list[str] = Field(min_length=1)
    truncate: bool | None = None
    dimensions: int | None = Field(default=None, ge=1)
    options: dict | None = None
    keep_alive: str | int | float | None = None
    priority: int | None = Field(default=None, ge=1, le=10)
    ttl_s: float | None = Field(default=None, gt=0)


class BatchChatRequest(BaseModel):
    """`POST /api/batch/chat`: many /api/chat bodies (without `model`) for one model."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    requests: list[dict] = Field(min_length=1)
    priority: int | None = Field(default=None, ge=1, le=10)
    ttl_s: float | None = Field(default=None, gt=0)


def chat_items(request: BatchChatRequest) -> list[dict]:
    """Each request checked as the /api/chat body it becomes; ValueError names the bad one."""
    items = []
    for i, item in enumerate(request.requests):
        body = {**item, "model": request.model, "stream": False}
        try:
            schemas.OllamaChat.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise ValueError(f"requests[{i}].{where}: {first.get('msg')}") from None
        if not body.get("messages"):
            raise ValueError(f"requests[{i}].messages: must not be empty")
        items.append({k: v for k, v in item.items() if k not in ("model", "stream", "priority")})
    return items


def job_settings(request: BatchEmbedRequest | BatchChatRequest) -> dict:
    """What every call of the job shares (the inputs are stored as items)."""
    return request.model_dump(exclude={"model", "input", "requests", "ttl_s"}, exclude_none=True)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat() if ts else None


def job_status(job: dict, counts: dict[str, int], nodes: dict[str, int], now: float) -> dict:
    finished = counts["done"] + counts["failed"]
    started, ended = job["started"], job["finished"]
    return {
        "id": job["id"],
        "kind": job["kind"],
        "model": job["model"],
        "owner": job["owner"],
        "state": job["state"],
        "total": job["total"],
        "done": counts["done"],
        "failed": counts["failed"],
        "pending": counts["pending"],
        "progress": round(finished / job["total"], 4) if job["total"] else 1.0,
        "created_at": _iso(job["created"]),
        "started_at": _iso(started),
        "finished_at": _iso(ended),
        "duration_s": round((ended or now) - started, 3) if started else 0.0,
        "expires_at": _iso(ended + job["ttl_s"]) if ended else None,
        "nodes": nodes,
    }
