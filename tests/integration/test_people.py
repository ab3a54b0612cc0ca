"""People in the loop through gRPC: keys bound to a person, conversations that belong
to their user, the inbox (who may decide what), reservations and daily usage."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from agentserver.client import AgentServerClient, AgentServerError, StatusCode
from agentserver.domain.identity import TENANT_DEFAULT_SCOPES
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import common_pb2
from agentserver.v1 import conversation_service_pb2 as cpb
from agentserver.v1 import token_service_pb2 as tpb
from tests import procs
from tests.conftest import Harness, Tenant

S = apb


def rid() -> str:
    return uuid.uuid4().hex


async def person_key(h: Harness, t: Tenant, user: str) -> str:
    _, key = await h.app.admin.create_key(
        t.id, TENANT_DEFAULT_SCOPES, f"{user}'s console", h.clock.now(), user_id=user
    )
    return key


async def denied(call: object, reason: str) -> None:
    with pytest.raises(AgentServerError) as exc:
        await call  # type: ignore[misc]
    assert exc.value.code is StatusCode.PERMISSION_DENIED, exc.value
    assert exc.value.details.reason == reason


async def test_a_person_key_speaks_for_its_person_only(harness: Harness) -> None:
    t = await harness.tenant(20)
    key = await person_key(harness, t, "alice")
    # x-user-id absent: the key's person.
    async with harness.client(key, t.id, user_id="") as client:
        resp = await client.process(
            apb.ProcessRequest(message="Email jo@example.com that the order shipped")
        )
        session = (
            await client.get_session(cpb.GetSessionRequest(session_id=resp.session_id))
        ).session
        assert session.user_id == "alice"
        assert resp.actions[0].requested_by == "alice"
        # Equal: fine.
        alice = client.with_identity(user_id="alice")
        assert (await alice.list_user_sessions()).sessions[0].id == resp.session_id
        # Anyone else: refused, whatever the rpc, and nothing happens.
        mallory = client.with_identity(user_id="boss")
        await denied(
            mallory.process(apb.ProcessRequest(message="Email x@example.com")), "USER_MISMATCH"
        )
        await denied(mallory.list_user_sessions(), "USER_MISMATCH")
        balance = await client.get_balance(tpb.GetBalanceRequest(tenant_id=t.id))
        assert balance.balance.used_tokens == 1
    # A service key still vouches for whoever it names.
    async with t.client("boss") as service:
        assert (await service.list_user_sessions()).sessions == []


async def test_a_person_key_cannot_approve_as_someone_else(harness: Harness) -> None:
    t = await harness.tenant(20)
    await harness.app.admin.set_tenant_policy(
        t.id, {"level_overrides": {"email.send": "approval_required"}}
    )
    key = await person_key(harness, t, "requester")
    async with harness.client(key, t.id, user_id="") as client:
        (action,) = (
            await client.process(
                apb.ProcessRequest(message="Email jo@example.com that the order shipped")
            )
        ).actions
        assert action.state == S.ACTION_STATE_AWAITING_APPROVER
        request = apb.ApproveActionRequest(action_id=action.id, request_id=rid())
        await denied(client.approve_action(request), "REQUESTER_CANNOT_APPROVE")
        await denied(client.with_identity(user_id="boss").approve_action(request), "USER_MISMATCH")
        still = (await client.get_action(apb.GetActionRequest(action_id=action.id))).action
        assert still.state == S.ACTION_STATE_AWAITING_APPROVER
        assert not still.decision_right.allowed
        assert still.decision_right.reason == "REQUESTER_CANNOT_APPROVE"
        assert "approver" in still.decision_right.deciders


async def test_conversations_belong_to_their_user(harness: Harness) -> None:
    t = await harness.tenant(20)
    for perm in ("actions:coordinate", "actions:approve", "conversations:read_any"):
        await harness.app.admin.set_rule(t.id, "user", "bob", "deny", perm)
    async with t.client("alice") as alice:
        resp = await alice.process(
            apb.ProcessRequest(message="Email jo@example.com that the order shipped")
        )
        sid, (action,) = resp.session_id, resp.actions
        bob = alice.with_identity(user_id="bob")
        for call in (
            bob.get_session(cpb.GetSessionRequest(session_id=sid)),
            bob.list_messages(cpb.ListMessagesRequest(session_id=sid)),
            bob.list_user_sessions(cpb.ListUserSessionsRequest(user_id="alice")),
            bob.get_action(apb.GetActionRequest(action_id=action.id)),
            bob.process(
                apb.ProcessRequest(message="Email x@example.com that we are open", session_id=sid)
            ),
        ):
            await denied(call, "NOT_OWNER")
        await bob.process(apb.ProcessRequest(message="Email bo@example.com that we are open"))
        mine = (await bob.list_actions(apb.ListActionsRequest())).actions
        assert {a.requested_by for a in mine} == {"bob"}

        # A coordinator reads everyone's, but speaks only in their own conversations.
        carol = alice.with_identity(user_id="carol")
        assert (await carol.get_session(cpb.GetSessionRequest(session_id=sid))).session.id == sid
        assert (await carol.list_messages(cpb.ListMessagesRequest(session_id=sid))).messages
        theirs = (await carol.list_actions(apb.ListActionsRequest())).actions
        assert {a.requested_by for a in theirs} == {"alice", "bob"}
        await denied(
            carol.process(apb.ProcessRequest(message="Email x@example.com", session_id=sid)),
            "NOT_OWNER",
        )
        # A service naming nobody reads the tenant's.
        service = alice.with_identity(user_id="")
        assert (await service.get_session(cpb.GetSessionRequest(session_id=sid))).session.id == sid
        msgs = (await alice.list_messages(cpb.ListMessagesRequest(session_id=sid))).messages
        assert len(msgs) == 2  # nobody wrote into alice's conversation


async def test_the_inbox_lists_what_the_caller_may_decide(harness: Harness) -> None:
    t = await harness.tenant(50)
    await harness.app.admin.set_tenant_policy(
        t.id,
        {"level_overrides": {"email.send": "consultation", "sms.send": "approval_required"}},
    )
    for perm in ("actions:coordinate", "actions:approve", "conversations:read_any"):
        await harness.app.admin.set_rule(t.id, "user", "clerk", "deny", perm)
    async with t.client("requester") as requester:
        email = (
            await requester.process(
                apb.ProcessRequest(message="Email jo@example.com that the order shipped")
            )
        ).actions[0]
        sms = (
            await requester.process(
                apb.ProcessRequest(message="Text +15551234567 that the order shipped")
            )
        ).actions[0]
        assert email.state == S.ACTION_STATE_AWAITING_COORDINATOR
        assert sms.state == S.ACTION_STATE_AWAITING_APPROVER

        def inbox(client: AgentServerClient, **kw: object) -> object:
            return client.list_actions(apb.ListActionsRequest(decidable_only=True, **kw))  # type: ignore[arg-type]

        boss = requester.with_identity(user_id="boss")
        page = await inbox(boss)  # type: ignore[misc]
        assert [a.id for a in page.actions] == [sms.id, email.id]
        assert all(a.decision_right.allowed for a in page.actions)
        assert "coordinator" in page.actions[1].decision_right.deciders
        # The requester may coordinate (the tenant allows everything) but not approve
        # their own request.
        own = await inbox(requester)  # type: ignore[misc]
        assert [a.id for a in own.actions] == [email.id]
        clerk = requester.with_identity(user_id="clerk")
        assert not (await inbox(clerk)).actions  # type: ignore[misc]
        # The clerk may read their own actions and sees why they may not decide.
        listed = await clerk.list_actions(apb.ListActionsRequest())
        assert not listed.actions  # the clerk asked for nothing, and reads nobody else's
        # Level filter, and paging one by one.
        approvals = await inbox(boss, levels=[common_pb2.DECISION_LEVEL_APPROVAL_REQUIRED])  # type: ignore[misc]
        assert [a.id for a in approvals.actions] == [sms.id]
        first = await inbox(boss, page_size=1)  # type: ignore[misc]
        second = await inbox(boss, page_size=1, page_token=first.next_page_token)  # type: ignore[misc]
        assert [first.actions[0].id, second.actions[0].id] == [sms.id, email.id]
        assert second.next_page_token == ""
        # Once decided, it leaves the inbox and says so.
        await boss.reject_action(
            apb.RejectActionRequest(action_id=sms.id, reason="not now", request_id=rid())
        )
        after = await inbox(boss)  # type: ignore[misc]
        assert [a.id for a in after.actions] == [email.id]
        got = (await boss.get_action(apb.GetActionRequest(action_id=sms.id))).action
        assert got.decision_right.reason == "ACTION_NOT_WAITING"
        assert got.decision_right.deciders == ""


async def test_reservations_and_daily_usage(harness: Harness) -> None:
    t = await harness.tenant(50)
    await harness.app.admin.set_tenant_policy(
        t.id, {"level_overrides": {"sms.send": "consultation"}}
    )
    async with t.client("alice") as client:
        await client.process(
            apb.ProcessRequest(message="Email jo@example.com that the order shipped")
        )
        waiting = (
            await client.process(
                apb.ProcessRequest(message="Text +15551234567 that the order shipped")
            )
        ).actions[0]
        assert waiting.state == S.ACTION_STATE_AWAITING_COORDINATOR
        pending = await client.list_reservations(
            tpb.ListReservationsRequest(tenant_id=t.id, states=[tpb.RESERVATION_STATE_PENDING])
        )
        assert [r.amount for r in pending.reservations] == [waiting.token_cost]
        every = await client.list_reservations(tpb.ListReservationsRequest(tenant_id=t.id))
        assert {r.state for r in every.reservations} == {
            tpb.RESERVATION_STATE_PENDING,
            tpb.RESERVATION_STATE_CAPTURED,
        }
        await client.charge_tokens(
            tpb.ChargeTokensRequest(
                tenant_id=t.id,
                operation_type=common_pb2.OPERATION_TYPE_SMS,
                amount=3,
                request_id=rid(),
            )
        )
        summary = await client.summarize_usage(tpb.SummarizeUsageRequest(tenant_id=t.id, days=7))
        spent = {(d.day, d.operation_type): d.tokens for d in summary.days}
        today = harness.clock.now().date().isoformat()
        assert spent == {
            (today, common_pb2.OPERATION_TYPE_EMAIL): 1,
            (today, common_pb2.OPERATION_TYPE_SMS): 3,
        }
        with pytest.raises(AgentServerError) as exc:
            await client.summarize_usage(tpb.SummarizeUsageRequest(tenant_id=t.id, days=400))
        assert exc.value.code is StatusCode.INVALID_ARGUMENT
        assert exc.value.details.field_violations[0].field == "days"
        with pytest.raises(AgentServerError) as exc:
            await client.list_reservations(
                tpb.ListReservationsRequest(tenant_id=t.id, page_token="made-up")
            )
        assert exc.value.code is StatusCode.INVALID_ARGUMENT


def test_cli_creates_a_key_bound_to_a_person(tmp_path: Path) -> None:
    env = procs.server_env(database_url=f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(procs.BIN / "agentserver"), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert cli("tenant", "create", "acme").returncode == 0
    made = cli("key", "create", "--tenant", "acme", "--user", "alice")
    assert made.returncode == 0, made.stderr
    assert "speaks for: alice only" in made.stdout
    listed = [
        json.loads(line) for line in cli("key", "list", "--tenant", "acme").stdout.splitlines()
    ]
    assert [k["user_id"] for k in listed] == ["alice"]
    refused = cli("key", "create", "--platform", "--user", "alice")
    assert refused.returncode == 2
    assert "--user" in refused.stderr
