"""The policy: turns an engine's proposal into decided, priced, permission-checked actions.

Pure and deterministic. The engine only proposes; nothing it says can lower a level
below the registry default or the tenant's override, widen a permission or skip an
approval.

Level of one action = the strictest of
  * its registry default and the tenant's override for its type,
  * APPROVAL_REQUIRED when the registry says it requires approval,
  * the confidence band (how sure the engine is),
  * the cost band (what it costs),
  * risk hints (destructive → at least CONSULTATION),
  * SUGGESTION when text meant for a person (an email's body, a text message, a
    call's opening words) is not word for word in the user's message, or the engine
    voices a concern (it is not sure where the text starts or ends),
  * the level of the action it depends on (a dependent never runs on less say-so
    than its prerequisite),
  * what blocks it (see below), and APPROVAL_REQUIRED for every action of a
    proposal that tries to talk the agent out of its rules.

Blocked reasons make an action non-executable (it cannot run as proposed; a
person has to edit, grant, top up or approve it explicitly). A non-executable
action is never AUTOMATIC:
  * MISSING_PARAMETER / INVALID_PARAMETER → at least SUGGESTION (the requester fixes it)
  * INSUFFICIENT_TOKENS → at least SUGGESTION (the requester tops up or drops something)
  * QUANTITY_NOT_SUPPORTED (an engine's blocking concern, e.g. "send 500 SMS") and
    PREREQUISITE_BLOCKED (the action it depends on cannot run) → at least SUGGESTION
  * PERMISSION_MISSING, UNKNOWN_ACTION, POLICY_BYPASS_ATTEMPT → APPROVAL_REQUIRED

Tokens: every executable action reserves its cost when it starts waiting or
executing, so the *running total* of executable costs, in the order the actions
were proposed, must fit the available balance. An action that would overdraw it is
blocked with INSUFFICIENT_TOKENS and does not count towards the total, so a later,
cheaper action may still fit. Blocked actions never count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agentserver.domain.costs import CostTable
from agentserver.domain.decision.engine import Proposal, ProposedAction
from agentserver.domain.decision.levels import DecisionLevel, strictest
from agentserver.domain.permissions import PermissionSet
from agentserver.domain.registry import ActionDefinition, Registry

__all__ = [
    "INSUFFICIENT_TOKENS",
    "INVALID_PARAMETER",
    "MISSING_PARAMETER",
    "PERMISSION_MISSING",
    "POLICY_BYPASS_ATTEMPT",
    "POSSIBLE_BYPASS",
    "PREREQUISITE_BLOCKED",
    "QUANTITY_NOT_SUPPORTED",
    "UNCERTAIN_TEXT",
    "UNKNOWN_ACTION",
    "ActionDecision",
    "BlockedReason",
    "PolicyOutcome",
    "PolicySettings",
    "check_invariants",
    "decide",
]

PERMISSION_MISSING = "PERMISSION_MISSING"
INSUFFICIENT_TOKENS = "INSUFFICIENT_TOKENS"
MISSING_PARAMETER = "MISSING_PARAMETER"
INVALID_PARAMETER = "INVALID_PARAMETER"
UNKNOWN_ACTION = "UNKNOWN_ACTION"
POLICY_BYPASS_ATTEMPT = "POLICY_BYPASS_ATTEMPT"
QUANTITY_NOT_SUPPORTED = "QUANTITY_NOT_SUPPORTED"
PREREQUISITE_BLOCKED = "PREREQUISITE_BLOCKED"
# An engine's non-blocking concern: unsure where text meant for a person starts or ends.
UNCERTAIN_TEXT = "UNCERTAIN_TEXT"
# An engine's non-blocking concern: the message reads somewhat like a bypass attempt.
POSSIBLE_BYPASS = "POSSIBLE_BYPASS"

L = DecisionLevel

# The least strict level each blocked reason allows (see the module docstring).
_BLOCK_FLOOR: Mapping[str, DecisionLevel] = {
    MISSING_PARAMETER: L.SUGGESTION,
    INVALID_PARAMETER: L.SUGGESTION,
    INSUFFICIENT_TOKENS: L.SUGGESTION,
    PERMISSION_MISSING: L.APPROVAL_REQUIRED,
    UNKNOWN_ACTION: L.APPROVAL_REQUIRED,
    POLICY_BYPASS_ATTEMPT: L.APPROVAL_REQUIRED,
    QUANTITY_NOT_SUPPORTED: L.SUGGESTION,
    PREREQUISITE_BLOCKED: L.SUGGESTION,
}


@dataclass(frozen=True)
class PolicySettings:
    """Per-tenant policy knobs. Overrides can only make an action type stricter."""

    level_overrides: Mapping[str, DecisionLevel] = field(default_factory=dict)
    # Confidence bands: the least strict level each confidence allows.
    automatic_min_confidence: int = 85
    suggestion_min_confidence: int = 60
    consultation_min_confidence: int = 40
    # Cost bands (tokens of one action). Deliberately above every built-in price
    # (the dearest, an AI call, is 50): what a single action costs at the default
    # prices never takes it past its registry default. A call already waits for the
    # requester (its default is suggestion), and sending a coordinator every call or
    # every WhatsApp conversation would make them rubber stamps. The bands catch
    # what a tenant prices higher (AGENTSERVER_COSTS), and a tenant that wants calls
    # reviewed sets `consultation_min_cost` to 50 in its policy.
    consultation_min_cost: int = 100
    # One action costing a month's platform fee (200) needs an approver.
    approval_min_cost: int = 200
    destructive_min_level: DecisionLevel = L.CONSULTATION
    bypass_level: DecisionLevel = L.APPROVAL_REQUIRED

    def __post_init__(self) -> None:
        bands = (
            ("consultation_min_confidence", self.consultation_min_confidence),
            ("suggestion_min_confidence", self.suggestion_min_confidence),
            ("automatic_min_confidence", self.automatic_min_confidence),
        )
        for name, value in bands:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 101:
                raise ValueError(f"{name} must be an integer from 0 to 101, got {value!r}")
        if not bands[0][1] <= bands[1][1] <= bands[2][1]:
            raise ValueError(
                "confidence bands must rise: consultation_min_confidence <= "
                "suggestion_min_confidence <= automatic_min_confidence"
            )
        for name, value in (
            ("consultation_min_cost", self.consultation_min_cost),
            ("approval_min_cost", self.approval_min_cost),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number of tokens >= 0, got {value!r}")
        if self.consultation_min_cost > self.approval_min_cost:
            raise ValueError("consultation_min_cost must not be above approval_min_cost")

    def confidence_level(self, confidence: int) -> DecisionLevel:
        """The least strict level a confidence allows."""
        if confidence >= self.automatic_min_confidence:
            return L.AUTOMATIC
        if confidence >= self.suggestion_min_confidence:
            return L.SUGGESTION
        if confidence >= self.consultation_min_confidence:
            return L.CONSULTATION
        return L.APPROVAL_REQUIRED

    def cost_level(self, cost: int) -> DecisionLevel:
        """The least strict level a cost allows."""
        if cost >= self.approval_min_cost:
            return L.APPROVAL_REQUIRED
        if cost >= self.consultation_min_cost:
            return L.CONSULTATION
        return L.AUTOMATIC


@dataclass(frozen=True)
class BlockedReason:
    """Why an action cannot run as proposed: a machine-readable reason, words, and
    the thing it is about (a permission, a parameter, the wallet)."""

    reason: str
    message: str
    subject: str = ""


@dataclass(frozen=True)
class ActionDecision:
    """The policy's verdict on one proposed action."""

    action_type: str
    parameters: dict[str, Any]
    level: DecisionLevel
    executable: bool
    blocked: list[BlockedReason]
    token_cost: int
    confidence: int
    reasoning: str
    # Index of the decision (same outcome) this one runs after, or None.
    depends_on: int | None = None


