"""Personal data on request, through AdminService on SQLite and PostgreSQL: the export
is everything stored about one user and nothing about anyone else, streamed in pieces
when large; after an erasure, neither the raw SQLite file nor a pg_dump of the
PostgreSQL database contains the erased words or the user's id, while the ledger
still balances; per-tenant retention removes old conversations."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from sqlalchemy import text

from agentserver.client import AgentServerClient, AgentServerError, StatusCode
from agentserver.v1 import admin_service_pb2 as pb
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import common_pb2
from agentserver.v1 import token_service_pb2 as tpb
from tests.conftest import Harness, Tenant, ledger_invariant

# Words only the user of one test ever wrote, to look for after the erasure.
_ONCE = uuid.uuid4().hex[:6].upper()
INVOICE = f"INV-{_ONCE}-QZ"
CODE = f"WX-{_ONCE}-KV"
ADDRESS = f"zed.{_ONCE.lower()}@example.org"


async def admin_of(h: Harness, t: Tenant) -> AgentServerClient:
    _, key = await h.app.admin.create_key(t.id, ["admin"], "dpo", h.clock.now())
    return h.client(key, t.id, user_id="dpo")


async def export(admin: AgentServerClient, user: str) -> tuple[dict[str, Any], int]:
    pieces = [p async for p in admin.export_user_data(pb.ExportUserDataRequest(user_id=user))]
    return json.loads(b"".join(pieces)), len(pieces)


async def a_users_life(
    h: Harness, t: Tenant, user: str, words: tuple[str, str, str] = (INVOICE, CODE, ADDRESS)
) -> None:
    """A user who emailed, texted (waiting for an approver: tokens held), was charged
    for a report with metadata naming the invoice, and was given a permission of their
    own; and a coordinator rejecting something they asked."""
    invoice, code, address = words
    await h.app.admin.set_tenant_policy(
        t.id, {"level_overrides": {"sms.send": "approval_required"}}
    )
    await h.app.admin.set_rule(t.id, "user", user, "allow", "reports:read")
    async with t.client(user) as client:
        await client.process(
            apb.ProcessRequest(message=f"Email {address} that invoice {invoice} is overdue")
        )
        await client.process(
            apb.ProcessRequest(message=f"Text +15559876543 that the door code is {code}")
        )
        third = await client.process(
            apb.ProcessRequest(message="Text +15550001234 that the shop opens at 10")
        )
        note = struct_pb2.Struct()
        note.update({"invoice": invoice})
        await client.charge_tokens(
            tpb.ChargeTokensRequest(
                operation_type=common_pb2.OPERATION_TYPE_INTERNAL_API_LLM,
                amount=1,
                request_id=uuid.uuid4().hex,
                metadata=note,
            )
        )
    async with t.client("coco") as coordinator:
        await coordinator.reject_action(
            apb.RejectActionRequest(
                action_id=third.actions[0].id, reason=f"not now, {user}", request_id="r-1"
            )
        )


async def test_export_has_everything_about_the_user_and_nothing_else(harness: Harness) -> None:
    t = await harness.tenant(100)
    user = f"erin-{uuid.uuid4().hex[:6]}"
    await a_users_life(harness, t, user)
    async with t.client("someone-else") as other:
        await other.process(apb.ProcessRequest(message="Email b@example.com that we close at 6"))
    async with await admin_of(harness, t) as admin:
        doc, _ = await export(admin, user)
        assert (doc["tenant_id"], doc["user_id"]) == (t.id, user)
        assert len(doc["sessions"]) == 3
        said = [m["content"] for s in doc["sessions"] for m in s["messages"]]
        assert any(INVOICE in m for m in said) and any(CODE in m for m in said)
        assert not any("close at 6" in m for m in said)
        types = sorted(a["action_type"] for a in doc["actions"])
        assert types == ["email.send", "sms.send", "sms.send"]
        email = next(a for a in doc["actions"] if a["action_type"] == "email.send")
        assert email["parameters"]["to"] == ADDRESS and email["state"] == "succeeded"
        # The email's hold and capture, the text's hold (waiting), the rejected one's
        # hold and release, and the report's charge.
        kinds = sorted(e["kind"] for e in doc["usage_entries"])
        assert kinds == ["capture", "charge", "release", "reserve", "reserve", "reserve"]
        assert doc["permission_rules"] == [{"effect": "allow", "permission": "reports:read"}]
        events = doc["audit_events"]
        assert sum(e["type"] == "Process" and e["user_id"] == user for e in events) == 3
        # A large export comes in several pieces.
        async with t.client(user) as client:
            for i in range(12):
                await client.process(
                    apb.ProcessRequest(message=f"Note {i}: " + "lorem ipsum " * 600)
                )
        big, pieces = await export(admin, user)
        assert pieces > 1 and len(big["sessions"]) == 15
        with pytest.raises(AgentServerError) as err:
            await export(admin, "")
        assert err.value.code is StatusCode.INVALID_ARGUMENT
    await harness.app.audit.flush()
    async with await admin_of(harness, t) as admin:
        exports = (
            await admin.list_audit_events(pb.ListAuditEventsRequest(type="user_data.export"))
        ).events
        assert exports and exports[0].object == f"user:{user}"


async def test_erasure_leaves_no_trace_in_the_database_files(
    harness: Harness, tmp_path: Path
) -> None:
    t = await harness.tenant(100)
    user = f"erin-{uuid.uuid4().hex[:6]}"
    once = uuid.uuid4().hex[:6].upper()
    words = (f"INV-{once}-QZ", f"WX-{once}-KV", f"zed.{once.lower()}@example.org")
    await a_users_life(harness, t, user, words)
    async with await admin_of(harness, t) as admin:
        await export(admin, user)  # audited, naming the user: erased too
        with pytest.raises(AgentServerError) as err:
            await admin.erase_user_data(pb.EraseUserDataRequest(user_id=user))
        assert err.value.code is StatusCode.INVALID_ARGUMENT  # no reason given
        done = await admin.erase_user_data(
            pb.EraseUserDataRequest(user_id=user, reason="the data subject asked (ticket 12)")
        )
        assert done.pseudonym.startswith("erased-") and user not in done.pseudonym
        assert (done.messages_deleted, done.sessions_redacted) == (7, 3)
        assert (done.actions_withdrawn, done.permission_rules_removed) == (1, 1)
        assert done.actions_redacted == 3 and done.audit_events_redacted >= 4
        assert done.outbox_events_redacted > 0  # what other systems are told, too
        # the email's hold and capture, both texts' holds and releases (the waiting one
        # withdrawn now), the charge: they stay, naming the pseudonym
        assert done.usage_entries_redacted == 7
        again = await admin.erase_user_data(
            pb.EraseUserDataRequest(user_id=user, reason="once more")
        )
        assert again.messages_deleted == 0 and again.actions_redacted == 0
        (_again, erasure) = (  # newest first
            await admin.list_audit_events(pb.ListAuditEventsRequest(type="user_data.erase"))
        ).events
        assert erasure.object == f"user:{done.pseudonym}"
        assert erasure.reason == "the data subject asked (ticket 12)"
        assert erasure.after["messages_deleted"] == 7
    await ledger_invariant(harness, t.id)
    async with harness.app.engine.connect() as conn:
        # Amounts and times stay: the holds of the withdrawn text were released.
        reserved = (
            await conn.execute(
                text("SELECT reserved_tokens FROM business_tokens WHERE tenant_id = :t"),
                {"t": t.id},
            )
        ).scalar_one()
        assert reserved == 0
        entries = (
            await conn.execute(
                text("SELECT count(*) FROM token_usage_logs WHERE tenant_id = :t"), {"t": t.id}
            )
        ).scalar_one()
        assert entries >= 6
    await harness.app.audit.flush()
    raw = await stored_bytes(harness, tmp_path)
    for erased in (*words, user):
        assert erased.encode() not in raw, f"{erased!r} is still in the {harness.backend} data"


async def stored_bytes(h: Harness, tmp_path: Path) -> bytes:
    """Everything the database holds: the SQLite file (and its log), or a pg_dump."""
    if h.backend == "sqlite":
        path = Path(h.url.split(":///", 1)[1])
        return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
    database = h.url.rsplit("/", 1)[1]
    dump = tmp_path / "dump.sql"
    done = await asyncio.to_thread(
        subprocess.run,
        ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-f", str(dump), database],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return dump.read_bytes()


async def test_running_actions_hold_an_erasure_back(harness: Harness) -> None:
    t = await harness.tenant(100)
    async with t.client("rudi") as client:
        processed = await client.process(
            apb.ProcessRequest(message="Email a@example.com that we open at 9")
        )
    (action,) = processed.actions
    async with harness.app.engine.begin() as conn:  # as if a send were under way
        await conn.execute(
            text("UPDATE actions SET state = 'executing' WHERE id = :a"), {"a": action.id}
        )
    async with await admin_of(harness, t) as admin:
        with pytest.raises(AgentServerError) as err:
            await admin.erase_user_data(pb.EraseUserDataRequest(user_id="rudi", reason="asked"))
    assert err.value.code is StatusCode.FAILED_PRECONDITION
    assert err.value.details.reason == "USER_HAS_RUNNING_ACTIONS"
    assert action.id in err.value.message
    async with harness.app.engine.begin() as conn:
        await conn.execute(
            text("UPDATE actions SET state = 'succeeded' WHERE id = :a"), {"a": action.id}
        )


async def test_retention_removes_old_conversations(harness: Harness) -> None:
    t = await harness.tenant(100)
    async with await admin_of(harness, t) as admin:
        await admin.update_tenant(
            pb.UpdateTenantRequest(
                conversation_retention_days=30, update_mask=["conversation_retention_days"]
            )
        )
    async with t.client("old-timer") as client:
        old = await client.process(
            apb.ProcessRequest(message=f"Email {ADDRESS} that invoice {INVOICE} is paid")
        )
        harness.clock.advance(timedelta(days=31))
        recent = await client.process(
            apb.ProcessRequest(message="Email a@example.com that we open at 9")
        )
        try:
            assert await harness.app.apply_retention() > 0
            gone = await client.list_messages(apb_messages(old.session_id))
            kept = await client.list_messages(apb_messages(recent.session_id))
            assert gone.messages == [] and len(kept.messages) == 2
            got = await client.get_action(apb.GetActionRequest(action_id=old.actions[0].id))
            email = got.action
            assert INVOICE not in str(email.parameters) and ADDRESS not in str(email.parameters)
            assert email.state == apb.ACTION_STATE_SUCCEEDED and email.token_cost == 1
            async with harness.app.engine.connect() as conn:
                outbox = (
                    await conn.execute(
                        text("SELECT payload FROM outbox WHERE tenant_id = :t"), {"t": t.id}
                    )
                ).all()
            assert outbox and not any(INVOICE in str(r.payload) for r in outbox)
            assert await harness.app.apply_retention() == 0  # nothing twice
        finally:
            harness.clock.advance(timedelta(days=-31))


def apb_messages(session_id: str) -> Any:
    from agentserver.v1 import conversation_service_pb2

    return conversation_service_pb2.ListMessagesRequest(session_id=session_id)


async def test_another_tenants_person_of_the_same_name_is_left_alone(harness: Harness) -> None:
    a, b = await harness.tenant(10), await harness.tenant(10)
    for t in (a, b):
        async with t.client("pat") as pat:
            await pat.process(apb.ProcessRequest(message="Email x@example.com that we open at 9"))
    async with await admin_of(harness, a) as admin_a:
        with pytest.raises(AgentServerError) as err:
            await admin_a.erase_user_data(
                pb.EraseUserDataRequest(tenant_id=b.id, user_id="pat", reason="not yours")
            )
        assert err.value.code is StatusCode.PERMISSION_DENIED
        with pytest.raises(AgentServerError) as err:
            request = pb.ExportUserDataRequest(tenant_id=b.id, user_id="pat")
            [p async for p in admin_a.export_user_data(request)]
        assert err.value.code is StatusCode.PERMISSION_DENIED
        done = await admin_a.erase_user_data(pb.EraseUserDataRequest(user_id="pat", reason="asked"))
        assert done.messages_deleted == 2
    async with await admin_of(harness, b) as admin_b:
        doc, _ = await export(admin_b, "pat")
        assert len(doc["sessions"]) == 1 and len(doc["sessions"][0]["messages"]) == 2
        assert doc["actions"][0]["parameters"]["to"] == "x@example.com"
