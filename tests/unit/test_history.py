"""sollol_serve.cluster.history: learned performance to rows and back, the SQLite file, and
when the state actor saves."""

from __future__ import annotations

import json
import logging
import math
import sqlite3

import pytest

from sollol_serve.cluster.capacity import Capacity
from sollol_serve.cluster.history import (
    VERSION,
    History,
    HistoryStore,
    Row,
    book_of,
    history_file,
    rows_of,
)
from sollol_serve.cluster.learning import Ewma, ModelPerf, Observation, PerfBook
from sollol_serve.cluster.state import ClusterState
from sollol_serve.config import BatchConfig, data_dir

M = "llama3.2:latest"
T0 = 1_700_000_000.0  # a wall-clock time, as learning stamps its samples


def learned_book() -> PerfBook:
    """A book with hand-set figures: node `a` ran M at 2000 / 250 tok/s prefill / decode."""
    perf = ModelPerf()
    perf.prefill_tps.mean, perf.prefill_tps.var, perf.prefill_tps.n, perf.prefill_tps.at = 2000.0, 40000.0, 4, T0
    perf.decode_tps.mean, perf.decode_tps.var, perf.decode_tps.n, perf.decode_tps.at = 250.0, 2500.0, 4, T0
    perf.load_s.mean, perf.load_s.n, perf.load_s.at = 1.5, 1, T0 - 30
    perf.success.mean, perf.success.var, perf.success.n, perf.success.at = 0.75, 0.1875, 4, T0
    perf.ttfb_s.mean, perf.ttfb_s.var, perf.ttfb_s.n, perf.ttfb_s.at = 0.2, 0.01, 4, T0
    perf.max_ok_concurrency = 3
    book = PerfBook()
    book.models[("a", M)] = perf
    book.output_tokens[(M, "generation")] = Ewma(mean=120.0, var=400.0, n=3, alpha=0.1)
    book.capacity["a"] = Capacity(proven=3, ceiling=5, ceiling_at=T0 - 10, probes=4, probes_proved=2,
                                  probes_queued=1)
    return book


def fields_of(e: Ewma) -> tuple:
    return (e.mean, e.var, e.n, e.alpha, e.at, e.follows_changes)


def row(kind: str, key1: str, key2: str, data: object, version: int = VERSION) -> Row:
    return Row(kind, key1, key2, version, data if isinstance(data, str) else json.dumps(data))


def good_ewma(**over) -> dict:
    return {"mean": 100.0, "var": 4.0, "n": 2, "at": T0, **over}


def good_model(**over) -> dict:
    data = {name: good_ewma() for name in ("prefill_tps", "decode_tps", "embed_tps", "load_s", "ttfb_s")}
    return {**data, "success": good_ewma(mean=1.0, var=0.0), "max_ok_concurrency": 2, **over}


# =======================================================================================
# Rows and back
# =======================================================================================
def test_rows_name_what_they_hold():
    rows = {(r.kind, r.key1, r.key2): r for r in rows_of(learned_book())}
    assert set(rows) == {("model", "a", M), ("output", M, "generation"), ("capacity", "a", "")}
    assert all(r.version == VERSION for r in rows.values())
    model = json.loads(rows[("model", "a", M)].data)
    assert model["decode_tps"] == {"mean": 250.0, "var": 2500.0, "n": 4, "at": T0}
    assert model["max_ok_concurrency"] == 3
    assert json.loads(rows[("output", M, "generation")].data) == {"mean": 120.0, "var": 400.0, "n": 3, "at": 0.0}
    assert json.loads(rows[("capacity", "a", "")].data) == {
        "proven": 3, "ceiling": 5, "ceiling_at": T0 - 10, "probes": 4, "probes_proved": 2, "probes_queued": 1,
        "queues": False}


def test_round_trip_restores_every_figure():
    before = learned_book()
    after = book_of(rows_of(before), now=T0 + 5)
    perf, was = after.perf("a", M), before.perf("a", M)
    for name in ("prefill_tps", "decode_tps", "embed_tps", "load_s", "success", "ttfb_s"):
        assert fields_of(getattr(perf, name)) == fields_of(getattr(was, name)), name
    assert perf.max_ok_concurrency == 3
    assert after.expected_output(M, "generation") == 120
    assert after.capacity["a"] == Capacity(proven=3, ceiling=5, ceiling_at=T0 - 10, probes=4, probes_proved=2,
                                           probes_queued=1)
    assert after.learned_slots("a") == 3


