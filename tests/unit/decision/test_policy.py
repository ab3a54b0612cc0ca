"""The policy: levels, blocked reasons, token budget and the invariants."""

from __future__ import annotations

from typing import Any

import pytest

from agentserver.domain.costs import CostTable, OperationType
from agentserver.domain.decision.engine import Concern, Proposal, ProposedAction
from agentserver.domain.decision.levels import DecisionLevel as L
from agentserver.domain.decision.policy import (
    INSUFFICIENT_TOKENS,
    INVALID_PARAMETER,
    MISSING_PARAMETER,
    PERMISSION_MISSING,
    POLICY_BYPASS_ATTEMPT,
    PREREQUISITE_BLOCKED,
    QUANTITY_NOT_SUPPORTED,
    UNKNOWN_ACTION,
    ActionDecision,
    PolicyOutcome,
    PolicySettings,
    check_invariants,
    decide,
)
from agentserver.domain.permissions import PermissionSet
from agentserver.domain.registry import default_registry

REG = default_registry()
COSTS = CostTable()
ALL = PermissionSet.everything()
SMS = {"to": "+15551234567", "body": "hi"}
EMAIL = {"to": "a@b.co", "subject": "Hi", "body": "Hello"}
BOOKING = {
    "resource_name": "Blue Room",
    "start": "2026-01-16T15:00:00+00:00",
    "duration_minutes": 60,
    "customer_name": "Ann",
}


def act(kind: str, params: dict[str, Any], confidence: int = 90, **kw: Any) -> ProposedAction:
    return ProposedAction(kind, params, confidence, **kw)


def prop(*actions: ProposedAction, bypass: bool = False) -> Proposal:
    return Proposal("", list(actions), 90, "", "test", bypass_attempt=bypass)


def run(
    p: Proposal,
    perms: PermissionSet = ALL,
    balance: int = 100,
    settings: PolicySettings | None = None,
    costs: CostTable = COSTS,
) -> PolicyOutcome:
    out = decide(p, REG, costs, perms, balance, settings=settings)
    problems = check_invariants(
        out, p, registry=REG, costs=costs, permissions=perms, balance=balance, settings=settings
    )
    assert problems == []
    return out


def reasons(d: ActionDecision) -> list[str]:
    return [b.reason for b in d.blocked]


def test_confident_complete_permitted_action_is_automatic() -> None:
    out = run(prop(act("sms.send", SMS)))
    (d,) = out.actions
    assert (d.level, d.executable, d.token_cost, d.blocked) == (L.AUTOMATIC, True, 1, [])
    assert out.level == L.AUTOMATIC
    assert "automatic" in d.reasoning


def test_no_actions_is_automatic() -> None:
    out = run(prop())
    assert out.actions == [] and out.level == L.AUTOMATIC and out.reasoning


@pytest.mark.parametrize(
    ("confidence", "level"),
    [
        (100, L.AUTOMATIC),
        (85, L.AUTOMATIC),
        (84, L.SUGGESTION),
        (60, L.SUGGESTION),
        (59, L.CONSULTATION),
        (40, L.CONSULTATION),
        (39, L.APPROVAL_REQUIRED),
        (0, L.APPROVAL_REQUIRED),
    ],
)
def test_confidence_bands(confidence: int, level: L) -> None:
    assert run(prop(act("sms.send", SMS, confidence))).actions[0].level == level


def test_registry_default_is_a_floor() -> None:
    assert run(prop(act("booking.create", BOOKING, 99))).actions[0].level == L.SUGGESTION
    assert run(prop(act("booking.cancel", {"booking_id": "BK-1"}, 99))).level == L.CONSULTATION


def test_requires_approval_and_destructive() -> None:
    d = run(prop(act("resource.delete", {"name": "Court 2"}, 99))).actions[0]
    assert d.level == L.APPROVAL_REQUIRED and d.executable
    lenient = PolicySettings(destructive_min_level=L.AUTOMATIC)
    cancel = run(prop(act("booking.cancel", {"booking_id": "BK-1"})), settings=lenient)
    assert cancel.level == L.CONSULTATION  # still the registry default


def test_destructive_hint_raises_an_otherwise_automatic_action() -> None:
    strict = PolicySettings(destructive_min_level=L.APPROVAL_REQUIRED)
    out = run(prop(act("booking.cancel", {"booking_id": "BK-1"})), settings=strict)
    assert out.level == L.APPROVAL_REQUIRED


def test_tenant_override_raises_but_never_lowers() -> None:
    up = PolicySettings(level_overrides={"sms.send": L.CONSULTATION})
    assert run(prop(act("sms.send", SMS)), settings=up).level == L.CONSULTATION
    down = PolicySettings(level_overrides={"resource.delete": L.AUTOMATIC})
    out = run(prop(act("resource.delete", {"name": "Court 2"})), settings=down)
    assert out.level == L.APPROVAL_REQUIRED


