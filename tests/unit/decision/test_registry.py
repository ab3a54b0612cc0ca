"""The action registry: definitions, strict schemas, validation, costs."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from agentserver.domain.costs import CostTable, OperationType
from agentserver.domain.errors import NotFound
from agentserver.domain.registry import (
    CATEGORIES,
    ActionDefinition,
    DecisionLevel,
    Registry,
    default_registry,
    from_tool_name,
    to_tool_name,
)

REGISTRY = default_registry()
NAMES = [d.name for d in REGISTRY.all()]
ALLOWED_KEYWORDS = {
    "type",
    "enum",
    "description",
    "pattern",
    "minimum",
    "maximum",
    "items",
    "properties",
    "required",
    "additionalProperties",
}
EXPECTED = {
    "email.send": ("communication", "email:send", OperationType.EMAIL, DecisionLevel.AUTOMATIC),
    "sms.send": ("communication", "sms:send", OperationType.SMS, DecisionLevel.AUTOMATIC),
    "whatsapp.send": (
        "communication",
        "whatsapp:send",
        OperationType.WHATSAPP_CONVERSATION,
        DecisionLevel.AUTOMATIC,
    ),
    "phone.call": (
        "communication",
        "phone:call",
        OperationType.ELEVENLABS_CALL,
        DecisionLevel.SUGGESTION,
    ),
    "resource.create": ("resource", "resource:create", None, DecisionLevel.SUGGESTION),
    "resource.read": ("resource", "resource:read", None, DecisionLevel.AUTOMATIC),
    "resource.update": ("resource", "resource:update", None, DecisionLevel.SUGGESTION),
    "resource.delete": ("resource", "resource:delete", None, DecisionLevel.APPROVAL_REQUIRED),
    "booking.create": ("booking", "booking:create", None, DecisionLevel.SUGGESTION),
    "booking.cancel": ("booking", "booking:cancel", None, DecisionLevel.CONSULTATION),
    "analysis.report": (
        "analysis",
        "analysis:read",
        OperationType.INTERNAL_API_LLM,
        DecisionLevel.AUTOMATIC,
    ),
    "human.approval_request": ("human", "approval:request", None, DecisionLevel.CONSULTATION),
    "human.escalate": ("human", "escalation:create", None, DecisionLevel.AUTOMATIC),
    "notification.send": ("human", "notification:send", None, DecisionLevel.AUTOMATIC),
}


def test_every_contract_action_type_is_registered_as_specified() -> None:
    assert sorted(NAMES) == sorted(EXPECTED)
    for name, (category, perm, op, level) in EXPECTED.items():
        d = REGISTRY.get(name)
        assert (d.category, d.required_permissions, d.operation_type, d.default_level) == (
            category,
            (perm,),
            op,
            level,
        ), name
        assert d.description.strip(), name


def test_side_effect_hints() -> None:
    assert REGISTRY.get("resource.read").read_only and REGISTRY.get("resource.read").idempotent
    assert REGISTRY.get("analysis.report").read_only
    assert REGISTRY.get("resource.delete").destructive
    assert REGISTRY.get("resource.delete").requires_approval
    assert REGISTRY.get("booking.cancel").destructive
    assert REGISTRY.get("phone.call").is_async
    assert not any(d.read_only and d.destructive for d in REGISTRY.all())


def _walk(schema: dict[str, Any], path: str) -> list[str]:
    """Every way ``schema`` is not a valid OpenAI strict-mode schema."""
    problems = [f"{path}: keyword {k!r} not allowed" for k in set(schema) - ALLOWED_KEYWORDS]
    types = schema.get("type")
    type_list = types if isinstance(types, list) else [types]
    if "object" in type_list:
        props = schema.get("properties")
        if not isinstance(props, dict):
            problems.append(f"{path}: object without properties")
            return problems
        if schema.get("additionalProperties") is not False:
            problems.append(f"{path}: additionalProperties must be false")
        if sorted(schema.get("required", [])) != sorted(props):
            problems.append(f"{path}: required must list every property")
        for name, sub in props.items():
            problems += _walk(sub, f"{path}.{name}")
    if "array" in type_list:
        if "items" not in schema:
            problems.append(f"{path}: array without items")
        else:
            problems += _walk(schema["items"], f"{path}[]")
    if "enum" in schema and "null" in type_list and None not in schema["enum"]:
        problems.append(f"{path}: nullable enum must list null")
    if not types:
        problems.append(f"{path}: no type")
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_schema_is_a_valid_strict_function_schema(name: str) -> None:
    schema = REGISTRY.get(name).parameters_schema
    Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
    assert _walk(schema, name) == []


def test_strict_checker_catches_a_bad_schema() -> None:
    bad = {
        "type": "object",
        "properties": {"a": {"type": "string", "format": "email"}, "b": {"type": "object"}},
        "required": ["a"],
    }
    problems = _walk(bad, "bad")
    assert any("format" in p for p in problems)
    assert any("additionalProperties" in p for p in problems)
    assert any("required" in p for p in problems)
    assert any("bad.b" in p for p in problems)


def test_get_unknown_raises_not_found() -> None:
    with pytest.raises(NotFound):
        REGISTRY.get("fax.send")
    assert "fax.send" not in REGISTRY


def test_by_category() -> None:
    assert {d.name for d in REGISTRY.by_category("booking")} == {"booking.create", "booking.cancel"}
    assert REGISTRY.by_category("nope") == []
    assert {d.category for d in REGISTRY.all()} == set(CATEGORIES)


def test_token_cost_uses_the_cost_table() -> None:
    costs = CostTable()
    assert REGISTRY.token_cost("sms.send", costs) == 1
    assert REGISTRY.token_cost("whatsapp.send", costs) == 10
    assert REGISTRY.token_cost("phone.call", costs) == 50
    assert REGISTRY.token_cost("booking.create", costs) == 0
    assert REGISTRY.token_cost("phone.call", CostTable({OperationType.ELEVENLABS_CALL: 40})) == 40
    with pytest.raises(NotFound):
        REGISTRY.token_cost("fax.send", costs)


def test_validate_accepts_good_parameters_and_fills_nullables() -> None:
    ok = {"to": "a@b.co", "subject": "Hi", "body": "Hello"}
    assert REGISTRY.validate("email.send", ok) == []
    assert REGISTRY.complete("email.send", ok)["cc"] is None
    assert REGISTRY.validate("sms.send", {"to": "+15551234567", "body": "x"}) == []


def test_validate_reports_each_problem_by_field() -> None:
    v = REGISTRY.validate("sms.send", {"to": "555-1234", "body": "", "extra": 1})
    fields = {x.field for x in v}
    assert fields == {"to", "body", "extra"}
    assert any(x.field == "body" and "required" in x.description for x in v)


def test_validate_enum_and_one_of_groups() -> None:
    v = REGISTRY.validate("analysis.report", {"topic": "weather", "period": None})
    assert [x.field for x in v] == ["topic"]
    start = "2026-01-16T15:00:00+00:00"
    base = {"start": start, "customer_name": "Ann", "resource_name": "Blue Room"}
    assert [x.field for x in REGISTRY.validate("booking.create", base)] == ["duration_minutes"]
    assert REGISTRY.validate("booking.create", {**base, "duration_minutes": 60}) == []
    assert REGISTRY.validate("booking.create", {**base, "end": "2026-01-16T16:00:00Z"}) == []
    bad_start = {**base, "duration_minutes": 60, "start": "tomorrow 3pm"}
    assert [x.field for x in REGISTRY.validate("booking.create", bad_start)] == ["start"]
    assert REGISTRY.missing_parameters("resource.delete", {}) == ["name"]
    assert REGISTRY.validate("resource.delete", {"resource_id": "R-1"}) == []


def test_attributes_are_key_value_pairs() -> None:
    params = {"name": "Blue Room", "attributes": [{"key": "capacity", "value": "8"}]}
    assert REGISTRY.validate("resource.update", params) == []
    bad = {"name": "Blue Room", "attributes": [{"capacity": 8}]}
    assert REGISTRY.validate("resource.update", bad) != []


def test_registry_rejects_duplicates_and_bad_groups() -> None:
    d = REGISTRY.get("sms.send")
    with pytest.raises(ValueError, match="duplicate"):
        Registry([d, d])
    broken = ActionDefinition(**{**d.__dict__, "name": "x.y", "required_one_of": (("to",),)})
    with pytest.raises(ValueError, match="nullable"):
        Registry([broken])


def test_openai_tools_round_trip_names() -> None:
    tools = REGISTRY.openai_tools()
    assert len(tools) == len(NAMES)
    for tool in tools:
        fn = tool["function"]
        assert fn["strict"] is True
        assert all(c.isalnum() or c in "_-" for c in fn["name"])
        assert from_tool_name(fn["name"]) in REGISTRY
    assert to_tool_name("human.approval_request") == "human__approval_request"


def test_levels_are_ordered_strictest_last() -> None:
    assert max(DecisionLevel.SUGGESTION, DecisionLevel.APPROVAL_REQUIRED) is (
        DecisionLevel.APPROVAL_REQUIRED
    )
    assert [lv.value for lv in DecisionLevel] == [1, 2, 3, 4]
    assert DecisionLevel.APPROVAL_REQUIRED.label == "approval_required"
