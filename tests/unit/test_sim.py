"""The simulated node: engine (pure parts) and both HTTP facades, in process via ASGITransport.

pytest-asyncio is not relied on: each test runs its coroutine with `asyncio.run`, and builds
the app inside that coroutine (the engine's asyncio primitives bind to the running loop).
"""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest

from sollol_serve.api.translate import OpenAIToOllamaStream, usage_from_ollama, usage_from_openai
from sollol_serve.sim.engine import SimEngine, SimModel, SimNodeConfig, embedding_for, parse_keep_alive
from sollol_serve.sim.ollama_api import SIM_VERSION
from sollol_serve.sim.server import build_sim_app, parse_models

FAST = dict(decode_tps=20_000.0, prefill_tps=1_000_000.0, load_s=0.0)


def fast_config(**overrides) -> SimNodeConfig:
    return SimNodeConfig(**{**FAST, **overrides})


def run(coro_fn, config: SimNodeConfig, raise_app_exceptions: bool = True):
    """Run `coro_fn(client)` against a fresh in-process sim app."""

    async def main():
        app = build_sim_app(config)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            return await coro_fn(client)

    return asyncio.run(main())


def chat_body(**extra) -> dict:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": "hello there"}], **extra}


# =======================================================================================
# engine: pure parts
# =======================================================================================
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("30s", 30.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        (" 2m ", 120.0),
        ("45", 45.0),
        (10, 10.0),
        (2.5, 2.5),
        (0, 0.0),
        ("0", 0.0),
    ],
)
def test_parse_keep_alive_durations(value, seconds):
    assert parse_keep_alive(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [-1, -0.5, "-1", "-5m"])
def test_parse_keep_alive_negative_is_forever(value):
    assert parse_keep_alive(value) == 10 * 365 * 86400.0


@pytest.mark.parametrize("value", [None, ""])
def test_parse_keep_alive_none_is_default(value):
    assert parse_keep_alive(value) is None


@pytest.mark.parametrize("value", ["soon", "5x", "m", "--1", True, False, [5]])
def test_parse_keep_alive_garbage_raises_value_error(value):
    with pytest.raises(ValueError):
        parse_keep_alive(value)


def test_plan_honours_num_predict_and_max_tokens():
    engine = SimEngine(fast_config())
    p = engine.plan("llama3.2:latest", "abcdefgh", {"num_predict": 7})
    assert (p.model, p.prompt_tokens, p.output_tokens, p.limited) == ("llama3.2:latest", 2, 7, True)
    assert engine.plan("m", "x", {"num_predict": 0}).output_tokens == 0
    # max_tokens (OpenAI) wins over options.num_predict
    assert engine.plan("m", "x", {"num_predict": 7}, max_tokens=3).output_tokens == 3
    assert engine.plan("m", "", None).prompt_tokens == 1  # at least one token


@pytest.mark.parametrize("options", [None, {}, {"num_predict": -1}, {"num_predict": True}, {"num_predict": "9"}])
def test_plan_default_range_otherwise(options):
    engine = SimEngine(fast_config(default_output_tokens=(16, 96)))
    p = engine.plan("m", "some prompt", options)
    assert p.limited is False
    assert 16 <= p.output_tokens <= 96


def test_plan_deterministic_per_seed():
    engine = SimEngine(fast_config(default_output_tokens=(1, 1000)))
    a = engine.plan("m", "prompt", {"seed": 1})
    assert engine.plan("m", "prompt", {"seed": 1}) == a
    assert SimEngine(fast_config(default_output_tokens=(1, 1000))).plan("m", "prompt", {"seed": 1}) == a
    outs = {engine.plan("m", "prompt", {"seed": s}).output_tokens for s in range(20)}
    assert len(outs) > 1  # the seed changes the plan
    assert engine.plan("m", "other prompt", {"seed": 1}).seed != a.seed


def test_plan_fixed_default_range():
    engine = SimEngine(fast_config(default_output_tokens=(5, 5)))
    assert engine.plan("m", "p", {}).output_tokens == 5


def test_embedding_for_deterministic_unit_norm():
    model = SimModel(name="nomic-embed-text:latest", embedding_dim=32)
    v1 = embedding_for(model, "hello")
    assert len(v1) == 32
    assert math.sqrt(sum(x * x for x in v1)) == pytest.approx(1.0, abs=1e-12)
    assert embedding_for(model, "hello") == v1
    assert embedding_for(model, "hello!") != v1
    assert embedding_for(SimModel(name="other", embedding_dim=32), "hello") != v1