@dataclass(frozen=True)
class PolicyOutcome:
    """The verdict on a whole proposal; ``level`` is the strictest of its actions."""

    actions: list[ActionDecision]
    level: DecisionLevel
    reasoning: str

    @property
    def total_cost(self) -> int:
        """Tokens the executable actions need."""
        return sum(a.token_cost for a in self.actions if a.executable)


def decide(
    proposal: Proposal,
    registry: Registry,
    costs: CostTable,
    permissions: PermissionSet,
    balance: int | None,
    *,
    settings: PolicySettings | None = None,
    message: str | None = None,
) -> PolicyOutcome:
    """Decide every proposed action (in order) and the response's level.

    `balance` None means "not known yet": no action is blocked for tokens here, and
    the caller must hold the tokens and, when they are refused, decide again with
    the balance the refusal reports (see `AgentService.process`). `message` is the
    user's message, which text meant for a person must come from word for word to
    run unattended; None only where no message exists (unit tests of other rules).
    """
    settings = settings or PolicySettings()
    decisions: list[ActionDecision] = []
    reserved = 0
    for i, proposed in enumerate(proposal.actions):
        prerequisite = _prerequisite(proposed, i)
        decision = _decide_one(
            proposed,
            proposal.bypass_attempt,
            registry=registry,
            costs=costs,
            permissions=permissions,
            settings=settings,
            message=message,
            prerequisite=None if prerequisite is None else decisions[prerequisite],
        )
        if decision.executable and decision.token_cost > 0:
            if balance is None or reserved + decision.token_cost <= balance:
                reserved += decision.token_cost
            else:
                decision = _block_for_tokens(decision, reserved, balance)
        decisions.append(replace(decision, depends_on=prerequisite))

    level = strictest(*(d.level for d in decisions))
    if not decisions:
        why = "Nothing to do: the message asked for no action."
    else:
        runnable = sum(d.executable for d in decisions)
        of = "" if balance is None else f" of {balance}"
        why = (
            f"{len(decisions)} action(s), {runnable} executable, needing {reserved}{of} "
            f"tokens; the response is {level.label}, the strictest of its actions."
        )
    if proposal.bypass_attempt:
        why += " The message tried to bypass the rules, so every action needs an approver."
    return PolicyOutcome(actions=decisions, level=level, reasoning=why)


