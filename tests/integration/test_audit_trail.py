"""The audit trail through the gRPC surface: a caller who cannot prove a tenant does
not write into its trail, and one over-long value costs no other event."""

from __future__ import annotations

import pytest

from agentserver.client import AgentServerClient, AgentServerError, StatusCode
from agentserver.v1 import token_service_pb2 as tpb
from tests.conftest import Harness


async def test_unproven_tenants_go_to_the_unauthenticated_trail(harness: Harness) -> None:
    t = await harness.tenant(5)
    async with AgentServerClient(harness.target, api_key="ask_made_up", tenant_id=t.id) as fake:
        with pytest.raises(AgentServerError) as err:
            await fake.get_balance(tpb.GetBalanceRequest())
        assert err.value.code is StatusCode.UNAUTHENTICATED
    long_tenant = t.id + "x" * (65 - len(t.id))
    async with AgentServerClient(harness.target, api_key=t.key, tenant_id=long_tenant) as odd:
        with pytest.raises(AgentServerError) as err:
            await odd.get_balance(tpb.GetBalanceRequest())
        assert err.value.code is StatusCode.INVALID_ARGUMENT
    async with t.client() as client:
        for _ in range(3):
            await client.get_balance(tpb.GetBalanceRequest())
    await harness.app.audit.flush()
    own = await harness.app.admin.events(t.id, "audit.")
    assert [(e["kind"], e["outcome"]) for e in own] == [("audit.GetBalance", "OK")] * 3
    assert all(e["actor"] != "anonymous" for e in own)
    strangers = [
        e
        for e in await harness.app.admin.events(None, "audit.unauthenticated.")
        if e["payload"].get("claimed_tenant_id", "").startswith(t.id)
    ]
    assert sorted(e["outcome"] for e in strangers) == ["INVALID_ARGUMENT", "UNAUTHENTICATED"]
    assert all(e["tenant_id"] is None for e in strangers)
    assert max(len(e["payload"]["claimed_tenant_id"]) for e in strangers) == 64