def test_the_policy_comes_from_the_code_not_the_file():
    data = good_model(decode_tps={**good_ewma(), "alpha": 0.9, "follows_changes": False})
    perf = book_of([row("model", "a", M, data)], now=T0).perf("a", M)
    assert (perf.decode_tps.alpha, perf.decode_tps.follows_changes) == (0.2, True)
    assert (perf.success.alpha, perf.prefill_tps.follows_changes) == (0.1, False)
    output = book_of([row("output", M, "generation", good_ewma(at=0.0))], now=T0).output_tokens[(M, "generation")]
    assert output.alpha == 0.1


def test_learned_from_observations_survives_the_round_trip():
    book = PerfBook()
    # 100 prompt tokens in 0.05 s = 2000 tok/s; 50 answer tokens in 0.25 s = 200 tok/s
    book.observe(Observation(node="a", model=M, task_type="generation", ok=True, prompt_tokens=100,
                             completion_tokens=50, prefill_s=0.05, decode_s=0.25, wall_s=0.3, at=T0))
    after = book_of(rows_of(book), now=T0)
    assert after.perf("a", M).prefill_tps.mean == pytest.approx(2000.0)
    assert after.perf("a", M).decode_tps.mean == pytest.approx(200.0)
    assert after.perf("a", M).decode_tps.at == T0
    assert after.expected_output(M, "generation") == 50


# =======================================================================================
# Bad rows: skipped and logged, the rest restored
# =======================================================================================
BAD_ROWS = {
    "another version": row("model", "a", M, good_model(), version=VERSION + 1),
    "not JSON": row("model", "a", M, "{not json"),
    "not an object": row("model", "a", M, "[1, 2]"),
    "NaN speed": row("model", "a", M, good_model(decode_tps=good_ewma(mean=math.nan))),  # json writes NaN
    "infinite speed": row("model", "a", M, good_model(prefill_tps=good_ewma(mean=math.inf))),
    "negative speed": row("model", "a", M, good_model(decode_tps=good_ewma(mean=-5.0))),
    "zero speed after samples": row("model", "a", M, good_model(prefill_tps=good_ewma(mean=0.0))),
    "negative variance": row("model", "a", M, good_model(load_s=good_ewma(var=-1.0))),
    "success above 1": row("model", "a", M, good_model(success=good_ewma(mean=1.5))),
    "fractional count": row("model", "a", M, good_model(ttfb_s=good_ewma(n=2.5))),
    "boolean count": row("model", "a", M, good_model(ttfb_s=good_ewma(n=True))),
    "negative time": row("model", "a", M, good_model(decode_tps=good_ewma(at=-1.0))),
    "missing estimate": row("model", "a", M, {k: v for k, v in good_model().items() if k != "embed_tps"}),
    "string figure": row("model", "a", M, good_model(decode_tps=good_ewma(mean="fast"))),
    "no model": row("model", "a", "", good_model()),
    "no node": row("capacity", "", "", {"proven": 2, "ceiling": None, "ceiling_at": 0, "probes": 0,
                                       "probes_proved": 0, "probes_queued": 0}),
    "no slots": row("capacity", "a", "", {"proven": 0, "ceiling": None, "ceiling_at": 0, "probes": 0,
                                         "probes_proved": 0, "probes_queued": 0}),
    "ceiling not above proven": row("capacity", "a", "", {"proven": 3, "ceiling": 3, "ceiling_at": T0,
                                                          "probes": 1, "probes_proved": 0, "probes_queued": 1}),
    "negative probes": row("capacity", "a", "", {"proven": 2, "ceiling": None, "ceiling_at": 0, "probes": -1,
                                                 "probes_proved": 0, "probes_queued": 0}),
    "unknown kind": row("breaker", "a", "", {}),
    "non-text key": Row("model", 7, M, VERSION, json.dumps(good_model())),
}


