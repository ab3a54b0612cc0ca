"""The LLM engine inside Process, asynchronous calls, channel secrets at rest,
and recovery of actions a crash left executing."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text

from agentserver.adapters.secrets import generate_key
from agentserver.app import build_app, prepare_database
from agentserver.config import Settings
from agentserver.domain.actions import ActionState
from agentserver.entrypoints.grpc.server import start_server
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import token_service_pb2 as tpb
from tests import procs
from tests.conftest import Harness, Tenant, ledger_invariant
from tests.fakes.clock import FakeClock
from tests.integration.fakes import FakeOpenAI, tool_call


def rid() -> str:
    return uuid.uuid4().hex


@contextlib.asynccontextmanager
async def llm_harness(tmp_path: Path, llm: FakeOpenAI) -> AsyncIterator[Harness]:
    """A server on its own SQLite file whose engine is the LLM at `llm`."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'llm.db'}",
        access_log=False,
        llm_base_url=llm.url,
        llm_model="test-model",
        llm_api_key="test-key",
    )
    clock = FakeClock()
    app = await build_app(settings, clock=clock)
    await prepare_database(app)
    server = await start_server(app, "127.0.0.1:0")
    try:
        yield Harness(
            app=app, server=server, clock=clock, backend="sqlite", url=settings.database_url
        )
    finally:
        await server.stop(0)
        await app.close()
        await llm.stop()


async def test_llm_engine_decides_and_is_charged_then_falls_back(tmp_path: Path) -> None:
    llm = await FakeOpenAI(
        tool_calls=[
            tool_call(
                "email_send",
                {
                    "parameters": {
                        "to": "ann@example.com",
                        "subject": "Hi",
                        "body": "Hello Ann",
                        "cc": None,
                    },
                    "confidence": 95,
                    "missing_parameters": [],
                    "reasoning": "asked to email Ann",
                },
            ),
            tool_call(
                "respond",
                {
                    "reply": "Emailing Ann.",
                    "confidence": 95,
                    "reasoning": "clear",
                    "bypass_attempt": False,
                },
                1,
            ),
        ]
    ).start()
    async with llm_harness(tmp_path, llm) as harness:
        t = await harness.tenant(2)
        async with t.client("ivy") as client:
            resp = await client.process(
                apb.ProcessRequest(message="please email ann@example.com saying Hello Ann")
            )
            assert resp.engine == "llm:test-model"
            (action,) = resp.actions
            assert action.action_type == "email.send"
            assert action.state == apb.ACTION_STATE_SUCCEEDED
            body = llm.requests[0]
            assert body["model"] == "test-model"
            assert any(
                m["content"] == "please email ann@example.com saying Hello Ann"
                for m in body["messages"]
            )
            # 1 token for the decision, 1 for the email
            balance = (await client.get_balance(tpb.GetBalanceRequest(tenant_id=t.id))).balance
            assert balance.available_tokens == 0
            # no tokens left: the offline engine decides, and says so
            resp = await client.process(apb.ProcessRequest(message="Email bob@example.com that hi"))
            assert resp.engine.startswith("offline")
            assert "no tokens" in resp.engine
            assert len(llm.requests) == 1
        await ledger_invariant(harness, t.id)


async def test_reports_are_phrased_by_the_llm_from_computed_figures(tmp_path: Path) -> None:
    llm = await FakeOpenAI(
        tool_calls=[
            tool_call(
                "analysis_report",
                {
                    "parameters": {"topic": "usage", "period": "this_month"},
                    "confidence": 95,
                    "missing_parameters": [],
                    "reasoning": "asked for a usage report",
                },
            ),
            tool_call(
                "respond",
                {
                    "reply": "Here it is.",
                    "confidence": 95,
                    "reasoning": "clear",
                    "bypass_attempt": False,
                },
                1,
            ),
        ],
        text="You used 1 token this month, on one LLM decision.",
    ).start()
    async with llm_harness(tmp_path, llm) as harness:
        t = await harness.tenant(10)
        async with t.client("rose") as client:
            resp = await client.process(apb.ProcessRequest(message="usage report for this month"))
            (action,) = resp.actions
            assert action.action_type == "analysis.report"
            assert action.state == apb.ACTION_STATE_SUCCEEDED, action.result.error
            detail = action.result.detail
            assert detail["written_by"] == "llm:test-model"
            assert detail["text"] == "You used 1 token this month, on one LLM decision."
            assert detail["summary"]["tokens_used"] == {"internal_api_llm": 1}
            writer_request = llm.requests[-1]
            assert "tools" not in writer_request
            assert '"internal_api_llm": 1' in writer_request["messages"][-1]["content"]