def test_resolve_models():
    engine = SimEngine(fast_config(models=[SimModel(name="llama3.2:latest"), SimModel(name="qwen2.5:0.5b")]))
    assert engine.resolve("llama3.2").name == "llama3.2:latest"
    assert engine.resolve("llama3.2:latest").name == "llama3.2:latest"
    assert engine.resolve("qwen2.5:0.5b").name == "qwen2.5:0.5b"
    assert engine.resolve("qwen2.5") is None
    assert engine.resolve("llama3.2:3b") is None


def test_parse_models():
    models = parse_models("llama3.2,nomic-embed-text@0.3, qwen2.5:0.5b ,")
    assert [(m.name, m.size_bytes, m.family) for m in models] == [
        ("llama3.2:latest", 2_000_000_000, "llama"),
        ("nomic-embed-text:latest", 300_000_000, "bert"),
        ("qwen2.5:0.5b", 2_000_000_000, "llama"),
    ]
    assert [m.name for m in parse_models("tiny-llama", tagged=False)] == ["tiny-llama"]


# =======================================================================================
# Ollama-flavoured sim over HTTP
# =======================================================================================
def test_ollama_sim_version_and_root_say_simulator():
    async def go(client):
        v = await client.get("/api/version")
        root = await client.get("/")
        state = await client.get("/_sim/state")
        return v, root, state

    v, root, state = run(go, fast_config(name="n1", slots=3))
    assert v.status_code == 200
    assert v.json() == {"version": SIM_VERSION, "simulator": True}
    assert "simulator" in root.text
    assert state.json()["simulator"] is True
    assert (state.json()["name"], state.json()["kind"], state.json()["slots"]) == ("n1", "ollama", 3)


def test_ollama_sim_tags():
    async def go(client):
        return (await client.get("/api/tags")).json()

    tags = run(go, fast_config(models=[SimModel(name="llama3.2:latest"), SimModel(name="qwen2.5:0.5b")]))
    assert [m["name"] for m in tags["models"]] == ["llama3.2:latest", "qwen2.5:0.5b"]
    assert tags["models"][0]["digest"].startswith("sha256:")


def test_ollama_sim_chat_not_streamed_num_predict():
    async def go(client):
        return await client.post("/api/chat", json=chat_body(stream=False, options={"num_predict": 5}))

    r = run(go, fast_config())
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "llama3.2:latest"
    assert body["done"] is True
    assert body["done_reason"] == "length"
    assert body["eval_count"] == 5
    assert body["message"]["role"] == "assistant"
    assert len(body["message"]["content"].split(" ")) == 5
    assert body["prompt_eval_count"] == 3  # "hello there" = 11 chars
    assert body["total_duration"] > 0
    assert body["eval_duration"] > 0
    usage = usage_from_ollama(body, wall_s=99.0)
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 5)
    assert usage.total_s < 99.0  # from total_duration, not the fallback


def test_ollama_sim_same_seed_same_text():
    async def go(client):
        body = chat_body(stream=False, options={"num_predict": 8, "seed": 3})
        a = (await client.post("/api/chat", json=body)).json()
        b = (await client.post("/api/chat", json=body)).json()
        return a, b

    a, b = run(go, fast_config())
    assert a["message"]["content"] == b["message"]["content"]
    assert a["eval_count"] == b["eval_count"] == 8


def test_ollama_sim_chat_streamed_ndjson():
    async def go(client):
        return await client.post("/api/chat", json=chat_body(options={"num_predict": 6}))

    r = run(go, fast_config())
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    assert len(lines) == 7  # 6 tokens + final
    assert all(line["done"] is False for line in lines[:-1])
    assert "".join(line["message"]["content"] for line in lines[:-1]).count(" ") == 5
    final = lines[-1]
    assert final["done"] is True
    assert final["done_reason"] == "length"
    assert final["message"]["content"] == ""
    assert final["eval_count"] == 6
    assert final["prompt_eval_count"] == 3
    assert final["total_duration"] > 0
    assert final["eval_duration"] > 0
    assert final["total_duration"] >= final["eval_duration"]
    assert {"load_duration", "prompt_eval_duration"} <= final.keys()


def test_ollama_sim_generate_default_length_done_reason_stop():
    async def go(client):
        return await client.post("/api/generate", json={"model": "llama3.2", "prompt": "hi", "stream": False})

    body = run(go, fast_config(default_output_tokens=(4, 4))).json()
    assert body["done_reason"] == "stop"
    assert body["eval_count"] == 4
    assert len(body["response"].split(" ")) == 4
    assert body["context"] == [1, 2, 3]


