"""AI voice calls through ElevenLabs Agents (Conversational AI) over a Twilio number.

`send` starts the call with ``POST /v1/convai/twilio/outbound-call`` and returns at once
with ``pending=True``: the call itself takes minutes. The executor later asks `poll`,
which reads ``GET /v1/convai/conversations/{conversation_id}`` until the conversation's
`status` is ``done`` or ``failed`` (before that: ``initiated``, ``in-progress``,
``processing``).

Request body (JSON; auth header ``xi-api-key``)::

    {"agent_id": ..., "agent_phone_number_id": ..., "to_number": "+E164",
     "conversation_initiation_client_data": {
         "conversation_config_override": {"agent": {"first_message": <body>}},
         "dynamic_variables": {"agentserver_action_id": <action id>,
                               "agentserver_subject": <subject>,
                               "agentserver_message": <body>}}}

`conversation_initiation_client_data` is the documented per-conversation field; its
`conversation_config_override.agent.first_message` makes the agent open with the
message (the agent must allow that override in its security settings, or ElevenLabs
refuses the conversation; set `first_message_override=False` for agents that do not).
The dynamic variables let the agent's prompt refer to ``{{agentserver_message}}``
(the purpose) and keep the action id on the conversation record, where
``GET /v1/convai/conversations/{id}`` returns it.

Idempotency: the outbound-call endpoint documents no idempotency key, and a call that
was placed cannot be un-placed; the action id rides along only as the
``agentserver_action_id`` dynamic variable, for reconciliation. A timeout or 5xx on
`send` is reported as transient (the port's rule), but the call may have been placed
all the same: a caller that retries it risks a second call (see `retry`).

Error mapping: HTTP 408, 429 and 5xx, connection failures and timeouts are transient;
other 4xx (401 bad key, 404 unknown agent or phone number, 422 invalid body) and a
2xx answer with ``"success": false`` (the call could not be started) are permanent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from agentserver.adapters.channels.polling import CallStatus
from agentserver.domain.channels import (
    ChannelResult,
    OutboundMessage,
    PermanentChannelError,
    TransientChannelError,
)

OUTBOUND_CALL_PATH = "/v1/convai/twilio/outbound-call"
CONVERSATION_PATH = "/v1/convai/conversations/{conversation_id}"

_RUNNING = frozenset({"initiated", "in-progress", "processing"})


@dataclass(frozen=True)
class ElevenLabsSettings:
    """One tenant's ElevenLabs agent and the Twilio number it calls from.

    `phone_number_id` is ElevenLabs' id of the imported Twilio number
    (``agent_phone_number_id`` in the API), not the number itself.
    """

    api_key: str
    agent_id: str
    phone_number_id: str
    base_url: str = "https://api.elevenlabs.io"
    timeout_seconds: float = 15
    first_message_override: bool = True

    def __repr__(self) -> str:
        # Keep the API key out of logs and tracebacks.
        return (
            f"ElevenLabsSettings(api_key='***', agent_id={self.agent_id!r}, "
            f"phone_number_id={self.phone_number_id!r}, base_url={self.base_url!r})"
        )


class ElevenLabsCallChannel:
    """The phone channel: an ElevenLabs agent calls `message.to` and talks.

    `send` returns `ChannelResult(pending=True, provider_id=<conversation id>)`;
    `poll(provider_id)` returns a `CallStatus`. `message.sender` is not used: the
    caller id is the tenant's configured number.
    """

    def __init__(self, settings: ElevenLabsSettings) -> None:
        self._settings = settings
        self._http = httpx.AsyncClient(
            base_url=settings.base_url.rstrip("/"),
            headers={"xi-api-key": settings.api_key, "accept": "application/json"},
            timeout=settings.timeout_seconds,
        )

    @property
    def name(self) -> str:
        """Always "phone"."""
        return "phone"

    async def aclose(self) -> None:
        """Close the HTTP connection pool (call on shutdown)."""
        await self._http.aclose()

    def request_body(self, message: OutboundMessage) -> dict[str, Any]:
        """The JSON body `send` posts (public so it can be inspected)."""
        client_data: dict[str, Any] = {
            "dynamic_variables": {
                "agentserver_action_id": message.idempotency_key,
                "agentserver_subject": message.subject,
                "agentserver_message": message.body,
            }
        }
        if self._settings.first_message_override and message.body:
            client_data["conversation_config_override"] = {"agent": {"first_message": message.body}}
        return {
            "agent_id": self._settings.agent_id,
            "agent_phone_number_id": self._settings.phone_number_id,
            "to_number": message.to.strip(),
            "conversation_initiation_client_data": client_data,
        }

    async def send(self, message: OutboundMessage) -> ChannelResult:
        """Start the call; the result is pending until `poll` says it is done."""
        payload = await self._request("POST", OUTBOUND_CALL_PATH, json=self.request_body(message))
        if payload.get("success") is False:
            raise PermanentChannelError(
                f"ElevenLabs could not start the call: {payload.get('message') or payload}"
            )
        conversation_id = payload.get("conversation_id")
        call_sid = payload.get("callSid") or payload.get("call_sid")
        detail: dict[str, Any] = {
            "to": message.to.strip(),
            "conversation_id": conversation_id,
            "call_sid": call_sid,
            "message": payload.get("message"),
        }
        if conversation_id:
            return ChannelResult(
                channel="elevenlabs",
                provider_id=str(conversation_id),
                detail=detail,
                pending=True,
            )
        if call_sid:
            # The call was placed but there is no conversation to follow. Failing the
            # action would invite a second call, so report it done and say why.
            detail["untracked"] = "no conversation_id returned; outcome cannot be polled"
            return ChannelResult(channel="elevenlabs", provider_id=str(call_sid), detail=detail)
        raise PermanentChannelError(
            f"ElevenLabs returned neither conversation nor call id: {payload}"
        )

    async def poll(self, provider_id: str) -> CallStatus:
        """Read the conversation's status.

        `done` once ElevenLabs reports ``done`` or ``failed``. A ``done`` conversation
        counts as succeeded unless the agent's own post-call analysis judged it a
        ``failure`` (``analysis.call_successful``); ``failed`` never succeeds. Unknown
        statuses count as still running, so a new status never finishes an action by
        mistake.
        """
        path = CONVERSATION_PATH.format(conversation_id=quote(provider_id, safe=""))
        payload = await self._request("GET", path)
        status = str(payload.get("status") or "")
        analysis = payload.get("analysis") or {}
        metadata = payload.get("metadata") or {}
        call_successful = analysis.get("call_successful") if isinstance(analysis, dict) else None
        detail: dict[str, Any] = {"status": status, "conversation_id": provider_id}
        if isinstance(analysis, dict):
            detail["call_successful"] = call_successful
            detail["summary"] = analysis.get("transcript_summary")
        if isinstance(metadata, dict):
            detail["duration_seconds"] = metadata.get("call_duration_secs")
            detail["termination_reason"] = metadata.get("termination_reason")
        if status == "done":
            return CallStatus(done=True, succeeded=call_successful != "failure", detail=detail)
        if status == "failed":
            return CallStatus(done=True, succeeded=False, detail=detail)
        if status not in _RUNNING:
            detail["note"] = "unknown status; treated as still running"
        return CallStatus(done=False, succeeded=False, detail=detail)

    async def _request(
        self, method: str, path: str, *, json: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        try:
            response = await self._http.request(method, path, json=json)
        except httpx.TimeoutException as exc:
            raise TransientChannelError(f"ElevenLabs timed out: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise TransientChannelError(f"ElevenLabs unreachable: {exc!r}") from exc
        if response.status_code >= 400:
            summary = f"ElevenLabs HTTP {response.status_code}: {_error_text(response)}"
            if response.status_code in (408, 429) or response.status_code >= 500:
                raise TransientChannelError(summary)
            raise PermanentChannelError(summary)
        try:
            payload = response.json()
        except ValueError as exc:
            raise PermanentChannelError(
                f"ElevenLabs answered HTTP {response.status_code} with a body that is not JSON"
            ) from exc
        if not isinstance(payload, dict):
            raise PermanentChannelError(f"ElevenLabs answered with unexpected JSON: {payload!r}")
        return payload


def _error_text(response: httpx.Response) -> str:
    """ElevenLabs' error words: ``{"detail": {"status", "message"}}``, or a 422's
    ``{"detail": [{"loc", "msg"}, ...]}``, or the raw text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        parts = [str(detail[k]) for k in ("status", "message") if detail.get(k)]
        return ": ".join(parts) or str(detail)
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg')}"
            if isinstance(item, dict)
            else str(item)
            for item in detail
        )
    if detail is not None:
        return str(detail)
    return str(body)[:500]


__all__ = ["CONVERSATION_PATH", "OUTBOUND_CALL_PATH", "ElevenLabsCallChannel", "ElevenLabsSettings"]
