"""Property-based: malformed requests at every endpoint get a 4xx in the API's own format,
never a 5xx, and the gateway stays healthy. Bounded: a fixed number of examples each."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

POST_ENDPOINTS = ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show",
                  "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/api/admin/nodes",
                  "/api/batch/embed", "/api/batch/chat", "/api/admin/warm"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                      max_leaves=12)
# Mostly models no node has, so nothing slow reaches a node; sometimes a real one with
# wrongly typed fields around it (no `options`, so no request asks for a huge answer).
models = st.one_of(st.just("no-such-model"), st.just("llama3.2"), st.text(max_size=10), st.integers(), st.none(),
                   st.lists(st.text(max_size=3), max_size=2))
field_names = st.sampled_from(["messages", "prompt", "input", "stream", "priority", "format", "images", "tools",
                               "keep_alive", "max_tokens", "name", "suffix", "system", "stream_options",
                               "requests", "nodes", "ttl_s"])
objects = st.builds(lambda model, extra: {"model": model, **extra}, models,
                    st.dictionaries(field_names, values, max_size=5))
raw_bodies = st.one_of(
    st.binary(max_size=200),
    values.map(lambda v: json.dumps(v).encode()),
    objects.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"", b"{", b"[]", b"null", b"\xff\xfe{}", b'{"model": "llama3.2", "messages": "hi"}',
                     b'{"model": "llama3.2", "priority": 11}', b"[" * 5000 + b"]" * 5000]),
)


def _check(response: httpx.Response, path: str) -> None:
    assert response.status_code < 500, (path, response.status_code, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        if path.startswith("/v1/"):
            assert isinstance(error, dict) and error["message"]
        else:
            assert isinstance(error, str) and error


@pytest.fixture(scope="module")
def http(gateway):
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield client


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(path=st.sampled_from(POST_ENDPOINTS), body=raw_bodies,
       priority_header=st.one_of(st.none(), st.sampled_from(["0", "11", "abc", "5", "-1", "1e3"])))
def test_malformed_requests_get_4xx_in_the_api_format(http, path, body, priority_header):
    headers = {"content-type": "application/json"}
    if priority_header is not None:
        headers["x-sollol-priority"] = priority_header
    response = http.post(path, content=body, headers=headers)
    _check(response, path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=12).filter(lambda n: n not in {"fast", "mid", "llamacpp", "solo"}),
       action=st.sampled_from(["POST /drain", "POST /undrain", "DELETE "]))
def test_admin_actions_on_unknown_or_odd_node_names_are_4xx(http, name, action):
    method, suffix = action.split(" ")
    path = "/api/admin/nodes/" + quote(name, safe="") + suffix
    response = http.request(method, path)
    _check(response, path)


def test_oversized_body_is_413(http, gateway):
    big = b'{"model": "llama3.2", "prompt": "' + b"x" * (33 * 1024 * 1024) + b'"}'
    response = http.post("/api/generate", content=big)
    assert response.status_code == 413 and "exceeds" in response.json()["error"]


def test_wrong_methods_and_paths(http):
    for method, path in [("GET", "/api/chat"), ("POST", "/api/tags"), ("GET", "/api/nope"), ("DELETE", "/v1/models")]:
        response = http.request(method, path)
        assert 400 <= response.status_code < 500
        _check(response, path)


def test_gateway_healthy_after_the_barrage(http):
    assert http.get("/health").status_code == 200
    ok = http.post("/api/generate", json={"model": "llama3.2", "prompt": "still there?", "stream": False,
                                          "options": {"num_predict": 2}})
    assert ok.status_code == 200 and ok.json()["eval_count"] == 2
