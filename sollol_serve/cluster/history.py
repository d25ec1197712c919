"""Learned performance kept on the head node's disk, so that restarting the gateway or Ray
does not forget every node's measured speed and capacity.

One SQLite row per learned thing, keyed by names, never by Ray ids: kind `model` (node,
model) -> `ModelPerf`, `output` (model, task) -> answer length, `capacity` (node, "") ->
`Capacity`. A node added again under its name gets its history back; rows of a node no
longer configured stay in the file (and in the book) but make no node. Each row carries the
version of its format and its data as JSON; a row that does not read back as valid data
(another version, a hand edit, NaN, a negative speed) is skipped with a log line, so a bad
file costs at worst what it held, never the state actor.

Timestamps are wall-clock, as learning keeps them: an estimate restored after a day's
downtime is a day old and leans toward the cluster prior exactly as if the gateway had
stayed up (`Ewma.toward`), and its next sample outweighs it (`Ewma.weight`).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, fields
from pathlib import Path

from sollol_serve.cluster.capacity import MAX_SLOTS, Capacity
from sollol_serve.cluster.learning import OUTPUT_ALPHA, Ewma, ModelPerf, PerfBook
from sollol_serve.config import BatchConfig, data_dir

logger = logging.getLogger(__name__)

VERSION = 1
# At most this often a changed book is written: a restart loses at most this much learning,
# and the actor serializes the book (a few ms) no more often than that.
SAVE_EVERY_S = 15.0
MODEL, OUTPUT, CAPACITY = "model", "output", "capacity"
EWMA_FIELDS = tuple(f.name for f in fields(ModelPerf) if isinstance(getattr(ModelPerf(), f.name), Ewma))
# A speed is a rate of tokens: a learned one is never 0 (`learning._rate`), and 0 would be a
# division by zero in the predictor.
SPEEDS = frozenset({"prefill_tps", "decode_tps", "embed_tps"})

SCHEMA = """
CREATE TABLE IF NOT EXISTS learned (
    kind TEXT NOT NULL,
    key1 TEXT NOT NULL,  -- node (model, capacity) or model (output)
    key2 TEXT NOT NULL,  -- model (model), task type (output), '' (capacity)
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (kind, key1, key2)
);
"""


@dataclass(frozen=True, slots=True)
class Row:
    kind: str
    key1: str
    key2: str
    version: int
    data: str  # JSON


def history_file(state_actor_name: str, batch: BatchConfig) -> Path:
    """Beside the batch jobs' file, in the data dir as resolved on the host that asks (the
    state actor, on the head node)."""
    return Path(data_dir(batch)) / f"{state_actor_name}-history.sqlite3"


# -- the book as rows --------------------------------------------------------------------
def _ewma_data(e: Ewma) -> dict:
    return {"mean": e.mean, "var": e.var, "n": e.n, "at": e.at}


def _capacity_data(c: Capacity) -> dict:
    return {"proven": c.proven, "ceiling": c.ceiling, "ceiling_at": c.ceiling_at, "probes": c.probes,
            "probes_proved": c.probes_proved, "probes_queued": c.probes_queued, "queues": c.queues}


def rows_of(book: PerfBook) -> list[Row]:
    """One row per entry of the book. An entry holding NaN or infinity is left out (logged):
    it would not read back, and its last good row in the file is worth more."""
    entries = [(MODEL, node, model, {**{name: _ewma_data(getattr(perf, name)) for name in EWMA_FIELDS},
                                     "max_ok_concurrency": perf.max_ok_concurrency})
               for (node, model), perf in book.models.items()]
    entries += [(OUTPUT, model, task, _ewma_data(e)) for (model, task), e in book.output_tokens.items()]
    entries += [(CAPACITY, node, "", _capacity_data(c)) for node, c in book.capacity.items()]
    rows = []
    for kind, key1, key2, data in entries:
        try:
            rows.append(Row(kind, key1, key2, VERSION, json.dumps(data, allow_nan=False)))
        except ValueError:
            logger.warning("learned history: not saving the %r entry for %r/%r: %s", kind, key1, key2, data)
    return rows


# -- rows back into a book, each value checked -------------------------------------------
def _number(data: dict, key: str, low: float = 0.0, high: float = math.inf) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} is {value!r}, not a finite number")
    if not low <= value <= high:
        raise ValueError(f"{key} = {value} is outside [{low}, {high}]")
    return float(value)


def _count(data: dict, key: str, low: int = 0, high: float = math.inf) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} is {value!r}, not a whole number in [{low}, {high}]")
    return value


def _flag(data: dict, key: str) -> bool:
    """A yes/no; absent (a row written before it existed) is no."""
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key} is {value!r}, not true or false")
    return value


def _when(data: dict, key: str, now: float) -> float:
    """A wall-clock time; one in the future (this host's clock went back, or the file came
    from a host ahead of it) counts as now, or it would never age."""
    return min(_number(data, key), now)


def _ewma(data: object, template: Ewma, now: float, positive: bool = False, high: float = math.inf) -> Ewma:
    """`template` brings the policy (alpha, follows_changes): the code's, not the file's."""
    if not isinstance(data, dict):
        raise ValueError(f"an estimate is {data!r}, not an object")
    n = _count(data, "n")
    mean = _number(data, "mean", high=high)
    if positive and n and mean <= 0:
        raise ValueError(f"a speed of {mean} after {n} samples")
    template.mean, template.var, template.n = mean, _number(data, "var"), n
    template.at = _when(data, "at", now)
    return template


def _model_perf(data: dict, now: float) -> ModelPerf:
    perf = ModelPerf()
    for name in EWMA_FIELDS:
        _ewma(data[name], getattr(perf, name), now, positive=name in SPEEDS, high=1.0 if name == "success" else math.inf)
    perf.max_ok_concurrency = _count(data, "max_ok_concurrency", high=MAX_SLOTS)
    return perf


def _capacity(data: dict, now: float) -> Capacity:
    proven = _count(data, "proven", 1, MAX_SLOTS)
    ceiling = data["ceiling"]
    if ceiling is not None:  # the node has fewer slots than this: more than it has proved
        ceiling = _count(data, "ceiling", proven + 1, MAX_SLOTS + 1)
    return Capacity(proven=proven, ceiling=ceiling, ceiling_at=_when(data, "ceiling_at", now),
                    probes=_count(data, "probes"), probes_proved=_count(data, "probes_proved"),
                    probes_queued=_count(data, "probes_queued"),
                    queues=_flag(data, "queues"))


def _restore(book: PerfBook, row: Row, now: float) -> None:
    if row.version != VERSION:
        raise ValueError(f"format version {row.version!r}, this gateway reads {VERSION}")
    if not all(isinstance(k, str) for k in (row.kind, row.key1, row.key2)) or not row.key1:
        raise ValueError("keys are not names")
    if row.kind in (MODEL, OUTPUT) and not row.key2:
        raise ValueError(f"a {row.kind} row names no second key")
    data = json.loads(row.data)
    if not isinstance(data, dict):
        raise ValueError("data is not an object")
    if row.kind == MODEL:
        book.models[(row.key1, row.key2)] = _model_perf(data, now)
    elif row.kind == OUTPUT:
        book.output_tokens[(row.key1, row.key2)] = _ewma(data, Ewma(alpha=OUTPUT_ALPHA), now)
    elif row.kind == CAPACITY:
        book.capacity[row.key1] = _capacity(data, now)
    else:
        raise ValueError(f"unknown kind {row.kind!r}")


def book_of(rows: Iterable[Row], now: float) -> PerfBook:
    """The book the rows describe; a row that is not valid is left out (and logged)."""
    book = PerfBook()
    for row in rows:
        try:
            _restore(book, row, now)
        except (ValueError, TypeError, KeyError) as exc:  # json's errors are ValueErrors
            logger.warning("learned history: skipped the %r row for %r/%r: %s", row.kind, row.key1, row.key2, exc)
    return book


# -- the file ----------------------------------------------------------------------------
class HistoryStore:
    """The SQLite file. A connection per call (no thread owns one): loads run on the
    actor's thread, saves on the writer's."""

    def __init__(self, path: Path):
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5.0)
        db.executescript(SCHEMA)
        return db

    def load(self) -> list[Row]:
        """Every row; none if the file is unreadable (logged: the gateway starts learning
        afresh rather than not at all)."""
        try:
            with closing(self._connect()) as db:
                return [Row(*r) for r in db.execute("SELECT kind, key1, key2, version, data FROM learned")]
        except sqlite3.Error:
            logger.exception("learned history: could not read %s; starting without it", self.path)
            return []

    def save(self, rows: list[Row]) -> None:
        """All rows in one transaction: the file holds the old book or the new, never half.
        Rows are replaced, never deleted: a node gone from the config keeps its history."""
        with closing(self._connect()) as db, db:
            db.executemany("INSERT OR REPLACE INTO learned (kind, key1, key2, version, data) VALUES (?, ?, ?, ?, ?)",
                           [(r.kind, r.key1, r.key2, r.version, r.data) for r in rows])


class History:
    """What the state actor keeps on disk: restored once when it starts, saved when the book
    changed, at most every `every_s`, on a writer thread (no call to the actor waits for the
    disk), and once more when the actor stops gracefully."""

    def __init__(self, store: HistoryStore, every_s: float = SAVE_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.every_s = every_s
        self.clock = clock
        self.changed = False
        self.saved_at = clock()
        # One thread: saves land in the order they were taken, the newest last.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sollol-history")

    def restore(self, now: float | None = None) -> PerfBook:
        book = book_of(self.store.load(), time.time() if now is None else now)
        logger.info("learned history: restored %d node x model estimates and %d nodes' capacity from %s",
                    len(book.models), len(book.capacity), self.store.path)
        return book

    def note(self, book: PerfBook, changed: bool) -> None:
        """After each merge into `book`: save it if it changed and the last save is old enough.
        The rows are taken here, on the caller's thread, so the writer never reads a book
        that is being changed."""
        self.changed = self.changed or changed
        if self.changed and self.clock() - self.saved_at >= self.every_s:
            self._submit(book)

    def flush(self, book: PerfBook) -> None:
        """Save what changed since the last save, and wait for every save to land."""
        if self.changed:
            self._submit(book)
        self._writer.shutdown(wait=True)

    def _submit(self, book: PerfBook) -> None:
        self.changed, self.saved_at = False, self.clock()
        self._writer.submit(self._save, rows_of(book))

    def _save(self, rows: list[Row]) -> None:
        try:
            self.store.save(rows)
        except Exception:  # a full or read-only disk: keep routing, try again at the next change
            logger.exception("learned history: could not write %s", self.store.path)