async def test_phone_call_finishes_asynchronously(harness: Harness) -> None:
    t = await harness.tenant(60)
    async with t.client("paul") as client:
        resp = await client.process(
            apb.ProcessRequest(message="Call +15551234567 to confirm the appointment")
        )
        (action,) = resp.actions
        assert action.action_type == "phone.call"
        assert action.state == apb.ACTION_STATE_AWAITING_USER
        started = (
            await client.approve_action(
                apb.ApproveActionRequest(action_id=action.id, request_id=rid())
            )
        ).action
        assert started.state == apb.ACTION_STATE_EXECUTING
        assert started.result.provider_id
        done = (await client.get_action(apb.GetActionRequest(action_id=action.id))).action
        assert done.state == apb.ACTION_STATE_SUCCEEDED
        balance = (await client.get_balance(tpb.GetBalanceRequest(tenant_id=t.id))).balance
        assert balance.available_tokens == 10
    await ledger_invariant(harness, t.id)


async def _stuck(harness: Harness, t: Tenant, provider_id: str) -> str:
    """An approved email whose executor 'crashed' after marking it executing."""
    async with t.client("quinn") as client:
        resp = await client.process(apb.ProcessRequest(message="Email zed@example.com that hi"))
    action = await harness.app.agent_store.get(t.id, resp.actions[0].id)
    # Re-create the crash: tokens held and the row executing, nothing captured.
    stuck = replace(action, id=f"act_stuck_{uuid.uuid4().hex[:8]}", reservation_id=None)
    reservation = await harness.app.executor.reserve(stuck)
    result = {"channel": "smtp", "provider_id": provider_id} if provider_id else {}
    async with harness.app.engine.begin() as conn:
        from agentserver.adapters.db.agent_store import action_values
        from agentserver.adapters.db.models import actions

        values = action_values(
            replace(stuck, state=ActionState.EXECUTING, reservation_id=reservation, result=result)
        )
        await conn.execute(actions.insert().values(**values))
    return stuck.id


async def test_recovery_never_sends_twice(harness: Harness) -> None:
    t = await harness.tenant(10)
    sent = await _stuck(harness, t, provider_id="<id@example.com>")
    unknown = await _stuck(harness, t, provider_id="")
    harness.clock.advance(timedelta(minutes=6))
    await harness.app.agent.sweep()
    a = await harness.app.agent_store.get(t.id, sent)
    b = await harness.app.agent_store.get(t.id, unknown)
    assert a.state is ActionState.SUCCEEDED  # the provider had it: captured
    assert b.state is ActionState.OUTCOME_UNKNOWN  # for a person; never re-sent
    assert "not sent again" in b.result["error"]
    balance = await harness.app.ledger.balance(t.id)
    # two processed emails + the recovered one used; the unknown one still held
    assert (balance.reserved, balance.used) == (1, 3)
    await ledger_invariant(harness, t.id)


