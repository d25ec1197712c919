"""sollol_serve.cluster.learning: Ewma, Observation and PerfBook."""

from __future__ import annotations

import math

import pytest

from sollol_serve.cluster.learning import (
    COLD_LOAD_MIN_S,
    DEFAULT_ALPHA,
    Ewma,
    ModelPerf,
    Observation,
    PerfBook,
)

M = "llama3.2:latest"


def ewma(*xs: float, alpha: float = DEFAULT_ALPHA) -> Ewma:
    e = Ewma(alpha=alpha)
    for x in xs:
        e.update(x)
    return e


def obs(node: str = "a", *, ok: bool = True, model: str = M, task: str = "generation", **kw) -> Observation:
    return Observation(node=node, model=model, task_type=task, ok=ok, **kw)


# =======================================================================================
# Ewma
# =======================================================================================
def test_ewma_empty():
    e = Ewma()
    assert (e.mean, e.var, e.n, e.alpha, e.std, e.relative_std()) == (0.0, 0.0, 0, 0.2, 0.0, 0.0)


def test_ewma_first_sample_sets_mean_and_zero_var():
    e = ewma(42.0)
    assert (e.mean, e.var, e.n, e.std) == (42.0, 0.0, 1, 0.0)
    # whatever the alpha
    e = ewma(7.5, alpha=0.01)
    assert (e.mean, e.var, e.n) == (7.5, 0.0, 1)


def test_ewma_known_sequence_hand_computed():
    e = Ewma()  # alpha 0.2
    e.update(10)  # mean 10, var 0
    e.update(20)  # a = max(.2, 1/2) = .5, diff 10, incr 5 -> mean 15, var .5 * (0 + 50) = 25
    assert (e.mean, e.var) == pytest.approx((15.0, 25.0))
    e.update(30)  # a = 1/3, diff 15, incr 5 -> mean 20, var 2/3 * (25 + 75) = 66.67
    assert (e.mean, e.var) == pytest.approx((20.0, 200 / 3))
    e.update(40)  # a = 1/4, diff 20, incr 5 -> mean 25, var .75 * (66.67 + 100) = 125
    assert (e.mean, e.var) == pytest.approx((25.0, 125.0))
    e.update(50)  # a = max(.2, 1/5) = .2, diff 25, incr 5 -> mean 30, var .8 * (125 + 125) = 200
    assert (e.mean, e.var) == pytest.approx((30.0, 200.0))
    e.update(60)  # a = max(.2, 1/6) = .2, diff 30, incr 6 -> mean 36, var .8 * (200 + 180) = 304
    assert (e.mean, e.var, e.n) == pytest.approx((36.0, 304.0, 6))
    assert e.std == pytest.approx(math.sqrt(304))
    assert e.relative_std() == pytest.approx(math.sqrt(304) / 36)


def test_ewma_early_samples_weigh_one_over_n_plus_one():
    # While 1/(n+1) > alpha, the mean is the plain average and var the population variance.
    e = ewma(3, 5, 10, alpha=0.1)
    assert (e.mean, e.var) == pytest.approx((6.0, ((3 - 6) ** 2 + (5 - 6) ** 2 + (10 - 6) ** 2) / 3))
    # Once 1/(n+1) < alpha the newest sample weighs alpha: 0 then 100 with alpha .9 -> 90, not 50.
    e = ewma(0, 100, alpha=0.9)
    assert e.mean == pytest.approx(90.0)
    # A long run at one value, then a jump: the jump moves the mean by alpha x diff.
    e = ewma(*([100.0] * 20))
    e.update(200.0)
    assert e.mean == pytest.approx(120.0)


def test_ewma_relative_std_zero_for_nonpositive_mean():
    e = ewma(-1.0, 1.0)
    assert e.mean == pytest.approx(0.0)
    assert e.relative_std() == 0.0


# =======================================================================================
# Observation.queued_s
# =======================================================================================
def test_queued_s():
    assert obs(wall_s=2.0, load_s=0.5, prefill_s=0.25, decode_s=1.0).queued_s() == pytest.approx(0.25)
    assert obs(wall_s=2.0, prefill_s=0.25, decode_s=1.0).queued_s() == pytest.approx(0.75)  # load None = 0
    assert obs(wall_s=1.0, prefill_s=0.5, decode_s=1.0).queued_s() == 0.0  # never negative
    assert obs(wall_s=2.0, prefill_s=None, decode_s=1.0).queued_s() is None
    assert obs(wall_s=2.0, prefill_s=0.25, decode_s=None).queued_s() is None


