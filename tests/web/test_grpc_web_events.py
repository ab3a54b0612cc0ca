"""WatchEvents over the built-in gRPC-web endpoint: connectrpc streams the same
servicer's messages frame by frame as they happen (a browser can follow events),
and a refused stream ends with the same status and details as on native gRPC."""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import AsyncIterator
from urllib.parse import unquote

import httpx
import pytest

from agentserver.entrypoints.web.server import RunningWeb, start_web
from agentserver.v1 import common_pb2
from agentserver.v1 import event_service_pb2 as epb
from agentserver.v1 import token_service_pb2 as tpb
from tests import grpcweb
from tests.conftest import Harness
from tests.integration.test_event_stream import watching

WATCH = "agentserver.v1.EventService/WatchEvents"


@pytest.fixture(scope="module")
async def web(harness: Harness) -> AsyncIterator[str]:
    running: RunningWeb = await start_web(harness.app, harness.server, "127.0.0.1:0")
    yield f"http://127.0.0.1:{running.port}"
    await running.stop(0)


async def frames(response: httpx.Response) -> AsyncIterator[tuple[int, bytes]]:
    """(flags, payload) of each gRPC-web frame as it arrives."""
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        while len(buffer) >= 5:
            flags, length = struct.unpack(">BI", buffer[:5])
            if len(buffer) < 5 + length:
                break
            yield flags, buffer[5 : 5 + length]
            buffer = buffer[5 + length :]


async def test_events_stream_over_grpc_web_as_they_commit(harness: Harness, web: str) -> None:
    h = watching(harness)
    t = await h.tenant(100)
    body = grpcweb.frame(epb.WatchEventsRequest().SerializeToString())
    async with (
        httpx.AsyncClient(timeout=20) as http,
        http.stream("POST", f"{web}/{WATCH}", content=body, headers=grpcweb.headers(t.key)) as r,
    ):
        assert r.status_code == 200
        incoming = frames(r)
        flags, payload = await asyncio.wait_for(anext(incoming), 10)
        opening = epb.WatchEventsResponse.FromString(payload)
        assert flags == 0 and opening.heartbeat.cursor == 2
        async with t.client() as client:
            await client.charge_tokens(
                tpb.ChargeTokensRequest(
                    operation_type=common_pb2.OPERATION_TYPE_SMS,
                    amount=4,
                    request_id=uuid.uuid4().hex,
                )
            )
        while True:
            flags, payload = await asyncio.wait_for(anext(incoming), 10)
            message = epb.WatchEventsResponse.FromString(payload)
            if message.HasField("event"):
                break
        assert message.event.seq == 3 and message.event.ledger_entry.tokens == 4


async def test_a_refused_stream_ends_with_the_native_status(harness: Harness, web: str) -> None:
    t = await harness.tenant(1)
    request = epb.WatchEventsRequest(types=["no.such"])
    async with httpx.AsyncClient(timeout=10) as http:
        reply = await grpcweb.call(http, web, WATCH, request, grpcweb.headers(t.key))
    assert reply.grpc_status == 3  # INVALID_ARGUMENT
    assert "types[0]" in unquote(reply.grpc_message)  # percent-encoded, per gRPC
    assert reply.status_details().code == 3
