"""The status a batch job is reported with (its payloads are in `api/schemas.py`)."""

from __future__ import annotations

from datetime import datetime, timezone


def _iso(ts: float | None) -> str | None:
    """A time as ISO 8601; None for none, or for one no calendar holds (a bad stored row must
    not take the job list and the dashboard down with it)."""
    if not ts:
        return None
    try:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat()
    except (OverflowError, OSError, ValueError):
        return None


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