# =======================================================================================
# PerfBook.observe: speeds
# =======================================================================================
def test_observe_prefill_and_decode_rates_from_timings():
    book = PerfBook()
    book.observe(obs(prompt_tokens=400, completion_tokens=100, prefill_s=0.2, decode_s=0.5, wall_s=0.7))
    perf = book.perf("a", M)
    assert isinstance(perf, ModelPerf)
    assert perf.prefill_tps.mean == pytest.approx(2000.0)
    assert perf.decode_tps.mean == pytest.approx(200.0)
    assert (perf.prefill_tps.n, perf.decode_tps.n, perf.embed_tps.n, perf.load_s.n) == (1, 1, 0, 0)
    assert perf.samples == 1
    assert perf.success.mean == 1.0 and perf.success.n == 1
    book.observe(obs(prompt_tokens=400, completion_tokens=100, prefill_s=0.1, decode_s=0.25, wall_s=0.35))
    assert perf.prefill_tps.mean == pytest.approx(3000.0)  # (2000 + 4000) / 2
    assert perf.decode_tps.mean == pytest.approx(300.0)  # (200 + 400) / 2
    assert perf.samples == 2
    assert book.perf("a", "other:latest") is None
    assert book.perf("b", M) is None


def test_observe_decode_from_wall_time_without_timings():
    book = PerfBook()
    book.observe(obs(prompt_tokens=50, completion_tokens=100, wall_s=2.0))
    perf = book.perf("a", M)
    assert perf.decode_tps.mean == pytest.approx(50.0)  # 100 tokens / 2 s wall
    assert perf.prefill_tps.n == 0  # no prefill time: no prefill speed
    # A reported load time is taken out of the wall time first.
    book = PerfBook()
    book.observe(obs(completion_tokens=100, load_s=1.0, wall_s=3.0))
    assert book.perf("a", M).decode_tps.mean == pytest.approx(50.0)  # 100 / (3 - 1)
    assert book.perf("a", M).load_s.mean == pytest.approx(1.0)


def test_observe_no_decode_speed_without_tokens_or_time():
    book = PerfBook()
    book.observe(obs(prompt_tokens=10, completion_tokens=0, prefill_s=0.1, decode_s=0.5, wall_s=0.6))
    book.observe(obs(prompt_tokens=0, completion_tokens=10, prefill_s=0.0, decode_s=0.0, wall_s=0.0))
    perf = book.perf("a", M)
    assert perf.decode_tps.n == 0
    assert perf.prefill_tps.n == 1 and perf.prefill_tps.mean == pytest.approx(100.0)
    assert perf.success.n == 2


@pytest.mark.parametrize(
    ("load_s", "learned"),
    [(None, None), (0.0, None), (0.01, None), (COLD_LOAD_MIN_S - 1e-6, None), (COLD_LOAD_MIN_S, COLD_LOAD_MIN_S),
     (3.0, 3.0)],
)
def test_observe_learns_load_only_for_cold_loads(load_s, learned):
    assert COLD_LOAD_MIN_S == 0.05
    book = PerfBook()
    book.observe(obs(prompt_tokens=10, completion_tokens=10, prefill_s=0.1, decode_s=0.1,
                     load_s=load_s, wall_s=0.2 + (load_s or 0.0)))
    load = book.perf("a", M).load_s
    if learned is None:
        assert load.n == 0
    else:
        assert (load.n, load.mean) == (1, pytest.approx(learned))


def test_observe_embeddings_learn_embed_tps_only():
    book = PerfBook()
    book.observe(obs(model="nomic-embed-text:latest", task="embedding", embedding=True, prompt_tokens=1000,
                     prefill_s=0.5, wall_s=0.6))
    perf = book.perf("a", "nomic-embed-text:latest")
    assert perf.embed_tps.mean == pytest.approx(2000.0)
    assert (perf.prefill_tps.n, perf.decode_tps.n, perf.embed_tps.n) == (0, 0, 1)
    assert perf.samples == 1
    assert book.expected_output("nomic-embed-text:latest", "embedding") is None  # embeddings have no answer
    # Without a prefill time: wall minus load.
    book.observe(obs(model="e:latest", task="embedding", embedding=True, prompt_tokens=300, load_s=1.0, wall_s=1.5))
    e = book.perf("a", "e:latest")
    assert e.embed_tps.mean == pytest.approx(600.0)  # 300 / (1.5 - 1.0)
    assert e.load_s.mean == pytest.approx(1.0)


def test_observe_failures_only_move_success():
    book = PerfBook()
    book.observe(obs(ok=False, prompt_tokens=400, completion_tokens=100, prefill_s=0.2, decode_s=0.5, wall_s=9.0,
                     load_s=2.0, concurrent=3))
    perf = book.perf("a", M)
    assert (perf.success.n, perf.success.mean) == (1, 0.0)
    assert (perf.prefill_tps.n, perf.decode_tps.n, perf.embed_tps.n, perf.load_s.n) == (0, 0, 0, 0)
    assert perf.max_ok_concurrency == 0
    assert perf.samples == 0
    assert book.expected_output(M, "generation") is None
    assert book.capacity == {}
    # success: 0, then 1 (a = 1/2) -> .5, then 1 (a = 1/3) -> 2/3
    book.observe(obs(completion_tokens=10, wall_s=1.0))
    book.observe(obs(completion_tokens=10, wall_s=1.0))
    assert perf.success.mean == pytest.approx(2 / 3)
    assert perf.success.alpha == 0.1


