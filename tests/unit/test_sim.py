"""The simulated node: engine (pure parts) and both HTTP facades, in process via ASGITransport.

pytest-asyncio is not relied on: each test runs its coroutine with `asyncio.run`, and builds
the app inside that coroutine (the engine's asyncio primitives bind to the running loop).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator

import httpx
import pytest

from sollol_serve.nodes.translate import (
    OpenAIToOllamaStream,
    usage_from_ollama,
    usage_from_openai,
)
from sollol_serve.sim.engine import (
    SimEngine,
    SimModel,
    SimNodeConfig,
    Stats,
    count_tokens,
    embedding_for,
    parse_keep_alive,
)
from sollol_serve.sim.ollama_api import SIM_VERSION, _prompt_of_chat
from sollol_serve.sim.server import (
    arg_parser,
    build_sim_app,
    config_from_args,
    parse_models,
)
from tests.helpers import wait_for_async

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


async def state_is(client: httpx.AsyncClient, key: str, value: object) -> bool:
    return (await client.get("/_sim/state")).json()[key] == value


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
    endless = chat_body(stream=False, options={"num_predict": 10_000})  # 100 s: the slot is held until cancelled

    async def go(client):
        first = asyncio.create_task(client.post("/api/chat", json=endless))
        await wait_for_async(lambda: state_is(client, "active", 1), 10, "the first request in the slot")
        second = asyncio.create_task(client.post("/api/chat", json=body))
        await wait_for_async(lambda: state_is(client, "waiting", 1), 10, "the second request queued")
        third = await client.post("/api/chat", json=body)
        first.cancel()  # its client goes: the slot passes to the second
        await asyncio.wait([first])
        return await second, third, (await client.get("/_sim/state")).json()

    second, third, state = run(go, cfg)
    assert third.status_code == 503
    assert "maximum pending requests exceeded" in third.json()["error"]
    assert second.status_code == 200 and second.json()["eval_count"] == 20
    assert (state["active"], state["waiting"], state["served"], state["queued"]) == (0, 0, 2, 1)


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


# =======================================================================================
# Per-slot prefix (KV) cache, context length
# =======================================================================================
LLAMA = "llama3.2:latest"
USER1 = ("why does the gateway send this chat to the node that already holds it? " * 3)[:200]
USER2 = "and what happens when that node is busy"  # 39 chars: "\n" + USER2 = 40 chars = 10 tokens


def test_prefix_cache_fixtures():
    assert (len(USER1), count_tokens(USER1), len(USER2)) == (200, 50, 39)


def chat_tokens(engine: SimEngine, messages: list[str], stats: Stats, model: str = LLAMA,
                keep_alive_s: float | None = None, **options) -> AsyncIterator[str]:
    """One chat request straight through the engine, its prompt built as the Ollama API builds
    it: its tokens as they come (it holds its slot while they are not read)."""
    prompt = _prompt_of_chat({"messages": [{"role": "user", "content": m} for m in messages]})
    plan = engine.plan(model, prompt, {"num_predict": 32, "seed": 1, **options})
    return engine.run(plan, keep_alive_s, stats)


async def chat_turn(engine: SimEngine, messages: list[str], model: str = LLAMA, keep_alive_s: float | None = None,
                    **options) -> tuple[str, Stats]:
    """A whole `chat_tokens` request: its answer and stats."""
    stats = Stats()
    return "".join([t async for t in chat_tokens(engine, messages, stats, model, keep_alive_s, **options)]), stats


def run_engine(coro_fn, config: SimNodeConfig):
    """Run `coro_fn(engine)` on a fresh engine inside a running loop."""

    async def main():
        return await coro_fn(SimEngine(config))

    return asyncio.run(main())


def test_engine_follow_up_turn_prefills_only_the_new_part():
    async def go(engine):
        answer1, first = await chat_turn(engine, [USER1])
        _, second = await chat_turn(engine, [USER1, answer1, USER2])
        return answer1, first, second, engine

    answer1, first, second, engine = run_engine(go, fast_config(prefill_tps=10_000.0))
    assert len(first.tokens) == 32
    assert (first.prompt_tokens, first.prompt_n, first.cache_n) == (50, 50, 0)
    assert first.prompt_eval_ns == pytest.approx(5_000_000, abs=1)  # 50 tokens at 10k tok/s
    # Turn 2 = USER1 + "\n" + answer1 (the slot's text) + "\n" + USER2: only the last 40 chars are new.
    cached = math.ceil((200 + 1 + len(answer1)) / 4)
    assert (second.prompt_tokens, second.prompt_n, second.cache_n) == (cached + 10, 10, cached)
    assert second.prompt_eval_ns == pytest.approx(1_000_000, abs=1)
    assert second.prompt_n < first.prompt_n + len(first.tokens)
    assert (engine.prefix_hits, engine.cached_tokens) == (1, cached)


def test_prefix_cache_needs_sixteen_shared_chars():
    base = "0123456789abcdefWXYZ"  # 20 chars

    async def go(engine):
        await chat_turn(engine, [base])
        _, sixteen = await chat_turn(engine, [base[:16] + "Q" * 24])  # 40 chars, 16 shared
        _, fifteen = await chat_turn(engine, [base[:15] + "R" * 25])  # 40 chars, 15 shared
        return sixteen, fifteen, engine.prefix_hits

    sixteen, fifteen, hits = run_engine(go, fast_config())
    assert (sixteen.prompt_n, sixteen.cache_n) == (6, 4)
    assert (fifteen.prompt_n, fifteen.cache_n) == (10, 0)
    assert hits == 1


def test_prefix_cache_whole_prompt_cached_still_evaluates_one_token():
    async def go(engine):
        await chat_turn(engine, [USER1])
        _, again = await chat_turn(engine, [USER1])
        return again

    again = run_engine(go, fast_config())
    assert (again.prompt_tokens, again.prompt_n, again.cache_n) == (50, 1, 49)


def test_prefix_cache_no_hit_takes_least_recently_used_slot():
    prompts = {name: f"conversation {name}: " + name * 40 for name in "ABC"}  # nothing shared past 13 chars

    async def go(engine):
        answers = {}
        for name in "ABC":
            answers[name], _ = await chat_turn(engine, [prompts[name]])
        holders = [s.text[13] for s in engine.slots]
        _, a2 = await chat_turn(engine, [prompts["A"], answers["A"], USER2])
        holders_after = [s.text[13] for s in engine.slots]
        _, c2 = await chat_turn(engine, [prompts["C"], answers["C"], USER2])
        return holders, a2, holders_after, c2

    holders, a2, holders_after, c2 = run_engine(go, fast_config(slots=2))
    # A: both cold, slot 0. B: no hit anywhere, slot 1 is the least recently used. C: slot 0 again.
    assert holders == ["C", "B"]
    # A's follow-up: A was evicted by C, so no hit; it takes B's slot, the least recently used.
    assert (a2.prompt_n, a2.cache_n) == (a2.prompt_tokens, 0)
    assert holders_after == ["C", "A"]
    assert c2.prompt_n == 10  # C kept its slot


def test_prefix_cache_hit_beats_least_recently_used():
    async def go(engine):
        a1, _ = await chat_turn(engine, [USER1])  # slot 0
        # slot 1 is now the least recently used, yet the follow-up goes where its prefix is.
        _, a2 = await chat_turn(engine, [USER1, a1, USER2])
        return a2, [s.text[:10] for s in engine.slots]

    a2, starts = run_engine(go, fast_config(slots=2))
    assert a2.prompt_n == 10
    assert starts == [USER1[:10], ""]


def test_prefix_cache_equal_hits_pick_least_recently_used():
    system = "You are a careful assistant. Answer briefly."  # 44 chars

    async def go(engine):
        # Fill both slots at once so each holds the system prompt; Q1's one token ends first.
        await asyncio.gather(chat_turn(engine, [system, "Q1 what"], num_predict=1),
                             chat_turn(engine, [system, "Q2 why"], num_predict=32))
        steps = [[s.text.split("\n")[1] for s in engine.slots]]
        for question in ("Q3 how", "Q4 who", "Q5 when"):
            _, stats = await chat_turn(engine, [system, question])
            steps.append(([s.text.split("\n")[1] for s in engine.slots], stats.prompt_n))
        return steps, engine.prefix_hits

    steps, hits = run_engine(go, fast_config(slots=2, decode_tps=2000.0))
    assert steps[0] == ["Q1 what", "Q2 why"]
    # Both slots share "<system>\nQ" (46 chars, 12 tokens) with each new 51-52 char (13 token)
    # prompt: the slot written longest ago is reused, and one token is evaluated.
    assert steps[1:] == [(["Q3 how", "Q2 why"], 1), (["Q3 how", "Q4 who"], 1), (["Q5 when", "Q4 who"], 1)]
    assert hits == 3


def test_prefix_cache_two_conversations_interleaved_keep_their_slots():
    other = ("how is the weather over the mountains this week, will it snow? " * 4)[:200]

    async def go(engine):
        a1, _ = await chat_turn(engine, [USER1])
        b1, _ = await chat_turn(engine, [other])
        a2, sa2 = await chat_turn(engine, [USER1, a1, USER2])
        b2, sb2 = await chat_turn(engine, [other, b1, USER2])
        _, sa3 = await chat_turn(engine, [USER1, a1, USER2, a2, USER2])
        _, sb3 = await chat_turn(engine, [other, b1, USER2, b2, USER2])
        return [s.text[:10] for s in engine.slots], [sa2, sb2, sa3, sb3], engine.prefix_hits

    starts, follow_ups, hits = run_engine(go, fast_config(slots=2))
    assert starts == [USER1[:10], other[:10]]
    assert [s.prompt_n for s in follow_ups] == [10, 10, 10, 10]
    assert all(s.cache_n > 50 for s in follow_ups)
    assert hits == 4


def test_prefix_cache_one_slot_two_conversations_evict_each_other():
    other = ("how is the weather over the mountains this week, will it snow? " * 4)[:200]

    async def go(engine):
        a1, _ = await chat_turn(engine, [USER1])
        await chat_turn(engine, [other])
        _, a2 = await chat_turn(engine, [USER1, a1, USER2])
        return a2

    a2 = run_engine(go, fast_config(slots=1))
    assert (a2.prompt_n, a2.cache_n) == (a2.prompt_tokens, 0)
    assert a2.prompt_tokens > 50


def test_prefix_cache_embeddings_neither_use_nor_overwrite_it():
    async def go(engine):
        a1, _ = await chat_turn(engine, [USER1])
        _, _, tokens = await engine.embed(engine.models[LLAMA], [USER1 + "\n" + a1 + "\nxyz"], None)
        _, a2 = await chat_turn(engine, [USER1, a1, USER2])
        return a1, tokens, a2, engine.prefix_hits

    a1, tokens, a2, hits = run_engine(go, fast_config(slots=1))
    assert tokens == math.ceil((200 + 1 + len(a1) + 4) / 4)  # embeddings evaluate every token
    assert a2.prompt_n == 10
    assert hits == 1


@pytest.mark.parametrize("forget", ["unload", "expire", "other_model"])
def test_prefix_cache_forgotten_with_the_model(forget):
    models = [SimModel(name=LLAMA), SimModel(name="qwen2.5:0.5b")]

    async def go(engine):
        keep = 0.01 if forget == "expire" else None
        a1, _ = await chat_turn(engine, [USER1], keep_alive_s=keep)
        follow_up = [USER1, a1, USER2]
        if forget == "unload":
            engine.unload(LLAMA)
        elif forget == "expire":
            await asyncio.sleep(0.03)
        else:
            # The same text on another model is no hit, and it takes the only slot.
            _, other = await chat_turn(engine, follow_up, model="qwen2.5:0.5b")
            assert (other.prompt_n, other.cache_n) == (other.prompt_tokens, 0)
        _, a2 = await chat_turn(engine, follow_up)
        return a2, engine.prefix_hits

    a2, hits = run_engine(go, fast_config(slots=1, models=models))
    assert (a2.prompt_n, a2.cache_n, hits) == (a2.prompt_tokens, 0, 0)


def test_queue_stays_fifo_whatever_the_cache():
    """A waiting request whose prompt the busy slot caches doesn't jump the queue."""
    done: list[str] = []

    async def go(engine):
        async def turn(name, messages):
            await chat_turn(engine, messages)
            done.append(name)

        first = chat_tokens(engine, [USER1], Stats())
        await anext(first)  # a1 holds the only slot until the rest of it is read
        others = [asyncio.create_task(turn("b", ["an unrelated question about something else entirely"])),
                  asyncio.create_task(turn("a2", [USER1, "whatever", USER2]))]
        await wait_for_async(lambda: engine.waiting == 2, 10, "b, then a2, waiting for the slot")
        async for _ in first:
            pass
        done.append("a1")
        await asyncio.gather(*others)
        return engine.waiting, engine.served

    after, served = run_engine(go, fast_config(slots=1))
    assert done == ["a1", "b", "a2"]
    assert (after, served) == (0, 3)


