"""The Python SDK against the running gateway."""

from __future__ import annotations

import asyncio

import pytest

from sollol_serve.client import Priority, SollolError, connect, connect_async

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "hello from the SDK"}]


def test_sync_client_chat_generate_embed_and_errors(gateway):
    with connect(gateway.url) as sollol:
        answer = sollol.chat("llama3.2", CHAT, priority=Priority.HIGH, options={"num_predict": 4})
        assert answer["done"] and answer["eval_count"] == 4
        assert answer["_sollol_routing"]["priority"] == Priority.HIGH
        chunks = list(sollol.chat("llama3.2", CHAT, stream=True, options={"num_predict": 5}))
        assert chunks[-1]["done"] and "_sollol_routing" in chunks[-1] and len(chunks) >= 5
        assert sollol.generate("qwen2.5:0.5b", "hi", options={"num_predict": 3})["eval_count"] == 3
        vectors = sollol.embed("nomic-embed-text", ["a", "b"])
        assert len(vectors) == 2 and len(vectors[0]) > 0
        with pytest.raises(SollolError) as info:
            sollol.chat("no-such-model", CHAT)
        assert info.value.status == 404 and "no-such-model" in info.value.message
        assert {n["name"] for n in sollol.nodes()} >= set(gateway.nodes)


def test_async_client_and_streams(gateway):
    async def run() -> tuple[dict, list[dict], list[list[float]]]:
        async with connect_async(gateway.url) as sollol:
            answer = await sollol.chat("llama3.2", CHAT, options={"num_predict": 3})
            chunks = [c async for c in sollol.generate_stream("llama3.2", "stream", options={"num_predict": 4})]
            vectors = await sollol.embed("nomic-embed-text", "one")
            return answer, chunks, vectors

    answer, chunks, vectors = asyncio.run(run())
    assert answer["eval_count"] == 3
    assert chunks[-1]["done"] and "".join(c.get("response", "") for c in chunks)
    assert len(vectors) == 1


def test_cli_status_and_nodes(gateway):
    import subprocess
    import sys

    status = subprocess.run([sys.executable, "-m", "sollol_serve.cli", "status", "--url", gateway.url],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "ok (" in status.stdout and "nodes healthy)" in status.stdout, status.stderr
    nodes = subprocess.run([sys.executable, "-m", "sollol_serve.cli", "nodes", "--url", gateway.url],
                           capture_output=True, text=True, timeout=60)
    assert nodes.returncode == 0 and all(name in nodes.stdout for name in gateway.nodes), nodes.stdout
