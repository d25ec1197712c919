"""Request schemas of both APIs, for validation only.

The gateway validates the fields it must understand and forwards the client's body itself,
so every other field (`options`, `format`, `tools`, `keep_alive`, `images`, `think`, ...)
reaches the node untouched. `extra="allow"` keeps unknown fields; types are strict enough
to reject what a node would choke on.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from sollol_serve.config import MAX_BATCH_TTL_S


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(min_length=1, max_length=512)
    priority: StrictInt | None = Field(default=None, ge=1, le=10)


class OllamaMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: StrictStr = Field(min_length=1)
    content: StrictStr | None = None
    images: list[StrictStr] | None = None
    tool_calls: list[dict[str, Any]] | None = None


class OllamaChat(_Open):
    # Ollama: an empty list only loads the model.
    messages: list[OllamaMessage] = Field(default_factory=list)
    stream: StrictBool = True
    options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None


class OllamaGenerate(_Open):
    prompt: StrictStr = ""
    system: StrictStr | None = None
    suffix: StrictStr | None = None
    images: list[StrictStr] | None = None
    stream: StrictBool = True
    options: dict[str, Any] | None = None


class OllamaEmbed(_Open):
    input: StrictStr | list[StrictStr]
    options: dict[str, Any] | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("input must not be an empty list")
        return v


class OllamaEmbeddings(_Open):
    prompt: StrictStr
    options: dict[str, Any] | None = None


class OllamaShow(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = Field(default=None, min_length=1)
    name: StrictStr | None = Field(default=None, min_length=1)  # older clients send `name`


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: StrictStr = Field(min_length=1)
    content: StrictStr | list[dict[str, Any]] | None = None


class OpenAIChat(_Open):
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: StrictBool = False
    max_tokens: StrictInt | None = Field(default=None, ge=0)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=0)


class OpenAICompletion(_Open):
    prompt: StrictStr | list[StrictStr]
    stream: StrictBool = False
    max_tokens: StrictInt | None = Field(default=None, ge=0)


class OpenAIEmbeddings(_Open):
    input: StrictStr | list[StrictStr] = Field(min_length=1)


class WarmRequest(BaseModel):
    """`POST /api/admin/warm`: load a model now, on the nodes named or on every node that has it."""

    model_config = ConfigDict(extra="forbid")
    model: StrictStr = Field(min_length=1, max_length=512)
    nodes: list[StrictStr] | None = Field(default=None, min_length=1)
    keep_alive: StrictStr | StrictInt | None = None


# -- batch jobs ------------------------------------------------------------------------
# What a job carries back in its status, untouched: the caller's own labels.
Metadata = dict[str, Any]


class BatchEmbedRequest(BaseModel):
    """`POST /api/batch/embed`: Ollama's /api/embed body with many inputs, run as a job.
    The original SOLLOL's body says `documents` for `input`; either is accepted."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=512)
    input: list[str] = Field(min_length=1)
    metadata: Metadata | None = None
    truncate: bool | None = None
    dimensions: int | None = Field(default=None, ge=1, le=65536)
    options: dict | None = None
    keep_alive: str | int | float | None = None
    priority: int | None = Field(default=None, ge=1, le=10)
    ttl_s: float | None = Field(default=None, gt=0, le=MAX_BATCH_TTL_S)

    @model_validator(mode="before")
    @classmethod
    def _documents_are_input(cls, body: object) -> object:
        if isinstance(body, dict) and "documents" in body:
            if "input" in body:
                raise ValueError("give the texts as `input` or as `documents`, not both")
            body = {**body, "input": body["documents"]}
            del body["documents"]
        return body


class BatchChatRequest(BaseModel):
    """`POST /api/batch/chat`: many /api/chat bodies (without `model`) for one model."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=512)
    requests: list[dict] = Field(min_length=1)
    metadata: Metadata | None = None
    priority: int | None = Field(default=None, ge=1, le=10)
    ttl_s: float | None = Field(default=None, gt=0, le=MAX_BATCH_TTL_S)


def chat_items(request: BatchChatRequest) -> list[dict]:
    """Each request checked as the /api/chat body it becomes; ValueError names the bad one."""
    items = []
    for i, item in enumerate(request.requests):
        body = {**item, "model": request.model, "stream": False}
        try:
            OllamaChat.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise ValueError(f"requests[{i}].{where}: {first.get('msg')}") from None
        if not body.get("messages"):
            raise ValueError(f"requests[{i}].messages: must not be empty")
        items.append({k: v for k, v in item.items() if k not in ("model", "stream", "priority")})
    return items


def job_settings(request: BatchEmbedRequest | BatchChatRequest) -> dict:
    """What every call of the job shares (the inputs are stored as items)."""
    return request.model_dump(exclude={"model", "input", "requests", "ttl_s"}, exclude_none=True)