def test_queue_cancelled_waiter_leaves_the_queue():
    async def go(engine):
        first = chat_tokens(engine, [USER1], Stats())
        await anext(first)  # it holds the only slot until the rest of it is read
        gone = asyncio.create_task(chat_turn(engine, ["cancelled while waiting for the slot"]))
        last = asyncio.create_task(chat_turn(engine, ["admitted after the first one finishes"]))
        await wait_for_async(lambda: engine.waiting == 2, 10, "two waiting for the slot")
        gone.cancel()
        await asyncio.wait([gone])
        left = engine.waiting
        async for _ in first:
            pass
        _, stats = await last
        return left, engine.waiting, engine.served, len(stats.tokens), [s.busy for s in engine.slots]

    left, waiting, served, tokens, busy = run_engine(go, fast_config(slots=1))
    assert (left, waiting, served, tokens, busy) == (1, 0, 2, 32, [False])


def test_ollama_sim_follow_up_reports_only_evaluated_tokens():
    async def go(client):
        r1 = await client.post("/api/chat", json={"model": "llama3.2", "messages": [{"role": "user", "content": USER1}],
                                                  "options": {"num_predict": 32}})
        lines = [json.loads(line) for line in r1.text.splitlines() if line.strip()]
        answer1 = "".join(line["message"]["content"] for line in lines[:-1])  # as the client assembles it
        messages = [{"role": "user", "content": USER1}, {"role": "assistant", "content": answer1},
                    {"role": "user", "content": USER2}]
        r2 = await client.post("/api/chat", json={"model": "llama3.2", "messages": messages, "stream": False,
                                                  "options": {"num_predict": 4}})
        return answer1, lines[-1], r2.json(), (await client.get("/_sim/state")).json()

    answer1, final1, second, state = run(go, fast_config(prefill_tps=10_000.0))
    assert (final1["prompt_eval_count"], final1["eval_count"]) == (50, 32)
    assert final1["prompt_eval_duration"] == pytest.approx(5_000_000, abs=1)
    assert second["prompt_eval_count"] == 10
    assert second["prompt_eval_duration"] == pytest.approx(1_000_000, abs=1)
    cached = math.ceil((200 + 1 + len(answer1)) / 4)
    assert (state["prefix_hits"], state["cached_tokens"]) == (1, cached)


