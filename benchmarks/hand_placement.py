"""An expert's hand placement: each model pinned to the nodes an operator chose for it, and
least-connections among those (what a LiteLLM `model_list` with a deployment per model and
node encodes, or an nginx `map $model` with an upstream per model).

    python benchmarks/hand_placement.py --port 8080 --map '{"chat:latest": ["http://127.0.0.1:1"]}'

`HandPlacementProxy(placement)` runs it as a process of its own (like nginx, not inside the
benchmark's event loop) on a free loopback port. It reads the request's JSON `model`, sends
the request unchanged to the pinned node with the fewest requests in flight from this proxy,
and streams the answer back as it comes. A model it has no pin for goes to any node.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import aiohttp
import httpx
from aiohttp import web

from sollol_serve.names import normalize_model
from sollol_serve.processes import die_with_parent, free_port


class Placement:
    def __init__(self, pins: dict[str, list[str]]):
        self.pins = {normalize_model(model): urls for model, urls in pins.items()}
        self.every = sorted({u for urls in pins.values() for u in urls})
        self.active = {url: 0 for url in self.every}

    def choose(self, model: object) -> str:
        urls = self.pins.get(normalize_model(model)) if isinstance(model, str) else None
        return min(urls or self.every, key=lambda u: self.active[u])


def build_app(placement: Placement) -> web.Application:
    session: dict[str, aiohttp.ClientSession] = {}

    async def start(app: web.Application) -> None:
        session["s"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                             connector=aiohttp.TCPConnector(limit=0))

    async def stop(app: web.Application) -> None:
        await session["s"].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            model = json.loads(body).get("model") if body else None
        except (ValueError, AttributeError):
            model = None
        url = placement.choose(model)
        placement.active[url] += 1
        try:
            async with session["s"].request(request.method, url + request.path_qs, data=body,
                                            headers={"Content-Type": "application/json"}) as upstream:
                response = web.StreamResponse(status=upstream.status,
                                              headers={"Content-Type": upstream.headers.get("Content-Type", "")})
                await response.prepare(request)
                async for piece in upstream.content.iter_any():
                    await response.write(piece)
                await response.write_eof()
                return response
        finally:
            placement.active[url] -= 1

    app = web.Application(client_max_size=32 * 2**20)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


class HandPlacementProxy:
    """`with HandPlacementProxy(pins) as url:` the proxy answering; stopped (by PID) on exit."""

    def __init__(self, pins: dict[str, list[str]]):
        self.pins = pins
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> str:
        self.proc = subprocess.Popen([sys.executable, __file__, "--port", str(self.port), "--map", json.dumps(self.pins)],
                                     preexec_fn=die_with_parent)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/api/version", timeout=1, trust_env=False).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("the hand-placement proxy did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--map", required=True, help="JSON: model -> [node URL, ...]")
    args = parser.parse_args()
    web.run_app(build_app(Placement(json.loads(args.map))), host="127.0.0.1", port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