def test_ollama_sim_unknown_model_404():
    async def go(client):
        chat = await client.post("/api/chat", json={"model": "nope", "messages": [], "stream": False})
        embed = await client.post("/api/embed", json={"model": "nope:1b", "input": "x"})
        return chat, embed

    chat, embed = run(go, fast_config())
    assert chat.status_code == 404
    assert chat.json() == {"error": 'model "nope" not found, try pulling it first'}
    assert embed.status_code == 404
    assert set(embed.json()) == {"error"}


def test_ollama_sim_bad_requests_400():
    async def go(client):
        return [
            await client.post("/api/chat", content=b"{not json"),
            await client.post("/api/chat", json=[1, 2]),
            await client.post("/api/chat", json={"messages": []}),
            await client.post("/api/chat", json={"model": "llama3.2", "messages": "hi"}),
            await client.post("/api/chat", json=chat_body(keep_alive="whenever")),
        ]

    for r in run(go, fast_config()):
        assert r.status_code == 400
        assert isinstance(r.json()["error"], str)


def test_ollama_sim_queue_bound_503():
    cfg = fast_config(slots=1, max_queue=1, decode_tps=100.0)  # 10 ms a token
    body = chat_body(stream=False, options={"num_predict": 20})

    async def wait_state(client, key, value):
        for _ in range(500):
            if (await client.get("/_sim/state")).json()[key] == value:
                return
            await asyncio.sleep(0.002)
        raise AssertionError(f"{key} never reached {value}")

    async def go(client):
        first = asyncio.create_task(client.post("/api/chat", json=body))
        await wait_state(client, "active", 1)
        second = asyncio.create_task(client.post("/api/chat", json=body))
        await wait_state(client, "waiting", 1)
        third = await client.post("/api/chat", json=body)
        return await first, await second, third, (await client.get("/_sim/state")).json()

    first, second, third, state = run(go, cfg)
    assert third.status_code == 503
    assert "maximum pending requests exceeded" in third.json()["error"]
    assert first.status_code == 200 and second.status_code == 200
    assert first.json()["eval_count"] == second.json()["eval_count"] == 20
    assert (state["active"], state["waiting"], state["served"]) == (0, 0, 2)


def test_ollama_sim_error_fault_then_recovery():
    async def go(client):
        set_ = await client.post("/_sim/faults", json={"mode": "error", "error_status": 500})
        failed = await client.post("/api/chat", json=chat_body(stream=False, options={"num_predict": 2}))
        failed_stream = await client.post("/api/chat", json=chat_body(options={"num_predict": 2}))
        state = (await client.get("/_sim/state")).json()
        await client.post("/_sim/faults", json={"mode": "none"})
        ok = await client.post("/api/chat", json=chat_body(stream=False, options={"num_predict": 2}))
        bad = await client.post("/_sim/faults", json={"mode": "explode"})
        return set_, failed, failed_stream, state, ok, bad

    set_, failed, failed_stream, state, ok, bad = run(go, fast_config())
    assert set_.status_code == 200
    assert set_.json()["mode"] == "error" and set_.json()["error_status"] == 500
    assert failed.status_code == 500
    assert failed.json() == {"error": "simulated failure (HTTP 500)"}
    assert failed_stream.status_code == 500  # fails before the first chunk
    assert state["faults"]["mode"] == "error"
    assert state["served"] == 0
    assert ok.status_code == 200 and ok.json()["eval_count"] == 2
    assert bad.status_code == 400


def test_ollama_sim_error_fault_custom_status():
    async def go(client):
        await client.post("/_sim/faults", json={"mode": "error", "error_status": 429})
        return await client.post("/api/generate", json={"model": "llama3.2", "prompt": "x", "stream": False})

    r = run(go, fast_config())
    assert r.status_code == 429
    assert r.json() == {"error": "simulated failure (HTTP 429)"}


def test_ollama_sim_embed():
    models = [SimModel(name="nomic-embed-text:latest", embedding_dim=8)]

    async def go(client):
        a = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": ["abcd", "efghij"]})
        b = await client.post("/api/embeddings", json={"model": "nomic-embed-text", "prompt": "abcd"})
        return a.json(), b.json()

    a, b = run(go, fast_config(models=models))
    assert len(a["embeddings"]) == 2 and len(a["embeddings"][0]) == 8
    assert a["prompt_eval_count"] == 3  # 1 + 2 tokens
    assert b["embedding"] == a["embeddings"][0] == embedding_for(models[0], "abcd")


def test_ollama_sim_embed_bad_keep_alive_400():
    async def go(client):
        return await client.post("/api/embed", json={"model": "llama3.2", "input": "x", "keep_alive": "whenever"})

    # As a real server would: an unhandled exception becomes a 500 response.
    assert run(go, fast_config(), raise_app_exceptions=False).status_code == 400


