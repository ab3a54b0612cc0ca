"""AgentService: Process, the action inbox and decisions, the registry."""

from __future__ import annotations

from agentserver.domain.actions import ActionFilter
from agentserver.domain.agent import AgentService, ProcessInput
from agentserver.domain.costs import CostTable
from agentserver.domain.identity import SCOPE_AGENT, Authenticator, Caller
from agentserver.domain.paging import page_request
from agentserver.domain.registry import Registry
from agentserver.entrypoints.grpc import convert
from agentserver.entrypoints.grpc.base import ServicerBase, rpc
from agentserver.v1 import agent_service_pb2 as pb
from agentserver.v1 import agent_service_pb2_grpc

_HAPPENED = {pb.ACTION_OUTCOME_HAPPENED: True, pb.ACTION_OUTCOME_DID_NOT_HAPPEN: False}


class AgentServicer(ServicerBase, agent_service_pb2_grpc.AgentServiceServicer):
    service_name = "agentserver.v1.AgentService"

    def __init__(
        self,
        auth: Authenticator,
        agent: AgentService,
        registry: Registry,
        costs: CostTable,
        *,
        access_log: bool,
    ) -> None:
        super().__init__(auth, access_log=access_log)
        self.agent = agent
        self.registry = registry
        self.costs = costs

    @rpc(SCOPE_AGENT)
    async def Process(self, request: pb.ProcessRequest, caller: Caller) -> pb.ProcessResponse:
        context = request.context
        result = await self.agent.process(
            caller,
            ProcessInput(
                message=request.message,
                session_id=request.session_id,
                location_id=context.location_id,
                user_permissions=list(context.user_permissions),
                business_context=convert.struct_to_dict(
                    context.business_context, "context.business_context"
                ),
            ),
        )
        return pb.ProcessResponse(
            response=result.reply,
            decision_level=convert.level_to_pb(result.level),
            actions=[convert.action_to_pb(a) for a in result.actions],
            reasoning=result.reasoning,
            confidence=result.confidence,
            session_id=result.session_id,
            engine=result.engine,
        )

    @rpc(SCOPE_AGENT)
    async def GetAction(self, request: pb.GetActionRequest, caller: Caller) -> pb.GetActionResponse:
        action, right = await self.agent.get_action(caller, request.action_id)
        return pb.GetActionResponse(action=convert.action_to_pb(action, right))

    @rpc(SCOPE_AGENT)
    async def ListActions(
        self, request: pb.ListActionsRequest, caller: Caller
    ) -> pb.ListActionsResponse:
        page = page_request(
            request.page_size, request.page_token, default=20, maximum=200, kind="actions"
        )
        flt = ActionFilter(
            states=frozenset(convert.state_from_pb(s) for s in request.states),
            session_id=request.session_id,
            levels=frozenset(convert.level_from_pb(v) for v in request.levels),
        )
        actions, token = await self.agent.list_actions(
            caller, flt, page, decidable=request.decidable_only
        )
        return pb.ListActionsResponse(
            actions=[convert.action_to_pb(a, right) for a, right in actions],
            next_page_token=token,
        )

    @rpc(SCOPE_AGENT)
    async def ApproveAction(
        self, request: pb.ApproveActionRequest, caller: Caller
    ) -> pb.ApproveActionResponse:
        parameters = (
            convert.struct_to_dict(request.parameters, "parameters")
            if request.HasField("parameters")
            else None
        )
        action = await self.agent.approve(caller, request.action_id, parameters, request.request_id)
        return pb.ApproveActionResponse(action=convert.action_to_pb(action))

    @rpc(SCOPE_AGENT)
    async def RejectAction(
        self, request: pb.RejectActionRequest, caller: Caller
    ) -> pb.RejectActionResponse:
        action = await self.agent.reject(
            caller, request.action_id, request.reason, request.request_id
        )
        return pb.RejectActionResponse(action=convert.action_to_pb(action))

    @rpc(SCOPE_AGENT)
    async def ResolveActionOutcome(
        self, request: pb.ResolveActionOutcomeRequest, caller: Caller
    ) -> pb.ResolveActionOutcomeResponse:
        action = await self.agent.resolve_outcome(
            caller,
            request.action_id,
            _HAPPENED.get(request.outcome),
            request.note,
            request.request_id,
        )
        return pb.ResolveActionOutcomeResponse(action=convert.action_to_pb(action))

    @rpc(SCOPE_AGENT)
    async def ListActionDefinitions(
        self, request: pb.ListActionDefinitionsRequest, caller: Caller
    ) -> pb.ListActionDefinitionsResponse:
        definitions = (
            self.registry.by_category(request.category) if request.category else self.registry.all()
        )
        return pb.ListActionDefinitionsResponse(
            definitions=[
                convert.definition_to_pb(d, self.costs, self.registry)
                for d in sorted(definitions, key=lambda d: d.name)
            ]
        )
