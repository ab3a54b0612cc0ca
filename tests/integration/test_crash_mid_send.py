"""kill -9 of a real `agentserver serve` while a provider is being called: after a
restart the action is `outcome_unknown` (never sent again, tokens held), not failed."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from agentserver.adapters.secrets import generate_key
from agentserver.app import build_app, prepare_database
from agentserver.client import AgentServerClient, AgentServerError
from agentserver.config import Settings
from agentserver.domain.identity import TENANT_DEFAULT_SCOPES
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import token_service_pb2 as tpb
from tests import procs
from tests.integration.fakes import FakeTwilio


@pytest.mark.slow
async def test_kill_9_during_the_provider_call_leaves_an_unknown_outcome(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'crash.db'}"
    keys = generate_key()
    twilio = await FakeTwilio(delay=60.0).start()
    tenant = f"crash-{uuid.uuid4().hex[:6]}"
    app = await build_app(Settings(database_url=db, secret_keys=keys, auto_migrate=True))
    try:
        await prepare_database(app)
        now = app.clock.now()
        await app.admin.create_tenant(tenant, tenant, now)
        await app.admin.set_rule(tenant, "business", "", "allow", "*:*")
        _, key = await app.admin.create_key(tenant, TENANT_DEFAULT_SCOPES, "crash", now)
        await app.ledger.add_tokens(tenant, "", 5, "seed", "seed")
        await app.set_channel(tenant, "twilio", *twilio.config())
    finally:
        await app.close()
    settings = {
        "database_url": db,
        "secret_keys": keys,
        "bootstrap_demo": "false",
        "execution_lease_seconds": "1",
        "sweep_interval_seconds": "0.2",
        "monthly_fee_interval_seconds": "0",
    }
    proc, port = procs.start(tmp_path, **settings)
    try:
        async with AgentServerClient(
            f"127.0.0.1:{port}", api_key=key, tenant_id=tenant, user_id="alice"
        ) as client:
            call = asyncio.create_task(
                client.process(apb.ProcessRequest(message="Text +15551234567 that we are open"))
            )
            for _ in range(200):
                if twilio.requests:
                    break
                await asyncio.sleep(0.05)
            assert twilio.requests, "the provider was called"
            proc.kill()
            proc.wait()
            with pytest.raises(AgentServerError):
                await call
        proc, port = procs.start(tmp_path, **settings)
        async with AgentServerClient(
            f"127.0.0.1:{port}", api_key=key, tenant_id=tenant, user_id="alice"
        ) as client:
            for _ in range(100):
                listed = await client.list_actions(apb.ListActionsRequest())
                if listed.actions and listed.actions[0].state != apb.ACTION_STATE_EXECUTING:
                    break
                await asyncio.sleep(0.1)
            (action,) = listed.actions
            assert action.state == apb.ACTION_STATE_OUTCOME_UNKNOWN
            balance = (await client.get_balance(tpb.GetBalanceRequest())).balance
            assert (balance.reserved_tokens, balance.used_tokens) == (1, 0)
            assert len(twilio.requests) == 1, "never sent again"
    finally:
        procs.stop(proc)
        await twilio.stop()