@pytest.mark.parametrize("bad", BAD_ROWS, ids=list(BAD_ROWS))
def test_a_bad_row_is_skipped_and_logged_and_the_rest_restored(bad, caplog):
    good = row("model", "b", M, good_model())
    with caplog.at_level(logging.WARNING, logger="sollol_serve.cluster.history"):
        book = book_of([BAD_ROWS[bad], good], now=T0)
    assert set(book.models) == {("b", M)} and not book.capacity
    assert book.perf("b", M).decode_tps.mean == 100.0
    assert "skipped" in caplog.text


def test_an_unsampled_speed_of_zero_is_no_speed_at_all():
    perf = book_of([row("model", "a", M, good_model(embed_tps=good_ewma(mean=0.0, n=0, at=0.0)))], now=T0).perf("a", M)
    assert (perf.embed_tps.n, perf.embed_tps.mean) == (0, 0.0)


def test_a_time_in_the_future_counts_as_now():
    """A clock that went back must not leave an estimate that never ages."""
    data = good_model(decode_tps=good_ewma(at=T0 + 3600))
    capacity = {"proven": 2, "ceiling": 4, "ceiling_at": T0 + 3600, "probes": 1, "probes_proved": 0,
                "probes_queued": 1}
    book = book_of([row("model", "a", M, data), row("capacity", "a", "", capacity)], now=T0)
    assert book.perf("a", M).decode_tps.at == T0
    assert book.capacity["a"].ceiling_at == T0


# =======================================================================================
# Decay keeps working across a restart (wall-clock timestamps)
# =======================================================================================
def test_a_restored_estimate_leans_toward_the_prior_with_the_downtime():
    perf = ModelPerf()
    perf.decode_tps.mean, perf.decode_tps.n, perf.decode_tps.at = 300.0, 10, T0
    book = PerfBook(models={("a", M): perf})
    # Saved at T0; the gateway comes back a minute later: the estimate is a minute old.
    restored = book_of(rows_of(book), now=T0 + 60).perf("a", M).decode_tps
    # keep e^-1: 0.3679 * 300 + 0.6321 * 100 (the prior) = 110.36 + 63.21 = 173.58
    assert restored.toward(100.0, T0 + 60) == pytest.approx(173.58, abs=0.01)
    assert restored.toward(100.0, T0) == 300.0  # no age, no decay
    # The first sample after the silence outweighs it: weight 1 - 0.8 e^-1 = 0.7057,
    # so 300 + 0.7057 * (100 - 300) = 158.86
    restored.update(100.0, T0 + 60)
    assert restored.mean == pytest.approx(158.86, abs=0.01)


def test_a_restored_ceiling_expires_on_its_wall_clock_time():
    book = PerfBook(capacity={"a": Capacity(proven=2, ceiling=3, ceiling_at=T0)})
    restored = book_of(rows_of(book), now=T0 + 10).capacity["a"]
    assert not restored.may_probe(T0 + 10)  # the ceiling is one above what it proved: no probe
    assert restored.may_probe(T0 + 301)  # CEILING_TTL_S (300 s) after it was seen


# =======================================================================================
# The file
# =======================================================================================
def test_the_file_is_beside_the_batch_jobs(tmp_path):
    batch = BatchConfig(data_dir=str(tmp_path))
    assert history_file("sollol_node_state", batch) == tmp_path / "sollol_node_state-history.sqlite3"
    assert history_file("x", batch).parent == tmp_path == type(tmp_path)(data_dir(batch))


def test_store_round_trip_and_rows_of_old_nodes_kept(tmp_path):
    store = HistoryStore(tmp_path / "sub" / "h.sqlite3")  # the data dir is made if missing
    assert store.load() == []
    old = learned_book()
    old.capacity["gone"] = Capacity(proven=2)
    store.save(rows_of(old))
    newer = learned_book()
    newer.perf("a", M).decode_tps.mean = 260.0
    store.save(rows_of(newer))  # a book without `gone`: its row stays
    book = book_of(HistoryStore(store.path).load(), now=T0)
    assert book.perf("a", M).decode_tps.mean == 260.0
    assert book.capacity["gone"].proven == 2
    assert len(store.load()) == 4


def test_a_node_no_longer_configured_keeps_its_history_but_is_no_node(tmp_path):
    book = learned_book()
    book.capacity["gone"] = Capacity(proven=4)
    state = ClusterState(book=book_of(rows_of(book), now=T0))
    state.register("a", "http://127.0.0.1:1", None)
    assert set(state.snapshot()) == {"a"}
    assert state.book.learned_slots("gone") == 4
    state.register("gone", "http://127.0.0.1:2", None)  # back under its name: its history with it
    assert set(state.snapshot()) == {"a", "gone"} and state.book.learned_slots("gone") == 4


