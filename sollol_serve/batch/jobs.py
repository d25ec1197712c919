"""The status a batch job is reported with (its payloads are in `api/schemas.py`)."""

from __future__ import annotations

from datetime import datetime, timezone

# A page of results holds at most this many items: a whole job of the original SOLLOL's
# documented size (10,000 documents) in one answer.
RESULTS_PAGE_MAX = 10_000


def _iso(ts: float | None) -> str | None:
    """A time as ISO 8601; None for none, or for one no calendar holds (a bad stored row must
    not take the job list and the dashboard down with it)."""
    if not ts:
        return None
    try:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat()
    except (OverflowError, OSError, ValueError):
        return None


def _metadata(request: object) -> object:
    """The caller's labels, stored with the job's settings (none from a row without them)."""
    return request.get("metadata") if isinstance(request, dict) else None


def progress(finished: int, total: int) -> dict:
    """How far a job is: items finished (failed ones too) of all, and as a percentage."""
    return {"percent": round(100 * finished / total, 2) if total else 100.0, "done": finished, "total": total}


def job_status(job: dict, counts: dict[str, int], nodes: dict[str, int], now: float) -> dict:
    """A job's status. `job_id`, `status`, `progress.percent` and `duration_seconds` are the
    original SOLLOL's names, kept beside ours so that code written for it works unchanged."""
    finished = counts["done"] + counts["failed"]
    started, ended = job["started"], job["finished"]
    duration = round((ended or now) - started, 3) if started else 0.0
    return {
        "id": job["id"],
        "job_id": job["id"],
        "kind": job["kind"],
        "model": job["model"],
        "owner": job["owner"],
        "state": job["state"],
        "status": job["state"],
        "total": job["total"],
        "done": counts["done"],
        "failed": counts["failed"],
        "pending": counts["pending"],
        "progress": progress(finished, job["total"]),
        "created_at": _iso(job["created"]),
        "started_at": _iso(started),
        "finished_at": _iso(ended),
        "duration_s": duration,
        "duration_seconds": duration,
        "expires_at": _iso(ended + job["ttl_s"]) if ended else None,
        "nodes": nodes,
        "metadata": _metadata(job.get("request")),
    }


def results_page(job: dict, items: list[dict], more: bool) -> dict:
    """A page of finished items. `results` holds just their values (vectors, or chat answers)
    in input order, None for a failed item, as the original SOLLOL returned them; `items`
    says for each its index, node, and result or error."""
    return {"id": job["id"], "job_id": job["id"], "state": job["state"], "status": job["state"],
            "total": job["total"], "results": [item.get("result") for item in items], "items": items,
            "next_offset": items[-1]["index"] + 1 if items and more else None}
