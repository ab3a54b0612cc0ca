"""SMS and WhatsApp through Twilio's Programmable Messaging API, with the `twilio` library.

Each send is one ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (form fields
`To`, `From`, `Body`; HTTP Basic auth with the account SID and auth token), made with
twilio-python's asynchronous `AsyncTwilioHttpClient` and `messages.create_async`. The
library's own retries stay off (`max_retries=None`): retrying is the executor's call,
and a blind retry of a POST is how a message goes out twice.

Idempotency, honestly: Twilio's Messages resource (API version 2010-04-01) documents
*no* idempotency key, and twilio-python's `messages.create` has no parameter for one.
Twilio's newer APIs take an ``Idempotency-Key`` request header (twilio-python sends it
for e.g. Conversations v2 and Voice v3 transcriptions), and Twilio itself puts
``I-Twilio-Idempotency-Token`` on the *webhook* requests it sends to you, so the
receiver can recognise a retried webhook. Neither is documented as honoured on
``Messages.json``. We send the action id in both headers anyway: it costs nothing, it
shows up in request logs of any proxy in between, and it starts working if Twilio
honours it. Until then, Twilio de-duplicates nothing: once a POST may have reached
Twilio (a timeout waiting for the reply, a 5xx), a retry can send the message again.
Protection against that rests on the action state machine, not on Twilio.

Error mapping: HTTP 429 and 5xx, connection failures and timeouts are transient; any
other 4xx (400 with code 21211 "invalid 'To' number", 401 bad credentials, 403, 404)
is permanent. The exception text carries Twilio's error code and message.
"""

from __future__ import annotations

import abc
import base64
import contextvars
from dataclasses import dataclass
from typing import Any

import aiohttp
from twilio.base.exceptions import TwilioException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from agentserver.domain.channels import (
    ChannelResult,
    OutboundMessage,
    PermanentChannelError,
    TransientChannelError,
)

IDEMPOTENCY_HEADERS = ("I-Twilio-Idempotency-Token", "Idempotency-Key")
_WHATSAPP = "whatsapp:"

# The idempotency key of the send in progress. A ContextVar, not an attribute, because
# one client serves concurrent sends: each runs in its own task with its own context.
_current_key: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "agentserver_twilio_idempotency_key", default=None
)


@dataclass(frozen=True)
class TwilioSettings:
    """One tenant's Twilio account.

    `from_number` is the SMS sender (E.164 number, short code or alphanumeric ID);
    `whatsapp_from` the WhatsApp-enabled number (E.164, with or without the
    ``whatsapp:`` prefix), or None when the tenant has no WhatsApp sender. `base_url`
    replaces ``https://api.twilio.com`` (a regional edge such as
    ``https://api.dublin.ie1.twilio.com``, or a test server).
    """

    account_sid: str
    auth_token: str
    from_number: str
    whatsapp_from: str | None = None
    base_url: str | None = None
    timeout_seconds: float = 10

    def __repr__(self) -> str:
        # Keep the auth token out of logs and tracebacks.
        return (
            f"TwilioSettings(account_sid={self.account_sid!r}, auth_token='***', "
            f"from_number={self.from_number!r}, whatsapp_from={self.whatsapp_from!r}, "
            f"base_url={self.base_url!r})"
        )


class _IdempotentAsyncHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """twilio's aiohttp client, plus the idempotency headers and a real timeout.

    The timeout is added here because `AsyncTwilioHttpClient.request` passes the
    per-request timeout (None from `create_async`) straight to aiohttp, where None
    means "no timeout at all" and the constructor's timeout is never used.
    """

    def __init__(self, timeout_seconds: float) -> None:
        super().__init__(pool_connections=True, timeout=timeout_seconds, max_retries=None)
        self._timeout_seconds = timeout_seconds

    # The signature is the base class's, hence the noqa on `timeout`.
    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        allow_redirects: bool = False,
    ) -> Any:
        headers = dict(headers or {})
        key = _current_key.get()
        if key is not None:
            for name in IDEMPOTENCY_HEADERS:
                headers[name] = key
        if auth is not None:
            # The same HTTP Basic credentials, as a header: aiohttp deprecates the
            # `auth=BasicAuth(...)` the library would build (gone in aiohttp 4). The
            # library's request log skips Authorization headers.
            user, password = auth
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        return await super().request(
            method,
            url,
            params=params,
            data=data,
            headers=headers,
            auth=None,
            timeout=timeout if timeout is not None else self._timeout_seconds,
            allow_redirects=allow_redirects,
        )


