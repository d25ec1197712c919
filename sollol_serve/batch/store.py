"""Batch jobs on disk: one SQLite file holds every job and every item with its result.

A finished item is written with its result in one transaction, so after a restart the
pending items are exactly those with no result: nothing finished is redone, nothing is lost.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    total INTEGER NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    ttl_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    job TEXT NOT NULL,
    idx INTEGER NOT NULL,
    input TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    result TEXT,
    error TEXT,
    node TEXT,
    request_id TEXT,
    PRIMARY KEY (job, idx)
);
CREATE INDEX IF NOT EXISTS items_by_state ON items (job, state);
"""

UNFINISHED = ("queued", "running")
ITEM_STATES = ("pending", "done", "failed")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One item's end: a result, or the error that failed it."""

    idx: int
    result: object = None
    error: str | None = None
    node: str | None = None
    request_id: str | None = None  # of the chunk's call through the gateway (chunk_request_id)


def _job(row: aiosqlite.Row) -> dict:
    job = dict(row)
    job["request"] = json.loads(job["request"])
    return job


# Columns added since the first release: a jobs file written before them gains them on open.
ADDED_ITEM_COLUMNS = {"request_id": "TEXT"}


async def _add_missing_columns(db: aiosqlite.Connection) -> None:
    async with db.execute("PRAGMA table_info(items)") as cursor:
        present = {row[1] for row in await cursor.fetchall()}
    for name, kind in ADDED_ITEM_COLUMNS.items():
        if name not in present:
            await db.execute(f"ALTER TABLE items ADD COLUMN {name} {kind}")


def new_job_id() -> str:
    return "batch-" + uuid.uuid4().hex[:16]


class JobStore:
    """Async access to the jobs file; one writer (the batch deployment's single replica)."""

    def __init__(self, db: aiosqlite.Connection):
        self.db = db

    @classmethod
    async def open(cls, path: Path) -> "JobStore":
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode=WAL")
        await db.executescript(SCHEMA)
        await _add_missing_columns(db)
        await db.commit()
        return cls(db)

    async def close(self) -> None:
        await self.db.close()

    async def create(self, kind: str, model: str, owner: str, request: dict, inputs: list, ttl_s: float,
                     now: float | None = None) -> str:
        job_id = new_job_id()
        await self.db.execute(
            "INSERT INTO jobs (id, kind, model, owner, state, request, total, created, ttl_s)"
            " VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
            (job_id, kind, model, owner, json.dumps(request), len(inputs), now or time.time(), ttl_s))
        await self.db.executemany("INSERT INTO items (job, idx, input) VALUES (?, ?, ?)",
                                  ((job_id, i, json.dumps(x)) for i, x in enumerate(inputs)))
        await self.db.commit()
        return job_id

    async def job(self, job_id: str) -> dict | None:
        async with self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return _job(row) if row else None

    async def jobs(self, owner: str | None = None, limit: int = -1) -> list[dict]:
        """Newest first; `limit` -1 for all."""
        query, args = "SELECT * FROM jobs", ()
        if owner is not None:
            query, args = query + " WHERE owner = ?", (owner,)
        async with self.db.execute(query + " ORDER BY created DESC LIMIT ?", (*args, limit)) as cursor:
            return [_job(row) for row in await cursor.fetchall()]

    async def totals(self) -> dict:
        """Jobs per state, and the items still to do in unfinished jobs (for metrics)."""
        async with self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state") as cursor:
            by_state = {state: n for state, n in await cursor.fetchall()}
        async with self.db.execute(
                "SELECT COUNT(*) FROM items JOIN jobs ON items.job = jobs.id"
                " WHERE jobs.state IN (?, ?) AND items.state = 'pending'", UNFINISHED) as cursor:
            (pending,) = await cursor.fetchone()
        return {"jobs": by_state, "pending_items": pending}

    async def counts(self, job_id: str) -> dict[str, int]:
        counts = dict.fromkeys(ITEM_STATES, 0)
        async with self.db.execute("SELECT state, COUNT(*) FROM items WHERE job = ? GROUP BY state",
                                   (job_id,)) as cursor:
            for state, n in await cursor.fetchall():
                counts[state] = n
        return counts

    async def nodes(self, job_id: str) -> dict[str, int]:
        """How many items each node answered: the job's spread over the cluster."""
        async with self.db.execute("SELECT node, COUNT(*) FROM items WHERE job = ? AND node IS NOT NULL"
                                   " GROUP BY node", (job_id,)) as cursor:
            return {node: n for node, n in await cursor.fetchall()}

    async def pending(self, job_id: str) -> list[tuple[int, object]]:
        async with self.db.execute("SELECT idx, input FROM items WHERE job = ? AND state = 'pending' ORDER BY idx",
                                   (job_id,)) as cursor:
            return [(idx, json.loads(raw)) for idx, raw in await cursor.fetchall()]

    async def finish_items(self, job_id: str, outcomes: list[Outcome]) -> None:
        """Record finished items in one transaction; an item finished before stays as it was."""
        await self.db.executemany(
            "UPDATE items SET state = ?, result = ?, error = ?, node = ?, request_id = ?"
            " WHERE job = ? AND idx = ? AND state = 'pending'",
            [("failed" if o.error else "done", None if o.error else json.dumps(o.result), o.error, o.node,
              o.request_id, job_id, o.idx) for o in outcomes])
        await self.db.commit()

    async def results(self, job_id: str, offset: int, limit: int) -> list[dict]:
        async with self.db.execute(
                "SELECT idx, state, result, error, node, request_id FROM items WHERE job = ? AND state != 'pending'"
                " AND idx >= ? ORDER BY idx LIMIT ?", (job_id, offset, limit)) as cursor:
            rows = await cursor.fetchall()
        return [{"index": idx, "node": node, "request_id": request_id,
                 **({"error": error} if state == "failed" else {"result": json.loads(raw)})}
                for idx, state, raw, error, node, request_id in rows]

    async def started(self, job_id: str, now: float | None = None) -> None:
        await self.db.execute("UPDATE jobs SET state = 'running', started = COALESCE(started, ?) WHERE id = ?",
                              (now or time.time(), job_id))
        await self.db.commit()

    async def end(self, job_id: str, state: str, now: float | None = None) -> bool:
        """Finish an unfinished job (completed, failed or cancelled); a finished one keeps its end."""
        cursor = await self.db.execute("UPDATE jobs SET state = ?, finished = ? WHERE id = ? AND state IN (?, ?)",
                                       (state, now or time.time(), job_id, *UNFINISHED))
        await self.db.commit()
        return cursor.rowcount == 1

    async def unfinished(self) -> list[str]:
        """Jobs to resume after a restart, oldest first."""
        async with self.db.execute("SELECT id FROM jobs WHERE state IN (?, ?) ORDER BY created",
                                   UNFINISHED) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    async def delete(self, job_id: str) -> None:
        """A job and its items, gone."""
        await self.db.execute("DELETE FROM items WHERE job = ?", (job_id,))
        await self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        await self.db.commit()

    async def expire(self, now: float | None = None) -> list[str]:
        """Delete finished jobs older than their TTL (counted from when they finished)."""
        now = now or time.time()
        async with self.db.execute("SELECT id FROM jobs WHERE finished IS NOT NULL AND finished + ttl_s <= ?",
                                   (now,)) as cursor:
            gone = [row[0] for row in await cursor.fetchall()]
        for job_id in gone:
            await self.delete(job_id)
        return gone
