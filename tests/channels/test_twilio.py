"""Twilio SMS/WhatsApp channels: the real `twilio` client against a loopback server that
checks the request Twilio's Messages API documents and answers like Twilio does."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from agentserver.adapters.channels.twilio_messaging import (
    TwilioSettings,
    TwilioSmsChannel,
    TwilioWhatsAppChannel,
)
from agentserver.domain.channels import (
    OutboundMessage,
    PermanentChannelError,
    TransientChannelError,
)

# The `http_server` fixture (conftest.py) starts an aiohttp app and returns its base URL.
HttpServerFactory = Callable[[web.Application], Awaitable[str]]

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "token-" + "f" * 26
MESSAGES_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]


@dataclass
class FakeTwilio:
    """Records every request; answers from `replies` (status, JSON) in order, then 201."""

    requests: list[Seen] = field(default_factory=list)
    replies: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    delay: float = 0.0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def messages(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append(Seen(request.method, request.path, dict(request.headers), form))
        if self.delay:
            # Hold the reply (until the test ends) to provoke a client timeout.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), self.delay)
        expected = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response(
                {
                    "code": 20003,
                    "message": "Authenticate",
                    "more_info": "https://www.twilio.com/docs/errors/20003",
                    "status": 401,
                },
                status=401,
            )
        if self.replies:
            status, body = self.replies.pop(0)
            return web.json_response(body, status=status)
        n = len(self.requests)
        return web.json_response(
            {
                "account_sid": ACCOUNT_SID,
                "api_version": "2010-04-01",
                "body": form.get("Body"),
                "date_created": "Fri, 06 Mar 2026 18:30:00 +0000",
                "date_sent": None,
                "date_updated": "Fri, 06 Mar 2026 18:30:00 +0000",
                "direction": "outbound-api",
                "error_code": None,
                "error_message": None,
                "from": form.get("From"),
                "messaging_service_sid": None,
                "num_media": "0",
                "num_segments": "1",
                "price": None,
                "price_unit": "USD",
                "sid": f"SM{n:032x}",
                "status": "queued",
                "subresource_uris": {},
                "to": form.get("To"),
                "uri": f"{MESSAGES_PATH[:-5]}/SM{n:032x}.json",
            },
            status=201,
        )


@pytest.fixture
async def twilio(http_server: HttpServerFactory) -> AsyncIterator[tuple[FakeTwilio, str]]:
    fake = FakeTwilio()
    app = web.Application()
    app.router.add_post(MESSAGES_PATH, fake.messages)
    base_url = await http_server(app)
    yield fake, base_url
    fake.release.set()


def _settings(base_url: str, **changes: Any) -> TwilioSettings:
    fields: dict[str, Any] = {
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "from_number": "+15005550006",
        "whatsapp_from": "+14155238886",
        "base_url": base_url,
        "timeout_seconds": 5,
    }
    fields.update(changes)
    return TwilioSettings(**fields)


SMS = OutboundMessage(
    idempotency_key="act-sms-1",
    to="+15558675310",
    body="Your table for two is booked for 8pm.",
    sender="+19999999999",
)


async def test_sms_sends_the_documented_request(twilio: tuple[FakeTwilio, str]) -> None:
    fake, base_url = twilio
    channel = TwilioSmsChannel(_settings(base_url))
    try:
        result = await channel.send(SMS)
    finally:
        await channel.aclose()

    assert len(fake.requests) == 1
    seen = fake.requests[0]
    assert seen.method == "POST"
    assert seen.path == MESSAGES_PATH
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert seen.form == {
        "To": "+15558675310",
        "From": "+15005550006",  # the tenant's number, not the proposed sender
        "Body": "Your table for two is booked for 8pm.",
    }
    assert seen.headers["I-Twilio-Idempotency-Token"] == "act-sms-1"
    assert seen.headers["Idempotency-Key"] == "act-sms-1"

    assert channel.name == "sms"
    assert result.channel == "twilio"
    assert result.provider_id == f"SM{1:032x}"
    assert result.detail == {"to": "+15558675310", "status": "queued"}
    assert result.pending is False


async def test_whatsapp_uses_whatsapp_addresses(twilio: tuple[FakeTwilio, str]) -> None:
    fake, base_url = twilio
    channel = TwilioWhatsAppChannel(_settings(base_url, whatsapp_from="whatsapp:+14155238886"))
    try:
        first = await channel.send(
            OutboundMessage(idempotency_key="act-wa-1", to="+15558675310", body="Hi!")
        )
        await channel.send(
            OutboundMessage(idempotency_key="act-wa-2", to="whatsapp:+15558675311", body="Yo")
        )
    finally:
        await channel.aclose()

    assert channel.name == "whatsapp"
    assert [r.form["To"] for r in fake.requests] == [
        "whatsapp:+15558675310",
        "whatsapp:+15558675311",
    ]
    assert {r.form["From"] for r in fake.requests} == {"whatsapp:+14155238886"}
    assert first.detail["to"] == "whatsapp:+15558675310"


def test_whatsapp_needs_a_sender() -> None:
    with pytest.raises(ValueError, match="whatsapp_from"):
        TwilioWhatsAppChannel(_settings("http://127.0.0.1:9", whatsapp_from=None))


async def test_concurrent_sends_carry_their_own_idempotency_key(
    twilio: tuple[FakeTwilio, str],
) -> None:
    fake, base_url = twilio
    channel = TwilioSmsChannel(_settings(base_url))
    keys = [f"act-{i}" for i in range(8)]
    try:
        await asyncio.gather(
            *(
                channel.send(OutboundMessage(idempotency_key=k, to="+15558675310", body=k))
                for k in keys
            )
        )
    finally:
        await channel.aclose()
    assert len(fake.requests) == len(keys)
    for seen in fake.requests:
        assert seen.headers["I-Twilio-Idempotency-Token"] == seen.form["Body"]


@pytest.mark.parametrize(
    ("status", "body", "error", "words"),
    [
        (
            400,
            {
                "code": 21211,
                "message": "The 'To' number +1555 is not a valid phone number.",
                "more_info": "https://www.twilio.com/docs/errors/21211",
                "status": 400,
            },
            PermanentChannelError,
            ["400", "21211", "not a valid phone number"],
        ),
        (
            429,
            {
                "code": 20429,
                "message": "Too Many Requests",
                "more_info": "https://www.twilio.com/docs/errors/20429",
                "status": 429,
            },
            TransientChannelError,
            ["429", "20429"],
        ),
        (
            500,
            {"code": 20500, "message": "Internal Server Error", "status": 500},
            TransientChannelError,
            ["500", "20500"],
        ),
        (
            503,
            {"code": 20503, "message": "Service Unavailable", "status": 503},
            TransientChannelError,
            ["503"],
        ),
        (
            404,
            {"code": 20404, "message": "The requested resource was not found", "status": 404},
            PermanentChannelError,
            ["404", "20404"],
        ),
    ],
)
async def test_error_mapping(
    twilio: tuple[FakeTwilio, str],
    status: int,
    body: dict[str, Any],
    error: type[Exception],
    words: list[str],
) -> None:
    fake, base_url = twilio
    fake.replies.append((status, body))
    channel = TwilioSmsChannel(_settings(base_url))
    try:
        with pytest.raises(error) as caught:
            await channel.send(SMS)
    finally:
        await channel.aclose()
    for word in words:
        assert word in str(caught.value)
    # The library does not retry behind our back: one send, one request.
    assert len(fake.requests) == 1


async def test_bad_credentials_are_permanent(twilio: tuple[FakeTwilio, str]) -> None:
    fake, base_url = twilio
    channel = TwilioSmsChannel(_settings(base_url, auth_token="wrong"))
    try:
        with pytest.raises(PermanentChannelError, match="20003"):
            await channel.send(SMS)
    finally:
        await channel.aclose()
    assert len(fake.requests) == 1


async def test_connection_refused_is_transient(free_port: int) -> None:
    channel = TwilioSmsChannel(_settings(f"http://127.0.0.1:{free_port}"))
    try:
        with pytest.raises(TransientChannelError, match="unreachable"):
            await channel.send(SMS)
    finally:
        await channel.aclose()


async def test_timeout_is_transient(twilio: tuple[FakeTwilio, str]) -> None:
    fake, base_url = twilio
    fake.delay = 5
    channel = TwilioSmsChannel(_settings(base_url, timeout_seconds=0.3))
    try:
        with pytest.raises(TransientChannelError):
            await asyncio.wait_for(channel.send(SMS), 3)
    finally:
        await channel.aclose()
    assert len(fake.requests) == 1


def test_settings_repr_hides_token() -> None:
    assert AUTH_TOKEN not in repr(_settings("http://127.0.0.1:9"))
