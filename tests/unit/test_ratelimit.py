"""Per-key request and token buckets, without Ray."""

from __future__ import annotations

import pytest

from sollol_serve.api.ratelimit import RateLimits, TokenBucket, tokens_used
from sollol_serve.config import ApiKeyConfig

H = "0" * 64


def limits(rpm=None, tpm=None) -> RateLimits:
    return RateLimits([ApiKeyConfig(name="k", sha256=H, requests_per_minute=rpm, tokens_per_minute=tpm),
                       ApiKeyConfig(name="free", sha256=H)])


def test_bucket_refills_linearly_up_to_capacity():
    b = TokenBucket.full(60, now=0.0)
    b.level = 0
    b.refill(10.0)
    assert b.level == pytest.approx(10)
    b.refill(1000.0)
    assert b.level == 60
    assert b.wait_s(61) == pytest.approx(1.0)


def test_requests_per_minute():
    rl = limits(rpm=3)
    assert [rl.admit("k", 0.0) for _ in range(3)] == [None, None, None]
    assert rl.admit("k", 0.0) == 20  # one request per 20 s
    assert rl.admit("k", 10.0) == 10
    assert rl.admit("k", 20.0) is None
    assert all(rl.admit("free", 0.0) is None for _ in range(100))  # no limits configured


def test_tokens_per_minute_charged_after_the_fact():
    rl = limits(tpm=60)
    assert rl.admit("k", 0.0) is None
    rl.charge("k", 100, 0.0)  # 60 available, 100 used: 40 owed
    assert rl.admit("k", 0.0) == 41  # back to one token after 41 s at 1 token/s
    assert rl.admit("k", 41.0) is None


def test_tokens_used_in_both_formats():
    assert tokens_used({"prompt_eval_count": 7, "eval_count": 5}) == 12
    assert tokens_used({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}) == 7
    assert tokens_used({}) == 0


def test_configure_again_keeps_unchanged_buckets_and_takes_new_limits():
    rl = limits(rpm=2, tpm=100)
    assert [rl.admit("k", 0.0) for _ in range(3)] == [None, None, 30]  # 2 per minute: the third waits 30 s
    # The same keys again (a redeploy, or another replica starting): still spent.
    rl.configure([ApiKeyConfig(name="k", sha256=H, requests_per_minute=2, tokens_per_minute=100)])
    assert rl.admit("k", 1.0) == 29
    # A new request limit starts a full bucket.
    rl.configure([ApiKeyConfig(name="k", sha256=H, requests_per_minute=10, tokens_per_minute=100)])
    assert rl.admit("k", 1.0) is None
    rl.charge("k", 200, 1.0)  # tokens: full (100) - 200 = -100
    # An unchanged token limit keeps its debt: 101 tokens short at 100/min -> 60.6 s, 61.
    rl.configure([ApiKeyConfig(name="k", sha256=H, requests_per_minute=20, tokens_per_minute=100)])
    assert rl.admit("k", 1.0) == 61
    # Limits removed: the key goes freely.
    rl.configure([ApiKeyConfig(name="k", sha256=H)])
    assert rl.admit("k", 1.0) is None and rl.buckets == {}


def test_max_concurrent_leases_expire_and_come_back():
    limits = RateLimits([ApiKeyConfig(name="pair", sha256="0" * 64, max_concurrent=2),
                         ApiKeyConfig(name="free", sha256="1" * 64)])
    first, second = limits.acquire("pair", 60, 0.0), limits.acquire("pair", 60, 1.0)
    assert first and second and first != second
    assert limits.acquire("pair", 60, 2.0) is None  # two in flight
    assert limits.acquire("free", 60, 2.0) == ""  # no cap: nothing to hold
    limits.release("pair", first)
    assert limits.acquire("pair", 60, 3.0)
    assert limits.acquire("pair", 60, 4.0) is None
    assert limits.acquire("pair", 60, 61.0)  # `second` (taken at 1.0) was lost by its replica: expired at 61


def test_a_batch_pays_up_front_or_takes_nothing():
    limits = RateLimits([ApiKeyConfig(name="k", sha256="0" * 64, requests_per_minute=20, tokens_per_minute=1000)])
    assert "exceeds" in limits.admit_batch("k", 21, 10, 0.0)
    assert "1000 tokens per minute" in limits.admit_batch("k", 5, 1001, 0.0)
    assert limits.admit_batch("k", 15, 400, 0.0) is None
    assert limits.buckets[("k", "requests")].level == 5 and limits.buckets[("k", "tokens")].level == 600
    assert limits.admit_batch("k", 6, 0, 0.0) is not None  # 5 left
