"""SmtpEmailChannel against a real aiosmtpd server on loopback."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from agentserver.adapters.channels.smtp import (
    SmtpEmailChannel,
    SmtpSettings,
    message_id_for,
)
from agentserver.domain.channels import (
    OutboundMessage,
    PermanentChannelError,
    TransientChannelError,
)
from tests.fakes.clock import FakeClock

USER, PASSWORD = "bistro", "s3cret"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    authenticated: bool


@dataclass
class Handler:
    """Accepts everything, or answers RCPT with `rcpt_reply` / DATA with `data_reply`."""

    rcpt_reply: str | None = None
    data_reply: str | None = None
    received: list[Received] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply is not None:
            return self.data_reply
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                message=parsed,
                # session.ssl is set by STARTTLS; implicit TLS shows on the transport.
                tls=session.ssl is not None
                or server.transport.get_extra_info("sslcontext") is not None,
                authenticated=bool(session.authenticated),
            )
        )
        return "250 Message accepted for delivery"


def _authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    # handled=False makes aiosmtpd itself answer "535 5.7.8" on failure.
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp_server(free_port: int) -> Iterator[tuple[Handler, int]]:
    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port)
    controller.start()
    try:
        yield handler, free_port
    finally:
        controller.stop()


def _settings(port: int, **changes: Any) -> SmtpSettings:
    base = SmtpSettings(
        host="127.0.0.1",
        port=port,
        security="none",
        username=None,
        password=None,
        from_address="Bistro Ada <bookings@bistro.example>",
        timeout_seconds=5,
    )
    return replace(base, **changes)


MESSAGE = OutboundMessage(
    idempotency_key="act-0001",
    to="ada@guest.example",
    subject="Your booking — Friday 8pm",
    body="Hello Ada,\nyour table for two is booked.\n",
    sender="ignored@elsewhere.example",
)


async def test_delivers_with_headers_and_body(smtp_server: tuple[Handler, int]) -> None:
    handler, port = smtp_server
    clock = FakeClock(datetime(2026, 3, 6, 18, 30, tzinfo=UTC))
    channel = SmtpEmailChannel(_settings(port), clock=clock)

    result = await channel.send(MESSAGE)

    assert len(handler.received) == 1
    got = handler.received[0]
    assert got.mail_from == "bookings@bistro.example"
    assert got.rcpt_tos == ["ada@guest.example"]
    msg = got.message
    assert msg["From"] == "Bistro Ada <bookings@bistro.example>"
    assert msg["To"] == "ada@guest.example"
    assert msg["Subject"] == "Your booking — Friday 8pm"
    assert msg["Message-ID"] == "<act-0001@bistro.example>"
    assert msg["X-Agentserver-Action-Id"] == "act-0001"
    assert msg["Date"].datetime == datetime(2026, 3, 6, 18, 30, tzinfo=UTC)
    assert msg.get_content_type() == "text/plain"
    # On the wire lines end in CRLF.
    assert msg.get_content() == "Hello Ada,\r\nyour table for two is booked.\r\n"
    # The model-proposed sender never reaches the wire.
    assert "ignored@elsewhere.example" not in msg.as_string()
    assert got.tls is False

    assert result.channel == "smtp"
    assert result.provider_id == "<act-0001@bistro.example>"
    assert result.detail == {"to": "ada@guest.example", "subject": "Your booking — Friday 8pm"}
    assert result.pending is False


async def test_same_action_gives_the_same_message_id(smtp_server: tuple[Handler, int]) -> None:
    handler, port = smtp_server
    channel = SmtpEmailChannel(_settings(port))
    first = await channel.send(MESSAGE)
    second = await channel.send(MESSAGE)
    # SMTP cannot refuse a duplicate, but both copies carry one Message-ID that a
    # receiver can de-duplicate on.
    assert first.provider_id == second.provider_id
    assert [r.message["Message-ID"] for r in handler.received] == [first.provider_id] * 2


def test_message_id_of_awkward_keys() -> None:
    assert message_id_for("3f2c-11", "x.example") == "<3f2c-11@x.example>"
    odd = message_id_for("act 1 <@>", "x.example")
    assert odd == message_id_for("act 1 <@>", "x.example")
    assert odd.startswith("<") and odd.endswith("@x.example>")
    assert " " not in odd and odd.count("@") == 1


async def test_starttls_and_auth(self_signed: Any, free_port: int) -> None:
    handler = Handler()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=free_port,
        tls_context=self_signed.server_context(),
        require_starttls=True,
        auth_required=True,
        authenticator=_authenticator,
    )
    controller.start()
    try:
        settings = _settings(
            free_port,
            security="starttls",
            username=USER,
            password=PASSWORD,
            ca_file=str(self_signed.cert_file),
        )
        await SmtpEmailChannel(settings).send(MESSAGE)
        assert len(handler.received) == 1
        assert handler.received[0].tls is True
        assert handler.received[0].authenticated is True

        # A wrong password is a 535 reply: permanent.
        wrong = SmtpEmailChannel(replace(settings, password="nope"))
        with pytest.raises(PermanentChannelError, match="535"):
            await wrong.send(MESSAGE)

        # Our self-signed certificate is not in the system trust store.
        untrusted = SmtpEmailChannel(replace(settings, ca_file=None))
        with pytest.raises(PermanentChannelError, match="certificate"):
            await untrusted.send(MESSAGE)
        assert len(handler.received) == 1
    finally:
        controller.stop()


async def test_implicit_tls(self_signed: Any, free_port: int) -> None:
    handler = Handler()
    controller = Controller(
        handler, hostname="127.0.0.1", port=free_port, ssl_context=self_signed.server_context()
    )
    controller.start()
    try:
        settings = _settings(free_port, security="tls", ca_file=str(self_signed.cert_file))
        await SmtpEmailChannel(settings).send(MESSAGE)
        assert len(handler.received) == 1
        assert handler.received[0].tls is True
    finally:
        controller.stop()


async def test_starttls_required_but_not_offered_is_permanent(
    smtp_server: tuple[Handler, int],
) -> None:
    handler, port = smtp_server  # plain server: no tls_context, so no STARTTLS
    channel = SmtpEmailChannel(_settings(port, security="starttls"))
    with pytest.raises(PermanentChannelError, match="STARTTLS"):
        await channel.send(MESSAGE)
    assert handler.received == []


async def test_server_down_is_transient(free_port: int) -> None:
    channel = SmtpEmailChannel(_settings(free_port))
    with pytest.raises(TransientChannelError):
        await channel.send(MESSAGE)


async def test_silent_server_times_out_as_transient() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        connections.append(writer)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        channel = SmtpEmailChannel(_settings(port, timeout_seconds=0.3))
        with pytest.raises(TransientChannelError):
            await channel.send(MESSAGE)
        assert len(connections) == 1
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_recipient_refused_550_is_permanent(smtp_server: tuple[Handler, int]) -> None:
    handler, port = smtp_server
    handler.rcpt_reply = "550 5.1.1 <ada@guest.example>: no such user"
    with pytest.raises(PermanentChannelError, match="550"):
        await SmtpEmailChannel(_settings(port)).send(MESSAGE)
    assert handler.received == []


async def test_recipient_deferred_451_is_transient(smtp_server: tuple[Handler, int]) -> None:
    handler, port = smtp_server
    handler.rcpt_reply = "451 4.7.1 Greylisted, try again later"
    with pytest.raises(TransientChannelError, match="451"):
        await SmtpEmailChannel(_settings(port)).send(MESSAGE)
    assert handler.received == []


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("452 4.3.1 Insufficient system storage", TransientChannelError),
        ("554 5.7.1 Message rejected as spam", PermanentChannelError),
    ],
)
async def test_data_reply_classes(
    smtp_server: tuple[Handler, int], reply: str, error: type[Exception]
) -> None:
    handler, port = smtp_server
    handler.data_reply = reply
    with pytest.raises(error, match=reply[:3]):
        await SmtpEmailChannel(_settings(port)).send(MESSAGE)


async def test_bad_addresses_and_header_injection_are_permanent(
    smtp_server: tuple[Handler, int],
) -> None:
    handler, port = smtp_server
    channel = SmtpEmailChannel(_settings(port))
    with pytest.raises(PermanentChannelError):
        await channel.send(replace(MESSAGE, to="not an address"))
    with pytest.raises(PermanentChannelError):
        await channel.send(replace(MESSAGE, to="a@x.example, b@y.example"))
    with pytest.raises(PermanentChannelError, match="header"):
        await channel.send(replace(MESSAGE, subject="hi\r\nBcc: victim@x.example"))
    assert handler.received == []


def test_settings_repr_hides_password() -> None:
    assert "s3cret" not in repr(_settings(25, username=USER, password=PASSWORD))