def test_observe_max_ok_concurrency():
    book = PerfBook()
    for c in (2, 5, 3):
        book.observe(obs(completion_tokens=10, wall_s=1.0, concurrent=c))
    book.observe(obs(ok=False, completion_tokens=10, wall_s=1.0, concurrent=9))
    assert book.perf("a", M).max_ok_concurrency == 5


# =======================================================================================
# expected output per (model, task)
# =======================================================================================
def test_expected_output_per_model_and_task():
    book = PerfBook()
    assert book.expected_output(M, "generation") is None
    book.observe(obs("a", completion_tokens=100, wall_s=1.0))
    book.observe(obs("b", completion_tokens=200, wall_s=1.0))  # other node, same (model, task)
    book.observe(obs("a", task="summarization", completion_tokens=31, wall_s=1.0))
    book.observe(obs("a", model="q:latest", completion_tokens=7, wall_s=1.0))
    assert book.expected_output(M, "generation") == 150  # (100 + 200) / 2
    assert book.expected_output(M, "summarization") == 31
    assert book.expected_output("q:latest", "generation") == 7
    assert book.expected_output("q:latest", "summarization") is None
    assert book.output_tokens[(M, "generation")].alpha == 0.1
    # Failures don't count.
    book.observe(obs("a", ok=False, completion_tokens=10_000, wall_s=1.0))
    assert book.expected_output(M, "generation") == 150


def test_expected_output_rounds_to_nearest():
    book = PerfBook()
    for tokens in (100, 100, 102):  # mean 100.67
        book.observe(obs(completion_tokens=tokens, wall_s=1.0))
    assert book.expected_output(M, "generation") == 101


# =======================================================================================
# slot learning
# =======================================================================================
def timed(concurrent: int, queued: float, work: float = 1.0, node: str = "a") -> Observation:
    """A request whose node reports `work` seconds of prefill + decode after `queued` seconds waiting."""
    return obs(node, prompt_tokens=100, completion_tokens=100, prefill_s=0.2 * work, decode_s=0.8 * work,
               wall_s=work + queued, concurrent=concurrent)


def test_learned_slots_default_one():
    assert PerfBook().learned_slots("a") == 1


def test_no_queueing_at_concurrency_3_learns_3_slots():
    book = PerfBook()
    book.observe(timed(3, queued=0.0))
    assert book.learned_slots("a") == 3
    assert book.learned_slots("b") == 1
    book.observe(timed(2, queued=0.0))  # a lower concurrency doesn't lower it
    assert book.learned_slots("a") == 3


def test_queueing_at_a_believed_fine_concurrency_drops_to_concurrency_minus_one():
    book = PerfBook()
    book.observe(timed(4, queued=0.0))
    assert book.learned_slots("a") == 4
    book.observe(timed(3, queued=0.6))  # 3 <= 4 believed fine, but it waited 0.6 s for 1 s of work
    assert book.learned_slots("a") == 2
    book.observe(timed(1, queued=5.0))  # never below 1
    assert book.learned_slots("a") == 1


def test_queueing_above_the_known_concurrency_changes_nothing():
    book = PerfBook()
    book.observe(timed(3, queued=0.0))
    book.observe(timed(5, queued=2.0))
    assert book.learned_slots("a") == 3


def test_small_queueing_is_tolerated():
    # Up to max(25 % of the work, 50 ms) of waiting counts as not queued.
    book = PerfBook()
    book.observe(timed(3, queued=0.2, work=1.0))  # 0.2 <= 0.25
    assert book.learned_slots("a") == 3
    book.observe(timed(3, queued=0.3, work=1.0))  # 0.3 > 0.25, and 3 <= 3: it queued
    assert book.learned_slots("a") == 2
    book = PerfBook()
    book.observe(timed(2, queued=0.04, work=0.04))  # 0.04 <= 50 ms floor
    assert book.learned_slots("a") == 2


def test_slots_not_learned_without_timings_or_on_failure():
    book = PerfBook()
    book.observe(obs(completion_tokens=100, wall_s=1.0, concurrent=6))  # no timings: queueing unknown
    book.observe(obs(ok=False, prompt_tokens=1, completion_tokens=1, prefill_s=0.1, decode_s=0.1, wall_s=0.2,
                     concurrent=7))
    assert book.learned_slots("a") == 1
    assert all(c.proven == 1 for c in book.capacity.values())


def test_merge_from_is_observe_in_order():
    observations = [timed(2, 0.0), timed(2, 0.0, node="b"), timed(1, 3.0, node="b")]
    merged, one_by_one = PerfBook(), PerfBook()
    merged.merge_from(observations)
    for o in observations:
        one_by_one.observe(o)
    assert ({n: c.proven for n, c in merged.capacity.items()} == {n: c.proven for n, c in one_by_one.capacity.items()}
            == {"a": 2, "b": 1})
    assert merged.perf("b", M).decode_tps.n == 2
