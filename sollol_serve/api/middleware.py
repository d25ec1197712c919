"""ASGI middleware of the ingress (plain ASGI: it must not buffer streamed responses)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class PoweredByHeader:
    """Adds `X-Powered-By: SOLLOL` to every HTTP response."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-powered-by", b"SOLLOL")]
            await send(message)

        await self.app(scope, receive, send_with_header)
