"""A small valid instance of a JSON schema: what the simulator answers a `format` schema or a
tool's `parameters` with, so structured-output parsers and agent loops get JSON they accept.

It covers what clients generate (pydantic's `model_json_schema()`, OpenAI strict schemas,
tool parameters): `type` (or a list of types), `properties`/`required`, `items`/`prefixItems`
with `minItems`/`maxItems`, `enum`, `const`, `anyOf`/`oneOf`/`allOf`, `$ref` into
`$defs`/`definitions`, string `minLength`/`maxLength`/`format`, number bounds and
`multipleOf`. A string `pattern` is not honoured (no regex inversion): the one known gap.
Every property is filled in, not only the required ones, so the answer looks like what a
model writes; below `MAX_DEPTH` only the required ones are, so recursive schemas end.
"""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 4
# Values for the string formats clients use, each valid for its format.
_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00",
    "email": "sim@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "hostname": "example.com",
}
_TYPE_OF_KEYWORD = (("properties", "object"), ("required", "object"), ("items", "array"),
                    ("prefixItems", "array"), ("minLength", "string"), ("minimum", "number"))


def instance(schema: Any) -> Any:
    """A value that validates against `schema` (a JSON schema as a dict, or a boolean)."""
    return _value(schema, schema, 0)


def _value(schema: Any, root: Any, depth: int) -> Any:
    if not isinstance(schema, dict):
        return {}  # `true` or a malformed schema: anything goes
    if "$ref" in schema:
        return _value(_resolve(schema["$ref"], root), root, depth)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "allOf" in schema:
        return _value(_merged(schema, root), root, depth)
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = schema[key]
            # Optional[X] is anyOf [X, null]: answer X, the richer and more useful choice.
            chosen = next((o for o in options if not _is_null(o, root)), options[0])
            return _value(chosen, root, depth)
    kind = _type_of(schema)
    if kind == "object":
        return _object(schema, root, depth)
    if kind == "array":
        return _array(schema, root, depth)
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return {}


def _type_of(schema: dict) -> str | None:
    declared = schema.get("type")
    if isinstance(declared, list):
        return next((t for t in declared if t != "null"), "null")
    if declared is not None:
        return declared
    return next((kind for key, kind in _TYPE_OF_KEYWORD if key in schema), None)


def _resolve(ref: str, root: Any) -> Any:
    """A local `#/...` JSON pointer; anything else resolves to an open schema."""
    if not ref.startswith("#"):
        return {}
    node = root
    for part in filter(None, ref[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node


def _is_null(schema: Any, root: Any) -> bool:
    if isinstance(schema, dict) and "$ref" in schema:
        schema = _resolve(schema["$ref"], root)
    return isinstance(schema, dict) and schema.get("type") == "null"


def _merged(schema: dict, root: Any) -> dict:
    """allOf as one schema: the parts' properties and requirements together."""
    out = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        if isinstance(part, dict) and "$ref" in part:
            part = _resolve(part["$ref"], root)
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties":
                out["properties"] = {**out.get("properties", {}), **value}
            elif key == "required":
                out["required"] = [*out.get("required", []), *value]
            else:
                out.setdefault(key, value)
    return out


def _object(schema: dict, root: Any, depth: int) -> dict:
    properties = schema.get("properties") or {}
    required = [r for r in schema.get("required") or [] if isinstance(r, str)]
    names = list(properties) if depth < MAX_DEPTH else [n for n in properties if n in required]
    out = {name: _value(properties[name], root, depth + 1) for name in names}
    for name in required:  # required yet undeclared: any value will do
        out.setdefault(name, "")
    return out


def _array(schema: dict, root: Any, depth: int) -> list:
    prefix = schema.get("prefixItems") or []
    items = schema.get("items")
    wanted = schema.get("minItems", 0)
    if depth < MAX_DEPTH:
        wanted = max(wanted, 1)
    if isinstance(schema.get("maxItems"), int):
        wanted = min(wanted, schema["maxItems"])
    out = [_value(s, root, depth + 1) for s in prefix[:wanted]]
    while len(out) < wanted:
        out.append(_value(items if isinstance(items, dict) else {}, root, depth + 1))
    return out


def _string(schema: dict) -> str:
    text = _FORMATS.get(schema.get("format", ""), "sim")
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if len(text) < low:
        text += "x" * (low - len(text))
    if isinstance(high, int) and len(text) > high:
        text = text[:high]
    return text


def _number(schema: dict, integer: bool) -> int | float:
    """The value nearest zero within the bounds (and a multiple of `multipleOf` if asked)."""
    step = schema.get("multipleOf") or (1 if integer else None)
    low, high = schema.get("minimum"), schema.get("maximum")
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(ex_low, (int, float)) and not isinstance(ex_low, bool):
        low = ex_low + (step or 1) if low is None or ex_low >= low else low
    if isinstance(ex_high, (int, float)) and not isinstance(ex_high, bool):
        high = ex_high - (step or 1) if high is None or ex_high <= high else high
    value: float = 0
    if low is not None and value < low:
        value = low
    if high is not None and value > high:
        value = high
    if step:
        value = math.ceil(value / step) * step
        if high is not None and value > high:
            value -= step
    return int(value) if integer else value