def test_a_bad_row_in_the_file_is_skipped(tmp_path, caplog):
    store = HistoryStore(tmp_path / "h.sqlite3")
    store.save(rows_of(learned_book()))
    with sqlite3.connect(store.path) as db:
        db.execute("INSERT INTO learned VALUES ('model', 'b', ?, 1, 'garbage')", (M,))
        db.execute("INSERT INTO learned VALUES ('model', 'c', ?, 'one', ?)", (M, json.dumps(good_model())))
    with caplog.at_level(logging.WARNING, logger="sollol_serve.cluster.history"):
        book = book_of(store.load(), now=T0)
    assert set(book.models) == {("a", M)}
    assert caplog.text.count("skipped") == 2


def test_an_unreadable_file_starts_without_history(tmp_path, caplog):
    path = tmp_path / "h.sqlite3"
    path.write_bytes(b"this is not a database, just bytes " * 100)
    with caplog.at_level(logging.ERROR, logger="sollol_serve.cluster.history"):
        assert History(HistoryStore(path)).restore(T0).models == {}
    assert "could not read" in caplog.text


# =======================================================================================
# When the actor saves
# =======================================================================================
class FakeStore:
    def __init__(self, fail: bool = False):
        self.saves: list[list[Row]] = []
        self.fail = fail
        self.path = "fake"

    def save(self, rows: list[Row]) -> None:
        if self.fail:
            raise sqlite3.OperationalError("disk I/O error")
        self.saves.append(rows)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_saves_only_what_changed_and_at_most_every_interval():
    store, clock = FakeStore(), Clock()
    history = History(store, every_s=15.0, clock=clock)
    book = learned_book()
    history.note(book, changed=True)  # 0 s since the start: not yet
    clock.t += 10
    history.note(book, changed=False)  # still the change of 10 s ago, not due
    clock.t += 5
    history.note(book, changed=False)  # 15 s: the change is saved
    clock.t += 60
    history.note(book, changed=False)  # nothing new: nothing written
    history.flush(book)  # nothing new either
    assert len(store.saves) == 1
    assert {(r.kind, r.key1) for r in store.saves[0]} == {("model", "a"), ("output", M), ("capacity", "a")}


def test_flush_writes_the_last_change_and_waits_for_it():
    store, clock = FakeStore(), Clock()
    history = History(store, every_s=15.0, clock=clock)
    book = learned_book()
    history.note(book, changed=True)
    book.perf("a", M).decode_tps.mean = 275.0
    history.flush(book)
    assert len(store.saves) == 1
    assert json.loads(next(r for r in store.saves[0] if r.kind == "model").data)["decode_tps"]["mean"] == 275.0


def test_the_rows_are_taken_when_due_not_when_written():
    """The writer thread never reads the book: what it writes is the book as it was."""
    store, clock = FakeStore(), Clock()
    history = History(store, every_s=1.0, clock=clock)
    book = learned_book()
    clock.t += 1
    history.note(book, changed=True)
    book.perf("a", M).decode_tps.mean = 999.0
    history.flush(book)  # nothing changed since the save (the caller did not say so)
    assert [json.loads(r.data)["decode_tps"]["mean"] for r in store.saves[0] if r.kind == "model"] == [250.0]


def test_a_failing_disk_is_logged_and_does_not_stop_learning(caplog):
    clock = Clock()
    history = History(FakeStore(fail=True), every_s=1.0, clock=clock)
    clock.t += 1
    with caplog.at_level(logging.ERROR, logger="sollol_serve.cluster.history"):
        history.note(learned_book(), changed=True)
        history.flush(learned_book())
    assert "could not write" in caplog.text


def test_nan_never_reaches_the_file(caplog):
    book = learned_book()
    book.perf("a", M).decode_tps.mean = math.nan
    with caplog.at_level(logging.WARNING, logger="sollol_serve.cluster.history"):
        rows = rows_of(book)
    assert {r.kind for r in rows} == {"output", "capacity"}
    assert "not saving" in caplog.text
