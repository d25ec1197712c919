"""A client cannot grow /metrics without bound: 1,000 requests for random model names count
under one `unknown` label instead of a time series each."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_random_model_names_leave_metrics_flat(gateway):
    def scrape() -> str:
        time.sleep(2.5)  # each replica flushes its counts once a second
        return httpx.get(f"{gateway.url}/metrics", timeout=30).text

    with httpx.Client(timeout=30) as http:
        http.post(f"{gateway.url}/api/chat", json={"model": "warm-up-nonsense", "messages": []})
        before = scrape()
        names = [f"junk-{uuid.uuid4().hex}" for _ in range(1000)]

        def ask(i_name: tuple[int, str]) -> int:
            i, name = i_name
            if i % 2:
                return http.post(f"{gateway.url}/api/chat", json={"model": name, "messages": []}).status_code
            return http.post(f"{gateway.url}/v1/embeddings", json={"model": name, "input": "x"}).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(ask, enumerate(names)))
    assert set(statuses) == {404}
    after = scrape()
    assert not any(name in after for name in names)
    assert 'model="unknown"' in after
    # The counts went up, the series did not multiply: a few new lines at most (the new
    # endpoint's and status's series), not 1,000.
    assert len(after.splitlines()) - len(before.splitlines()) < 60, len(after.splitlines()) - len(before.splitlines())