def test_ollama_sim_load_and_unload():
    async def go(client):
        loaded = await client.post("/api/generate", json={"model": "llama3.2", "stream": False})
        ps1 = (await client.get("/api/ps")).json()
        unloaded = await client.post("/api/generate", json={"model": "llama3.2", "keep_alive": 0, "stream": False})
        ps2 = (await client.get("/api/ps")).json()
        return loaded.json(), ps1, unloaded.json(), ps2

    loaded, ps1, unloaded, ps2 = run(go, fast_config())
    assert loaded["done_reason"] == "load"
    assert [m["name"] for m in ps1["models"]] == ["llama3.2:latest"]
    assert unloaded["done_reason"] == "unload"
    assert ps2["models"] == []


# =======================================================================================
# OpenAI-flavoured (llama-server-like) sim over HTTP
# =======================================================================================
def openai_config(**overrides) -> SimNodeConfig:
    return fast_config(kind="openai", models=[SimModel(name="tiny-llama")], slots=2, **overrides)


def test_openai_sim_chat_not_streamed_usage_and_timings():
    async def go(client):
        return await client.post("/v1/chat/completions", json={
            "model": "tiny-llama", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4})

    r = run(go, openai_config())
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny-llama"
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split(" ")) == 4
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    t = body["timings"]
    assert (t["prompt_n"], t["predicted_n"]) == (3, 4)
    assert t["predicted_ms"] > 0 and t["prompt_ms"] >= 0
    usage = usage_from_openai(body["usage"], t, wall_s=1.0)
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 4)
    assert usage.decode_s == pytest.approx(t["predicted_ms"] / 1000)


def _sse(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]


def test_openai_sim_chat_streamed_sse_with_usage():
    async def go(client):
        return await client.post("/v1/chat/completions", json={
            "model": "tiny-llama", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 3,
            "stream": True, "stream_options": {"include_usage": True}})

    r = run(go, openai_config())
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    data = _sse(r.text)
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    assert len(events) == 1 + 3 + 1 + 1  # role, 3 tokens, finish, usage
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert len({e["id"] for e in events}) == 1
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[1:4])
    assert len(text.split(" ")) == 3
    finish = events[4]
    assert finish["choices"][0]["finish_reason"] == "length"
    assert finish["timings"]["predicted_n"] == 3
    assert events[5]["choices"] == []
    assert events[5]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}

    # The gateway's OpenAI -> Ollama stream translator over this real stream.
    tr = OpenAIToOllamaStream("chat", "tiny-llama")
    chunks = [c for e in events for c in tr.feed(e)]
    final = tr.finish(usage_from_openai(events[5]["usage"], finish["timings"], wall_s=0.5))
    assert "".join(c["message"]["content"] for c in chunks) == text
    assert (final["done"], final["done_reason"], final["eval_count"], final["prompt_eval_count"]) == (True, "length", 3, 3)


def test_openai_sim_stream_without_include_usage_has_no_usage_event():
    async def go(client):
        return await client.post("/v1/completions", json={"model": "x", "prompt": "hi", "max_tokens": 2, "stream": True})

    data = _sse(run(go, openai_config()).text)
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    assert len(events) == 3  # 2 tokens + finish (no role chunk for completions)
    assert all("usage" not in e for e in events)
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert events[0]["model"] == "tiny-llama"  # llama-server answers with its one model


def test_openai_sim_health_props_models_and_errors():
    async def go(client):
        return (
            await client.get("/health"),
            await client.get("/props"),
            await client.get("/v1/models"),
            await client.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": []}),
            await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                            "max_tokens": -1}),
        )

    health, props, models, empty, negative = run(go, openai_config())
    assert health.json() == {"status": "ok", "simulator": True}
    assert props.json()["total_slots"] == 2
    assert [m["id"] for m in models.json()["data"]] == ["tiny-llama"]
    assert empty.status_code == 400
    assert empty.json()["error"]["type"] == "invalid_request_error"
    assert negative.status_code == 400


def test_openai_sim_error_fault():
    async def go(client):
        await client.post("/_sim/faults", json={"mode": "error", "error_status": 503})
        return await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})

    r = run(go, openai_config())
    assert r.status_code == 503
    assert r.json() == {"error": {"code": 503, "message": "simulated failure (HTTP 503)", "type": "unavailable_error"}}


def test_openai_sim_embeddings():
    async def go(client):
        return await client.post("/v1/embeddings", json={"model": "tiny-llama", "input": ["ab", "cdefg"]})

    body = run(go, openai_config()).json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert body["data"][0]["embedding"] == embedding_for(SimModel(name="tiny-llama"), "ab")