def test_openai_sim_follow_up_reports_cached_tokens():
    async def go(client):
        msgs = [{"role": "user", "content": USER1}]
        r1 = (await client.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 32})).json()
        answer1 = r1["choices"][0]["message"]["content"]
        msgs += [{"role": "assistant", "content": answer1}, {"role": "user", "content": USER2}]
        r2 = (await client.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 3, "stream": True,
                                                              "stream_options": {"include_usage": True}}))
        events = [json.loads(d) for d in _sse(r2.text)[:-1]]
        return answer1, r1, events[-2]["timings"], events[-1]["usage"]

    answer1, r1, timings, usage = run(go, fast_config(kind="openai", models=[SimModel(name="tiny-llama")],
                                                      prefill_tps=10_000.0))
    assert r1["usage"] == {"prompt_tokens": 50, "completion_tokens": 32, "total_tokens": 82}
    assert (r1["timings"]["prompt_n"], r1["timings"]["cache_n"]) == (50, 0)
    assert r1["timings"]["prompt_ms"] == pytest.approx(5.0, abs=1e-5)
    cached = math.ceil((200 + 1 + len(answer1)) / 4)
    assert usage == {"prompt_tokens": cached + 10, "completion_tokens": 3, "total_tokens": cached + 13,
                     "prompt_tokens_details": {"cached_tokens": cached}}
    assert (timings["prompt_n"], timings["cache_n"]) == (10, cached)
    assert timings["prompt_ms"] == pytest.approx(1.0, abs=1e-5)


