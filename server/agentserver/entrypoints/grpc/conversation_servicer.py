"""ConversationService: sessions and messages, strictly tenant-scoped; who may read
whose conversation is the domain's rule (`domain/people.py`)."""

from __future__ import annotations

from agentserver.domain.agent import AgentService
from agentserver.domain.identity import SCOPE_AGENT, Authenticator, Caller
from agentserver.domain.paging import page_request
from agentserver.entrypoints.grpc import convert
from agentserver.entrypoints.grpc.base import ServicerBase, rpc
from agentserver.v1 import conversation_service_pb2 as pb
from agentserver.v1 import conversation_service_pb2_grpc


class ConversationServicer(ServicerBase, conversation_service_pb2_grpc.ConversationServiceServicer):
    service_name = "agentserver.v1.ConversationService"

    def __init__(self, auth: Authenticator, agent: AgentService, *, access_log: bool) -> None:
        super().__init__(auth, access_log=access_log)
        self.agent = agent

    @rpc(SCOPE_AGENT)
    async def ListUserSessions(
        self, request: pb.ListUserSessionsRequest, caller: Caller
    ) -> pb.ListUserSessionsResponse:
        caller.tenant(request.tenant_id)
        page = page_request(
            request.page_size,
            request.page_token,
            default=10,
            maximum=100,
            kind="sessions",
            keys=("t", "id"),
        )
        sessions, token = await self.agent.list_sessions(caller, request.user_id, page)
        return pb.ListUserSessionsResponse(
            sessions=[convert.session_to_pb(s) for s in sessions], next_page_token=token
        )

    @rpc(SCOPE_AGENT)
    async def GetSession(
        self, request: pb.GetSessionRequest, caller: Caller
    ) -> pb.GetSessionResponse:
        session = await self.agent.get_session(caller, request.session_id)
        return pb.GetSessionResponse(session=convert.session_to_pb(session))

    @rpc(SCOPE_AGENT)
    async def ListMessages(
        self, request: pb.ListMessagesRequest, caller: Caller
    ) -> pb.ListMessagesResponse:
        page = page_request(
            request.page_size, request.page_token, default=20, maximum=200, kind="messages"
        )
        before = convert.from_ts(request.before, "before") if request.HasField("before") else None
        messages, token = await self.agent.list_messages(caller, request.session_id, before, page)
        return pb.ListMessagesResponse(
            messages=[convert.message_to_pb(m) for m in messages], next_page_token=token
        )
