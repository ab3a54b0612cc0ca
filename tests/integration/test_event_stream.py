"""EventService.WatchEvents through gRPC, on SQLite and PostgreSQL: the caller's
tenant only, in sequence order, from a cursor or from now, filtered by type, with
heartbeats; a cursor past retention is a clear error; a server that stops ends the
stream so the client's resumable iterator continues elsewhere without a gap."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from agentserver.client import AgentServerError, StatusCode
from agentserver.domain.identity import SCOPE_AGENT, TENANT_DEFAULT_SCOPES
from agentserver.entrypoints.grpc.server import start_server
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import common_pb2, event_service_pb2_grpc
from agentserver.v1 import conversation_service_pb2 as cpb
from agentserver.v1 import event_service_pb2 as epb
from agentserver.v1 import token_service_pb2 as tpb
from tests.conftest import Harness, Tenant, database_url, start_harness

SMS = common_pb2.OPERATION_TYPE_SMS


def rid() -> str:
    return uuid.uuid4().hex


def watching(h: Harness) -> Harness:
    """The harness with its outbox watcher running (wake-ups for streams)."""
    if not any(t.get_name() == "outbox-watch" and not t.done() for t in h.app._tasks):
        h.app._tasks.append(asyncio.create_task(h.app.watcher.run(), name="outbox-watch"))
    return h


async def charge(t: Tenant, amount: int, request_id: str | None = None) -> None:
    async with t.client() as client:
        await client.charge_tokens(
            tpb.ChargeTokensRequest(
                tenant_id=t.id, operation_type=SMS, amount=amount, request_id=request_id or rid()
            )
        )


async def raw_watch(
    h: Harness, t: Tenant, request: epb.WatchEventsRequest, key: str | None = None
) -> AsyncIterator[epb.WatchEventsResponse]:
    async with grpc.aio.insecure_channel(h.target) as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        call = stub.WatchEvents(
            request, metadata=(("authorization", f"Bearer {key or t.key}"),), timeout=30
        )
        async for response in call:
            yield response


async def take(stream: AsyncIterator[epb.WatchEventsResponse], n: int) -> list[epb.Event]:
    """The next `n` events (heartbeats skipped), within 15 s."""
    out: list[epb.Event] = []

    async def collect() -> None:
        async for response in stream:
            if response.HasField("event"):
                out.append(response.event)
                if len(out) == n:
                    return

    await asyncio.wait_for(collect(), 15)
    return out


async def test_from_a_cursor_then_live_in_order_with_typed_payloads(harness: Harness) -> None:
    h = watching(harness)
    t = await h.tenant(100)  # the purchase: ledger.entry + ledger.tokens_added
    await charge(t, 60, "c1")  # entry + low balance (40 < 50)
    stream = raw_watch(h, t, epb.WatchEventsRequest(after_seq=0))
    first = await take(stream, 4)
    assert [e.seq for e in first] == [1, 2, 3, 4]
    assert [e.type for e in first] == [
        "ledger.entry",
        "ledger.tokens_added",
        "ledger.entry",
        "ledger.low_balance",
    ]
    entry = first[2]
    assert entry.WhichOneof("payload") == "ledger_entry"
    assert entry.ledger_entry.tokens == 60 and entry.ledger_entry.request_id == "c1"
    assert entry.ledger_entry.operation_type == SMS
    assert entry.ledger_entry.delta.used == 60
    assert first[3].low_balance.available == 40 and first[3].low_balance.threshold == 50
    assert first[1].tokens_added.amount == 100
    assert all(e.tenant_id == t.id and e.id.startswith("evt_") for e in first)
    assert len({e.id for e in first}) == 4
    # Live: committed after the stream caught up.
    await charge(t, 5, "c2")
    (live,) = await take(stream, 1)
    assert (live.seq, live.ledger_entry.request_id) == (5, "c2")
    await stream.aclose()


async def test_from_now_skips_what_came_before(harness: Harness) -> None:
    h = watching(harness)
    t = await h.tenant(100)
    stream = raw_watch(h, t, epb.WatchEventsRequest())
    opening = await anext(stream)
    assert opening.HasField("heartbeat") and opening.heartbeat.cursor == 2
    await charge(t, 1, "after")
    (event,) = await take(stream, 1)
    assert event.seq == 3 and event.ledger_entry.request_id == "after"
    await stream.aclose()


async def test_types_filter_by_name_and_area(harness: Harness) -> None:
    h = watching(harness)
    t = await h.tenant(100)
    await charge(t, 60)
    only_low = raw_watch(h, t, epb.WatchEventsRequest(after_seq=0, types=["ledger.low_balance"]))
    (low,) = await take(only_low, 1)
    assert low.type == "ledger.low_balance" and low.seq == 4
    await only_low.aclose()
    area = raw_watch(h, t, epb.WatchEventsRequest(after_seq=0, types=["ledger.*"]))
    assert [e.seq for e in await take(area, 4)] == [1, 2, 3, 4]
    await area.aclose()


async def test_another_tenants_events_never_arrive(harness: Harness) -> None:
    h = watching(harness)
    a = await h.tenant(100)
    b = await h.tenant(100)
    stream = raw_watch(h, a, epb.WatchEventsRequest(after_seq=0))
    await charge(b, 7, "b-charge")
    await charge(a, 3, "a-charge")
    events = await take(stream, 3)
    assert {e.tenant_id for e in events} == {a.id}
    assert events[-1].ledger_entry.request_id == "a-charge"
    await stream.aclose()
    # A tenant key naming another tenant is refused outright.
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async with grpc.aio.insecure_channel(h.target) as channel:
            call = event_service_pb2_grpc.EventServiceStub(channel).WatchEvents(
                epb.WatchEventsRequest(after_seq=0),
                metadata=(("authorization", f"Bearer {a.key}"), ("x-tenant-id", b.id)),
            )
            await anext(aiter(call))
    assert exc.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_heartbeats_carry_the_cursor_past_events_that_did_not_match(
    harness: Harness,
) -> None:
    h = watching(harness)
    t = await h.tenant(100)
    request = epb.WatchEventsRequest(after_seq=0, types=["ledger.fee_charged"])
    request.heartbeat_interval.seconds = 1
    beats: list[int] = []
    async for response in raw_watch(h, t, request):
        assert response.HasField("heartbeat"), response
        beats.append(response.heartbeat.cursor)
        if len(beats) == 3:
            break
    assert beats[0] == 0 and beats[-1] == 2  # examined the purchase's two events


async def test_process_tells_of_its_actions_and_messages_with_typed_payloads(
    harness: Harness,
) -> None:
    h = watching(harness)
    t = await h.tenant(100)
    stream = raw_watch(h, t, epb.WatchEventsRequest(types=["action.*", "message.*"]))
    await anext(stream)
    async with t.client("alice") as client:
        await client.process(
            apb.ProcessRequest(message="Book the Blue Room tomorrow at 3pm for 1 hour for Maria")
        )
    events = await take(stream, 4)
    assert [e.type for e in events] == [
        "action.created",
        "action.waiting",
        "message.stored",
        "message.stored",
    ]
    created, waiting, said, replied = events
    assert created.action_created.action.action_type == "booking.create"
    assert created.action_created.action.requested_by == "alice"
    assert created.action_created.parameters["resource_name"] == "Blue Room"
    assert waiting.action_waiting.waiting_for == "user"
    assert waiting.action_waiting.action.state == apb.ACTION_STATE_AWAITING_USER
    assert waiting.action_waiting.HasField("expire_time")
    assert said.message_stored.role == cpb.MESSAGE_ROLE_USER
    assert "Blue Room" in said.message_stored.content
    assert replied.message_stored.action_ids == [created.aggregate_id]
    assert all(e.WhichOneof("payload") != "data" for e in events)
    await stream.aclose()


async def test_bad_requests_are_refused_with_the_field_named(harness: Harness) -> None:
    t = await harness.tenant(10)
    cases = [
        (epb.WatchEventsRequest(types=["ledger.nonsense"]), "types[0]"),
        (epb.WatchEventsRequest(after_seq=99), "after_seq"),
        (epb.WatchEventsRequest(after_seq=-1), "after_seq"),
    ]
    short = epb.WatchEventsRequest()
    short.heartbeat_interval.nanos = 500_000_000
    cases.append((short, "heartbeat_interval"))
    async with t.client() as client:
        for request, field in cases:
            watch = client.watch_events(
                types=list(request.types),
                after_seq=request.after_seq if request.HasField("after_seq") else None,
                heartbeat_seconds=0.5 if request.HasField("heartbeat_interval") else None,
            )
            with pytest.raises(AgentServerError) as exc:
                await anext(aiter(watch))
            assert exc.value.code is StatusCode.INVALID_ARGUMENT, exc.value
            assert exc.value.details.field_violations[0].field == field


async def test_a_person_or_a_key_without_the_scope_is_refused(harness: Harness) -> None:
    t = await harness.tenant(10)
    now = harness.clock.now()
    _, person = await harness.app.admin.create_key(
        t.id, TENANT_DEFAULT_SCOPES, "alice", now, user_id="alice"
    )
    _, narrow = await harness.app.admin.create_key(t.id, (SCOPE_AGENT,), "agent only", now)
    for key, reason in ((person, "SERVICE_ONLY"), (narrow, "SCOPE_MISSING")):
        async with harness.client(key, t.id, user_id="") as client:
            with pytest.raises(AgentServerError) as exc:
                await anext(aiter(client.watch_events()))
            assert exc.value.code is StatusCode.PERMISSION_DENIED
            assert exc.value.details.reason == reason


@pytest.fixture(params=["sqlite", "postgres"])
async def own_harness(request: pytest.FixtureRequest, tmp_root: Path) -> AsyncIterator[Harness]:
    """A server on a database of its own (pruning and restarts touch everything)."""
    if request.param == "postgres":
        url = str(request.getfixturevalue("fresh_pg_url"))
    else:
        url = database_url("sqlite", tmp_root, request)
    h = await start_harness(url, request.param, event_streams_per_tenant=2)
    watching(h)
    yield h
    await h.server.stop(0)
    await h.app.close()


async def test_a_cursor_older_than_what_is_kept_must_restart_from_now(
    own_harness: Harness,
) -> None:
    h = own_harness
    t = await h.tenant(100)
    await charge(t, 1)
    h.clock.advance(timedelta(days=h.app.settings.event_retention_days + 1))
    await charge(t, 1, "kept")  # seq 4, recent
    assert await h.app.prune_events() == 3
    async with t.client() as client:
        with pytest.raises(AgentServerError) as exc:
            await anext(aiter(client.watch_events(after_seq=0)))
        assert exc.value.code is StatusCode.FAILED_PRECONDITION
        assert exc.value.details.reason == "CURSOR_EXPIRED"
        assert "restart from now" in exc.value.message
        # From the last kept boundary on, and from now, all is well.
        watch = client.watch_events(after_seq=3)
        event = await asyncio.wait_for(anext(aiter(watch)), 10)
        assert event.seq == 4 and event.ledger_entry.request_id == "kept"
        await watch.close()


async def test_streams_per_tenant_are_bounded(own_harness: Harness) -> None:
    h = own_harness
    t = await h.tenant(10)
    open_streams = [raw_watch(h, t, epb.WatchEventsRequest()) for _ in range(2)]
    for s in open_streams:
        assert (await anext(s)).HasField("heartbeat")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await anext(raw_watch(h, t, epb.WatchEventsRequest()))
    assert exc.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    for s in open_streams:
        await s.aclose()


async def test_a_stopping_server_ends_the_stream_and_the_client_resumes_without_a_gap(
    own_harness: Harness,
) -> None:
    h = own_harness
    t = await h.tenant(100)
    port = h.server.port
    async with t.client() as client:
        watch = client.watch_events(after_seq=0, max_backoff=0.3)
        events = aiter(watch)
        seen = [(await asyncio.wait_for(anext(events), 10)).seq for _ in range(2)]
        raw = raw_watch(h, t, epb.WatchEventsRequest())
        await anext(raw)
        # Ends the streams at once (not after the 30 s grace), with UNAVAILABLE.
        stopping = asyncio.create_task(h.server.stop(30))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(anext(raw), 10)
        assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "reconnect with after_seq=2" in (ended.value.details() or "")
        await stopping
        await charge_direct(h, t, 3, "while-down")
        h.app.feed.stopping.clear()  # the next server in this process serves again
        h.server = await start_server(h.app, f"127.0.0.1:{port}")
        await charge(t, 4, "after-restart")
        seen += [(await asyncio.wait_for(anext(events), 20)).seq for _ in range(2)]
        assert seen == [1, 2, 3, 4], "every event once, in order, across the restart"
        assert watch.reconnects >= 1
        await watch.close()


async def charge_direct(h: Harness, t: Tenant, amount: int, request_id: str) -> None:
    """A charge while no server is up (the ledger directly)."""
    from agentserver.domain.costs import OperationType
    from agentserver.domain.ledger import Debit

    await h.app.ledger.charge(
        Debit(t.id, "", OperationType.SMS, amount, request_id, "while the server was down")
    )


async def test_notify_when_enabled_wakes_readers_without_polling(
    pg_databases: object, tmp_root: Path
) -> None:
    """PostgreSQL: `agentserver events notify on` makes every writing statement wake
    the replicas' readers through LISTEN (here the poll is a minute apart)."""
    from agentserver.adapters.db.notify import notify_enabled, set_notify

    url = pg_databases.create()  # type: ignore[attr-defined]
    h = await start_harness(url, "postgres", event_poll_seconds=60.0)
    try:
        assert not await notify_enabled(h.app.engine), "off by default: it costs commits"
        await set_notify(h.app.engine, True)
        assert await notify_enabled(h.app.engine)
        watching(h)
        t = await h.tenant(10)
        await asyncio.sleep(0.5)  # the listener connects
        woken = h.app.signal.waiter(t.id)
        await charge(t, 1)
        await asyncio.wait_for(woken.wait(), 5)
        await set_notify(h.app.engine, False)
        assert not await notify_enabled(h.app.engine)
    finally:
        await h.server.stop(0)
        await h.app.close()
