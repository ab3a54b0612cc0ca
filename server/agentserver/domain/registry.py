"""The action registry: every action type the agent can propose.

Each definition carries its category, a description (shown to the LLM), a JSON
Schema of its parameters, the permissions it needs, what it costs (through its
operation type and the tenant's `CostTable`), its default decision level and
side-effect hints.

Parameter schemas are written so they are valid *strict* OpenAI function schemas:
every object lists all of its properties in ``required`` and sets
``additionalProperties: false``; a parameter the caller may leave out is typed as
nullable (``["string", "null"]``) instead of being optional. Only ``type``,
``enum``, ``description``, ``pattern``, ``minimum``, ``maximum``, ``items``,
``properties``, ``required`` and ``additionalProperties`` are used. Strict mode
has no free-form objects, so resource attributes are a list of ``{key, value}``
pairs rather than an open object.

Some actions need one of several parameters (a resource by id *or* by name, a
booking's end *or* its duration). Strict schemas cannot say that at the root
(no ``anyOf`` there), so those groups are declared in
`ActionDefinition.required_one_of` and checked by `Registry.validate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator

from agentserver.domain.costs import CostTable, OperationType
from agentserver.domain.decision.levels import DecisionLevel
from agentserver.domain.errors import FieldViolation, NotFound

__all__ = [
    "CATEGORIES",
    "ActionDefinition",
    "DecisionLevel",
    "Registry",
    "default_registry",
    "from_tool_name",
    "to_tool_name",
]

CATEGORIES = ("communication", "resource", "booking", "analysis", "human")

E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
# ISO-8601 date-time with an explicit offset (or Z): bookings must not depend on
# whatever time zone the executor happens to run in.
DATETIME_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2})?(Z|[+-][0-9]{2}:[0-9]{2})$"
)
PERIODS = (
    "today",
    "yesterday",
    "this_week",
    "last_week",
    "this_month",
    "last_month",
    "last_7_days",
    "last_30_days",
    "this_quarter",
    "last_quarter",
    "this_year",
)


@dataclass(frozen=True)
class ActionDefinition:
    """One action type. ``name`` is the contract with engines, clients and storage."""

    name: str
    category: str
    description: str
    parameters_schema: dict[str, Any]
    required_permissions: tuple[str, ...]
    operation_type: OperationType | None
    default_level: DecisionLevel
    is_async: bool
    requires_approval: bool
    read_only: bool
    destructive: bool
    idempotent: bool
    # Groups of nullable parameters of which at least one must be given.
    required_one_of: tuple[tuple[str, ...], ...] = ()
    # Text that reaches a person as written: it must come word for word from the
    # user's message for the action to run unattended (see the policy).
    verbatim_parameters: tuple[str, ...] = ()

    @property
    def properties(self) -> dict[str, Any]:
        """The schema's properties, by parameter name."""
        props: dict[str, Any] = self.parameters_schema.get("properties", {})
        return props

    @property
    def required_parameters(self) -> tuple[str, ...]:
        """Parameters that must have a value: the non-nullable ones."""
        return tuple(n for n, s in self.properties.items() if not _nullable(s))

    @property
    def optional_parameters(self) -> tuple[str, ...]:
        """Parameters that may be null (absent)."""
        return tuple(n for n, s in self.properties.items() if _nullable(s))


def _nullable(schema: Mapping[str, Any]) -> bool:
    t = schema.get("type")
    return t == "null" or (isinstance(t, list) and "null" in t)


# --- schema helpers: keep every definition below short and uniform -----------------


def _str(description: str, *, nullable: bool = False, pattern: str | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"type": ["string", "null"] if nullable else "string"}
    if pattern:
        s["pattern"] = pattern
    s["description"] = description
    return s


def _int(description: str, *, nullable: bool = False, minimum: int | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"type": ["integer", "null"] if nullable else "integer"}
    if minimum is not None:
        s["minimum"] = minimum
    s["description"] = description
    return s


