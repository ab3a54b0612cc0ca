"""Loopback stand-ins for providers, driven by the real client libraries:
an SMTP server (aiosmtpd) and a Twilio Messages API (aiohttp) the test controls."""

from __future__ import annotations

import abc
import asyncio
import base64
import email
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SmtpInbox:
    port: int
    messages: list[Message] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


@contextmanager
def smtp_server() -> Iterator[SmtpInbox]:
    inbox = SmtpInbox(port=free_port())
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()


class _Loopback(abc.ABC):
    """An aiohttp app on 127.0.0.1 (kernel-chosen port) that a test starts and stops."""

    url: str
    _runner: web.AppRunner | None

    @abc.abstractmethod
    def routes(self, app: web.Application) -> None:
        """Declare the provider paths this fake answers."""

    async def _serve(self) -> str:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class FakeTwilio(_Loopback):
    """Answers POST /2010-04-01/Accounts/{sid}/Messages.json like Twilio does."""

    account_sid: str = "AC" + "0" * 32
    auth_token: str = "secret-token"
    status: int = 201
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    delay: float = 0.0  # seconds between receiving a message and answering
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        expected = (
            "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        )
        self.requests.append(
            {
                "path": request.path,
                "form": form,
                "auth_ok": request.headers.get("Authorization") == expected,
                "idempotency": request.headers.get("I-Twilio-Idempotency-Token", ""),
            }
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status >= 400:
            return web.json_response(
                {"code": 21211, "message": "The 'To' number is not valid.", "status": self.status},
                status=self.status,
            )
        sid = f"SM{len(self.requests):032d}"
        return web.json_response(
            {"sid": sid, "status": "queued", "to": form.get("To"), "from": form.get("From")},
            status=201,
        )

    def routes(self, app: web.Application) -> None:
        app.router.add_post(f"/2010-04-01/Accounts/{self.account_sid}/Messages.json", self.handle)

    async def start(self) -> FakeTwilio:
        self.url = await self._serve()
        return self

    def config(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(config, secrets) for `App.set_channel(tenant, "twilio", ...)`."""
        return (
            {
                "account_sid": self.account_sid,
                "from_number": "+15550001111",
                "whatsapp_from": "+15550002222",
                "base_url": self.url,
            },
            {"auth_token": self.auth_token},
        )


@dataclass
class FakeOpenAI(_Loopback):
    """A Chat Completions endpoint that answers every request with the same tool calls."""

    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    # The answer to requests without tools (report writing).
    text: str = "All quiet this month."
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if body.get("tools"):
            message["tool_calls"] = self.tool_calls
        else:
            message["content"] = self.text
        return web.json_response(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "test-model",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "tool_calls" if body.get("tools") else "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.handle)

    async def start(self) -> FakeOpenAI:
        self.url = await self._serve() + "/v1"
        return self


def tool_call(name: str, arguments: dict[str, Any], index: int = 0) -> dict[str, Any]:
    import json

    return {
        "id": f"call_{index}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


@dataclass
class FakeElevenLabs(_Loopback):
    """Outbound calls and conversation status, answered as ElevenLabs documents."""

    api_key: str = "xi-test-key"
    status: str = "in-progress"
    calls: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def outbound(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(
            {"body": body, "key_ok": request.headers.get("xi-api-key") == self.api_key}
        )
        return web.json_response(
            {"success": True, "message": "ok", "conversation_id": "conv_1", "callSid": "CA1"}
        )

    async def conversation(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "conversation_id": request.match_info["cid"],
                "status": self.status,
                "analysis": {"call_successful": "success", "transcript_summary": "confirmed"},
                "metadata": {"call_duration_secs": 42},
            }
        )

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/convai/twilio/outbound-call", self.outbound)
        app.router.add_get("/v1/convai/conversations/{cid}", self.conversation)

    async def start(self) -> FakeElevenLabs:
        self.url = await self._serve()
        return self
