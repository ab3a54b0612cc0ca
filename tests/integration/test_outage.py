"""A database that drops its connections (as a restart does: SQLSTATE 57P01 for every
session) is UNAVAILABLE for a moment on every path, never INTERNAL or UNKNOWN, and the
server serves again once it is back."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import asyncpg
import pytest
import sqlalchemy.exc

from agentserver.adapters.db.errors import is_unavailable
from agentserver.client import AgentServerClient, AgentServerError
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import common_pb2
from agentserver.v1 import conversation_service_pb2 as cpb
from agentserver.v1 import token_service_pb2 as tpb
from tests.conftest import PG_ADMIN_DSN, Harness, ledger_invariant, start_harness

SMS = common_pb2.OPERATION_TYPE_SMS


class _FakeOrig(Exception):
    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize("sqlstate", ["08006", "08003", "57P01", "57P02", "57P03"])
def test_a_plain_dbapi_error_of_a_restarting_server_is_unavailable(sqlstate: str) -> None:
    orig = _FakeOrig("the database system is starting up", sqlstate)
    err = sqlalchemy.exc.DBAPIError("SELECT 1", {}, orig)
    assert is_unavailable(err)


def test_another_operation_in_progress_is_unavailable() -> None:
    orig = asyncpg.InterfaceError("cannot perform operation: another operation is in progress")
    assert is_unavailable(orig)
    wrapped = sqlalchemy.exc.DBAPIError("SELECT 1", {}, orig)
    assert is_unavailable(wrapped)


def test_a_bug_is_not_unavailable() -> None:
    assert not is_unavailable(KeyError("x"))
    assert not is_unavailable(sqlalchemy.exc.DBAPIError("SELECT 1", {}, _FakeOrig("", "23505")))
    try:
        try:
            raise OSError("gone")
        except OSError:
            raise KeyError("a bug while handling it") from None
    except KeyError as bug:
        assert not is_unavailable(bug)


async def _drop_connections(database: str, stop: asyncio.Event) -> int:
    """What a restart does to a server's sessions, again and again until `stop`."""
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    dropped = 0
    try:
        while not stop.is_set():
            dropped += await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
    return dropped


def _calls(client: AgentServerClient, tenant_id: str, session_id: str) -> list[Any]:
    i = uuid.uuid4().hex
    return [
        client.charge_tokens(
            tpb.ChargeTokensRequest(
                tenant_id=tenant_id, operation_type=SMS, amount=1, request_id=f"c-{i}"
            )
        ),
        client.reserve_tokens(
            tpb.ReserveTokensRequest(
                tenant_id=tenant_id, operation_type=SMS, amount=1, request_id=f"r-{i}"
            )
        ),
        client.get_balance(tpb.GetBalanceRequest(tenant_id=tenant_id)),
        client.list_usage(tpb.ListUsageRequest(tenant_id=tenant_id)),
        client.process(apb.ProcessRequest(message="Email ann@example.com that we open at 9")),
        client.list_actions(apb.ListActionsRequest()),
        client.list_user_sessions(cpb.ListUserSessionsRequest()),
        client.list_messages(cpb.ListMessagesRequest(session_id=session_id)),
        client.get_costs(),
    ]


@pytest.mark.postgres
@pytest.mark.slow
async def test_connections_dropped_under_load_are_unavailable_never_internal(
    fresh_pg_url: str,
) -> None:
    h: Harness = await start_harness(fresh_pg_url, "postgres")
    try:
        t = await h.tenant(100_000)
        codes: Counter[str] = Counter()
        async with t.client("alice") as client:
            session = (await client.process(apb.ProcessRequest(message="hello"))).session_id
            calls = 1
            stop = asyncio.Event()
            dropper = asyncio.create_task(_drop_connections(fresh_pg_url.rsplit("/", 1)[1], stop))
            for _ in range(25):
                results = await asyncio.gather(
                    *_calls(client, t.id, session),
                    return_exceptions=True,
                )
                calls += len(results)
                for r in results:
                    if isinstance(r, AgentServerError):
                        codes[r.code.name] += 1
                    elif isinstance(r, BaseException):
                        raise r
                    else:
                        codes["OK"] += 1
            stop.set()
            dropped = await dropper
            assert dropped > 0, "the test did not drop any connection"
            assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
            assert codes["UNAVAILABLE"] > 0, f"no call saw the outage: {codes}"
            # Back to normal once the database is: every rpc answers again.
            for _ in range(3):
                results = await asyncio.gather(
                    *_calls(client, t.id, session), return_exceptions=True
                )
                calls += len(results)
                if not any(isinstance(r, BaseException) for r in results):
                    break
            else:
                raise AssertionError(f"still failing after the outage: {results}")
        # Every rpc's audit event is written once the database is back.
        await h.app.audit.flush()
        assert h.app.audit.buffered == 0
        assert (h.app.audit.shed, h.app.audit.rejected) == (0, 0)
        events = await h.app.admin.events(t.id, "audit.")
        assert len(events) == calls, (len(events), calls)
        await ledger_invariant(h, t.id)
    finally:
        await h.server.stop(0)
        await h.app.close()