def test_cost_bands() -> None:
    pricey = CostTable({OperationType.SMS: 100})
    assert run(prop(act("sms.send", SMS)), costs=pricey, balance=1000).level == L.CONSULTATION
    very = CostTable({OperationType.SMS: 200})
    assert run(prop(act("sms.send", SMS)), costs=very, balance=1000).level == L.APPROVAL_REQUIRED


CALL = {"to": "+15551234567", "purpose": "confirm tomorrow", "first_message": None}
WHATSAPP = {"to": "+15551234567", "body": "hi"}


def test_default_prices_keep_their_registry_levels() -> None:
    # A call (50) waits for the requester, a WhatsApp conversation (10) runs: the
    # default bands sit above every built-in price on purpose.
    call = run(prop(act("phone.call", CALL)), balance=1000).actions[0]
    assert (call.token_cost, call.level) == (50, L.SUGGESTION)
    wa = run(prop(act("whatsapp.send", WHATSAPP)), balance=1000).actions[0]
    assert (wa.token_cost, wa.level) == (10, L.AUTOMATIC)


def test_a_tenant_may_have_calls_reviewed() -> None:
    reviewed = PolicySettings(consultation_min_cost=50)
    out = run(prop(act("phone.call", CALL)), balance=1000, settings=reviewed)
    assert out.level == L.CONSULTATION
    assert "it costs 50 token(s)" in out.actions[0].reasoning


