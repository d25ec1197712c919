"""The HTTP surfaces without Ray: the routes over fake handles (FastAPI's dependency
override stands in for the replica's `Services`), checking auth and rate limits as
dependencies, the one error handler, and that errors of inference requests are counted."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from ray.exceptions import RayTaskError

from sollol_serve.api.auth import Authenticator, hash_key
from sollol_serve.api.http import app
from sollol_serve.api.recorder import RequestRecorder, StreamAccount
from sollol_serve.api.shared_limits import SharedLimits
from sollol_serve.api.services import Services, services
from sollol_serve.config import GatewayConfig
from sollol_serve.protocol import NoNodeAvailable, StreamEnd

ADMIN, USER, READER = "admin-secret", "user-secret", "reader-secret"


class FakeHandle:
    """A deployment or actor handle whose methods answer from `answers` (a value, a function of
    the call's arguments, or an exception to raise) and remember how they were called."""

    def __init__(self, **answers):
        self.answers, self.calls = answers, []

    def __getattr__(self, method: str):
        handle = self

        class Method:
            def remote(self, *args):
                handle.calls.append((method, args))

                return Answer(lambda: handle.answers[method], args)
        return Method()


class Answer:
    """Awaitable like a Ray ref, and (like one) harmless when never awaited: fire-and-forget calls."""

    def __init__(self, value, args):
        self.value, self.args = value, args

    def __await__(self):
        value = self.value()
        if isinstance(value, BaseException):
            raise value
        yield from ()
        return value(*self.args) if callable(value) else value


class FakeDispatch:
    def __init__(self):
        self.calls = []

    async def call(self, profile, req):
        self.calls.append((profile, req))
        return SimpleNamespace(body={"model": req.model, "message": {"role": "assistant", "content": "hi"},
                                     "done": True, "prompt_eval_count": 3, "eval_count": 4},
                               node="n1", routing={"node": "n1", "attempts": []})


def make_services(keys: bool = True, limited: dict | None = None, loopback_bind: bool = False,
                  aliases: dict | None = None, **router_answers) -> Services:
    security = {"keys": [{"name": "root", "sha256": hash_key(ADMIN), "role": "admin"},
                         {"name": "app", "sha256": hash_key(USER), "role": "user"},
                         {"name": "grafana", "sha256": hash_key(READER), "role": "reader"}]} if keys else {}
    config = GatewayConfig.model_validate({"security": security, "max_body_bytes": 1024, "aliases": aliases or {}})
    limiter = SharedLimits(FakeHandle(admit=lambda name: (limited or {}).get(name), charge=None, acquire="",
                                      release=None, admit_batch=None), [])
    return Services(config=config, router=FakeHandle(**router_answers), batch=FakeHandle(),
                    dispatch=FakeDispatch(), lengths=SimpleNamespace(table={}), auth=Authenticator(config.security, b"k" * 32),
                    limiter=limiter, limited=frozenset(limited or ()), recorder=RequestRecorder(FakeHandle()),
                    metrics_book=FakeHandle(), cache=FakeHandle(), sessions=FakeHandle(revoked=False),
                    loopback_bind=loopback_bind,
                    machine_names=frozenset({"gpu-box"}))


@pytest.fixture
def client():
    made = []

    def start(svc: Services) -> TestClient:
        async def fake() -> Services:
            return svc
        app.dependency_overrides[services] = fake
        made.append(TestClient(app, raise_server_exceptions=False))
        return made[-1]

    yield start
    app.dependency_overrides.clear()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _routes(router) -> set[tuple[str, str]]:
    """(method, path) of every route, into included routers (FastAPI nests them)."""
    found = set()
    for route in router.routes:
        if hasattr(route, "original_router"):
            found |= _routes(route.original_router)
        else:
            found |= {(method, route.path) for method in getattr(route, "methods", None) or ()}
    return found


def test_every_surface_is_routed():
    routes = _routes(app)
    expected = {
        ("GET", "/"), ("HEAD", "/"), ("GET", "/api/version"), ("GET", "/api/tags"), ("GET", "/api/ps"),
        ("POST", "/api/show"), ("POST", "/api/chat"), ("POST", "/api/generate"), ("POST", "/api/embed"),
        ("POST", "/api/embeddings"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
        ("GET", "/health"), ("GET", "/api/nodes"), ("GET", "/api/queue"), ("GET", "/api/stats"), ("GET", "/metrics"),
        ("GET", "/api/routing/decisions"), ("GET", "/api/cache"), ("GET", "/api/applications"),
        ("GET", "/api/timeline"), ("GET", "/api/alerts"), ("GET", "/dashboard/static/{name}"),
        ("GET", "/api/admin/nodes"), ("POST", "/api/admin/nodes"), ("POST", "/api/admin/nodes/{name}/drain"),
        ("POST", "/api/admin/nodes/{name}/undrain"), ("DELETE", "/api/admin/nodes/{name}"),
        ("POST", "/api/admin/warm"), ("GET", "/api/shards"), ("POST", "/api/shards/{model:path}/start"),
        ("POST", "/api/shards/{model:path}/stop"), ("DELETE", "/api/cache"), ("DELETE", "/api/cache/{model:path}"),
        ("POST", "/api/batch/embed"), ("POST", "/api/batch/chat"), ("GET", "/api/batch/jobs"),
        ("GET", "/api/batch/jobs/{job_id}"), ("GET", "/api/batch/results/{job_id}"),
        ("DELETE", "/api/batch/jobs/{job_id}"),
        ("GET", "/dashboard"), ("POST", "/dashboard/login"), ("POST", "/dashboard/logout"),
        # The original SOLLOL's addresses.
        ("GET", "/api/health"), ("GET", "/api/dashboard"), ("GET", "/dashboard.html"),
    }
    assert expected <= routes, expected - routes


def test_auth_refusals_in_each_api_format(client):
    http = client(make_services(tags=[{"name": "m:latest"}]))
    missing = http.get("/api/tags")
    assert missing.status_code == 401 and "missing API key" in missing.json()["error"]
    openai = http.get("/v1/models", headers=bearer("wrong"))
    assert openai.status_code == 401
    assert openai.json()["error"] == {"message": "invalid API key", "type": "authentication_error",
                                      "param": None, "code": "invalid_api_key"}
    assert http.get("/api/tags", headers=bearer(READER)).json() == {"models": [{"name": "m:latest"}]}
    assert http.get("/api/admin/nodes", headers=bearer(USER)).status_code == 403  # user lacks admin
    assert http.delete("/api/cache", headers=bearer(READER)).status_code == 403
    assert http.get("/api/cache", headers=bearer(USER)).status_code == 403  # user lacks stats


def test_a_refused_inference_request_is_counted_and_a_served_one_charged(client):
    svc = make_services(limited={"app": None})
    svc.recorder.known = frozenset({"m:latest"})  # what the nodes serve
    http = client(svc)
    refused = http.post("/api/chat", headers=bearer(READER), json={"model": "m", "messages": []})
    assert refused.status_code == 403 and "lacks the 'chat' permission" in refused.json()["error"]
    served = http.post("/api/chat", headers=bearer(USER),
                       json={"model": "m", "stream": False, "messages": [{"role": "user", "content": "hi"}]})
    assert served.status_code == 200 and served.headers["X-SOLLOL-Node"] == "n1"
    assert served.json()["_sollol_routing"]["node"] == "n1" and served.json()["message"]["content"] == "hi"
    for name in ("no-such-model-1", "no-such-model-2"):  # a client's strings never become labels
        http.post("/api/chat", headers=bearer(USER), json={"model": name, "stream": False, "messages": []})
    assert dict(svc.recorder.metrics.requests) == {("/api/chat", "unknown", "none", "403"): 1,
                                                   ("/api/chat", "m:latest", "n1", "200"): 1,
                                                   ("/api/chat", "unknown", "n1", "200"): 2}
    assert ("charge", ("app", 7)) in svc.limiter.actor.calls  # prompt 3 + answer 4 tokens


def test_each_request_is_counted_for_its_application(client):
    keyed = make_services()
    http = client(keyed)
    body = {"model": "m", "stream": False, "messages": [{"role": "user", "content": "hi"}]}
    # With keys on the key names the application, whatever the caller's header says.
    http.post("/api/chat", headers={**bearer(USER), "X-SOLLOL-App": "pretender"}, json=body)
    http.post("/api/chat", headers=bearer(READER), json=body)  # refused before its key is known
    assert [(u.application, u.source, u.status, u.tokens_in, u.tokens_out) for u in keyed.recorder.uses] == [
        ("app", "key", 200, 3, 4), ("other", "user-agent", 403, 0, 0)]  # TestClient's own User-Agent
    open_svc = make_services(keys=False)
    http = client(open_svc)
    http.post("/api/chat", headers={"X-SOLLOL-App": "FlockParser"}, json=body)
    http.post("/api/chat", headers={"User-Agent": "ollama-python/0.4.7 (x86_64 linux) Python/3.11"}, json=body)
    assert [(u.application, u.source) for u in open_svc.recorder.uses] == [
        ("FlockParser", "header"), ("ollama-python", "user-agent")]


def test_an_alias_is_routed_counted_and_cached_as_its_model(client):
    svc = make_services(keys=False, aliases={"gpt-4o-mini": "llama3.2:3b"})
    svc.recorder.known = frozenset({"llama3.2:3b"})  # what the nodes serve
    http = client(svc)
    answer = http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user",
                                                                                          "content": "hi"}]})
    assert answer.status_code == 200, answer.text
    assert [req.model for _, req in svc.dispatch.calls] == ["llama3.2:3b"]
    assert svc.dispatch.calls[0][1].body["model"] == "llama3.2:3b"  # the node is asked for its own name
    assert {key[1] for key in svc.recorder.metrics.requests} == {"llama3.2:3b"}  # one name in the metrics
    http.post("/api/chat", json={"model": "llama3.2", "stream": False, "messages": []})  # not an alias: as sent
    assert svc.dispatch.calls[-1][1].model == "llama3.2"


