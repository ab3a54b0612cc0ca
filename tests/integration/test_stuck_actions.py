"""No action is left stuck: an approval whose execution was cut short runs on its retry
or by the sweep (exactly once); the execution lease is a setting; a send that may or
may not have happened is `outcome_unknown` until a person settles it, with its tokens
held meanwhile; a caller that goes away does not stop a send; a shutdown records what
it knows."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from agentserver.adapters.secrets import generate_key
from agentserver.app import build_app
from agentserver.client import AgentServerClient, AgentServerError, StatusCode
from agentserver.config import Settings
from agentserver.domain.actions import ActionFilter, ActionState
from agentserver.domain.errors import Unavailable
from agentserver.domain.paging import PageRequest
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import conversation_service_pb2 as cpb
from agentserver.v1 import token_service_pb2 as tpb
from tests.conftest import Harness, Tenant, ledger_invariant, start_harness
from tests.integration.fakes import FakeTwilio
from tests.integration.test_more_lifecycle import _stuck

TEXT = "Text +15551234567 that the doctor is running late"


def rid() -> str:
    return uuid.uuid4().hex


async def balance(client: AgentServerClient, tenant_id: str) -> tpb.Balance:
    return (await client.get_balance(tpb.GetBalanceRequest(tenant_id=tenant_id))).balance


async def sms_tenant(
    h: Harness, level: str = "approval_required", tokens: int = 5, delay: float = 0.0
) -> tuple[Tenant, FakeTwilio]:
    t = await h.tenant(tokens)
    if level:
        await h.app.admin.set_tenant_policy(t.id, {"level_overrides": {"sms.send": level}})
    twilio = await FakeTwilio(delay=delay).start()
    await h.app.set_channel(t.id, "twilio", *twilio.config())
    return t, twilio


async def _cut_short_approval(
    h: Harness, monkeypatch: pytest.MonkeyPatch, client: AgentServerClient, action_id: str
) -> apb.ApproveActionRequest:
    """Approve `action_id` while the database goes away right after the approval is
    stored, before its execution starts."""

    async def database_gone(_action: object) -> object:
        raise Unavailable("the database went away")

    monkeypatch.setattr(h.app.executor, "execute", database_gone)
    request = apb.ApproveActionRequest(action_id=action_id, request_id=rid())
    with pytest.raises(AgentServerError) as err:
        await client.approve_action(request)
    assert err.value.code is StatusCode.UNAVAILABLE
    monkeypatch.undo()
    stuck = (await client.get_action(apb.GetActionRequest(action_id=action_id))).action
    assert stuck.state == apb.ACTION_STATE_APPROVED
    return request


async def test_an_approval_cut_short_runs_on_its_retry_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    t, twilio = await sms_tenant(harness)
    try:
        async with t.client("requester") as client:
            (action,) = (await client.process(apb.ProcessRequest(message=TEXT))).actions
            approver = client.with_identity(user_id="approver-1")
            request = await _cut_short_approval(harness, monkeypatch, approver, action.id)
            other = client.with_identity(user_id="approver-2")
            with pytest.raises(AgentServerError) as err:
                await other.approve_action(
                    apb.ApproveActionRequest(action_id=action.id, request_id=rid())
                )
            assert err.value.code is StatusCode.FAILED_PRECONDITION
            done = (await approver.approve_action(request)).action
            assert done.state == apb.ACTION_STATE_SUCCEEDED
            again = (await approver.approve_action(request)).action
            assert again.state == apb.ACTION_STATE_SUCCEEDED
            assert len(twilio.requests) == 1
            assert (await balance(client, t.id)).available_tokens == 4
    finally:
        await twilio.stop()
    await ledger_invariant(harness, t.id)


async def test_the_sweep_runs_an_approval_cut_short_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    t, twilio = await sms_tenant(harness)
    try:
        async with t.client("requester") as client:
            (action,) = (await client.process(apb.ProcessRequest(message=TEXT))).actions
            approver = client.with_identity(user_id="approver-1")
            request = await _cut_short_approval(harness, monkeypatch, approver, action.id)
            harness.clock.advance(timedelta(minutes=4))
            await harness.app.agent.sweep()  # within the lease: left alone
            state = (await client.get_action(apb.GetActionRequest(action_id=action.id))).action
            assert state.state == apb.ACTION_STATE_APPROVED
            harness.clock.advance(timedelta(minutes=2))
            # Two replicas' sweeps and the approver's retry, all at once: one send.
            results = await asyncio.gather(
                harness.app.agent.sweep(),
                harness.app.agent.sweep(),
                approver.approve_action(request),
            )
            assert results[2].action.state in (
                apb.ACTION_STATE_SUCCEEDED,
                apb.ACTION_STATE_EXECUTING,
            )
            done = (await client.get_action(apb.GetActionRequest(action_id=action.id))).action
            assert done.state == apb.ACTION_STATE_SUCCEEDED
            assert len(twilio.requests) == 1
            assert (await balance(client, t.id)).available_tokens == 4
    finally:
        await twilio.stop()
    await ledger_invariant(harness, t.id)


async def test_the_execution_lease_is_a_setting(tmp_path: Path) -> None:
    h = await start_harness(
        f"sqlite+aiosqlite:///{tmp_path / 'lease.db'}", "sqlite", execution_lease_seconds=30.0
    )
    try:
        t = await h.tenant(10)
        stuck = await _stuck(h, t, provider_id="")
        h.clock.advance(timedelta(seconds=20))
        await h.app.agent.sweep()
        assert (await h.app.agent_store.get(t.id, stuck)).state is ActionState.EXECUTING
        h.clock.advance(timedelta(seconds=15))
        await h.app.agent.sweep()
        assert (await h.app.agent_store.get(t.id, stuck)).state is ActionState.OUTCOME_UNKNOWN
    finally:
        await h.server.stop(0)
        await h.app.close()


async def test_an_unknown_outcome_waits_for_a_person_who_settles_it(harness: Harness) -> None:
    t = await harness.tenant(10, rules=("email:send", "sms:send"))
    await harness.app.admin.set_rule(t.id, "user", "carol", "allow", "actions:coordinate")
    sent = await _stuck(harness, t, provider_id="")
    lost = await _stuck(harness, t, provider_id="")
    harness.clock.advance(timedelta(minutes=6))
    await harness.app.agent.sweep()
    async with t.client("quinn") as requester:
        before = await balance(requester, t.id)
        assert before.reserved_tokens == 2, "held while nobody knows"
        inbox = await requester.list_actions(
            apb.ListActionsRequest(states=[apb.ACTION_STATE_OUTCOME_UNKNOWN])
        )
        assert sorted(a.id for a in inbox.actions) == sorted([sent, lost])
        assert all("not sent again" in a.result.error for a in inbox.actions)
        # held long enough for a person to find out (a week), not the action's day
        record = await harness.app.agent_store.get(t.id, sent)
        assert record.reservation_id
        reservation = await harness.app.ledger.store.get_reservation(t.id, record.reservation_id)
        assert reservation.expires_at >= harness.clock.now() + timedelta(days=6)

        happened = apb.ResolveActionOutcomeRequest(
            action_id=sent,
            outcome=apb.ACTION_OUTCOME_HAPPENED,
            note="the customer got it",
            request_id=rid(),
        )
        with pytest.raises(AgentServerError) as err:
            await requester.resolve_action_outcome(happened)  # not a coordinator
        assert err.value.code is StatusCode.PERMISSION_DENIED
        with pytest.raises(AgentServerError) as err:
            await requester.with_identity(user_id="carol").resolve_action_outcome(
                apb.ResolveActionOutcomeRequest(action_id=sent, request_id=rid())
            )
        assert err.value.code is StatusCode.INVALID_ARGUMENT
        assert [v.field for v in err.value.details.field_violations] == ["outcome"]

        carol = requester.with_identity(user_id="carol")
        done = (await carol.resolve_action_outcome(happened)).action
        assert done.state == apb.ACTION_STATE_SUCCEEDED
        assert (await carol.resolve_action_outcome(happened)).action.state == (
            apb.ACTION_STATE_SUCCEEDED
        ), "a repeat returns the first result"
        with pytest.raises(AgentServerError) as err:
            await carol.resolve_action_outcome(
                apb.ResolveActionOutcomeRequest(
                    action_id=sent, outcome=apb.ACTION_OUTCOME_DID_NOT_HAPPEN, request_id=rid()
                )
            )
        assert err.value.code is StatusCode.FAILED_PRECONDITION
        assert err.value.details.reason == "OUTCOME_NOT_UNKNOWN"

        failed = (
            await carol.resolve_action_outcome(
                apb.ResolveActionOutcomeRequest(
                    action_id=lost,
                    outcome=apb.ACTION_OUTCOME_DID_NOT_HAPPEN,
                    note="not in Twilio's log",
                    request_id=rid(),
                )
            )
        ).action
        assert failed.state == apb.ACTION_STATE_FAILED
        assert "not in Twilio's log" in failed.result.error
        after = await balance(requester, t.id)
        assert after.reserved_tokens == 0
        assert after.used_tokens == before.used_tokens + 1  # one captured, one released
        messages = await requester.list_messages(
            cpb.ListMessagesRequest(session_id=done.session_id)
        )
        notes = [m.content for m in messages.messages if m.role == cpb.MESSAGE_ROLE_SYSTEM]
        assert any("carol confirmed it happened: the customer got it" in n for n in notes)
    await ledger_invariant(harness, t.id)


async def test_a_confirmed_send_whose_hold_ended_is_held_again(harness: Harness) -> None:
    t = await harness.tenant(10)
    stuck = await _stuck(harness, t, provider_id="")
    harness.clock.advance(timedelta(minutes=6))
    await harness.app.agent.sweep()
    harness.clock.advance(timedelta(days=8))
    await harness.app.ledger.sweep_expired()  # nobody answered for a week
    async with t.client("quinn") as client:
        assert (await balance(client, t.id)).reserved_tokens == 0
        done = (
            await client.resolve_action_outcome(
                apb.ResolveActionOutcomeRequest(
                    action_id=stuck, outcome=apb.ACTION_OUTCOME_HAPPENED, request_id=rid()
                )
            )
        ).action
        assert done.state == apb.ACTION_STATE_SUCCEEDED
        after = await balance(client, t.id)
        assert after.reserved_tokens == 0
        assert after.available_tokens == 10 - 1 - 1  # the processed email and this one
    await ledger_invariant(harness, t.id)


async def test_a_caller_that_goes_away_does_not_stop_a_send(harness: Harness) -> None:
    t, twilio = await sms_tenant(harness, level="", delay=1.0)
    try:
        async with t.client("alice") as client:
            with pytest.raises(AgentServerError) as err:
                await client.process(apb.ProcessRequest(message=TEXT), timeout=0.3)
            assert err.value.code is StatusCode.DEADLINE_EXCEEDED
            for _ in range(50):
                await asyncio.sleep(0.1)
                listed = await client.list_actions(apb.ListActionsRequest())
                if listed.actions and listed.actions[0].state == apb.ACTION_STATE_SUCCEEDED:
                    break
            (action,) = listed.actions
            assert action.state == apb.ACTION_STATE_SUCCEEDED
            assert action.result.provider_id.startswith("SM")
            assert len(twilio.requests) == 1
            assert (await balance(client, t.id)).available_tokens == 4
    finally:
        await twilio.stop()
    await ledger_invariant(harness, t.id)


async def test_a_shutdown_during_the_provider_call_records_an_unknown_outcome(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shutdown.db'}"
    keys = generate_key()
    h = await start_harness(url, "sqlite", grace_seconds=0.3, secret_keys=keys)
    twilio = await FakeTwilio(delay=5.0).start()
    stopped = False
    try:
        t = await h.tenant(5)
        await h.app.set_channel(t.id, "twilio", *twilio.config())
        async with t.client("alice") as client:
            call = asyncio.create_task(client.process(apb.ProcessRequest(message=TEXT)))
            for _ in range(100):
                if twilio.requests:
                    break
                await asyncio.sleep(0.05)
            assert twilio.requests, "the provider was called"
            await h.server.stop(0.1)
            await h.app.close()
            stopped = True
            with pytest.raises(AgentServerError):
                await call
    finally:
        await twilio.stop()
        if not stopped:
            await h.server.stop(0)
            await h.app.close()
    app = await build_app(Settings(database_url=url, access_log=False, secret_keys=keys))
    try:
        actions, _ = await app.agent_store.find(t.id, ActionFilter(), PageRequest(10, None))
        (action,) = actions
        assert action.state is ActionState.OUTCOME_UNKNOWN
        assert "stopped while the provider was being called" in action.result["error"]
        held = await app.ledger.balance(t.id)
        assert held.reserved == 1, "its tokens stay held for a person's answer"
        await ledger_invariant(app.engine, t.id)
    finally:
        await app.close()


async def test_a_shutdown_after_the_provider_answered_keeps_its_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped while settling: the provider's answer is stored, and the sweep settles
    the action as sent (captured), never as unknown and never sent again."""
    h = await start_harness(f"sqlite+aiosqlite:///{tmp_path / 'settle.db'}", "sqlite")
    try:
        t = await h.tenant(5)
        settling = asyncio.Event()

        async def settle_forever(*_args: object) -> tuple[object, bool]:
            settling.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        monkeypatch.setattr(h.app.executor, "_settle", settle_forever)
        async with t.client("alice") as client:
            call = asyncio.create_task(client.process(apb.ProcessRequest(message=TEXT)))
            await asyncio.wait_for(settling.wait(), 10)
            await h.app.executor.drain(0.05)  # the shutdown's drain, cut short
            with pytest.raises(AgentServerError) as err:
                await call
            assert err.value.code is StatusCode.UNAVAILABLE, "answered, not left hanging"
            monkeypatch.undo()
            (action,) = (await client.list_actions(apb.ListActionsRequest())).actions
            assert action.state == apb.ACTION_STATE_EXECUTING
            assert action.result.provider_id, "the provider's answer was kept"
            h.clock.advance(timedelta(minutes=6))
            await h.app.agent.sweep()
            done = (await client.get_action(apb.GetActionRequest(action_id=action.id))).action
            assert done.state == apb.ACTION_STATE_SUCCEEDED
            assert (await balance(client, t.id)).used_tokens == 1
        await ledger_invariant(h, t.id)
    finally:
        await h.server.stop(0)
        await h.app.close()