def test_ollama_sim_num_ctx_reloads_like_ollama():
    def ask(messages, **options):
        return {"model": "llama3.2", "stream": False, "options": {"num_predict": 8, **options},
                "messages": [{"role": "user", "content": m} for m in messages]}

    async def go(client):
        out = []
        r = (await client.post("/api/chat", json=ask([USER1]))).json()
        out.append((r["load_duration"], r["prompt_eval_count"], (await client.get("/api/ps")).json()))
        follow = [USER1, r["message"]["content"], USER2]
        for options in ({"num_ctx": 2048}, {"num_ctx": 2048}, {}):
            r = (await client.post("/api/chat", json=ask(follow, **options))).json()
            out.append((r["load_duration"], r["prompt_eval_count"], (await client.get("/api/ps")).json()))
            follow = [*follow, r["message"]["content"], USER2]
        return out

    cold, reload, same, default = run(go, fast_config(load_s=0.05))
    ctx = [s[2]["models"][0]["context_length"] for s in (cold, reload, same, default)]
    assert ctx == [8192, 2048, 2048, 8192]
    # No num_ctx asks for the default context (Ollama's needsReload): loaded with 2048, it reloads.
    assert cold[0] == reload[0] == default[0] == 50_000_000  # load_s, again for each new context
    assert same[0] == 0
    assert cold[1] == 50
    assert reload[1] > 50  # the reload emptied the slot's cache: the whole follow-up is evaluated
    assert same[1] == 10  # the model stays loaded with 2048, its cache with it
    assert default[1] > 10