def test_rate_limited_key_gets_429_with_retry_after(client):
    http = client(make_services(limited={"app": 7}))
    response = http.post("/v1/chat/completions", headers=bearer(USER),
                         json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 429 and response.headers["Retry-After"] == "7"
    assert response.json()["error"]["type"] == "rate_limit_error"


def test_bad_bodies_are_400_and_413(client):
    http = client(make_services(keys=False))
    bad = http.post("/api/chat", content=b"{nope")
    assert bad.status_code == 400 and bad.json()["error"].startswith("invalid JSON")
    invalid = http.post("/v1/embeddings", json={"model": "m"})
    assert invalid.status_code == 400 and "input" in invalid.json()["error"]["message"]
    big = http.post("/api/embed", json={"model": "m", "input": "x" * 3000})
    assert big.status_code == 413


def test_errors_from_other_deployments_keep_their_status_and_others_are_500(client):
    wrapped = RayTaskError("ps", "traceback", NoNodeAvailable("every node is down")).as_instanceof_cause()
    http = client(make_services(keys=False, ps=wrapped, versions=RuntimeError("a bug")))
    down = http.get("/api/ps")
    assert down.status_code == 503 and down.json() == {"error": "every node is down"}
    assert http.get("/api/version").status_code == 500
    assert http.get("/api/nope").status_code == 404 and "error" in http.get("/api/nope").json()


def test_a_hostile_page_cannot_reach_a_keyless_gateway(client):
    # No keys: every caller is admin, so the browser's Origin and Host are what stand in the way.
    svc = make_services(keys=False, loopback_bind=True, add_node=lambda node: {"name": node["name"]},
                        tags=[{"name": "m:latest"}])
    http = client(svc)
    node = '{"name": "evil", "url": "http://203.0.113.9:11434"}'
    # A `no-cors` fetch from another site: text/plain body, the page's Origin.
    forged = http.post("http://127.0.0.1:8000/api/admin/nodes", content=node,
                       headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})
    assert forged.status_code == 403 and "cross-origin" in forged.json()["error"]
    assert http.post("http://127.0.0.1:8000/api/chat", content="{}",
                     headers={"Origin": "null"}).status_code == 403  # a sandboxed frame or file://
    assert not [c for c in svc.router.calls if c[0] == "add_node"]
    # curl -d (form content type, no Origin) and the gateway's own pages are let through.
    curl = http.post("http://127.0.0.1:8000/api/admin/nodes", content=node,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert curl.status_code == 201
    own = http.post("http://localhost:8000/api/admin/nodes", content=node, headers={"Origin": "http://localhost:8000"})
    assert own.status_code == 201
    # DNS rebinding: evil.example now resolves to 127.0.0.1, so the page is "same origin".
    rebound = http.get("http://evil.example:8000/api/tags", headers={"Origin": "http://evil.example:8000"})
    assert rebound.status_code == 403 and "evil.example" in rebound.json()["error"]
    for host in ("127.0.0.1:8000", "[::1]:8000", "localhost", "gpu-box:8000", "10.0.0.5"):
        assert http.get(f"http://{host}/api/tags").status_code == 200, host


def test_allowed_origins_and_hosts_are_configurable(client):
    svc = make_services(keys=False, loopback_bind=True, tags=[])
    svc.config.security.allowed_origins = ["https://chat.example"]
    svc.config.security.allowed_hosts = ["Gateway.Lan"]
    http = client(svc)
    assert http.get("http://127.0.0.1/api/tags", headers={"Origin": "https://chat.example"}).status_code == 200
    assert http.get("http://127.0.0.1/api/tags", headers={"Origin": "https://other.example"}).status_code == 403
    assert http.get("http://gateway.lan/api/tags").status_code == 200
    assert http.get("http://other.lan/api/tags").status_code == 403
    svc.loopback_bind = False  # bound to the LAN (with keys, by the bind rule): names are the operator's
    assert http.get("http://other.lan/api/tags").status_code == 200


def test_logout_revokes_the_session_everywhere(client):
    ended: set[str] = set()
    svc = make_services()
    svc.sessions = FakeHandle(revoked=lambda sid, secret_id: sid in ended, revoke=ended.add)
    http = client(svc)
    login = http.post("/dashboard/login", content=f"key={ADMIN}", follow_redirects=False,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert login.status_code == 303
    cookie = login.cookies["sollol_session"]
    assert http.get("/dashboard", cookies={"sollol_session": cookie}).status_code == 200
    http.cookies.clear()
    assert http.post("/dashboard/logout", cookies={"sollol_session": cookie}, follow_redirects=False).status_code == 303
    assert len(ended) == 1
    # A copy of the cookie (kept by the browser, or stolen) is dead too.
    again = http.get("/api/stats", cookies={"sollol_session": cookie})
    assert again.status_code == 401 and "session ended" in again.json()["error"]
    assert http.get("/dashboard", cookies={"sollol_session": cookie}).status_code == 401  # the login form


def test_a_stream_is_charged_as_it_flows_and_when_the_client_leaves():
    charged: list[int] = []
    released: list[bool] = []
    account = StreamAccount(RequestRecorder(FakeHandle()), "/api/chat", "m", "n1", 0.0, charged.append,
                            prompt_tokens=10, on_close=lambda: released.append(True))
    account.chunk(20)
    assert charged == []  # 30 owed: below a charge's batch
    account.chunk(5)
    assert charged == [35]
    account.chunk(3)
    account.close()  # the client went away: the 3 tokens since are paid too, and the lease returns
    account.close()
    assert charged == [35, 3] and released == [True]
    finished = StreamAccount(RequestRecorder(FakeHandle()), "/api/chat", "m", "n1", 0.0, charged.append,
                             prompt_tokens=10)
    finished.chunk(40)
    finished.end(StreamEnd({"node": "n1"}, prompt_tokens=20, completion_tokens=40))  # the node's count settles it
    finished.close()
    assert charged == [35, 3, 50, 10]


def test_application_registration_routes(client):
    registered: dict = {}
    svc = make_services()
    svc.metrics_book = FakeHandle(register=lambda app_id, reg: registered.setdefault(app_id, reg) is reg,
                                  heartbeat=lambda app_id, metadata: app_id in registered,
                                  deregister=lambda app_id: registered.pop(app_id, None) is not None)
    http = client(svc)
    made = http.post("/api/applications/register", headers=bearer(USER),
                     json={"app_name": "Synaptic Llamas", "router_type": "IntelligentRouter", "metadata": {"a": 1}})
    assert made.status_code == 201 and made.json()["name"] == "Synaptic Llamas"
    app_id = made.json()["app_id"]
    assert registered[app_id].router_type == "IntelligentRouter" and registered[app_id].metadata == {"a": 1}
    assert http.post(f"/api/applications/{app_id}/heartbeat", headers=bearer(USER)).status_code == 200
    beat = http.post(f"/api/applications/{app_id}/heartbeat", headers=bearer(USER), json={"metadata": {"a": 2}})
    assert beat.status_code == 200
    assert http.post("/api/applications/nope/heartbeat", headers=bearer(USER)).status_code == 404
    assert http.delete(f"/api/applications/{app_id}", headers=bearer(USER)).json()["deregistered"] is True
    assert http.delete(f"/api/applications/{app_id}", headers=bearer(USER)).status_code == 404
    # Bad input: a clear 400; a read-only key has no application to register.
    assert http.post("/api/applications/register", headers=bearer(USER), json={}).status_code == 400
    assert http.post("/api/applications/register", headers=bearer(USER), json={"app_name": "<>"}).status_code == 400
    assert http.post("/api/applications/register", headers=bearer(USER),
                     json={"app_name": "a", "metadata": {"x": "y" * 1100}}).status_code == 413  # body limit 1024
    listed = http.post("/api/applications/register", headers=bearer(USER), json={"app_name": "a", "metadata": [1]})
    assert listed.status_code == 400 and "metadata" in listed.json()["error"]
    assert http.post("/api/applications/register", headers=bearer(READER), json={"app_name": "a"}).status_code == 403


def test_alerts_need_the_stats_permission_and_come_from_the_metrics_book(client):
    svc = make_services()
    answer = {"active": [{"kind": "breaker_open", "subject": "n1"}], "recent": []}
    svc.metrics_book = FakeHandle(alerts_json=answer)
    http = client(svc)
    assert http.get("/api/alerts", headers=bearer(READER)).json() == answer
    assert http.get("/api/alerts").status_code == 401


def test_a_restarted_session_actor_ends_every_session_and_its_new_secret_is_taken(client):
    # Killed and restarted, the actor has a new secret and no revocations: a cookie signed
    # before (a logged-out one among them) must not work again, and a new login must.
    svc = make_services()
    new_secret = b"n" * 32
    svc.sessions = FakeHandle(revoked=lambda sid, secret_id: new_secret if secret_id != _secret_id(new_secret)
                              else False)
    http = client(svc)
    form = {"headers": {"Content-Type": "application/x-www-form-urlencoded"}, "follow_redirects": False}
    before = http.post("/dashboard/login", content=f"key={ADMIN}", **form).cookies["sollol_session"]
    http.cookies.clear()
    ended = http.get("/api/stats", cookies={"sollol_session": before})
    assert ended.status_code == 401 and "session ended" in ended.json()["error"]
    assert svc.auth.secret_id == _secret_id(new_secret)  # taken from the actor's answer
    after = http.post("/dashboard/login", content=f"key={ADMIN}", **form).cookies["sollol_session"]
    http.cookies.clear()
    assert http.get("/dashboard", cookies={"sollol_session": after}).status_code == 200


def _secret_id(secret: bytes) -> str:
    import hashlib

    return hashlib.sha256(secret).hexdigest()[:16]
