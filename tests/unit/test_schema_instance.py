"""The simulator's schema instances: hand-computed answers for each keyword, and every
answer checked by `jsonschema` (installed with Ray) so "valid" means what a validator says."""

from __future__ import annotations

import jsonschema
import pytest

from sollol_serve.sim.schema_instance import MAX_DEPTH, instance


def valid(schema):
    value = instance(schema)
    jsonschema.validate(value, schema)
    return value


@pytest.mark.parametrize("schema, expected", [
    ({"type": "string"}, "sim"),
    ({"type": "string", "minLength": 5}, "simxx"),
    ({"type": "string", "maxLength": 2}, "si"),
    ({"type": "string", "format": "date"}, "2026-01-01"),
    ({"type": "integer"}, 0),
    ({"type": "integer", "minimum": 3}, 3),
    ({"type": "integer", "exclusiveMinimum": 3}, 4),
    ({"type": "integer", "maximum": -2}, -2),
    ({"type": "integer", "minimum": 1, "multipleOf": 5}, 5),
    ({"type": "number", "exclusiveMinimum": 0.5}, 1.5),
    ({"type": "number", "minimum": 0.25}, 0.25),
    ({"type": "boolean"}, True),
    ({"type": "null"}, None),
    ({"type": ["null", "integer"]}, 0),
    ({"enum": ["b", "a"]}, "b"),
    ({"const": 7}, 7),
    ({"type": "array", "items": {"type": "integer"}}, [0]),
    ({"type": "array", "items": {"type": "string"}, "minItems": 3}, ["sim", "sim", "sim"]),
    ({"type": "array", "items": {"type": "string"}, "maxItems": 0}, []),
    ({"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}], "minItems": 2}, ["sim", True]),
    ({"anyOf": [{"type": "null"}, {"type": "string"}]}, "sim"),
    ({"oneOf": [{"type": "integer", "minimum": 9}]}, 9),
])
def test_each_keyword(schema, expected):
    assert valid(schema) == expected


def test_object_fills_every_property_and_the_undeclared_required_ones():
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
              "required": ["city", "extra"]}
    assert valid(schema) == {"city": "sim", "days": 1, "extra": ""}


def test_pydantic_schema_with_refs_optional_and_enum():
    # What pydantic's model_json_schema() writes for a nested model, an Optional and an Enum.
    schema = {
        "$defs": {
            "Unit": {"enum": ["celsius", "fahrenheit"], "title": "Unit", "type": "string"},
            "Reading": {"properties": {"value": {"type": "number"}, "unit": {"$ref": "#/$defs/Unit"}},
                        "required": ["value", "unit"], "title": "Reading", "type": "object"},
        },
        "properties": {
            "city": {"title": "City", "type": "string"},
            "reading": {"$ref": "#/$defs/Reading"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "tags": {"items": {"type": "string"}, "type": "array"},
        },
        "required": ["city", "reading"],
        "title": "Weather",
        "type": "object",
        "additionalProperties": False,
    }
    assert valid(schema) == {"city": "sim", "reading": {"value": 0, "unit": "celsius"}, "note": "sim", "tags": ["sim"]}


def test_all_of_merges_its_parts():
    schema = {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                        {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}]}
    assert valid(schema) == {"a": 0, "b": True}


def test_recursive_schema_ends():
    schema = {"$defs": {"Node": {"type": "object", "properties": {
        "name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
        "required": ["name"]}}, "$ref": "#/$defs/Node"}
    value = valid(schema)
    depth, node = 0, value
    while node.get("children"):
        node, depth = node["children"][0], depth + 1
    assert 0 < depth <= MAX_DEPTH


def test_type_inferred_from_keywords_and_open_schemas():
    assert valid({"properties": {"x": {"minLength": 1}}}) == {"x": "sim"}
    assert instance({}) == {} and instance(True) == {}
    assert instance({"$ref": "https://example.com/remote"}) == {}  # not fetched: an open schema
