"""ConversationService: sessions and messages, strictly tenant-scoped."""

from __future__ import annotations

from agentserver.domain.conversations import ConversationStore
from agentserver.domain.errors import InvalidArgument
from agentserver.domain.identity import SCOPE_AGENT, Authenticator, Caller
from agentserver.domain.paging import page_request
from agentserver.entrypoints.grpc import convert
from agentserver.entrypoints.grpc.base import ServicerBase, rpc
from agentserver.v1 import conversation_service_pb2 as pb
from agentserver.v1 import conversation_service_pb2_grpc


class ConversationServicer(ServicerBase, conversation_service_pb2_grpc.ConversationServiceServicer):
    def __init__(
        self, auth: Authenticator, conversations: ConversationStore, *, access_log: bool
    ) -> None:
        super().__init__(auth, access_log=access_log)
        self.conversations = conversations

    @rpc(SCOPE_AGENT)
    async def ListUserSessions(
        self, request: pb.ListUserSessionsRequest, caller: Caller
    ) -> pb.ListUserSessionsResponse:
        tenant = caller.tenant(request.tenant_id)
        user = request.user_id or caller.user_id
        if not user:
            raise InvalidArgument.field("user_id", "is required (or send x-user-id)")
        page = page_request(
            request.page_size,
            request.page_token,
            default=10,
            maximum=100,
            kind="sessions",
            keys=("t", "id"),
        )
        sessions, token = await self.conversations.list_sessions(tenant, user, page)
        return pb.ListUserSessionsResponse(
            sessions=[convert.session_to_pb(s) for s in sessions], next_page_token=token
        )

    @rpc(SCOPE_AGENT)
    async def GetSession(
        self, request: pb.GetSessionRequest, caller: Caller
    ) -> pb.GetSessionResponse:
        if not request.session_id:
            raise InvalidArgument.field("session_id", "is required")
        session = await self.conversations.get_session(caller.tenant(), request.session_id)
        return pb.GetSessionResponse(session=convert.session_to_pb(session))

    @rpc(SCOPE_AGENT)
    async def ListMessages(
        self, request: pb.ListMessagesRequest, caller: Caller
    ) -> pb.ListMessagesResponse:
        if not request.session_id:
            raise InvalidArgument.field("session_id", "is required")
        page = page_request(
            request.page_size, request.page_token, default=20, maximum=200, kind="messages"
        )
        before = convert.from_ts(request.before, "before") if request.HasField("before") else None
        messages, token = await self.conversations.list_messages(
            caller.tenant(), request.session_id, before, page
        )
        return pb.ListMessagesResponse(
            messages=[convert.message_to_pb(m) for m in messages], next_page_token=token
        )
