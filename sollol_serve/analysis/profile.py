"""Request profiling: what a request is, how big, how urgent.

Pure functions over the parsed request body, for the Ingress (live requests) and BatchJobs (batch items).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

from sollol_serve.names import normalize_model
from sollol_serve.protocol import Api, BadRequest, Operation

TaskType = Literal["generation", "embedding", "classification", "extraction", "summarization", "analysis"]

DEFAULT_PRIORITY = 5
DEFAULT_OUTPUT_TOKENS = 128

# Keyword cues in the last user turn. Checked in order; the first that matches wins.
_TASK_CUES: list[tuple[TaskType, re.Pattern[str]]] = [
    ("summarization", re.compile(r"\b(summari[sz]e|summary|tl;?dr|condense|key points)\b", re.I)),
    ("classification", re.compile(r"\b(classify|categori[sz]e|which category|label (this|the)|sentiment|is this (a|an)?\s*\w+ or)\b", re.I)),
    ("extraction", re.compile(r"\b(extract|list (all|the)|find (all|the)|pull out|parse|as json)\b", re.I)),
    ("analysis", re.compile(r"\b(analy[sz]e|analysis|explain why|compare|evaluate|reason|step by step|prove)\b", re.I)),
]


@dataclass(slots=True)
class RequestProfile:
    task_type: TaskType
    complexity: Literal["low", "medium", "high"]
    tokens_in: int
    tokens_out_est: int
    output_capped: bool  # tokens_out_est comes from num_predict / max_tokens
    requires_gpu: bool
    model: str
    priority: int
    # A chat's identity (its opening messages) and the tokens before its last message: what a
    # node that served the previous turn holds in its KV cache.
    conversation: str | None = None
    prefix_tokens: int = 0
    num_ctx: int | None = None  # the context the client asks the node to load the model with
    # Who sent it, for fair share between applications (routing/fair_share.py): the
    # application as the gateway attributes it, and the share its key gives it.
    app: str = ""
    share: float = 1.0

    def as_dict(self) -> dict:
        return asdict(self)


def estimate_tokens(text: str) -> int:
    """~4 characters per token: good enough to compare requests, not to bill them."""
    return math.ceil(len(text) / 4) if text else 0


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def prompt_text(op: Operation, body: dict) -> tuple[str, str]:
    """(all text sent to the model, the text that states the task)."""
    if op == "chat":
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        texts = [_content_text(m.get("content")) for m in messages]
        users = [_content_text(m.get("content")) for m in messages if m.get("role") == "user"]
        return "\n".join(texts), (users[-1] if users else "")
    if op == "generate":
        text = f"{body.get('system') or ''}\n{body.get('prompt') or ''}".strip()
        return text, str(body.get("prompt") or "")
    raw = body.get("input", body.get("prompt", ""))
    text = raw if isinstance(raw, str) else "\n".join(x for x in raw if isinstance(x, str)) if isinstance(raw, list) else ""
    return text, ""


def conversation_of(op: Operation, body: dict) -> tuple[str | None, int]:
    """(a key for the conversation: its messages up to the first user turn, the tokens of
    every message but the last)."""
    if op != "chat":
        return None, 0
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    opening = []
    for m in messages:
        opening.append(_content_text(m.get("content")))
        if m.get("role") == "user":
            break
    if not opening:
        return None, 0
    key = hashlib.blake2b("\x1f".join(opening).encode(), digest_size=8).hexdigest()
    before_last = "\n".join(_content_text(m.get("content")) for m in messages[:-1])
    return key, estimate_tokens(before_last)


def requested_context(api: Api, body: dict) -> int | None:
    value = (body.get("options") or {}).get("num_ctx") if api == "ollama" else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def classify_task(op: Operation, task_text: str) -> TaskType:
    if op in ("embed", "embeddings"):
        return "embedding"
    for task, pattern in _TASK_CUES:
        if pattern.search(task_text):
            return task
    return "generation"


def output_cap(api: Api, body: dict) -> int | None:
    if api == "ollama":
        value = (body.get("options") or {}).get("num_predict")
    else:
        value = body.get("max_completion_tokens", body.get("max_tokens"))
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def complexity_of(task: TaskType, tokens_in: int, tokens_out: int) -> Literal["low", "medium", "high"]:
    work = tokens_in + 4 * tokens_out  # decoding a token costs far more than reading one
    if task == "analysis":
        work *= 2
    if work < 600:
        return "low"
    return "medium" if work < 4000 else "high"


def parse_priority(body_value: object, header_value: str | None) -> int:
    """Body `priority` wins over the `X-SOLLOL-Priority` header; 1-10, 10 most urgent."""
    value: object = body_value if body_value is not None else header_value
    if value is None or value == "":
        return DEFAULT_PRIORITY
    if isinstance(value, bool):
        raise BadRequest("priority must be an integer from 1 to 10")
    try:
        number = int(value) if isinstance(value, (int, str)) else None
    except ValueError:
        number = None
    if number is None or not 1 <= number <= 10:
        raise BadRequest(f"priority must be an integer from 1 to 10, got {value!r}")
    return number


def profile_request(api: Api, op: Operation, body: dict, priority: int,
                    learned_output: Mapping[tuple[str, str], int] | None = None) -> RequestProfile:
    """`learned_output`: typical answer length per (model, task), used when the request sets
    no limit."""
    text, task_text = prompt_text(op, body)
    task = classify_task(op, task_text)
    model = str(body.get("model", ""))
    learned_output_tokens = (learned_output or {}).get((normalize_model(model), task))
    tokens_in = estimate_tokens(text)
    cap = output_cap(api, body)
    if task == "embedding":
        tokens_out = 0
    elif cap is not None:
        tokens_out = cap
    else:
        tokens_out = learned_output_tokens or DEFAULT_OUTPUT_TOKENS
    complexity = complexity_of(task, tokens_in, tokens_out)
    conversation, prefix_tokens = conversation_of(op, body)
    return RequestProfile(
        task_type=task,
        complexity=complexity,
        tokens_in=tokens_in,
        tokens_out_est=tokens_out,
        output_capped=cap is not None and task != "embedding",
        requires_gpu=complexity == "high" and task != "embedding",
        model=model,
        priority=priority,
        conversation=conversation,
        prefix_tokens=prefix_tokens,
        num_ctx=requested_context(api, body),
    )