def _prerequisite(proposed: ProposedAction, index: int) -> int | None:
    """The earlier action `proposed` depends on; an engine's reference to itself or
    to a later action is not a dependency (the order of a message is the order of
    its actions) and is dropped."""
    d = proposed.depends_on
    return d if isinstance(d, int) and not isinstance(d, bool) and 0 <= d < index else None


def altered_text(
    definition: ActionDefinition, parameters: Mapping[str, Any], message: str | None
) -> list[str]:
    """The parameters of text meant for a person that are not word for word in the
    user's message (so someone should read them before they go out)."""
    if message is None:
        return []
    return [
        p
        for p in definition.verbatim_parameters
        if isinstance(parameters.get(p), str)
        and parameters[p].strip()
        and parameters[p] not in message
    ]


def _decide_one(
    proposed: ProposedAction,
    bypass: bool,
    *,
    registry: Registry,
    costs: CostTable,
    permissions: PermissionSet,
    settings: PolicySettings,
    message: str | None,
    prerequisite: ActionDecision | None,
) -> ActionDecision:
    confidence = max(0, min(100, proposed.confidence))
    params = dict(proposed.parameters)
    if proposed.action_type not in registry:
        blocked = [
            BlockedReason(
                UNKNOWN_ACTION,
                f"{proposed.action_type!r} is not an action this service knows",
                proposed.action_type,
            )
        ]
        if bypass:
            blocked.append(_bypass_reason())
        return ActionDecision(
            action_type=proposed.action_type,
            parameters=params,
            level=L.APPROVAL_REQUIRED,
            executable=False,
            blocked=blocked,
            token_cost=0,
            confidence=confidence,
            reasoning=f"Unknown action type {proposed.action_type!r}: it cannot run.",
        )

    definition = registry.get(proposed.action_type)
    cost = registry.token_cost(definition.name, costs)
    blocked = _blocked_reasons(definition, proposed, registry, permissions)
    blocked.extend(
        BlockedReason(c.reason, c.message, definition.name) for c in proposed.concerns if c.blocks
    )
    if prerequisite is not None and not prerequisite.executable:
        blocked.append(
            BlockedReason(
                PREREQUISITE_BLOCKED,
                f"it follows {prerequisite.action_type}, which cannot run as asked",
                prerequisite.action_type,
            )
        )
    if bypass:
        blocked.append(_bypass_reason())

    why: list[str] = []
    candidates: list[tuple[DecisionLevel, str]] = [
        (definition.default_level, f"the default for {definition.name} is {_lv(definition)}"),
    ]
    override = settings.level_overrides.get(definition.name)
    if override is not None:
        candidates.append((override, f"this business sets {definition.name} to {override.label}"))
    if definition.requires_approval:
        candidates.append((L.APPROVAL_REQUIRED, "this action type always needs an approver"))
    candidates.append(
        (settings.confidence_level(confidence), f"the engine is {confidence}% confident")
    )
    candidates.append((settings.cost_level(cost), f"it costs {cost} token(s)"))
    if definition.destructive:
        candidates.append((settings.destructive_min_level, "it cannot be undone"))
    for p in altered_text(definition, proposed.parameters, message):
        candidates.append(
            (L.SUGGESTION, f"the {p.replace('_', ' ')} is not word for word from your message")
        )
    for c in proposed.concerns:
        if not c.blocks:
            candidates.append((L.SUGGESTION, c.message))
    if prerequisite is not None:
        candidates.append(
            (prerequisite.level, f"it follows {prerequisite.action_type} and waits for it")
        )
    for b in blocked:
        candidates.append((_BLOCK_FLOOR.get(b.reason, L.SUGGESTION), b.message))

    level = strictest(*(lv for lv, _ in candidates))
    if bypass:
        level = strictest(level, settings.bypass_level)
    deciding = [text for lv, text in candidates if lv == level]
    why.append(f"{level.label} because {'; '.join(deciding)}.")
    if blocked:
        why.append("Not executable: " + "; ".join(b.message for b in blocked) + ".")
    return ActionDecision(
        action_type=definition.name,
        parameters=params,
        level=level,
        executable=not blocked,
        blocked=blocked,
        token_cost=cost,
        confidence=confidence,
        reasoning=" ".join(why),
    )


