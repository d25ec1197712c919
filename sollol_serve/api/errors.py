"""Errors in each API's own format: Ollama `{"error": "..."}`, OpenAI `{"error": {...}}`,
Anthropic `{"type": "error", "error": {"type", "message"}}` on /v1/messages."""

from __future__ import annotations

from starlette.responses import JSONResponse

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}

# Anthropic's error types by status (its SDKs raise a class per type).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def is_anthropic_path(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/") or path == "/v1"


def error_body(path: str, status: int, message: str, code: str | None = None) -> dict:
    if is_anthropic_path(path):
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    if is_openai_path(path):
        return {"error": {"message": message, "type": _OPENAI_TYPES.get(status, "server_error"),
                          "param": "model" if code == "model_not_found" else None, "code": code}}
    return {"error": message}


def error_response(path: str, status: int, message: str, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(path, status, message, code), status_code=status, headers=headers)
