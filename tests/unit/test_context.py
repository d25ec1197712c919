"""The num_ctx sent to an Ollama node (nodes/context.py): the loaded context where that spares a
reload, the request's own where it needs more (no Ray)."""

from __future__ import annotations

import asyncio

from sollol_serve.nodes.backends import OllamaBackend, OpenAIBackend
from sollol_serve.nodes.context import LoadedContexts, num_ctx_to_send, reloads, with_loaded_context
from sollol_serve.protocol import NodeRequest

M = "llama3.2:latest"


def test_the_loaded_context_is_sent_unless_the_request_needs_more():
    assert num_ctx_to_send(8192, None) == 8192  # none asked: Ollama's default would reload it
    assert num_ctx_to_send(8192, 2048) == 8192  # less asked: a reload for nothing
    assert num_ctx_to_send(8192, 8192) == 8192
    assert num_ctx_to_send(8192, 16384) is None  # more: the request's own, with its reload
    assert num_ctx_to_send(None, None) is None and num_ctx_to_send(None, 2048) is None  # not loaded
    assert [reloads(8192, n) for n in (None, 2048, 8192, 16384)] == [False, False, False, True]
    assert not reloads(None, 16384)


def test_the_body_gets_the_loaded_context_and_keeps_its_other_options():
    body = {"model": "llama3.2", "options": {"temperature": 0.2, "num_ctx": 2048}}
    assert with_loaded_context(body, 8192) == {"model": "llama3.2", "options": {"temperature": 0.2, "num_ctx": 8192}}
    assert body["options"]["num_ctx"] == 2048  # the client's body is not changed
    assert with_loaded_context({"model": "m"}, 4096) == {"model": "m", "options": {"num_ctx": 4096}}
    bigger = {"model": "m", "options": {"num_ctx": 16384}}
    assert with_loaded_context(bigger, 8192) is bigger
    assert with_loaded_context({"model": "m"}, None) == {"model": "m"}
    broken = {"model": "m", "options": ["num_ctx"]}  # not an object: the node refuses it
    assert with_loaded_context(broken, 8192) is broken


def test_what_was_sent_counts_until_the_node_is_read_again():
    contexts = LoadedContexts()
    contexts.polled_at(10.0, {M: 8192})
    assert contexts.sending("llama3.2", {"model": "llama3.2"}, 11.0)["options"] == {"num_ctx": 8192}
    # A bigger context asked for reloads the model: the next plain request is sent with it.
    contexts.sending("llama3.2", {"model": "llama3.2", "options": {"num_ctx": 16384}}, 12.0)
    assert contexts.of(M) == 16384
    contexts.polled_at(11.5, {M: 8192})  # read before that send: it does not know of it
    assert contexts.of(M) == 16384
    contexts.polled_at(12.5, {})  # read after: the node's word (here: unloaded since)
    assert contexts.of(M) is None
    assert contexts.sending(M, {"model": M}, 13.0) == {"model": M}  # not loaded: Ollama's default


def test_the_ollama_backend_sends_the_loaded_context_to_ollama_and_translated_openai_requests():
    backend = OllamaBackend("http://127.0.0.1:1", http=None)
    backend.contexts.polled_at(0.0, {M: 8192})
    plain = NodeRequest(api="ollama", op="chat", body={"model": "llama3.2", "messages": []}, stream=False,
                        model="llama3.2")
    assert backend._native(plain, M)["options"] == {"num_ctx": 8192}
    openai = NodeRequest(api="openai", op="chat", body={"model": "llama3.2", "messages": [], "temperature": 0.5},
                         stream=False, model="llama3.2")
    assert backend._native(openai, M)["options"] == {"temperature": 0.5, "num_ctx": 8192}
    embed = NodeRequest(api="openai", op="embeddings", body={"model": "llama3.2", "input": "hi"}, stream=False,
                        model="llama3.2")
    assert backend._native(embed, M)["options"] == {"num_ctx": 8192}
    other = NodeRequest(api="ollama", op="chat", body={"model": "qwen", "messages": []}, stream=False, model="qwen")
    assert "options" not in backend._native(other, "qwen:latest")  # not loaded there


def test_a_llama_server_gets_no_num_ctx():
    backend = OpenAIBackend("http://127.0.0.1:1", http=None)
    req = NodeRequest(api="ollama", op="chat", body={"model": M, "messages": [], "options": {"num_ctx": 2048}},
                      stream=False, model=M)
    assert "num_ctx" not in str(backend._native(req, M))


def test_a_warm_load_keeps_the_loaded_context():
    class Http:
        sent: list[dict] = []

        async def post_json(self, url, body, timeouts=None):
            self.sent.append(body)
            return {"load_duration": 0}

    backend = OllamaBackend("http://127.0.0.1:1", http=Http())
    backend.contexts.polled_at(0.0, {M: 16384})
    asyncio.run(backend.load(M, None, None))
    assert Http.sent[0]["options"] == {"num_ctx": 16384}