def _enum(description: str, values: Iterable[str], *, nullable: bool = False) -> dict[str, Any]:
    vals: list[str | None] = list(values)
    if nullable:
        vals.append(None)
    return {
        "type": ["string", "null"] if nullable else "string",
        "enum": vals,
        "description": description,
    }


def _attributes(description: str, *, nullable: bool) -> dict[str, Any]:
    return {
        "type": ["array", "null"] if nullable else "array",
        "description": description,
        "items": {
            "type": "object",
            "properties": {
                "key": {"type": "string", "description": "Attribute name, e.g. capacity."},
                "value": {"type": "string", "description": "Attribute value as text."},
            },
            "required": ["key", "value"],
            "additionalProperties": False,
        },
    }


def _object(**properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


_TO_PHONE = _str("Recipient phone number in E.164 form, e.g. +15551234567.", pattern=E164_PATTERN)


def _definitions() -> list[ActionDefinition]:
    L = DecisionLevel
    return [
        ActionDefinition(
            name="email.send",
            category="communication",
            description=(
                "Send an email to one recipient on behalf of the business. Use when the user "
                "asks to email or mail someone. Do not invent the body: leave the request "
                "incomplete if the user did not say what to write."
            ),
            parameters_schema=_object(
                to=_str("Recipient email address.", pattern=EMAIL_PATTERN),
                subject=_str("Subject line; a short summary of the body."),
                body=_str("The text of the email."),
                cc={
                    "type": ["array", "null"],
                    "description": "Further addresses to copy, or null.",
                    "items": {"type": "string", "pattern": EMAIL_PATTERN},
                },
            ),
            required_permissions=("email:send",),
            operation_type=OperationType.EMAIL,
            default_level=L.AUTOMATIC,
            is_async=False,
            requires_approval=False,
            read_only=False,
            destructive=False,
            idempotent=False,
            verbatim_parameters=("body",),
        ),
        ActionDefinition(
            name="sms.send",
            category="communication",
            description="Send a text message (SMS) to a phone number.",
            parameters_schema=_object(to=_TO_PHONE, body=_str("The text of the message.")),
            required_permissions=("sms:send",),
            operation_type=OperationType.SMS,
            default_level=L.AUTOMATIC,
            is_async=False,
            requires_approval=False,
            read_only=False,
            destructive=False,
            idempotent=False,
            verbatim_parameters=("body",),
        ),
        ActionDefinition(
            name="whatsapp.send",
            category="communication",
            description="Send a WhatsApp message to a phone number.",
            parameters_schema=_object(to=_TO_PHONE, body=_str("The text of the message.")),
            required_permissions=("whatsapp:send",),
            operation_type=OperationType.WHATSAPP_CONVERSATION,
            default_level=L.AUTOMATIC,
            is_async=False,
            requires_approval=False,
            read_only=False,
            destructive=False,
            idempotent=False,
            verbatim_parameters=("body",),
        ),
        ActionDefinition(
            name="phone.call",
            category="communication",
            description=(
                "Place an outbound AI voice call to a phone number. The AI agent talks to "
                "the person about the given purpose; the result arrives later."
            ),
            parameters_schema=_object(
                to=_TO_PHONE,
                purpose=_str("What the call is for, e.g. confirm tomorrow's appointment."),
                first_message=_str("Exact opening sentence, or null.", nullable=True),
            ),
            required_permissions=("phone:call",),
            operation_type=OperationType.ELEVENLABS_CALL,
            default_level=L.SUGGESTION,
            is_async=True,
            requires_approval=False,
            read_only=False,
            destructive=False,
            idempotent=False,
            verbatim_parameters=("first_message",),
        ),
        ActionDefinition(
            name="resource.create",
            category="resource",
            description=(
                "Create a resource or record of the business: something bookable (a room, "
                "table, court, vehicle, piece of equipment) or a record (a customer, supplier, "
                "order, product or staff member, with its fields as attributes)."
            ),
            parameters_schema=_object(
                resource_type=_str("Kind of resource, singular, e.g. room, table, vehicle."),
                name=_str("Name of the new resource, e.g. Blue Room."),
                attributes=_attributes(
                    "Attributes such as capacity or price, or null.", nullable=True
                ),
            ),
            required_permissions=("resource:create",),
            operation_type=None,
            default_level=L.SUGGESTION,
            is_async=False,
            requires_approval=False,
            read_only=False,
            destructive=False,
            idempotent=False,
        ),
        ActionDefinition(
            name="resource.read",
            category="resource",
            description=(
                "Look up resources and records (customers, suppliers, orders, products, "
                "staff): one by id or name, or list all of a type (all null lists every one)."
            ),
            parameters_schema=_object(
                resource_type=_str("Kind of resource to list, singular, or null.", nullable=True),
                resource_id=_str("Id of one resource, or null.", nullable=True),
                name=_str("Name of one resource, or null.", nullable=True),
            ),
            required_permissions=("resource:read",),
            operation_type=None,
            default_level=L.AUTOMATIC,
            is_async=False,
            requires_approval=False,
            read_only=True,
            destructive=False,
            idempotent=True,
        ),
        ActionDefinition(
            name="resource.update",
            category="resource",
            description=(
                "Change attributes of an existing resource or record (rename it with the "
                "attribute key 'name'; 'mark order 1042 as shipped' sets status). Identify it "
                "by id or by name."
            ),
            parameters_schema=_object(
                resource_id=_str("Id of the resource, or null when named.", nullable=True),
                name=_str("Current name of the resource, or null when id given.", nullable=True),
                resource_type=_str("Kind of resource, or null.", nullable=True),
                attributes=_attributes(
                    "The attributes to set, with their new values.", nullable=False
                ),
                expected_version=_int(
                    "Version the change is based on (optimistic locking), or null.",
                    nullable=True,
                    minimum=0,
                ),
            ),
            required_permissions=("resource:update",),
            operation_type=None,
            default_level=L.SUGGESTION,
            is_async=False,
            requires_approval=False,
            read_only=False,
            destructive=False,
            idempotent=True,
            required_one_of=(("name", "resource_id"),),
        ),
        ActionDefinition(
            name="resource.delete",
            category="resource",
            description=("Delete a resource or record permanently. Identify it by id or by name."),
            parameters_schema=_object(
                resource_id=_str("Id of the resource, or null when named.", nullable=True),
                name=_str("Name of the resource, or null when id given.", nullable=True),
                resource_type=_str("Kind of resource, or null.", nullable=True),
                expected_version=_int(
                    "Version the deletion is based on (optimistic locking), or null.",
                    nullable=True,
                    minimum=0,
                ),
            ),
            required_permissions=("resource:delete",),
            operation_type=None,
            default_level=L.APPROVAL_REQUIRED,
            is_async=False,
            requires_approval=True,
            read_only=False,
            destructive=True,
            idempotent=True,
            required_one_of=(("name", "resource_id"),),
        ),
        ActionDefinition(
            name="booking.create",
            category="booking",
            description=(
                "Book a resource for a customer at a given time. Give the end time or the "
                "duration; do not guess either."
            ),
            parameters_schema=_object(
                resource_id=_str("Id of the resource, or null when named.", nullable=True),
                resource_name=_str("Name of the resource, or null when id given.", nullable=True),
                start=_str(
                    "Start, ISO-8601 with offset, e.g. 2026-01-16T15:00:00+00:00.",
                    pattern=DATETIME_PATTERN,
                ),
                end=_str("End, ISO-8601 with offset, or null.", nullable=True),
                duration_minutes=_int("Length in minutes, or null.", nullable=True, minimum=1),
                customer_name=_str("Name of the customer the booking is for."),
                notes=_str("Free-text notes, or null.", nullable=True),
            ),
            required_permissions=("booking:create",),
            operation_type=None,
            default_level=L.SUGGESTION,
            is_async=False,
            requires_approval=False,
            read_only=False,
            destructive=False,
            idempotent=False,
            required_one_of=(("resource_name", "resource_id"), ("duration_minutes", "end")),
        ),
        ActionDefinition(
            name="booking.cancel",
            category="booking",
            description="Cancel an existing booking by its id.",
            parameters_schema=_object(
                booking_id=_str("Id of the booking, e.g. BK-1042."),
                reason=_str("Why it is cancelled, or null.", nullable=True),
            ),
            required_permissions=("booking:cancel",),
            operation_type=None,
            default_level=L.CONSULTATION,
            is_async=False,
            requires_approval=False,
            read_only=False,
            destructive=True,
            idempotent=True,
        ),
        ActionDefinition(
            name="analysis.report",
            category="analysis",
            description=(
                "Produce an internal report (usage of tokens and channels, bookings, "
                "resources, or a general overview) for a period."
            ),
            parameters_schema=_object(
                topic=_enum("What to analyse.", ("usage", "bookings", "resources", "general")),
                period=_enum(
                    "Period covered, or null for the last 30 days.", PERIODS, nullable=True
                ),
            ),
            required_permissions=("analysis:read",),
            operation_type=OperationType.INTERNAL_API_LLM,
            default_level=L.AUTOMATIC,
            is_async=False,
            requires_approval=False,
            read_only=True,
            destructive=False,
            idempotent=True,
        ),
        ActionDefinition(
            name="human.approval_request",
            category="human",
            description="Ask an approver to approve something the agent may not decide.",
            parameters_schema=_object(
                subject=_str("What needs approval, in a few words."),
                details=_str("Everything the approver needs to decide."),
            ),
            required_permissions=("approval:request",),
            operation_type=None,
            default_level=L.CONSULTATION,
            is_async=False,
            requires_approval=False,
            read_only=False,
            destructive=False,
            idempotent=False,
        ),
        ActionDefinition(
            name="human.escalate",
            category="human",
            description="Hand the conversation to a human coordinator.",
            parameters_schema=_object(
                reason=_str("Why a human is needed."),
                urgency=_enum("How urgent it is.", ("low", "normal", "high")),
            ),
            required_permissions=("escalation:create",),
            operation_type=None,
            default_level=L.AUTOMATIC,
            is_async=False,
            requires_approval=False,
            read_only=False,
            destructive=False,
            idempotent=False,
        ),
        ActionDefinition(
            name="notification.send",
            category="human",
            description="Send an internal notification to the business's coordinators or team.",
            parameters_schema=_object(
                message=_str("The notification text."),
                audience=_enum("Who receives it.", ("coordinators", "team")),
            ),
            required_permissions=("notification:send",),
            operation_type=None,
            default_level=L.AUTOMATIC,
            is_async=False,
            requires_approval=False,
            read_only=False,
            destructive=False,
            idempotent=False,
            verbatim_parameters=("message",),
        ),
    ]


class Registry:
    """A fixed set of action definitions, looked up by name."""

    def __init__(self, definitions: Iterable[ActionDefinition]) -> None:
        self._defs: dict[str, ActionDefinition] = {}
        self._validators: dict[str, Draft202012Validator] = {}
        for d in definitions:
            if d.name in self._defs:
                raise ValueError(f"duplicate action type {d.name!r}")
            if d.category not in CATEGORIES:
                raise ValueError(f"{d.name}: unknown category {d.category!r}")
            Draft202012Validator.check_schema(d.parameters_schema)
            for group in d.required_one_of:
                for member in group:
                    if member not in d.optional_parameters:
                        raise ValueError(f"{d.name}: {member!r} in a one-of group must be nullable")
            self._defs[d.name] = d
            self._validators[d.name] = Draft202012Validator(d.parameters_schema)

    def get(self, name: str) -> ActionDefinition:
        """The definition of ``name``; raises `NotFound` for unknown action types."""
        try:
            return self._defs[name]
        except KeyError:
            raise NotFound(f"unknown action type {name!r}", reason="UNKNOWN_ACTION") from None

    def __contains__(self, name: object) -> bool:
        return name in self._defs

    def all(self) -> list[ActionDefinition]:
        """Every definition, in registration order."""
        return list(self._defs.values())

    def by_category(self, category: str) -> list[ActionDefinition]:
        """The definitions of one category (empty for an unknown category)."""
        return [d for d in self._defs.values() if d.category == category]

    def token_cost(self, name: str, costs: CostTable) -> int:
        """Tokens one run of ``name`` costs under ``costs``; 0 when it is not metered."""
        op = self.get(name).operation_type
        return costs.tokens(op) if op is not None else 0

    def permissions(self) -> list[str]:
        """Every permission some action requires, sorted."""
        return sorted({p for d in self._defs.values() for p in d.required_permissions})

    def complete(self, name: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` with every absent nullable parameter set to null (what strict
        function calling would have produced)."""
        d = self.get(name)
        out = dict(params)
        for p in d.optional_parameters:
            out.setdefault(p, None)
        return out

    def missing_parameters(self, name: str, params: Mapping[str, Any]) -> list[str]:
        """Required parameters without a value (absent, null or blank), and for each
        unmet one-of group its first member."""
        d = self.get(name)
        missing = [p for p in d.required_parameters if _blank(params.get(p))]
        for group in d.required_one_of:
            if all(_blank(params.get(p)) for p in group):
                missing.append(group[0])
        return missing

    def validate(self, name: str, params: Mapping[str, Any]) -> list[FieldViolation]:
        """Field violations of ``params`` against the action's schema (Draft 2020-12).

        Absent nullable parameters count as null; required ones that are absent,
        null or blank are reported as "is required"; unknown parameters, wrong types,
        enum and pattern mismatches are reported with their JSON path.
        """
        d = self.get(name)
        violations: list[FieldViolation] = []
        missing = self.missing_parameters(name, params)
        for p in missing:
            violations.append(FieldViolation(p, "is required"))
        instance = self.complete(name, params)
        for error in sorted(
            self._validators[name].iter_errors(instance),
            key=lambda e: [str(p) for p in e.absolute_path],
        ):
            path = ".".join(str(p) for p in error.absolute_path)
            if not path:
                # Root level: missing parameters are reported above by name; unknown
                # ones one by one rather than as a single schema message.
                if error.validator == "additionalProperties":
                    extra = sorted(set(instance) - set(d.properties))
                    violations.extend(
                        FieldViolation(x, f"is not a parameter of {name}") for x in extra
                    )
                continue
            if path in missing:
                continue  # a missing parameter's type error repeats "is required"
            violations.append(FieldViolation(path, error.message))
        return violations

    def openai_tools(self) -> list[dict[str, Any]]:
        """Every action as an OpenAI strict function tool (names made tool-safe)."""
        return [
            {
                "type": "function",
                "function": {
                    "name": to_tool_name(d.name),
                    "description": d.description,
                    "parameters": d.parameters_schema,
                    "strict": True,
                },
            }
            for d in self._defs.values()
        ]


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


# OpenAI function names allow only [a-zA-Z0-9_-]; action names use dots.
def to_tool_name(action_type: str) -> str:
    """``email.send`` → ``email__send`` (a valid function-calling name)."""
    return action_type.replace(".", "__")


def from_tool_name(tool_name: str) -> str:
    """``email__send`` → ``email.send``."""
    return tool_name.replace("__", ".")


def default_registry() -> Registry:
    """The built-in action types (a fresh registry; definitions are immutable)."""
    return Registry(_definitions())