def test_ollama_sim_embed_loads_with_its_num_ctx():
    async def go(client):
        body = {"model": "llama3.2", "input": "hi", "options": {"num_ctx": 4096}}
        a = (await client.post("/api/embed", json=body)).json()
        b = (await client.post("/api/embed", json=body)).json()
        return a, b, (await client.get("/api/ps")).json()

    a, b, ps = run(go, fast_config(load_s=0.02))
    assert (a["load_duration"], b["load_duration"]) == (20_000_000, 0)
    assert ps["models"][0]["context_length"] == 4096


def test_ollama_sim_load_only_request_with_num_ctx():
    async def go(client):
        a = (await client.post("/api/generate", json={"model": "llama3.2", "options": {"num_ctx": 4096}})).json()
        b = (await client.post("/api/generate", json={"model": "llama3.2", "options": {"num_ctx": 4096}})).json()
        return a, b, (await client.get("/api/ps")).json()

    a, b, ps = run(go, fast_config(load_s=0.02))
    assert (a["done_reason"], a["load_duration"], b["load_duration"]) == ("load", 20_000_000, 0)
    assert ps["models"][0]["context_length"] == 4096


def test_ollama_sim_prompt_longer_than_context_is_truncated():
    async def go(client):
        body = {"model": "llama3.2", "prompt": "x" * 100, "stream": False, "options": {"num_predict": 1}}
        short_ctx = (await client.post("/api/generate", json=body)).json()
        body["options"]["num_ctx"] = 8
        tiny_ctx = (await client.post("/api/generate", json=body)).json()
        return short_ctx, tiny_ctx

    short_ctx, tiny_ctx = run(go, fast_config(models=[SimModel(name=LLAMA, context_length=16)]))
    assert short_ctx["prompt_eval_count"] == 16  # 25 tokens cut to the last 16
    assert tiny_ctx["prompt_eval_count"] == 8


