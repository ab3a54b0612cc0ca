"""The typed async client over the generated stubs of the four services."""

# ruff: noqa: ASYNC109 -- `timeout` is the gRPC deadline sent to the server, not a local wait.
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from google.protobuf.message import Message

from agentserver.v1 import (
    admin_service_pb2_grpc,
    agent_service_pb2,
    agent_service_pb2_grpc,
    conversation_service_pb2,
    conversation_service_pb2_grpc,
    event_service_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
    webhook_service_pb2_grpc,
)

from ._admin import AdminMethods
from ._errors import AgentServerError
from ._events import EventWatch
from ._options import DEFAULT, Timeout, _UseClientDefault
from ._webhooks import WebhookMethods

__all__ = ["AgentServerClient"]

_Req = TypeVar("_Req", bound=Message)
_Resp = TypeVar("_Resp", bound=Message)


@dataclass(frozen=True)
class _Identity:
    api_key: str
    tenant_id: str
    user_id: str
    location_id: str

    def metadata(self) -> tuple[tuple[str, str], ...]:
        pairs = (
            ("authorization", f"Bearer {self.api_key}" if self.api_key else ""),
            ("x-tenant-id", self.tenant_id),
            ("x-user-id", self.user_id),
            ("x-location-id", self.location_id),
        )
        return tuple((key, value) for key, value in pairs if value)


@dataclass(frozen=True)
class _Stubs:
    agent: agent_service_pb2_grpc.AgentServiceAsyncStub
    conversation: conversation_service_pb2_grpc.ConversationServiceAsyncStub
    token: token_service_pb2_grpc.TokenServiceAsyncStub
    admin: admin_service_pb2_grpc.AdminServiceAsyncStub
    event: event_service_pb2_grpc.EventServiceAsyncStub
    webhook: webhook_service_pb2_grpc.WebhookServiceAsyncStub

    @classmethod
    def for_channel(cls, channel: grpc.aio.Channel) -> _Stubs:
        return cls(
            agent=agent_service_pb2_grpc.AgentServiceStub(channel),
            conversation=conversation_service_pb2_grpc.ConversationServiceStub(channel),
            token=token_service_pb2_grpc.TokenServiceStub(channel),
            admin=admin_service_pb2_grpc.AdminServiceStub(channel),
            event=event_service_pb2_grpc.EventServiceStub(channel),
            webhook=webhook_service_pb2_grpc.WebhookServiceStub(channel),
        )


