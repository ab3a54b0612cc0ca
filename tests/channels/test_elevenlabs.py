"""ElevenLabsCallChannel against a loopback server speaking the ElevenLabs Agents API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from agentserver.adapters.channels.elevenlabs import ElevenLabsCallChannel, ElevenLabsSettings
from agentserver.adapters.channels.polling import CallStatus, PollableChannel
from agentserver.domain.channels import (
    OutboundMessage,
    PermanentChannelError,
    TransientChannelError,
)

# The `http_server` fixture (conftest.py) starts an aiohttp app and returns its base URL.
HttpServerFactory = Callable[[web.Application], Awaitable[str]]

API_KEY = "sk_" + "a" * 48


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    raw_path: str = ""


@dataclass
class FakeElevenLabs:
    requests: list[Seen] = field(default_factory=list)
    call_reply: tuple[int, Any] = (
        200,
        {
            "success": True,
            "message": "Success",
            "conversation_id": "conv_01jx9",
            "callSid": "CA0123456789abcdef0123456789abcdef",
        },
    )
    conversations: dict[str, tuple[int, Any]] = field(default_factory=dict)

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if request.headers.get("xi-api-key") != API_KEY:
            return web.json_response(
                {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}},
                status=401,
            )
        return None

    async def outbound_call(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(Seen(request.method, request.path, dict(request.headers), body))
        if (denied := self._unauthorized(request)) is not None:
            return denied
        status, reply = self.call_reply
        if isinstance(reply, str):
            return web.Response(text=reply, status=status)
        return web.json_response(reply, status=status)

    async def conversation(self, request: web.Request) -> web.Response:
        self.requests.append(
            Seen(request.method, request.path, dict(request.headers), None, request.raw_path)
        )
        if (denied := self._unauthorized(request)) is not None:
            return denied
        conversation_id = request.match_info["conversation_id"]
        status, reply = self.conversations.get(
            conversation_id,
            (
                404,
                {
                    "detail": {
                        "status": "conversation_not_found",
                        "message": "Conversation not found",
                    }
                },
            ),
        )
        return web.json_response(reply, status=status)


@pytest.fixture
async def elevenlabs(
    http_server: HttpServerFactory,
) -> AsyncIterator[tuple[FakeElevenLabs, ElevenLabsCallChannel]]:
    fake = FakeElevenLabs()
    app = web.Application()
    app.router.add_post("/v1/convai/twilio/outbound-call", fake.outbound_call)
    app.router.add_get("/v1/convai/conversations/{conversation_id}", fake.conversation)
    base_url = await http_server(app)
    channel = ElevenLabsCallChannel(_settings(base_url))
    yield fake, channel
    await channel.aclose()


def _settings(base_url: str, **changes: Any) -> ElevenLabsSettings:
    fields: dict[str, Any] = {
        "api_key": API_KEY,
        "agent_id": "agent_7101k",
        "phone_number_id": "phnum_3301k",
        "base_url": base_url,
        "timeout_seconds": 5,
    }
    fields.update(changes)
    return ElevenLabsSettings(**fields)


CALL = OutboundMessage(
    idempotency_key="act-call-1",
    to="+15558675310",
    subject="Confirm Friday booking",
    body="Hello, this is Bistro Ada calling about your booking on Friday at 8pm.",
)


def _conversation(status: str, call_successful: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "agent_id": "agent_7101k",
        "conversation_id": "conv_01jx9",
        "status": status,
        "transcript": [],
        "metadata": {"start_time_unix_secs": 1772821800, "call_duration_secs": 42},
        "has_audio": True,
        "has_user_audio": True,
        "has_response_audio": True,
    }
    if call_successful is not None:
        body["analysis"] = {
            "call_successful": call_successful,
            "transcript_summary": "Guest confirmed the booking.",
        }
    return body


async def test_send_posts_the_documented_body(
    elevenlabs: tuple[FakeElevenLabs, ElevenLabsCallChannel],
) -> None:
    fake, channel = elevenlabs
    result = await channel.send(CALL)

    assert len(fake.requests) == 1
    seen = fake.requests[0]
    assert (seen.method, seen.path) == ("POST", "/v1/convai/twilio/outbound-call")
    assert seen.headers["xi-api-key"] == API_KEY
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.json == {
        "agent_id": "agent_7101k",
        "agent_phone_number_id": "phnum_3301k",
        "to_number": "+15558675310",
        "conversation_initiation_client_data": {
            "conversation_config_override": {
                "agent": {
                    "first_message": (
                        "Hello, this is Bistro Ada calling about your booking on Friday at 8pm."
                    )
                }
            },
            "dynamic_variables": {
                "agentserver_action_id": "act-call-1",
                "agentserver_subject": "Confirm Friday booking",
                "agentserver_message": (
                    "Hello, this is Bistro Ada calling about your booking on Friday at 8pm."
                ),
            },
        },
    }

    assert channel.name == "phone"
    assert result.channel == "elevenlabs"
    assert result.pending is True
    assert result.provider_id == "conv_01jx9"
    assert result.detail["call_sid"] == "CA0123456789abcdef0123456789abcdef"
    assert result.detail["to"] == "+15558675310"


async def test_first_message_override_can_be_turned_off(
    http_server: HttpServerFactory,
) -> None:
    fake = FakeElevenLabs()
    app = web.Application()
    app.router.add_post("/v1/convai/twilio/outbound-call", fake.outbound_call)
    channel = ElevenLabsCallChannel(_settings(await http_server(app), first_message_override=False))
    try:
        await channel.send(CALL)
    finally:
        await channel.aclose()
    client_data = fake.requests[0].json["conversation_initiation_client_data"]
    assert "conversation_config_override" not in client_data
    assert client_data["dynamic_variables"]["agentserver_action_id"] == "act-call-1"


@pytest.mark.parametrize(
    ("conversation", "expected"),
    [
        (_conversation("initiated"), (False, False)),
        (_conversation("in-progress"), (False, False)),
        (_conversation("processing"), (False, False)),
        (_conversation("some-new-status"), (False, False)),
        (_conversation("done", "success"), (True, True)),
        (_conversation("done", "unknown"), (True, True)),
        (_conversation("done"), (True, True)),
        (_conversation("done", "failure"), (True, False)),
        (_conversation("failed"), (True, False)),
    ],
)
async def test_poll_reads_the_conversation_status(
    elevenlabs: tuple[FakeElevenLabs, ElevenLabsCallChannel],
    conversation: dict[str, Any],
    expected: tuple[bool, bool],
) -> None:
    fake, channel = elevenlabs
    fake.conversations["conv_01jx9"] = (200, conversation)
    status = await channel.poll("conv_01jx9")
    assert isinstance(status, CallStatus)
    assert (status.done, status.succeeded) == expected
    assert status.detail["status"] == conversation["status"]
    assert status.detail["duration_seconds"] == 42
    seen = fake.requests[-1]
    assert (seen.method, seen.path) == ("GET", "/v1/convai/conversations/conv_01jx9")
    assert seen.headers["xi-api-key"] == API_KEY


async def test_send_then_poll_until_done(
    elevenlabs: tuple[FakeElevenLabs, ElevenLabsCallChannel],
) -> None:
    fake, channel = elevenlabs
    result = await channel.send(CALL)
    fake.conversations[result.provider_id] = (200, _conversation("in-progress"))
    assert (await channel.poll(result.provider_id)).done is False
    fake.conversations[result.provider_id] = (200, _conversation("done", "success"))
    final = await channel.poll(result.provider_id)
    assert final.done and final.succeeded
    assert final.detail["summary"] == "Guest confirmed the booking."


@pytest.mark.parametrize(
    ("status", "reply", "error", "words"),
    [
        (
            422,
            {"detail": [{"loc": ["body", "to_number"], "msg": "field required", "type": "x"}]},
            PermanentChannelError,
            ["422", "body.to_number: field required"],
        ),
        (
            404,
            {"detail": {"status": "agent_not_found", "message": "Agent not found"}},
            PermanentChannelError,
            ["404", "Agent not found"],
        ),
        (429, {"detail": {"status": "too_many_concurrent_requests"}}, TransientChannelError, []),
        (500, "Internal Server Error", TransientChannelError, ["500"]),
        (502, "<html>bad gateway</html>", TransientChannelError, ["502", "bad gateway"]),
        (
            200,
            {"success": False, "message": "Twilio rejected the number", "conversation_id": None},
            PermanentChannelError,
            ["Twilio rejected the number"],
        ),
        (200, "not json", PermanentChannelError, ["not JSON"]),
    ],
)
async def test_send_error_mapping(
    elevenlabs: tuple[FakeElevenLabs, ElevenLabsCallChannel],
    status: int,
    reply: Any,
    error: type[Exception],
    words: list[str],
) -> None:
    fake, channel = elevenlabs
    fake.call_reply = (status, reply)
    with pytest.raises(error) as caught:
        await channel.send(CALL)
    for word in words:
        assert word in str(caught.value)
    assert len(fake.requests) == 1


async def test_bad_api_key_is_permanent(http_server: HttpServerFactory) -> None:
    fake = FakeElevenLabs()
    app = web.Application()
    app.router.add_post("/v1/convai/twilio/outbound-call", fake.outbound_call)
    channel = ElevenLabsCallChannel(_settings(await http_server(app), api_key="sk_wrong"))
    try:
        with pytest.raises(PermanentChannelError, match=r"401.*Invalid API key"):
            await channel.send(CALL)
    finally:
        await channel.aclose()


async def test_poll_errors(elevenlabs: tuple[FakeElevenLabs, ElevenLabsCallChannel]) -> None:
    fake, channel = elevenlabs
    with pytest.raises(PermanentChannelError, match="404"):
        await channel.poll("conv_unknown")
    fake.conversations["conv_busy"] = (503, {"detail": "overloaded"})
    with pytest.raises(TransientChannelError, match="503"):
        await channel.poll("conv_busy")
    # Ids are path-escaped, never able to reach another endpoint.
    with pytest.raises(PermanentChannelError, match="404"):
        await channel.poll("../../twilio/outbound-call")
    assert fake.requests[-1].raw_path == (
        "/v1/convai/conversations/..%2F..%2Ftwilio%2Foutbound-call"
    )


async def test_unreachable_and_timeout_are_transient(
    free_port: int, http_server: HttpServerFactory
) -> None:
    channel = ElevenLabsCallChannel(_settings(f"http://127.0.0.1:{free_port}"))
    try:
        with pytest.raises(TransientChannelError, match="unreachable"):
            await channel.send(CALL)
    finally:
        await channel.aclose()

    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 5)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/convai/twilio/outbound-call", slow)
    channel = ElevenLabsCallChannel(_settings(await http_server(app), timeout_seconds=0.3))
    try:
        with pytest.raises(TransientChannelError, match="timed out"):
            await asyncio.wait_for(channel.send(CALL), 3)
    finally:
        release.set()
        await channel.aclose()


def test_is_pollable_and_hides_key() -> None:
    channel = ElevenLabsCallChannel(_settings("http://127.0.0.1:9"))
    assert isinstance(channel, PollableChannel)
    assert API_KEY not in repr(_settings("http://127.0.0.1:9"))


async def test_call_without_conversation_id(
    elevenlabs: tuple[FakeElevenLabs, ElevenLabsCallChannel],
) -> None:
    fake, channel = elevenlabs
    # Placed, but nothing to poll: reported done (not failed, which would invite a
    # second call), and marked untracked.
    fake.call_reply = (200, {"success": True, "message": "Success", "callSid": "CA42"})
    result = await channel.send(CALL)
    assert result.pending is False
    assert result.provider_id == "CA42"
    assert "untracked" in result.detail

    fake.call_reply = (200, {"success": True, "message": "Success"})
    with pytest.raises(PermanentChannelError, match="neither"):
        await channel.send(CALL)
