"""AgentService and the executor on in-memory twins of their ports (tests/fakes): the
Process path (decide -> hold -> record -> run -> settle), decisions by people, the
sweep and the crash rule, with no database and no network. Each write's events are
checked too."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from agentserver.domain.actions import ActionState
from agentserver.domain.agent import ProcessInput
from agentserver.domain.decision.levels import DecisionLevel
from agentserver.domain.errors import PermissionDenied
from agentserver.domain.identity import Caller
from tests.fakes.agent import StaticPolicy, world
from tests.unit.test_ledger_kernel import run


def caller(user: str) -> Caller:
    return Caller(
        key_id="k", key_tenant_id="t", scopes=frozenset({"agent"}), tenant_id="t", user_id=user
    )


def balance(w: object) -> tuple[int, int, int]:
    b = run(w.ledger.balance("t", ""))  # type: ignore[attr-defined]
    return b.used, b.reserved, b.available


async def test_an_automatic_email_runs_and_is_charged_once() -> None:
    w = world(10)
    result = await w.agent.process(
        caller("alice"), ProcessInput("Email ann@example.com that the order shipped")
    )
    (action,) = result.actions
    assert (action.action_type, action.state) == ("email.send", ActionState.SUCCEEDED)
    assert result.level is DecisionLevel.AUTOMATIC
    assert [a.id for a in w.runner.sent] == [action.id]
    assert balance(w) == (1, 0, 9)
    assert "done" in result.reply
    events = w.events()
    for kind in ("action.created", "action.succeeded", "message.stored", "ledger.entry"):
        assert kind in events, kind
    stored = await w.store.recent_messages("t", result.session_id, 10)
    assert stored[-1].content == result.reply, "the stored reply says it is done"


async def test_an_approval_waits_with_its_tokens_held_and_runs_once() -> None:
    w = world(
        10, policy=StaticPolicy(policy={"level_overrides": {"sms.send": "approval_required"}})
    )
    result = await w.agent.process(
        caller("alice"), ProcessInput("Text +15551234567 that we open at 9")
    )
    (action,) = result.actions
    assert action.state is ActionState.AWAITING_APPROVER
    assert balance(w) == (0, 1, 9)
    with pytest.raises(PermissionDenied):
        await w.agent.approve(caller("alice"), action.id, None, "r1")  # the requester
    done = await w.agent.approve(caller("bob"), action.id, None, "r2")
    assert done.state is ActionState.SUCCEEDED
    again = await w.agent.approve(caller("bob"), action.id, None, "r2")
    assert again.state is ActionState.SUCCEEDED, "a repeat returns the first result"
    assert len(w.runner.sent) == 1
    assert balance(w) == (1, 0, 9)
    assert "action.waiting" in w.events() and "action.approved" in w.events()


async def test_a_rejection_releases_and_is_told_in_the_conversation() -> None:
    w = world(10, policy=StaticPolicy(policy={"level_overrides": {"sms.send": "consultation"}}))
    result = await w.agent.process(
        caller("alice"), ProcessInput("Text +15551234567 that we open at 9")
    )
    (action,) = result.actions
    rejected = await w.agent.reject(caller("carol"), action.id, "not today", "r1")
    assert rejected.state is ActionState.REJECTED
    assert balance(w) == (0, 0, 10)
    notes = await w.store.recent_messages("t", result.session_id, 10)
    assert "not today" in notes[-1].content
    assert "action.rejected" in w.events()
    assert not w.runner.sent


async def test_what_the_balance_cannot_cover_is_decided_with_the_balance() -> None:
    w = world(1)
    result = await w.agent.process(
        caller("alice"),
        ProcessInput(
            "Email a@example.com that we open at 9 and text +15551234567 that we open at 9"
        ),
    )
    email, sms = result.actions
    assert email.state is ActionState.SUCCEEDED
    assert not sms.executable
    assert [b["reason"] for b in sms.blocked] == ["INSUFFICIENT_TOKENS"]
    assert balance(w) == (1, 0, 0)


async def test_a_refused_send_fails_and_releases_its_tokens() -> None:
    w = world(10)
    w.runner.fail.add("email.send")
    result = await w.agent.process(caller("alice"), ProcessInput("Email ann@example.com that hi"))
    (action,) = result.actions
    assert action.state is ActionState.FAILED
    assert "refused by the provider" in action.result["error"]
    assert balance(w) == (0, 0, 10)
    assert "action.failed" in w.events()


async def test_a_crash_mid_send_is_an_unknown_outcome_a_person_settles() -> None:
    w = world(10)
    result = await w.agent.process(caller("alice"), ProcessInput("Email ann@example.com that hi"))
    (action,) = result.actions
    # Re-create the crash: an action executing, its tokens held, nothing recorded.
    stuck = replace(action, id=f"{action.id}x", state=ActionState.EXECUTING, result={})
    stuck = replace(stuck, reservation_id=await w.executor.reserve(stuck))
    w.store.actions[stuck.id] = stuck
    w.clock.advance(timedelta(minutes=6))
    await w.agent.sweep()
    assert w.store.actions[stuck.id].state is ActionState.OUTCOME_UNKNOWN
    assert balance(w)[1] == 1, "held while nobody knows"
    settled = await w.agent.resolve_outcome(caller("carol"), stuck.id, True, "seen", "r1")
    assert settled.state is ActionState.SUCCEEDED
    assert balance(w) == (2, 0, 8)
    assert "action.outcome_unknown" in w.events()


async def test_the_sweep_expires_what_nobody_decided() -> None:
    w = world(10, policy=StaticPolicy(policy={"level_overrides": {"sms.send": "consultation"}}))
    result = await w.agent.process(caller("alice"), ProcessInput("Text +15551234567 that hi"))
    (action,) = result.actions
    w.clock.advance(timedelta(days=2))
    counts = await w.agent.sweep()
    assert counts["expired"] == 1
    assert w.store.actions[action.id].state is ActionState.EXPIRED
    assert balance(w) == (0, 0, 10)
    assert "action.expired" in w.events()
