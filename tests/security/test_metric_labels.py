"""A client cannot grow /metrics without bound: 1,000 requests for random model names count
under one `unknown` label instead of a time series each."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def _unknown_requests(text: str) -> float:
    """Requests counted under the `unknown` model label."""
    return sum(sample.value for family in text_string_to_metric_families(text) if family.name == "sollol_requests"
               for sample in family.samples
               if sample.name == "sollol_requests_total" and sample.labels.get("model") == "unknown")


def test_random_model_names_leave_metrics_flat(gateway):
    def scrape(unknown_at_least: float) -> str:
        """/metrics once every replica has flushed that many `unknown` requests (once a second each)."""
        seen = {}

        def flushed() -> bool:
            seen["text"] = httpx.get(f"{gateway.url}/metrics", timeout=30).text
            return _unknown_requests(seen["text"]) >= unknown_at_least

        wait_until(flushed, 30, f"{unknown_at_least} requests for unknown models counted", every_s=0.5)
        return seen["text"]

    with httpx.Client(timeout=30) as http:
        http.post(f"{gateway.url}/api/chat", json={"model": "warm-up-nonsense", "messages": []})
        before = scrape(1)
        names = [f"junk-{uuid.uuid4().hex}" for _ in range(1000)]

        def ask(i_name: tuple[int, str]) -> int:
            i, name = i_name
            if i % 2:
                return http.post(f"{gateway.url}/api/chat", json={"model": name, "messages": []}).status_code
            return http.post(f"{gateway.url}/v1/embeddings", json={"model": name, "input": "x"}).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(ask, enumerate(names)))
    assert set(statuses) == {404}
    after = scrape(_unknown_requests(before) + len(names))
    assert not any(name in after for name in names)
    assert 'model="unknown"' in after
    # The counts went up, the series did not multiply: a few new lines at most (the new
    # endpoint's and status's series), not 1,000.
    assert len(after.splitlines()) - len(before.splitlines()) < 60, len(after.splitlines()) - len(before.splitlines())
