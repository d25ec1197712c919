"""The node client's time limits against a real local HTTP server that stalls on purpose."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest
from aiohttp import web

from sollol_serve.config import TimeoutConfig
from sollol_serve.nodes.http import NodeHTTP
from sollol_serve.protocol import NodeError, StreamBroken
from sollol_serve.shard.build import find_binaries


async def _serve(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/stream", handler)
    # A handler still stalling once the client gave up is cancelled at cleanup, not waited for:
    # the stalls below can be far longer than the limits they test without costing the test.
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}/stream"


async def _lines(handler, timeouts: TimeoutConfig, **http_options) -> tuple[list[str], BaseException | None]:
    runner, url = await _serve(handler)
    http = NodeHTTP(timeouts, **http_options)
    got: list[str] = []
    try:
        async for line in http.post_lines(url, {}):
            got.append(line)
        error = None
    except (NodeError, StreamBroken) as exc:
        error = exc
    finally:
        await http.close()
        await runner.cleanup()
    return got, error


def _stalling(first_after_s: float, then_stall_s: float):
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await asyncio.sleep(first_after_s)
        await response.write(b'{"n": 1}\n')
        await asyncio.sleep(then_stall_s)
        await response.write(b'{"n": 2}\n')
        return response
    return handler


def test_silence_between_chunks_breaks_the_stream_after_idle_s():
    # The second line comes after 10 s, within every limit but idle_s: only idle_s keeps it out.
    limits = TimeoutConfig(connect_s=2, first_byte_s=30, idle_s=0.3, total_s=60)
    got, error = asyncio.run(_lines(_stalling(0.0, 10.0), limits))
    assert got == ['{"n": 1}'] and isinstance(error, StreamBroken) and "silent" in error.message


def test_no_first_byte_in_time_is_a_retryable_504():
    # The first line comes after 10 s, within every limit but first_byte_s.
    limits = TimeoutConfig(connect_s=2, first_byte_s=0.3, idle_s=30, total_s=60)
    got, error = asyncio.run(_lines(_stalling(10.0, 0.0), limits))
    assert got == [] and isinstance(error, NodeError) and error.status == 504 and error.retryable


def test_a_slow_first_byte_within_its_limit_then_steady_chunks_pass():
    # The first byte comes later than idle_s (but far within first_byte_s); the second line
    # is written before the client has read the first, so no wait for it can reach idle_s.
    limits = TimeoutConfig(connect_s=2, first_byte_s=30, idle_s=0.5, total_s=60)
    got, error = asyncio.run(_lines(_stalling(0.8, 0.0), limits))
    assert error is None and got == ['{"n": 1}', '{"n": 2}']


def test_total_limit_ends_a_stream_that_keeps_trickling():
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(100):
            await response.write(f'{{"n": {i}}}\n'.encode())
            await asyncio.sleep(0.1)
        return response

    # The 100 lines take 10 s, 0.1 s apart (never idle_s): only total_s cuts them short. It
    # leaves the first line (sent at once) 3 s to arrive, so the cut comes mid-stream.
    limits = TimeoutConfig(connect_s=2, first_byte_s=30, idle_s=1, total_s=3)
    got, error = asyncio.run(_lines(trickle, limits))
    assert 1 <= len(got) < 100 and isinstance(error, StreamBroken)


LIMITS = TimeoutConfig(connect_s=2, first_byte_s=5, idle_s=5, total_s=30)


def _writes(*pieces: bytes):
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
        return response
    return handler


def test_a_stream_line_over_the_cap_is_refused_before_or_after_the_first_line():
    big = b"x" * 200_000
    got, error = asyncio.run(_lines(_writes(big, big, b"\n"), LIMITS, node="n1", max_response_bytes=100_000))
    assert got == [] and isinstance(error, NodeError) and error.status == 502 and "n1" in error.message
    got, error = asyncio.run(_lines(_writes(b'{"n": 1}\n', big, big), LIMITS, node="n1",
                                    max_response_bytes=100_000))
    assert got == ['{"n": 1}'] and isinstance(error, StreamBroken) and "more than 100000 bytes" in error.message
    got, error = asyncio.run(_lines(_writes(b'{"n": 1}\n' * 50_000), LIMITS, max_response_bytes=100_000))
    assert error is None and len(got) == 50_000  # a long stream of short lines is fine


def test_an_answer_over_the_cap_is_a_502_and_errors_never_name_the_url():
    async def run() -> list[NodeError]:
        app = web.Application()
        app.router.add_post("/big", lambda r: web.Response(body=b'{"a": "' + b"x" * 300_000 + b'"}'))
        app.router.add_get("/big", lambda r: web.Response(body=b"[" + b"1," * 200_000 + b"1]")
                           if r.headers.get("Authorization") == "Bearer k" else web.Response(status=401))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        http = NodeHTTP(LIMITS, node="n1", max_response_bytes=100_000)
        keyed = NodeHTTP(LIMITS, node="n1", max_response_bytes=100_000, api_key="k")  # the GET wants the key
        errors = []
        for call in (http.post_json(f"http://u:pw@127.0.0.1:{port}/big", {}), keyed.get_json(f"http://127.0.0.1:{port}/big"),
                     http.post_json("http://u:pw@127.0.0.1:9/x", {})):  # nothing listens on port 9
            try:
                await call
            except NodeError as exc:
                errors.append(exc)
        await http.close()
        await keyed.close()
        await runner.cleanup()
        return errors

    big_post, big_get, refused = asyncio.run(run())
    assert big_post.status == big_get.status == 502 and "more than 100000 bytes" in big_post.message
    assert refused.status == 503 and refused.message.startswith("cannot reach node n1")
    for exc in (big_post, big_get, refused):
        assert "127.0.0.1" not in exc.message and "pw" not in exc.message and ":9" not in exc.message, exc.message


@pytest.mark.parametrize("name", ["llama-server", "ggml-rpc-server"])
def test_binaries_named_by_the_environment_win(tmp_path, name):
    paths = {}
    for binary in ("llama-server", "ggml-rpc-server"):
        path = tmp_path / binary
        path.write_text("#!/bin/sh\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
        paths[binary] = str(path)
    env = {"SOLLOL_LLAMA_SERVER": paths["llama-server"], "SOLLOL_RPC_SERVER": paths["ggml-rpc-server"],
           "PATH": os.environ.get("PATH", "")}
    found = find_binaries("0.0.0-none", environ=env)
    assert str(found.llama_server if name == "llama-server" else found.rpc_server) == paths[name]
    missing = {**env, "SOLLOL_RPC_SERVER": str(tmp_path / "nope")}
    assert find_binaries("0.0.0-none", environ=missing) is None or os.access(
        find_binaries("0.0.0-none", environ=missing).rpc_server, os.X_OK)