def _lv(definition: ActionDefinition) -> str:
    return definition.default_level.label


def _bypass_reason() -> BlockedReason:
    return BlockedReason(
        POLICY_BYPASS_ATTEMPT,
        "the message asked to bypass approvals or permissions",
        "message",
    )


def _blocked_reasons(
    definition: ActionDefinition,
    proposed: ProposedAction,
    registry: Registry,
    permissions: PermissionSet,
) -> list[BlockedReason]:
    blocked = [
        BlockedReason(PERMISSION_MISSING, f"you lack the permission {p}", p)
        for p in permissions.missing(definition.required_permissions)
    ]
    # What the engine admits it could not find, plus what the parameters really lack:
    # an engine that forgets to declare a gap must not get it executed.
    missing: list[str] = []
    for p in [
        *proposed.missing_parameters,
        *registry.missing_parameters(definition.name, proposed.parameters),
    ]:
        if p not in missing:
            missing.append(p)
    blocked.extend(
        BlockedReason(MISSING_PARAMETER, f"the {p.replace('_', ' ')} is missing", p)
        for p in missing
    )
    for v in registry.validate(definition.name, proposed.parameters):
        if v.field in missing:
            continue
        blocked.append(BlockedReason(INVALID_PARAMETER, f"{v.field} {v.description}", v.field))
    return blocked


def _block_for_tokens(decision: ActionDecision, reserved: int, balance: int) -> ActionDecision:
    available = max(0, balance - reserved)
    reason = BlockedReason(
        INSUFFICIENT_TOKENS,
        f"it needs {decision.token_cost} token(s) and only {available} remain",
        "balance",
    )
    level = strictest(decision.level, _BLOCK_FLOOR[INSUFFICIENT_TOKENS])
    return ActionDecision(
        action_type=decision.action_type,
        parameters=decision.parameters,
        level=level,
        executable=False,
        blocked=[*decision.blocked, reason],
        token_cost=decision.token_cost,
        confidence=decision.confidence,
        reasoning=f"{decision.reasoning} Not executable: {reason.message}.",
    )


