"""A worker's side of model management (nodes/model_ops) against the simulated Ollama node
served in the test's own event loop: progress lines, changes, and blobs passed on in pieces."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import uvicorn

from sollol_serve.config import TimeoutConfig
from sollol_serve.nodes import model_ops
from sollol_serve.nodes.http import NodeHTTP
from sollol_serve.processes import free_port
from sollol_serve.protocol import BadRequest, NodeError
from sollol_serve.sim.engine import SimNodeConfig
from sollol_serve.sim.server import build_sim_app
from tests.helpers import wait_for_async

TIMEOUTS = TimeoutConfig(connect_s=2, first_byte_s=10, idle_s=10, total_s=30)


def with_node(test):
    """Run `test(http, url)` against a fresh simulated Ollama node on a loopback port."""

    async def main():
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(build_sim_app(SimNodeConfig(load_s=0), 0.0), host="127.0.0.1",
                                               port=port, log_level="warning"))
        serving = asyncio.create_task(server.serve())
        await wait_for_async(lambda: server.started or serving.done(), 10, "the simulated node serving")
        assert server.started, "the simulated node did not start"
        http = NodeHTTP(TIMEOUTS, node="n1")
        try:
            return await test(http, f"http://127.0.0.1:{port}")
        finally:
            await http.close()
            server.should_exit = True
            await serving

    return asyncio.run(main())


async def names(http: NodeHTTP, url: str) -> set[str]:
    _, tags = await http.get_json(url + "/api/tags")
    return {m["name"] for m in tags["models"]}


def test_progress_relays_the_nodes_lines_and_changes_apply():
    async def go(http, url):
        lines = [e async for e in model_ops.progress(http, url, "pull", {"model": "phi4"}, TIMEOUTS)]
        await model_ops.change(http, url, "copy", {"source": "phi4", "destination": "phi4-copy"}, TIMEOUTS)
        with_both = await names(http, url)
        await model_ops.change(http, url, "delete", {"model": "phi4"}, TIMEOUTS)
        return lines, with_both, await names(http, url)

    lines, with_both, after = with_node(go)
    assert lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}
    assert {"phi4:latest", "phi4-copy:latest"} <= with_both
    assert "phi4:latest" not in after and "phi4-copy:latest" in after


def test_a_nodes_refusal_keeps_its_status_and_message():
    async def go(http, url):
        with pytest.raises(NodeError) as missing:
            await model_ops.change(http, url, "delete", {"model": "nope"}, TIMEOUTS)
        with pytest.raises(NodeError) as bad:
            [e async for e in model_ops.progress(http, url, "pull", {"model": "not a name"}, TIMEOUTS)]
        return missing.value, bad.value

    missing, bad = with_node(go)
    assert missing.status == 404 and missing.message == "model 'nope' not found" and not missing.retryable
    assert bad.status == 400 and "invalid model name" in bad.message


def test_a_blob_passed_on_in_pieces_arrives_whole():
    payload = bytes(range(256)) * 4096  # 1 MiB
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()

    async def go(http, url):
        uploads = model_ops.BlobUploads("n1")
        before = await model_ops.has_blob(http, url, digest, TIMEOUTS)
        upload_id = uploads.begin(http, url, digest, TIMEOUTS)
        for i in range(0, len(payload), 100_000):
            await uploads.part(upload_id, payload[i:i + 100_000])
        stored = await uploads.end(upload_id, True)
        after = await model_ops.has_blob(http, url, digest, TIMEOUTS)
        again = uploads.begin(http, url, digest, TIMEOUTS)  # the node has it: it answers before the body ends
        await uploads.part(again, payload[:10])
        had = await uploads.end(again, True)
        return before, stored, after, had

    assert with_node(go) == (404, 201, 200, 200)


def test_a_blob_that_does_not_match_its_digest_is_refused_and_an_abandoned_one_ends():
    async def go(http, url):
        uploads = model_ops.BlobUploads("n1")
        wrong = uploads.begin(http, url, "sha256:" + "0" * 64, TIMEOUTS)
        await uploads.part(wrong, b"not the blob")
        with pytest.raises(NodeError) as refused:
            await uploads.end(wrong, True)
        given_up = uploads.begin(http, url, "sha256:" + "1" * 64, TIMEOUTS)
        await uploads.part(given_up, b"half")
        assert await uploads.end(given_up, False) is None
        with pytest.raises(NodeError, match="no upload"):
            await uploads.part(given_up, b"more")
        return refused.value

    refused = with_node(go)
    assert refused.status == 400 and "digest mismatch" in refused.message


def test_a_digest_is_checked_before_it_goes_in_a_url():
    with pytest.raises(BadRequest):
        model_ops.check_digest("sha256:../../api/delete")
    assert model_ops.check_digest("sha256-" + "a" * 64) == "sha256-" + "a" * 64


def test_management_keeps_long_pulls_alive():
    stretched = model_ops.management_timeouts(TIMEOUTS)
    assert stretched.total_s == model_ops.LONGEST_S and stretched.idle_s == model_ops.SILENT_S
    assert stretched.connect_s == TIMEOUTS.connect_s and stretched.first_byte_s == TIMEOUTS.first_byte_s