class _TwilioMessagingChannel(abc.ABC):
    """Shared machinery of the SMS and WhatsApp channels."""

    _channel_name = ""

    def __init__(self, settings: TwilioSettings) -> None:
        self._settings = settings
        self._client: Any = None
        self._http: _IdempotentAsyncHttpClient | None = None

    @property
    def name(self) -> str:
        """The channel kind ("sms" or "whatsapp")."""
        return self._channel_name

    @abc.abstractmethod
    def _addresses(self, message: OutboundMessage) -> tuple[str, str]:
        """(From, To) as Twilio wants them for this channel."""

    def _twilio(self) -> Any:
        # Built on first use, inside the running loop: aiohttp's ClientSession (which
        # AsyncTwilioHttpClient creates in its constructor) needs one.
        if self._client is None:
            s = self._settings
            self._http = _IdempotentAsyncHttpClient(s.timeout_seconds)
            client = Client(
                s.account_sid,
                s.auth_token,
                http_client=self._http,
                # A non-empty mapping so the library does not read TWILIO_EDGE /
                # TWILIO_REGION from the process environment: a tenant's requests go
                # where that tenant's settings say, nowhere else.
                environment={"TWILIO_EDGE": "", "TWILIO_REGION": ""},
            )
            if s.base_url:
                client.api.base_url = s.base_url.rstrip("/")
            self._client = client
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP connection pool (call on shutdown)."""
        if self._http is not None:
            await self._http.close()
        self._http = None
        self._client = None

    async def send(self, message: OutboundMessage) -> ChannelResult:
        """Create one Twilio Message; see the module docstring for errors."""
        to, from_ = self._addresses(message)
        token = _current_key.set(message.idempotency_key)
        try:
            created = await self._twilio().api.account.messages.create_async(
                to=to, from_=from_, body=message.body
            )
        except TwilioException as exc:
            raise _map_twilio_error(exc) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientChannelError(f"Twilio unreachable: {type(exc).__name__}: {exc}") from exc
        except ValueError as exc:
            # A 2xx whose body is not JSON: Twilio probably created the message, so
            # this must not be retried blindly.
            raise PermanentChannelError(
                f"Twilio answered with an unreadable body (the message may have been "
                f"created): {exc}"
            ) from exc
        finally:
            _current_key.reset(token)
        sid = created.sid
        if not sid:
            # Twilio answered 2xx without a SID: the message may exist, but we cannot
            # name it. Permanent, so it is not blindly sent again.
            raise PermanentChannelError("Twilio accepted the request but returned no SID")
        return ChannelResult(
            channel="twilio",
            provider_id=str(sid),
            detail={"to": to, "status": str(created.status) if created.status else None},
        )


class TwilioSmsChannel(_TwilioMessagingChannel):
    """SMS from the tenant's `from_number` to an E.164 number.

    `message.sender` is not used: the sender is the tenant's configured number.
    """

    _channel_name = "sms"

    def _addresses(self, message: OutboundMessage) -> tuple[str, str]:
        return message.to.strip(), self._settings.from_number


class TwilioWhatsAppChannel(_TwilioMessagingChannel):
    """WhatsApp via Twilio: both From and To as ``whatsapp:+E164`` addresses.

    Free-form text reaches a user only inside WhatsApp's 24-hour customer service
    window; outside it Twilio accepts the request and the message fails later
    (error 63016), which shows in the message's status, not in this call.
    """

    _channel_name = "whatsapp"

    def __init__(self, settings: TwilioSettings) -> None:
        if not settings.whatsapp_from:
            raise ValueError("TwilioSettings.whatsapp_from is required for WhatsApp")
        super().__init__(settings)

    def _addresses(self, message: OutboundMessage) -> tuple[str, str]:
        assert self._settings.whatsapp_from is not None  # checked in __init__
        return _whatsapp(message.to), _whatsapp(self._settings.whatsapp_from)


def _whatsapp(number: str) -> str:
    number = number.strip()
    return number if number.startswith(_WHATSAPP) else f"{_WHATSAPP}{number}"


def _map_twilio_error(exc: TwilioException) -> TransientChannelError | PermanentChannelError:
    # TwilioRestException (legacy error JSON: code, message, more_info, status) and
    # TwilioServiceException (RFC 9457 problem details) both carry `status` and `code`.
    status = getattr(exc, "status", None)
    code = getattr(exc, "code", None)
    text = getattr(exc, "msg", None) or getattr(exc, "detail", None) or getattr(exc, "title", None)
    summary = f"Twilio HTTP {status}, error {code}: {text or exc!r}"
    if not isinstance(status, int):
        # No HTTP status: the library refused locally (missing credentials and the
        # like), which no retry fixes.
        return PermanentChannelError(f"Twilio client error: {exc!r}")
    if status == 429 or status >= 500 or status == 408:
        return TransientChannelError(summary)
    return PermanentChannelError(summary)


__all__ = [
    "IDEMPOTENCY_HEADERS",
    "TwilioSettings",
    "TwilioSmsChannel",
    "TwilioWhatsAppChannel",
]
