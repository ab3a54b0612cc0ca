"""The NATS JetStream relay, on SQLite and PostgreSQL against the machine's NATS:
every event on `agentserver.<tenant>.<type>` in order with `Nats-Msg-Id` = the
event id; a republish (a relay that died before moving its cursor) is dropped by
JetStream's de-duplication; two relays at once share the tenants and publish each
event once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from sqlalchemy import text

from agentserver.app import build_app
from agentserver.domain.costs import OperationType
from agentserver.domain.events import event_id
from agentserver.domain.ledger import Debit
from tests.conftest import Harness, database_url, start_harness

STREAM = "AGENTSERVER_EVENTS"


@pytest.fixture(params=["sqlite", "postgres"])
async def relaying(
    request: pytest.FixtureRequest, tmp_root: Path, nats_url: str
) -> AsyncIterator[Harness]:
    if request.param == "postgres":
        url = str(request.getfixturevalue("fresh_pg_url"))
    else:
        url = database_url("sqlite", tmp_root, request)
    h = await start_harness(url, request.param, nats_url=nats_url, nats_max_age_seconds=3600.0)
    yield h
    await h.server.stop(0)
    await h.app.close()


async def stream_messages(nats_url: str, tenant_id: str) -> list[nats.aio.msg.Msg]:
    """Every message of the tenant in the stream, in stream order."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            f"agentserver.{tenant_id}.>", ordered_consumer=True, deliver_policy="all"
        )
        out = []
        while True:
            try:
                out.append(await sub.next_msg(timeout=1.0))
            except nats.errors.TimeoutError:
                return out
    finally:
        await nc.close()


async def charges(h: Harness, tenant_id: str, n: int) -> None:
    for i in range(n):
        await h.app.ledger.charge(Debit(tenant_id, "", OperationType.SMS, 1, f"c{i}"))


async def test_every_event_in_order_with_its_id(relaying: Harness, nats_url: str) -> None:
    h = relaying
    t = await h.tenant(100)
    await charges(h, t.id, 3)
    assert h.app.relay is not None
    while await h.app.relay.relay_once():
        pass
    got = await stream_messages(nats_url, t.id)
    assert [json.loads(m.data)["seq"] for m in got] == [1, 2, 3, 4, 5]
    assert [m.subject for m in got[:2]] == [
        f"agentserver.{t.id}.ledger.entry",
        f"agentserver.{t.id}.ledger.tokens_added",
    ]
    assert [m.headers["Nats-Msg-Id"] for m in got] == [event_id(t.id, s) for s in range(1, 6)]
    body = json.loads(got[2].data)
    assert body["type"] == "ledger.entry" and body["data"]["request_id"] == "c0"


async def test_a_republish_is_dropped_by_jetstream(relaying: Harness, nats_url: str) -> None:
    h = relaying
    t = await h.tenant(100)
    await charges(h, t.id, 2)
    assert h.app.relay is not None
    while await h.app.relay.relay_once():
        pass
    # A relay that published and died before moving its cursor: the same ids again.
    async with h.app.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE event_cursors SET last_seq = 0 WHERE consumer = 'nats' AND tenant_id = :t"
            ),
            {"t": t.id},
        )
    assert await h.app.relay.relay_once() >= 4
    got = await stream_messages(nats_url, t.id)
    assert len(got) == 4, "JetStream kept each id once"


async def test_two_relays_at_once_publish_every_event_once(
    relaying: Harness, nats_url: str
) -> None:
    h = relaying
    tenants = [await h.tenant(100) for _ in range(6)]
    for t in tenants:
        await charges(h, t.id, 5)
    other = await build_app(h.app.settings)  # a second replica on the same database
    try:
        assert h.app.relay is not None and other.relay is not None
        counts = await asyncio.gather(h.app.relay.relay_once(), other.relay.relay_once())
        while await h.app.relay.relay_once() or await other.relay.relay_once():
            pass
    finally:
        await other.close()
    assert sum(counts) >= 6 * 7 or h.backend == "sqlite"
    for t in tenants:
        got = await stream_messages(nats_url, t.id)
        assert [json.loads(m.data)["seq"] for m in got] == list(range(1, 8)), t.id


async def test_a_tenant_id_that_is_not_a_subject_token_is_escaped(
    relaying: Harness, nats_url: str
) -> None:
    h = relaying
    tenant_id = f"acme.eu {uuid.uuid4().hex[:6]}"
    await h.app.admin.create_tenant(tenant_id, "odd", h.clock.now())
    await h.app.ledger.add_tokens(tenant_id, "", 5, "p1", "seed")
    assert h.app.relay is not None
    while await h.app.relay.relay_once():
        pass
    escaped = tenant_id.replace(".", "~2E").replace(" ", "~20")
    got = await stream_messages(nats_url, escaped)
    assert [json.loads(m.data)["tenant_id"] for m in got] == [tenant_id, tenant_id]