def test_channel_secrets_are_encrypted_and_required_at_start(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'secrets.db'}"
    key = subprocess.run(
        [str(procs.BIN / "agentserver"), "secret-key"], capture_output=True, text=True, check=True
    ).stdout.strip()

    def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(procs.BIN / "agentserver"), *args],
            cwd=tmp_path,
            env=procs.server_env(database_url=db, **env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert cli("tenant", "create", "acme").returncode == 0
    refused = cli(
        "channel",
        "set",
        "--tenant",
        "acme",
        "--channel",
        "twilio",
        "--config",
        '{"account_sid": "AC11111111111111111111111111111111", "from_number": "+15550001111"}',
        "--secrets",
        '{"auth_token": "hunter2"}',
    )
    assert refused.returncode != 0
    assert "SECRET_KEYS" in refused.stderr
    stored = cli(
        "channel",
        "set",
        "--tenant",
        "acme",
        "--channel",
        "twilio",
        "--config",
        '{"account_sid": "AC11111111111111111111111111111111", "from_number": "+15550001111"}',
        "--secrets",
        '{"auth_token": "hunter2"}',
        secret_keys=key,
    )
    assert stored.returncode == 0, stored.stderr
    raw = (tmp_path / "secrets.db").read_bytes()
    assert b"hunter2" not in raw
    assert b"AC11111111111111111111111111111111" in raw
    no_key = subprocess.run(
        [str(procs.BIN / "agentserver"), "serve"],
        cwd=tmp_path,
        env=procs.server_env(database_url=db, listen=f"127.0.0.1:{procs.free_port()}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert no_key.returncode != 0
    assert "AGENTSERVER_SECRET_KEYS" in no_key.stderr
    other_key = subprocess.run(
        [str(procs.BIN / "agentserver"), "serve"],
        cwd=tmp_path,
        env=procs.server_env(
            database_url=db,
            listen=f"127.0.0.1:{procs.free_port()}",
            secret_keys=generate_key(),  # a valid key, but not the one that encrypted
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other_key.returncode != 0
    assert "cannot decrypt the stored secrets of 1 channel setting(s) (acme/twilio)" in (
        other_key.stderr
    )
    assert "hunter2" not in other_key.stderr


async def test_secrets_at_rest_in_the_database(harness: Harness) -> None:
    t = await harness.tenant()
    config = {"account_sid": "AC99999999999999999999999999999999", "from_number": "+15550001111"}
    await harness.app.set_channel(t.id, "twilio", config, {"auth_token": "s3cret"})
    async with harness.app.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT config, secret FROM channel_settings WHERE tenant_id = :t"),
                {"t": t.id},
            )
        ).one()
    assert "s3cret" not in str(row.config) and "s3cret" not in row.secret
    assert (await harness.app.runner.settings(t.id, "twilio")) == {
        **config,
        "auth_token": "s3cret",
    }


async def test_elevenlabs_call_finishes_when_the_provider_says_so(harness: Harness) -> None:
    from tests.integration.fakes import FakeElevenLabs

    t = await harness.tenant(60)
    eleven = await FakeElevenLabs().start()
    try:
        await harness.app.set_channel(
            t.id,
            "elevenlabs",
            {"agent_id": "agent_1", "phone_number_id": "phone_1", "base_url": eleven.url},
            {"api_key": eleven.api_key},
        )
        async with t.client("pia") as client:
            (action,) = (
                await client.process(
                    apb.ProcessRequest(message="Call +15551234567 to confirm the appointment")
                )
            ).actions
            started = (
                await client.approve_action(
                    apb.ApproveActionRequest(action_id=action.id, request_id=rid())
                )
            ).action
            assert started.state == apb.ACTION_STATE_EXECUTING
            assert started.result.provider_id == "conv_1"
            (call,) = eleven.calls
            assert call["key_ok"]
            assert call["body"]["agent_id"] == "agent_1"
            assert call["body"]["agent_phone_number_id"] == "phone_1"
            assert call["body"]["to_number"] == "+15551234567"
            still = (await client.get_action(apb.GetActionRequest(action_id=action.id))).action
            assert still.state == apb.ACTION_STATE_EXECUTING
            balance = (await client.get_balance(tpb.GetBalanceRequest(tenant_id=t.id))).balance
            assert balance.reserved_tokens == 50
            eleven.status = "done"
            done = (await client.get_action(apb.GetActionRequest(action_id=action.id))).action
            assert done.state == apb.ACTION_STATE_SUCCEEDED
            assert done.result.detail["summary"] == "confirmed"
            balance = (await client.get_balance(tpb.GetBalanceRequest(tenant_id=t.id))).balance
            assert (balance.reserved_tokens, balance.used_tokens) == (0, 50)
            assert len(eleven.calls) == 1
    finally:
        await eleven.stop()
