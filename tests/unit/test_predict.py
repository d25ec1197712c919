"""sollol_serve.routing.predict: slot wait, predicted completion time, cluster priors."""

from __future__ import annotations

import pytest

from sollol_serve.analysis.profile import RequestProfile
from sollol_serve.cluster.learning import Ewma, ModelPerf, PerfBook
from sollol_serve.routing.predict import (
    MIN_SUCCESS,
    Prediction,
    Priors,
    predict,
    risk_z,
    slot_wait,
)


def ewma(*xs: float, alpha: float = 0.2) -> Ewma:
    e = Ewma(alpha=alpha)
    for x in xs:
        e.update(x)
    return e


def profile(tokens_in: int = 500, tokens_out: int = 100, *, priority: int = 5, task: str = "generation",
            model: str = "m") -> RequestProfile:
    return RequestProfile(task_type=task, complexity="low", tokens_in=tokens_in, tokens_out_est=tokens_out,
                          output_capped=True, requires_gpu=False, model=model, priority=priority)


def measured_perf() -> ModelPerf:
    """prefill 1000 tok/s; decode 40 then 60 -> mean 50, var 100 (std 10, relative .2);
    load 2 s; success 1, 1, 0 -> 2/3."""
    return ModelPerf(prefill_tps=ewma(1000), decode_tps=ewma(40, 60), load_s=ewma(2.0),
                     success=ewma(1, 1, 0, alpha=0.1))


# =======================================================================================
# slot_wait
# =======================================================================================
@pytest.mark.parametrize(
    ("remaining", "slots", "wait"),
    [
        ([], 1, 0.0),
        ([5.0], 2, 0.0),  # n < slots: a slot is free
        ([5.0, 1.0, 3.0], 4, 0.0),
        ([5.0], 1, 5.0),  # n == slots: the 1st to finish
        ([5.0, 1.0, 3.0], 3, 1.0),
        ([5.0, 1.0, 3.0], 2, 3.0),  # n - slots + 1 = 2nd smallest
        ([5.0, 1.0, 3.0], 1, 5.0),  # 3rd smallest
        ([4.0, 0.5, 2.0, 9.0, 1.0], 2, 4.0),  # sorted .5 1 2 4 9 -> 4th smallest
    ],
)
def test_slot_wait(remaining, slots, wait):
    assert slot_wait(remaining, slots) == wait


def test_slot_wait_does_not_sort_the_callers_list():
    remaining = [3.0, 1.0, 2.0]
    slot_wait(remaining, 1)
    assert remaining == [3.0, 1.0, 2.0]


@pytest.mark.parametrize(("priority", "z"), [(1, 0.0), (3, 0.0), (4, 0.5), (7, 0.5), (8, 1.5), (10, 1.5)])
def test_risk_z(priority, z):
    assert risk_z(priority) == z


# =======================================================================================
# predict
# =======================================================================================
def test_predict_hand_computed_cold_urgent():
    # wait: 3 in flight on 2 slots -> 2nd smallest of (3, 1, 2) = 2
    # load 2 (not resident), prefill 500 / 1000 = .5, decode 100 / 50 = 2 -> service 4.5
    # (2 + 4.5) / (2/3) = 9.75; risk 1.5 (priority 8) x decode 2 x relative std .2 = .6 -> 10.35
    p = predict("a", 2, profile(priority=8), measured_perf(), Priors(), [3.0, 1.0, 2.0], resident=False)
    assert isinstance(p, Prediction)
    assert p.node == "a"
    assert (p.wait_s, p.load_s, p.prefill_s, p.decode_s) == pytest.approx((2.0, 2.0, 0.5, 2.0))
    assert p.total_s == pytest.approx(10.35)
    assert p.free_slot is False
    assert p.factors == pytest.approx({"wait_s": 2.0, "service_s": 4.5, "failure_inflation": 1.5, "risk_s": 0.6})
    assert "unmeasured" not in p.factors


def test_predict_resident_skips_load():
    p = predict("a", 2, profile(priority=8), measured_perf(), Priors(), [3.0, 1.0, 2.0], resident=True)
    assert p.load_s == 0.0
    assert p.total_s == pytest.approx((2.0 + 0.5 + 2.0) * 1.5 + 0.6)  # 7.35


@pytest.mark.parametrize(("priority", "risk"), [(8, 0.6), (5, 0.2), (3, 0.0)])
def test_predict_risk_by_priority(priority, risk):
    p = predict("a", 4, profile(priority=priority), measured_perf(), Priors(), [], resident=True)
    assert p.wait_s == 0.0 and p.free_slot is True
    assert p.factors["risk_s"] == pytest.approx(risk)
    assert p.total_s == pytest.approx((0.5 + 2.0) * 1.5 + risk)


def test_predict_cold_load_uses_prior_when_node_never_cold_loaded():
    perf = measured_perf()
    perf.load_s = Ewma()
    p = predict("a", 1, profile(priority=1), perf, Priors(load_s=7.0), [], resident=False)
    assert p.load_s == 7.0
    assert p.total_s == pytest.approx((7.0 + 0.5 + 2.0) * 1.5)