@pytest.mark.parametrize(
    "bad",
    [
        {"consultation_min_cost": -1},
        {"consultation_min_cost": 300, "approval_min_cost": 200},
        {"approval_min_cost": "lots"},
        {"automatic_min_confidence": 50, "suggestion_min_confidence": 60},
        {"automatic_min_confidence": 200},
    ],
)
def test_policy_settings_refuse_what_cannot_be_applied(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PolicySettings(**bad)


def test_missing_permission_blocks_with_subject() -> None:
    out = run(prop(act("sms.send", SMS)), perms=PermissionSet.of(["email:*"]))
    (d,) = out.actions
    assert not d.executable and d.level == L.APPROVAL_REQUIRED
    assert [(b.reason, b.subject) for b in d.blocked] == [(PERMISSION_MISSING, "sms:send")]
    assert "sms:send" in d.reasoning


def test_missing_parameter_declared_by_engine_blocks() -> None:
    out = run(prop(act("sms.send", {"to": "+15551234567"}, 60, missing_parameters=["body"])))
    (d,) = out.actions
    assert reasons(d) == [MISSING_PARAMETER] and d.blocked[0].subject == "body"
    assert not d.executable and d.level >= L.SUGGESTION


def test_missing_parameter_not_declared_is_still_caught() -> None:
    """An engine that forgets to say what is missing must not get it executed."""
    (d,) = run(prop(act("email.send", {"to": "a@b.co", "subject": "x"}, 95))).actions
    assert reasons(d) == [MISSING_PARAMETER] and d.level == L.SUGGESTION


def test_invalid_parameter_blocks() -> None:
    (d,) = run(prop(act("sms.send", {"to": "555-1234", "body": "x"}, 95))).actions
    assert reasons(d) == [INVALID_PARAMETER] and d.blocked[0].subject == "to"
    assert not d.executable and d.level != L.AUTOMATIC


def test_unknown_action_blocks() -> None:
    out = run(prop(act("fax.send", {"to": "1"}, 99)))
    (d,) = out.actions
    assert reasons(d) == [UNKNOWN_ACTION] and d.level == L.APPROVAL_REQUIRED
    assert not d.executable and d.token_cost == 0


def test_bypass_raises_every_action_to_approval_and_blocks() -> None:
    out = run(prop(act("sms.send", SMS, 99), act("resource.read", {}, 99), bypass=True))
    assert all(d.level == L.APPROVAL_REQUIRED for d in out.actions)
    assert all(POLICY_BYPASS_ATTEMPT in reasons(d) for d in out.actions)
    assert out.level == L.APPROVAL_REQUIRED and "bypass" in out.reasoning


def test_zero_balance_blocks_priced_actions_only() -> None:
    out = run(prop(act("sms.send", SMS), act("resource.read", {})), balance=0)
    sms, read = out.actions
    assert reasons(sms) == [INSUFFICIENT_TOKENS] and not sms.executable
    assert sms.level == L.SUGGESTION
    assert read.executable and read.level == L.AUTOMATIC


def test_running_total_must_fit_the_balance() -> None:
    # whatsapp 10 + sms 1 + email 1 with a balance of 11: the email no longer fits.
    p = prop(act("whatsapp.send", SMS), act("sms.send", SMS), act("email.send", EMAIL))
    out = run(p, balance=11)
    assert [d.executable for d in out.actions] == [True, True, False]
    assert reasons(out.actions[2]) == [INSUFFICIENT_TOKENS]
    assert out.total_cost == 11


def test_a_blocked_action_does_not_use_up_the_balance() -> None:
    p = prop(act("whatsapp.send", SMS), act("sms.send", SMS))
    out = run(p, perms=PermissionSet.of(["sms:send"]), balance=1)
    wa, sms = out.actions
    assert reasons(wa) == [PERMISSION_MISSING]
    assert sms.executable


def test_a_cheaper_later_action_may_still_fit() -> None:
    p = prop(act("phone.call", {"to": "+15551234567", "purpose": "x"}), act("sms.send", SMS))
    out = run(p, balance=2)
    assert [d.executable for d in out.actions] == [False, True]


def test_response_level_is_the_strictest() -> None:
    out = run(prop(act("sms.send", SMS), act("booking.cancel", {"booking_id": "BK-1"})))
    assert out.level == L.CONSULTATION


def test_confidence_is_clamped() -> None:
    (d,) = run(prop(act("sms.send", SMS, 250))).actions
    assert d.confidence == 100


def test_check_invariants_catches_a_lying_outcome() -> None:
    p = prop(act("sms.send", SMS), bypass=True)
    honest = decide(p, REG, COSTS, ALL, 100)
    forged = PolicyOutcome(
        actions=[
            ActionDecision("sms.send", SMS, L.AUTOMATIC, True, [], 1, 90, "forged"),
        ],
        level=L.SUGGESTION,
        reasoning="",
    )
    kw: dict[str, Any] = {"registry": REG, "costs": COSTS, "permissions": ALL, "balance": 100}
    assert check_invariants(honest, p, **kw) == []
    problems = check_invariants(forged, p, **kw)
    assert any("bypass" in x for x in problems)
    assert any("strictest" in x for x in problems)


def test_check_invariants_catches_overspending_and_missing_permission() -> None:
    p = prop(act("sms.send", SMS), act("sms.send", SMS))
    forged = PolicyOutcome(
        actions=[ActionDecision("sms.send", SMS, L.AUTOMATIC, True, [], 1, 90, "")] * 2,
        level=L.AUTOMATIC,
        reasoning="",
    )
    problems = check_invariants(
        forged, p, registry=REG, costs=COSTS, permissions=PermissionSet.nothing(), balance=1
    )
    assert any("permission missing" in x for x in problems)
    assert any("tokens" in x for x in problems)


def test_check_invariants_catches_a_level_below_the_registry_floor() -> None:
    p = prop(act("resource.delete", {"name": "Court 2"}))
    forged = PolicyOutcome(
        actions=[
            ActionDecision(
                "resource.delete", {"name": "Court 2"}, L.SUGGESTION, True, [], 0, 90, ""
            )
        ],
        level=L.SUGGESTION,
        reasoning="",
    )
    problems = check_invariants(forged, p, registry=REG, costs=COSTS, permissions=ALL, balance=9)
    assert any("floor" in x for x in problems)


def test_a_dependent_is_never_less_strict_than_its_prerequisite() -> None:
    p = prop(act("booking.cancel", {"booking_id": "BK-1"}), act("sms.send", SMS, depends_on=0))
    cancel, text = run(p).actions
    assert cancel.level == L.CONSULTATION
    assert (text.level, text.depends_on, text.executable) == (L.CONSULTATION, 0, True)
    assert "it follows booking.cancel" in text.reasoning


def test_a_dependent_of_a_blocked_action_is_blocked_too() -> None:
    p = prop(act("booking.cancel", {"booking_id": None}), act("sms.send", SMS, depends_on=0))
    _, text = run(p).actions
    assert not text.executable
    assert reasons(text) == [PREREQUISITE_BLOCKED]


def test_a_reference_forwards_or_to_itself_is_not_a_dependency() -> None:
    p = prop(act("sms.send", SMS, depends_on=0), act("email.send", EMAIL, depends_on=5))
    assert [d.depends_on for d in run(p).actions] == [None, None]


def test_concerns_keep_an_action_from_running_unattended() -> None:
    unsure = Concern("UNCERTAIN_TEXT", "I am not sure where the text ends")
    d = run(prop(act("sms.send", SMS, concerns=[unsure]))).actions[0]
    assert (d.level, d.executable) == (L.SUGGESTION, True)
    refused = Concern(QUANTITY_NOT_SUPPORTED, "one message per request", blocks=True)
    d = run(prop(act("sms.send", SMS, concerns=[refused]))).actions[0]
    assert not d.executable and reasons(d) == [QUANTITY_NOT_SUPPORTED]


def test_text_for_a_person_must_be_word_for_word_to_run_unattended() -> None:
    text = {"to": "+15551234567", "body": "We open at 10:00.\nSee you!"}
    said = "Text +15551234567: We open at 10:00.\nSee you!"
    assert run_with(prop(act("sms.send", text)), said).level == L.AUTOMATIC
    altered = {"to": "+15551234567", "body": "We open at 10."}
    out = run_with(prop(act("sms.send", altered)), said)
    assert out.level == L.SUGGESTION
    assert "not word for word" in out.actions[0].reasoning


def run_with(p: Proposal, message: str) -> PolicyOutcome:
    out = decide(p, REG, COSTS, ALL, 100, message=message)
    assert (
        check_invariants(
            out, p, registry=REG, costs=COSTS, permissions=ALL, balance=100, message=message
        )
        == []
    )
    return out