def test_context_length_flag():
    assert [m.context_length for m in config_from_args(arg_parser().parse_args(["--context-length", "2048"])).models] \
        == [2048, 2048]
    assert [m.context_length for m in config_from_args(arg_parser().parse_args([])).models] == [8192, 8192]
    with pytest.raises(SystemExit):
        arg_parser().parse_args(["--context-length", "0"])

    async def go(client):
        await client.post("/api/generate", json={"model": "llama3.2"})
        return (await client.get("/api/ps")).json()

    cfg = config_from_args(arg_parser().parse_args(["--context-length", "2048", "--load-s", "0"]))
    assert run(go, cfg)["models"][0]["context_length"] == 2048


def test_openai_sim_slots_endpoint():
    cfg = fast_config(kind="openai", slots=2, decode_tps=100.0,
                      models=[SimModel(name="tiny-llama", context_length=4096)])

    async def go(client):
        idle = (await client.get("/slots")).json()
        # 100 s of tokens: it holds its slot until cancelled
        task = asyncio.create_task(client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 10_000}))
        await wait_for_async(lambda: state_is(client, "active", 1), 10, "the completion in a slot")
        busy = (await client.get("/slots")).json()
        props = (await client.get("/props")).json()
        task.cancel()
        await asyncio.wait([task])
        return idle, busy, props, (await client.get("/slots")).json()

    idle, busy, props, after = run(go, cfg)
    assert idle == after == [{"id": 0, "n_ctx": 4096, "is_processing": False},
                             {"id": 1, "n_ctx": 4096, "is_processing": False}]
    assert busy == [{"id": 0, "n_ctx": 4096, "is_processing": True},
                    {"id": 1, "n_ctx": 4096, "is_processing": False}]
    assert props["default_generation_settings"]["n_ctx"] == 4096


def test_waiting_for_another_requests_load_is_reported_as_load():
    # Two requests at once to a cold model: the second waits for the first's load and says
    # so in its load time (as Ollama's load_duration), not as unexplained queue time.
    async def go():
        engine = SimEngine(SimNodeConfig(slots=2, load_s=0.2))
        first, second = await asyncio.gather(engine.ensure_loaded("llama3.2:latest", None),
                                             engine.ensure_loaded("llama3.2:latest", None))
        third = await engine.ensure_loaded("llama3.2:latest", None)
        return first, second, third, dict(engine.scheduler.loads)

    first, second, third, loads = asyncio.run(go())
    # The second's wait is measured from its own ask, just after the first's: most of the first's
    # load (a busy machine adds to it), not 0; and one load between them, not two.
    assert first == pytest.approx(0.2) and second >= 0.1 and third == 0.0
    assert loads == {"llama3.2:latest": 1}