def test_predict_unmeasured_node_uses_priors():
    priors = Priors(prefill_tps=250.0, decode_tps=20.0, embed_tps=1000.0, load_s=3.0)
    p = predict("new", 1, profile(500, 100, priority=10), None, priors, [], resident=False)
    # 3 + 500/250 + 100/20 = 10; no spread known, no failures
    assert (p.load_s, p.prefill_s, p.decode_s, p.total_s) == pytest.approx((3.0, 2.0, 5.0, 10.0))
    assert p.factors["unmeasured"] == 1.0
    assert p.factors["failure_inflation"] == 1.0 and p.factors["risk_s"] == 0.0
    # Default priors: 500 tok/s prefill, 30 tok/s decode, 5 s load.
    p = predict("new", 1, profile(500, 30), None, Priors(), [], resident=False)
    assert p.total_s == pytest.approx(5.0 + 1.0 + 1.0)


def test_predict_failures_only_node_is_unmeasured_and_inflated_to_min_success():
    perf = ModelPerf(success=ewma(0, 0, alpha=0.1))
    p = predict("a", 1, profile(500, 30), perf, Priors(), [], resident=True)
    assert p.factors["unmeasured"] == 1.0
    assert MIN_SUCCESS == 0.2
    assert p.factors["failure_inflation"] == pytest.approx(5.0)
    assert p.total_s == pytest.approx((1.0 + 1.0) * 5.0)


def test_predict_embedding_path():
    perf = ModelPerf(embed_tps=ewma(2000), decode_tps=ewma(1.0))  # decode speed is ignored for embeddings
    p = predict("a", 1, profile(1000, 0, task="embedding", priority=10), perf, Priors(), [], resident=True)
    assert (p.prefill_s, p.decode_s, p.load_s, p.total_s) == pytest.approx((0.5, 0.0, 0.0, 0.5))
    assert p.factors["risk_s"] == 0.0  # one sample: no spread
    assert "unmeasured" not in p.factors
    # Spread from the embedding speed: 1000 then 3000 -> mean 2000, var 1e6, relative std .5
    perf = ModelPerf(embed_tps=ewma(1000, 3000))
    p = predict("a", 1, profile(1000, 0, task="embedding", priority=8), perf, Priors(), [], resident=True)
    assert p.factors["risk_s"] == pytest.approx(1.5 * 0.5 * 0.5)
    assert p.total_s == pytest.approx(0.5 + 0.375)
    # Unmeasured: the prior embedding speed (1000 tok/s), cold load from the prior.
    p = predict("a", 1, profile(1000, 0, task="embedding"), None, Priors(), [], resident=False)
    assert (p.prefill_s, p.load_s, p.total_s) == pytest.approx((1.0, 5.0, 6.0))
    assert p.factors["unmeasured"] == 1.0


def test_prediction_as_dict_rounds():
    p = Prediction("a", 1.234567, 0.1, 0.2, 0.3, 0.634567, True, {"risk_s": 0.123456})
    assert p.as_dict() == {"predicted_s": 1.2346, "wait_s": 0.1, "load_s": 0.2, "prefill_s": 0.3,
                           "decode_s": 0.6346, "free_slot": True, "factors": {"risk_s": 0.1235}}


# =======================================================================================
# Priors.from_book
# =======================================================================================
def test_priors_defaults():
    p = Priors()
    assert (p.prefill_tps, p.decode_tps, p.embed_tps, p.load_s) == (500.0, 30.0, 1000.0, 5.0)
    p = Priors.from_book(PerfBook(), "m:latest")
    assert (p.prefill_tps, p.decode_tps, p.embed_tps, p.load_s) == (500.0, 30.0, 1000.0, 5.0)


def _book() -> PerfBook:
    book = PerfBook()
    book.models[("a", "m:latest")] = ModelPerf(prefill_tps=ewma(100), decode_tps=ewma(10))
    book.models[("b", "m:latest")] = ModelPerf(prefill_tps=ewma(300), decode_tps=ewma(20))
    book.models[("c", "m:latest")] = ModelPerf(decode_tps=ewma(60), load_s=ewma(4.0))
    book.models[("d", "other:latest")] = ModelPerf(decode_tps=ewma(99), embed_tps=ewma(700), load_s=ewma(1.0))
    return book


def test_priors_from_book_median_of_the_model_across_nodes():
    p = Priors.from_book(_book(), "m:latest")
    assert p.decode_tps == 20.0  # median of 10, 20, 60
    assert p.prefill_tps == 200.0  # median of 100, 300 (c has none)
    assert p.load_s == 4.0  # only c measured a load
    assert p.embed_tps == 1000.0  # nobody measured it for m: the default, not other's 700


def test_priors_from_book_any_model_when_this_one_is_unknown():
    p = Priors.from_book(_book(), "new:latest")
    assert p.decode_tps == 40.0  # median of 10, 20, 60, 99
    assert p.prefill_tps == 200.0
    assert p.load_s == 2.5  # median of 4, 1
    assert p.embed_tps == 700.0
