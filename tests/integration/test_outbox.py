"""The outbox: every change another system may care about is an event written in the
same transaction as the change. A change that rolls back leaves no event; one that
commits always has its events, numbered per tenant without gaps, in commit order."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text

from agentserver.adapters.db.outbox import write_outbox
from agentserver.client import AgentServerError
from agentserver.domain.events import DomainEvent
from agentserver.v1 import common_pb2
from agentserver.v1 import token_service_pb2 as pb
from tests.conftest import Harness

SMS = common_pb2.OPERATION_TYPE_SMS


def rid() -> str:
    return uuid.uuid4().hex


async def outbox(h: Harness, tenant_id: str) -> list[dict[str, object]]:
    return await h.app.admin.outbox(tenant_id)


async def test_a_committed_change_always_has_its_events(harness: Harness) -> None:
    t = await harness.tenant(60)
    before = len(await outbox(harness, t.id))
    async with t.client() as client:
        await client.charge_tokens(
            pb.ChargeTokensRequest(tenant_id=t.id, operation_type=SMS, amount=15, request_id="c1")
        )
    events = (await outbox(harness, t.id))[before:]
    assert [e["type"] for e in events] == ["ledger.entry", "ledger.low_balance"]
    entry = events[0]["payload"]
    assert (entry["kind"], entry["tokens"], entry["request_id"]) == ("charge", 15, "c1")  # type: ignore[index]
    assert events[1]["payload"]["available"] == 45  # type: ignore[index]


async def test_a_change_that_does_not_happen_leaves_no_event(harness: Harness) -> None:
    t = await harness.tenant(5)
    before = await outbox(harness, t.id)
    async with t.client() as client:
        with pytest.raises(AgentServerError):  # does not fit: refused, nothing written
            await client.charge_tokens(
                pb.ChargeTokensRequest(
                    tenant_id=t.id, operation_type=SMS, amount=6, request_id=rid()
                )
            )
        first = pb.ChargeTokensRequest(tenant_id=t.id, operation_type=SMS, amount=1, request_id="k")
        await client.charge_tokens(first)
        await client.charge_tokens(first)  # a replay changes nothing: no second event
        with pytest.raises(AgentServerError):  # the key with other content: refused
            await client.charge_tokens(
                pb.ChargeTokensRequest(tenant_id=t.id, operation_type=SMS, amount=2, request_id="k")
            )
    after = await outbox(harness, t.id)
    assert [e["type"] for e in after[len(before) :]] == ["ledger.entry"]


async def test_a_rolled_back_transaction_leaves_no_event(harness: Harness) -> None:
    t = await harness.tenant()
    before = await outbox(harness, t.id)
    event = DomainEvent("test.event", "thing", "x", {"n": 1})
    with pytest.raises(RuntimeError):
        async with harness.app.engine.begin() as conn:
            await write_outbox(conn, t.id, [event], harness.clock.now())
            raise RuntimeError("the change fails after its events were written")
    assert await outbox(harness, t.id) == before
    async with harness.app.engine.begin() as conn:
        await write_outbox(conn, t.id, [event, event], harness.clock.now())
    after = await outbox(harness, t.id)
    assert [e["seq"] for e in after] == list(range(1, len(after) + 1)), "no gap from the rollback"


async def test_sequences_follow_commit_order_under_concurrency(harness: Harness) -> None:
    t = await harness.tenant(1000)
    async with t.client() as client:
        calls = []
        for i in range(120):
            request = pb.ChargeTokensRequest(
                tenant_id=t.id, operation_type=SMS, amount=1, request_id=f"c{i}"
            )
            calls.append(client.charge_tokens(request))
            if i % 3 == 0:
                calls.append(
                    client.reserve_tokens(
                        pb.ReserveTokensRequest(
                            tenant_id=t.id, operation_type=SMS, amount=2, request_id=f"r{i}"
                        )
                    )
                )
        await asyncio.gather(*calls)
    events = await outbox(harness, t.id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    entries = [e for e in events if e["type"] == "ledger.entry"]
    # one event per entry: the purchase that funded the tenant, 120 charges, 40 holds
    assert len(entries) == 1 + 120 + 40
    async with harness.app.engine.connect() as conn:
        logged = (
            await conn.execute(
                text("SELECT count(*) FROM token_usage_logs WHERE tenant_id = :t"), {"t": t.id}
            )
        ).scalar_one()
    assert logged == len(entries)


async def test_reservation_ends_and_expiry_are_events(harness: Harness) -> None:
    t = await harness.tenant(20)
    async with t.client() as client:
        held = [
            (
                await client.reserve_tokens(
                    pb.ReserveTokensRequest(
                        tenant_id=t.id, operation_type=SMS, amount=2, request_id=f"r{i}"
                    )
                )
            ).reservation.id
            for i in range(3)
        ]
        await client.capture_reservation(
            pb.CaptureReservationRequest(tenant_id=t.id, reservation_id=held[0], request_id="c")
        )
        await client.release_reservation(
            pb.ReleaseReservationRequest(tenant_id=t.id, reservation_id=held[1], request_id="r")
        )
    harness.clock.advance(timedelta(hours=1))
    await harness.app.ledger.sweep_expired()
    kinds = [
        e["payload"]["kind"]  # type: ignore[index]
        for e in await outbox(harness, t.id)
        if e["type"] == "ledger.entry"
    ]
    assert kinds[-3:] == ["capture", "release", "expire"]


async def test_a_process_and_its_decisions_are_events(harness: Harness) -> None:
    from agentserver.v1 import agent_service_pb2 as apb

    t = await harness.tenant(100)
    await harness.app.admin.set_tenant_policy(
        t.id, {"level_overrides": {"sms.send": "approval_required"}}
    )
    before = len(await outbox(harness, t.id))
    async with t.client("alice") as client:
        resp = await client.process(
            apb.ProcessRequest(
                message=(
                    "Email ann@example.com that we open at 9"
                    " and text +15551234567 that we open at 9"
                )
            )
        )
        email, sms = resp.actions
        approver = client.with_identity(user_id="bob")
        await approver.reject_action(
            apb.RejectActionRequest(action_id=sms.id, reason="not today", request_id=rid())
        )
    events = (await outbox(harness, t.id))[before:]
    kinds = [(e["type"], e["aggregate_id"]) for e in events]
    assert ("action.created", email.id) in kinds and ("action.created", sms.id) in kinds
    assert ("action.waiting", sms.id) in kinds
    assert ("action.succeeded", email.id) in kinds
    assert ("action.rejected", sms.id) in kinds
    stored = [e for e in events if e["type"] == "message.stored"]
    assert [e["payload"]["role"] for e in stored] == ["user", "assistant", "system"]  # type: ignore[index]
    waiting = next(e for e in events if e["type"] == "action.waiting")
    assert waiting["payload"]["waiting_for"] == "approver"  # type: ignore[index]
    rejected = next(e for e in events if e["type"] == "action.rejected")
    assert rejected["payload"]["reason"] == "not today"  # type: ignore[index]
    assert rejected["payload"]["decided_by"] == "bob"  # type: ignore[index]
    seqs = [e["seq"] for e in await outbox(harness, t.id)]
    assert seqs == list(range(1, len(seqs) + 1))