def check_invariants(
    outcome: PolicyOutcome,
    proposal: Proposal,
    *,
    registry: Registry,
    costs: CostTable,
    permissions: PermissionSet,
    balance: int,
    settings: PolicySettings | None = None,
    message: str | None = None,
) -> list[str]:
    """Every way ``outcome`` breaks the policy's promises, in words (empty when none).

    Recomputed independently of `decide`, from the proposal and the inputs, so a bug
    in `decide` shows up here rather than being repeated.
    """
    settings = settings or PolicySettings()
    broken: list[str] = []
    if [a.action_type for a in outcome.actions] != [a.action_type for a in proposal.actions]:
        broken.append("the outcome does not decide exactly the proposed actions, in order")
        return broken

    expected_level = max((a.level for a in outcome.actions), default=L.AUTOMATIC)
    if outcome.level != expected_level:
        broken.append(f"response level {outcome.level.label} is not the strictest action level")

    spent = 0
    for i, (dec, prop) in enumerate(zip(outcome.actions, proposal.actions, strict=True)):
        tag = f"action {i} ({dec.action_type})"
        automatic = dec.level == L.AUTOMATIC
        if not dec.executable and automatic:
            broken.append(f"{tag}: not executable but automatic")
        if dec.executable and dec.blocked:
            broken.append(f"{tag}: executable despite blocked reasons")
        if proposal.bypass_attempt and dec.level < L.APPROVAL_REQUIRED:
            broken.append(f"{tag}: bypass attempt but level {dec.level.label}")
        if dec.executable:
            spent += dec.token_cost
        if automatic and prop.concerns:
            broken.append(f"{tag}: automatic although the engine voiced a concern")
        if any(c.blocks for c in prop.concerns) and dec.executable:
            broken.append(f"{tag}: executable although the engine says it cannot be done")
        before = prop.depends_on
        if isinstance(before, int) and 0 <= before < i:
            first = outcome.actions[before]
            if dec.level < first.level:
                broken.append(f"{tag}: level below that of the action it depends on")
            if dec.executable and not first.executable:
                broken.append(f"{tag}: executable although the action it depends on is not")
        if prop.action_type not in registry:
            if dec.executable or automatic:
                broken.append(f"{tag}: unknown action type is executable or automatic")
            continue
        d = registry.get(prop.action_type)
        floor = max(d.default_level, settings.level_overrides.get(d.name, L.AUTOMATIC))
        if d.requires_approval:
            floor = L.APPROVAL_REQUIRED
        if d.destructive:
            floor = max(floor, settings.destructive_min_level)
        if dec.level < floor:
            broken.append(f"{tag}: level {dec.level.label} below its floor {floor.label}")
        if automatic and altered_text(d, prop.parameters, message):
            broken.append(f"{tag}: automatic with text that is not word for word the user's")
        if dec.level < settings.confidence_level(max(0, min(100, prop.confidence))):
            broken.append(f"{tag}: level below what confidence {prop.confidence} allows")
        cost = registry.token_cost(d.name, costs)
        if dec.token_cost != cost:
            broken.append(f"{tag}: token cost {dec.token_cost}, registry says {cost}")
        if dec.level < settings.cost_level(cost):
            broken.append(f"{tag}: level below what cost {cost} allows")
        lacking_perm = bool(permissions.missing(d.required_permissions))
        lacking_param = bool(prop.missing_parameters) or bool(
            registry.validate(d.name, prop.parameters)
        )
        if lacking_perm and (dec.executable or automatic):
            broken.append(f"{tag}: permission missing but executable or automatic")
        if lacking_param and (dec.executable or automatic):
            broken.append(f"{tag}: parameter missing or invalid but executable or automatic")
        if dec.executable and cost > max(0, balance):
            broken.append(f"{tag}: executable but its cost exceeds the balance")
    if spent > 0 and spent > balance:
        broken.append(f"executable actions need {spent} tokens, only {balance} available")
    return broken
