"""OpenAI's strict subset of JSON Schema, both ways: `_strict` rewrites an action's
parameter schema into what strict function tools accept (every property required,
optional ones nullable, unsupported keywords dropped), and `_strip_nulls` removes the
nulls that only that rewriting allowed before the answer is validated against the
original schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

# Keywords OpenAI's strict mode accepts (Structured Outputs "supported schemas");
# anything else is dropped from the *sent* schema. The original schema is still the
# one validated against, so dropping a constraint here never loosens validation.
_STRICT_KEYWORDS: Final = frozenset(
    {
        "type",
        "description",
        "enum",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minItems",
        "maxItems",
        "$ref",
    }
)
_STRICT_FORMATS: Final = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)


class _NotStrictable(Exception):
    """A schema construct that OpenAI's strict mode cannot express."""


def _strict(schema: Any, *, nullable_properties: bool = False) -> dict[str, Any]:
    """Rewrite a JSON Schema into OpenAI's strict subset.

    Every object gets ``additionalProperties: false`` and all its properties
    required; properties that were optional become nullable (and, at the top level
    with ``nullable_properties``, required ones too, so "missing" is expressible).
    Raises `_NotStrictable` for what strict mode cannot say (free-form objects,
    arrays without ``items``, untyped values).
    """
    if not isinstance(schema, dict):
        raise _NotStrictable("schema is not an object")
    out: dict[str, Any] = {k: v for k, v in schema.items() if k in _STRICT_KEYWORDS}
    if "format" in out and out["format"] not in _STRICT_FORMATS:
        del out["format"]
    if "const" in schema:
        out["enum"] = [schema["const"]]
    variants = schema.get("anyOf", schema.get("oneOf"))
    if isinstance(variants, list):
        out["anyOf"] = [_strict(v) for v in variants]
    if "$ref" in out and not str(out["$ref"]).startswith(("#/$defs/", "#/definitions/")):
        raise _NotStrictable("reference outside $defs")

    types = schema.get("type")
    type_set = set(types) if isinstance(types, list) else {types} if types else set()
    if "object" in type_set or "properties" in schema:
        props = schema.get("properties")
        if not isinstance(props, dict):
            if schema.get("additionalProperties") is False:
                props = {}
            else:
                raise _NotStrictable("free-form object")
        required = set(schema.get("required", []))
        out["type"] = types or "object"
        out["properties"] = {
            name: (
                _nullable(_strict(sub))
                if nullable_properties or name not in required
                else _strict(sub)
            )
            for name, sub in props.items()
        }
        out["required"] = list(props)
        out["additionalProperties"] = False
    if "array" in type_set:
        if "items" not in schema:
            raise _NotStrictable("array without items")
        out["items"] = _strict(schema["items"])
    if not type_set and not ({"enum", "anyOf", "$ref"} & out.keys()):
        raise _NotStrictable("untyped value")
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """The same schema, also accepting null."""
    if _allows_null(schema):
        return schema
    out = dict(schema)
    types = out.get("type")
    if isinstance(types, str):
        out["type"] = [types, "null"]
    elif isinstance(types, list):
        out["type"] = [*types, "null"]
    else:
        return {"anyOf": [schema, {"type": "null"}]}
    if isinstance(out.get("enum"), list):
        out["enum"] = [*out["enum"], None]
    return out


def _allows_null(schema: object) -> bool:
    """Whether a schema (as far as we can tell cheaply) accepts null."""
    if not isinstance(schema, Mapping):
        return True  # unknown: leave the value alone and let validation decide
    types = schema.get("type")
    if types == "null" or (isinstance(types, list) and "null" in types):
        return True
    enum = schema.get("enum")
    if isinstance(enum, list) and None in enum:
        return True
    variants = schema.get("anyOf", schema.get("oneOf"))
    if isinstance(variants, list):
        return any(_allows_null(v) for v in variants)
    return not (types or {"enum", "const", "$ref", "allOf", "not"} & schema.keys())


def _strip_nulls(value: Any, schema: object) -> Any:
    """Remove object members whose null only exists because strict mode made them
    nullable: the original schema does not accept null there."""
    if not isinstance(schema, Mapping):
        return value
    if isinstance(value, dict):
        props = schema.get("properties")
        if not isinstance(props, Mapping):
            return value
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub = props.get(key)
            if item is None and sub is not None and not _allows_null(sub):
                continue
            out[key] = _strip_nulls(item, sub)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_strip_nulls(item, schema["items"]) for item in value]
    return value
