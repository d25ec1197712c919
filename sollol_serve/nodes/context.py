"""The `num_ctx` sent with a request to an Ollama node: never a reload by accident.

Ollama reloads a loaded model when a request's runner options differ from those it was loaded
with (`server/sched.go`, `needsReload`), `num_ctx` among them, and a request without `num_ctx`
asks for the server's default. So once a client loaded a model with a larger context, every
request without `num_ctx`, or with a smaller one, would reload it (seconds to a minute each,
and back again for the next client). A larger context changes no answer: such requests are sent
with the context the model is loaded with. One that asks for more needs the reload and gets
it (the router prices it: `reloads`).
"""

from __future__ import annotations

from sollol_serve.names import normalize_model


def positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def reloads(loaded_ctx: int | None, requested: int | None) -> bool:
    """The request needs its model reloaded: it asks for more context than it is loaded with."""
    return loaded_ctx is not None and requested is not None and requested > loaded_ctx


def num_ctx_to_send(loaded_ctx: int | None, requested: int | None) -> int | None:
    """The `num_ctx` to send where the model is loaded with `loaded_ctx` (None: not loaded, as
    far as known), for a request that asks for `requested` (None: asks for none); None: send
    the request's own."""
    return None if loaded_ctx is None or reloads(loaded_ctx, requested) else loaded_ctx


def with_loaded_context(body: dict, loaded_ctx: int | None) -> dict:
    """An Ollama request body as sent: with `options.num_ctx` the loaded context where that
    spares a reload; the body itself otherwise (options that are not an object are the node's
    to refuse)."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        return body
    send = num_ctx_to_send(loaded_ctx, positive_int(options.get("num_ctx")))
    if send is None or options.get("num_ctx") == send:
        return body
    return {**body, "options": {**options, "num_ctx": send}}


class LoadedContexts:
    """The context each model is loaded with on one node: its `/api/ps`, overlaid with the
    `num_ctx` this worker sent since that was read (the node loads it so), so a request sent
    while another's load is still unseen by a probe does not undo that load."""

    def __init__(self) -> None:
        self.polled: dict[str, int] = {}
        self.sent: dict[str, tuple[float, int]] = {}  # model -> (when sent, num_ctx)

    def polled_at(self, at: float, contexts: dict[str, int]) -> None:
        """The node's `/api/ps` as read from `at` on: it tells of everything sent before."""
        self.polled = contexts
        self.sent = {model: s for model, s in self.sent.items() if s[0] > at}

    def of(self, model: str) -> int | None:
        model = normalize_model(model)
        sent = self.sent.get(model)
        return sent[1] if sent is not None else self.polled.get(model)

    def sending(self, model: str, body: dict, at: float) -> dict:
        """The body to send now (`with_loaded_context`), remembering the context it asks for."""
        body = with_loaded_context(body, self.of(model))
        options = body.get("options")
        if isinstance(options, dict) and (num_ctx := positive_int(options.get("num_ctx"))) is not None:
            self.sent[normalize_model(model)] = (at, num_ctx)
        return body
