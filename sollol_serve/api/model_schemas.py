"""Request bodies of cluster model management: Ollama's own (pull, push, create, copy, delete),
plus where they go: `nodes` (pull, delete, copy: a subset of the cluster) or `node` (create,
push: the one node). Unknown fields are Ollama's (`insecure`, `quantize`, `files`, ...) and
reach the node untouched; `name` is the older clients' `model`."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator

# A node checks a name itself; the gateway bounds its size.
Name = Annotated[StrictStr, Field(min_length=1, max_length=512)]
Nodes = Annotated[list[StrictStr], Field(min_length=1, max_length=1024)]


class _ModelBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Name | None = None
    name: Name | None = None
    stream: StrictBool = True

    @model_validator(mode="after")
    def _named(self) -> "_ModelBody":
        if not (self.model or self.name):
            raise ValueError("model is required")
        return self

    @property
    def target(self) -> str:
        return self.model or self.name or ""

    def for_node(self) -> dict:
        """The body a node gets: Ollama's fields, the model under `model`."""
        body = self.model_dump(exclude={"name", "stream", "nodes", "node"}, exclude_none=True)
        return {**body, "model": self.target}


class PullRequest(_ModelBody):
    nodes: Nodes | None = None


class DeleteRequest(_ModelBody):
    nodes: Nodes | None = None


class CopyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Name
    destination: Name
    nodes: Nodes | None = None


class OneNodeRequest(_ModelBody):
    """`/api/create` and `/api/push`: on the node named, else the first healthy Ollama node."""

    node: StrictStr | None = Field(default=None, min_length=1, max_length=256)