class AgentServerClient(AdminMethods, WebhookMethods):
    """An async client for AgentService, ConversationService, TokenService,
    AdminService, EventService and WebhookService.

    Use it as an async context manager, or call `close()`::

        async with AgentServerClient("localhost:50051", api_key=key, tenant_id="t1",
                                     user_id="u1") as client:
            reply = await client.process(agent_service_pb2.ProcessRequest(message="hi"))

    The identity (API key, tenant, user, location) is fixed per client and sent as
    `authorization: Bearer <key>`, `x-tenant-id`, `x-user-id` and `x-location-id` on
    every call; empty values are not sent. `with_identity` derives a client for
    another identity over the same channel.

    Every rpc method takes its request message and two keyword arguments:

    - `timeout`: seconds for this call; None for no deadline; when omitted, the
      client's `default_timeout`.
    - `metadata`: extra `(key, value)` pairs for this call. A key given here replaces
      the client's entries for that key (e.g. `("x-user-id", "u2")`); an empty value
      only removes them. Keys are sent lower-cased, as gRPC requires.

    A call that does not end OK raises `AgentServerError`, and nothing else for a
    gRPC failure. The client never retries: writes are idempotent by `request_id`,
    so resending the same request with the same `request_id` is safe and returns
    the first result; see `AgentServerError.is_retryable`.
    """

    _channel: grpc.aio.Channel
    _owns_channel: bool
    _stubs: _Stubs
    _identity: _Identity
    _metadata: tuple[tuple[str, str], ...]
    _default_timeout: float | None
    _target: str | None

    def __init__(
        self,
        target: str,
        *,
        api_key: str,
        tenant_id: str,
        user_id: str = "",
        location_id: str = "",
        secure: bool = False,
        root_certificates: bytes | None = None,
        default_timeout: float | None = 30.0,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Opens a channel to `target` (`host:port`), TLS if `secure`.

        `root_certificates` (PEM) replaces the system trust store; it needs `secure`.
        `channel_options` are passed to grpc as they are.
        """
        if root_certificates is not None and not secure:
            raise ValueError("root_certificates needs secure=True")
        options = list(channel_options)
        if secure:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(target, options=options)
        self._setup(
            channel,
            owns_channel=True,
            stubs=_Stubs.for_channel(channel),
            identity=_Identity(api_key, tenant_id, user_id, location_id),
            default_timeout=default_timeout,
            target=target,
        )

    @classmethod
    def from_channel(
        cls,
        channel: grpc.aio.Channel,
        *,
        api_key: str,
        tenant_id: str,
        user_id: str = "",
        location_id: str = "",
        default_timeout: float | None = 30.0,
    ) -> Self:
        """A client over an existing channel; `close()` leaves that channel open."""
        client = cls.__new__(cls)
        client._setup(
            channel,
            owns_channel=False,
            stubs=_Stubs.for_channel(channel),
            identity=_Identity(api_key, tenant_id, user_id, location_id),
            default_timeout=default_timeout,
            target=None,
        )
        return client

    def with_identity(
        self,
        *,
        user_id: str | None = None,
        location_id: str | None = None,
        api_key: str | None = None,
        tenant_id: str | None = None,
    ) -> Self:
        """A client sharing this one's channel, with the given identity fields replaced.

        None keeps a field; "" clears it. The derived client never closes the
        channel; closing this client closes it for both (if this client owns it).
        """
        identity = self._identity
        changes = {
            "user_id": user_id,
            "location_id": location_id,
            "api_key": api_key,
            "tenant_id": tenant_id,
        }
        identity = replace(identity, **{k: v for k, v in changes.items() if v is not None})
        client = type(self).__new__(type(self))
        client._setup(
            self._channel,
            owns_channel=False,
            stubs=self._stubs,
            identity=identity,
            default_timeout=self._default_timeout,
            target=self._target,
        )
        return client

    def _setup(
        self,
        channel: grpc.aio.Channel,
        *,
        owns_channel: bool,
        stubs: _Stubs,
        identity: _Identity,
        default_timeout: float | None,
        target: str | None,
    ) -> None:
        self._channel = channel
        self._owns_channel = owns_channel
        self._stubs = stubs
        self._admin = stubs.admin
        self._webhook = stubs.webhook
        self._identity = identity
        self._metadata = identity.metadata()
        self._default_timeout = default_timeout
        self._target = target

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying channel (shared with clients made by `with_identity`)."""
        return self._channel

    async def close(self, grace: float | None = None) -> None:
        """Closes the channel if this client opened it; `grace` lets calls in flight finish."""
        if self._owns_channel:
            await self._channel.close(grace)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        # Never the API key.
        identity = self._identity
        return (
            f"AgentServerClient(target={self._target!r}, tenant_id={identity.tenant_id!r}, "
            f"user_id={identity.user_id!r}, location_id={identity.location_id!r})"
        )

    def _call_metadata(self, extra: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        if not extra:
            return self._metadata
        given = [(key.lower(), value) for key, value in extra]
        replaced = {key for key, _ in given}
        kept = tuple(pair for pair in self._metadata if pair[0] not in replaced)
        return kept + tuple(pair for pair in given if pair[1])

    def _call_options(
        self, timeout: Timeout, metadata: Sequence[tuple[str, str]]
    ) -> tuple[float | None, tuple[tuple[str, str], ...]]:
        deadline = self._default_timeout if isinstance(timeout, _UseClientDefault) else timeout
        return deadline, self._call_metadata(metadata)

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        timeout: Timeout,
        metadata: Sequence[tuple[str, str]],
    ) -> _Resp:
        deadline, md = self._call_options(timeout, metadata)
        try:
            return await method(request, timeout=deadline, metadata=md)
        except grpc.aio.AioRpcError as error:
            raise AgentServerError.from_rpc_error(error) from error

    # AgentService

    async def process(
        self,
        request: agent_service_pb2.ProcessRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> agent_service_pb2.ProcessResponse:
        """Processes one user message into proposed, decided actions.

        INVALID_ARGUMENT for an empty or oversized message, NOT_FOUND for an unknown
        `session_id`.
        """
        return await self._unary(self._stubs.agent.Process, request, timeout, metadata)

    async def get_action(
        self,
        request: agent_service_pb2.GetActionRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> agent_service_pb2.GetActionResponse:
        """Returns one action; NOT_FOUND for an unknown id or another tenant's."""
        return await self._unary(self._stubs.agent.GetAction, request, timeout, metadata)

    async def list_actions(
        self,
        request: agent_service_pb2.ListActionsRequest | None = None,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> agent_service_pb2.ListActionsResponse:
        """Lists the tenant's actions newest first; by waiting states, the approval inbox."""
        if request is None:
            request = agent_service_pb2.ListActionsRequest()
        return await self._unary(self._stubs.agent.ListActions, request, timeout, metadata)

    async def approve_action(
        self,
        request: agent_service_pb2.ApproveActionRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> agent_service_pb2.ApproveActionResponse:
        """Approves a waiting action (optionally with edited parameters) and runs it.

        NOT_FOUND, PERMISSION_DENIED if the caller may not decide it, FAILED_PRECONDITION
        if it is not waiting, INVALID_ARGUMENT if edited parameters fail the schema.
        Safe to resend with the same `request_id`.
        """
        return await self._unary(self._stubs.agent.ApproveAction, request, timeout, metadata)

    async def reject_action(
        self,
        request: agent_service_pb2.RejectActionRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> agent_service_pb2.RejectActionResponse:
        """Rejects a waiting action; errors as `approve_action`. Safe to resend as-is."""
        return await self._unary(self._stubs.agent.RejectAction, request, timeout, metadata)

    async def resolve_action_outcome(
        self,
        request: agent_service_pb2.ResolveActionOutcomeRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> agent_service_pb2.ResolveActionOutcomeResponse:
        """Settles an action whose outcome is unknown: HAPPENED captures its tokens,
        DID_NOT_HAPPEN releases them. PERMISSION_DENIED without `actions:coordinate` or
        `actions:approve`, FAILED_PRECONDITION if its outcome is known. Safe to resend."""
        return await self._unary(self._stubs.agent.ResolveActionOutcome, request, timeout, metadata)

    async def list_action_definitions(
        self,
        request: agent_service_pb2.ListActionDefinitionsRequest | None = None,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> agent_service_pb2.ListActionDefinitionsResponse:
        """Lists the action registry, optionally one category."""
        if request is None:
            request = agent_service_pb2.ListActionDefinitionsRequest()
        return await self._unary(
            self._stubs.agent.ListActionDefinitions, request, timeout, metadata
        )

    # ConversationService

    async def list_user_sessions(
        self,
        request: conversation_service_pb2.ListUserSessionsRequest | None = None,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> conversation_service_pb2.ListUserSessionsResponse:
        """Lists a user's sessions (by default the caller's), newest activity first."""
        if request is None:
            request = conversation_service_pb2.ListUserSessionsRequest()
        return await self._unary(
            self._stubs.conversation.ListUserSessions, request, timeout, metadata
        )

    async def get_session(
        self,
        request: conversation_service_pb2.GetSessionRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> conversation_service_pb2.GetSessionResponse:
        """Returns one session; NOT_FOUND for an unknown or another tenant's."""
        return await self._unary(self._stubs.conversation.GetSession, request, timeout, metadata)

    async def list_messages(
        self,
        request: conversation_service_pb2.ListMessagesRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> conversation_service_pb2.ListMessagesResponse:
        """Lists a session's messages newest first; NOT_FOUND for an unknown session."""
        return await self._unary(self._stubs.conversation.ListMessages, request, timeout, metadata)

    # TokenService

    async def get_balance(
        self,
        request: token_service_pb2.GetBalanceRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> token_service_pb2.GetBalanceResponse:
        """Returns the wallet serving the tenant (and location); NOT_FOUND if none."""
        return await self._unary(self._stubs.token.GetBalance, request, timeout, metadata)

    async def list_usage(
        self,
        request: token_service_pb2.ListUsageRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> token_service_pb2.ListUsageResponse:
        """Lists a wallet's usage entries, newest first."""
        return await self._unary(self._stubs.token.ListUsage, request, timeout, metadata)

    async def list_reservations(
        self,
        request: token_service_pb2.ListReservationsRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> token_service_pb2.ListReservationsResponse:
        """Lists a wallet's reservations, newest first, optionally by state."""
        return await self._unary(self._stubs.token.ListReservations, request, timeout, metadata)

    async def summarize_usage(
        self,
        request: token_service_pb2.SummarizeUsageRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> token_service_pb2.SummarizeUsageResponse:
        """Tokens spent per UTC day and operation type over the last days."""
        return await self._unary(self._stubs.token.SummarizeUsage, request, timeout, metadata)

    async def add_tokens(
        self,
        request: token_service_pb2.AddTokensRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> token_service_pb2.AddTokensResponse:
        """Adds purchased tokens; needs a platform key with the `billing` scope.

        ALREADY_EXISTS if `request_id` was used with other content; resending the
        same request is safe.
        """
        return await self._unary(self._stubs.token.AddTokens, request, timeout, metadata)

    async def get_costs(
        self,
        request: token_service_pb2.GetCostsRequest | None = None,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> token_service_pb2.GetCostsResponse:
        """Returns the token cost of every operation type and the monthly fee."""
        if request is None:
            request = token_service_pb2.GetCostsRequest()
        return await self._unary(self._stubs.token.GetCosts, request, timeout, metadata)

    async def charge_tokens(
        self,
        request: token_service_pb2.ChargeTokensRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> token_service_pb2.ChargeTokensResponse:
        """Debits tokens at once.

        FAILED_PRECONDITION with `details.quota_violations` if the balance cannot
        cover it. Safe to resend with the same `request_id`.
        """
        return await self._unary(self._stubs.token.ChargeTokens, request, timeout, metadata)

    async def reserve_tokens(
        self,
        request: token_service_pb2.ReserveTokensRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> token_service_pb2.ReserveTokensResponse:
        """Holds tokens for a later capture or release; errors as `charge_tokens`."""
        return await self._unary(self._stubs.token.ReserveTokens, request, timeout, metadata)

    async def capture_reservation(
        self,
        request: token_service_pb2.CaptureReservationRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> token_service_pb2.CaptureReservationResponse:
        """Spends at most the reserved amount; the rest returns to the wallet.

        FAILED_PRECONDITION if the reservation has already ended.
        """
        return await self._unary(self._stubs.token.CaptureReservation, request, timeout, metadata)

    async def release_reservation(
        self,
        request: token_service_pb2.ReleaseReservationRequest,
        *,
        timeout: Timeout = DEFAULT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> token_service_pb2.ReleaseReservationResponse:
        """Returns all of a reservation to the wallet.

        FAILED_PRECONDITION if the reservation has already ended.
        """
        return await self._unary(self._stubs.token.ReleaseReservation, request, timeout, metadata)

    # EventService

    def watch_events(
        self,
        *,
        types: Sequence[str] = (),
        after_seq: int | None = None,
        heartbeat_seconds: float | None = None,
        max_backoff: float = 5.0,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> EventWatch:
        """The tenant's events as a resumable async iterator (see `EventWatch`):
        after `after_seq` (the `seq` of the last event you handled) or, when None,
        from now; only `types` (`ledger.entry`, or areas such as `action.*`) if
        given. It reconnects from its cursor when the stream breaks; needs a service
        key with the `events` scope."""
        extra = tuple(metadata)
        return EventWatch(
            self._stubs.event,
            lambda: self._call_metadata(extra),
            types=types,
            after_seq=after_seq,
            heartbeat_seconds=heartbeat_seconds,
            max_backoff=max_backoff,
        )
