"""TokenService: the ledger over gRPC."""

from __future__ import annotations

from agentserver.domain.costs import CostTable
from agentserver.domain.errors import PermissionDenied
from agentserver.domain.identity import (
    SCOPE_BILLING,
    SCOPE_TOKENS_READ,
    SCOPE_TOKENS_WRITE,
    Authenticator,
    Caller,
)
from agentserver.domain.ledger import Attribution, Debit, LedgerService
from agentserver.domain.paging import page_request
from agentserver.entrypoints.grpc import convert
from agentserver.entrypoints.grpc.base import ServicerBase, rpc
from agentserver.v1 import token_service_pb2 as pb
from agentserver.v1 import token_service_pb2_grpc


class TokenServicer(ServicerBase, token_service_pb2_grpc.TokenServiceServicer):
    service_name = "agentserver.v1.TokenService"

    def __init__(
        self, auth: Authenticator, ledger: LedgerService, costs: CostTable, *, access_log: bool
    ) -> None:
        super().__init__(auth, access_log=access_log)
        self.ledger = ledger
        self.costs = costs

    @rpc(SCOPE_TOKENS_READ)
    async def GetBalance(
        self, request: pb.GetBalanceRequest, caller: Caller
    ) -> pb.GetBalanceResponse:
        tenant = caller.tenant(request.tenant_id)
        balance = await self.ledger.balance(tenant, request.location_id)
        return pb.GetBalanceResponse(balance=convert.balance_to_pb(balance))

    @rpc(SCOPE_TOKENS_READ)
    async def ListUsage(self, request: pb.ListUsageRequest, caller: Caller) -> pb.ListUsageResponse:
        tenant = caller.tenant(request.tenant_id)
        page = page_request(
            request.page_size, request.page_token, default=50, maximum=500, kind="usage"
        )
        which = convert.usage_filter_from_pb(request)
        entries, token = await self.ledger.usage(tenant, which, page)
        return pb.ListUsageResponse(
            entries=[convert.entry_to_pb(e) for e in entries], next_page_token=token
        )

    @rpc(SCOPE_TOKENS_READ)
    async def ListReservations(
        self, request: pb.ListReservationsRequest, caller: Caller
    ) -> pb.ListReservationsResponse:
        tenant = caller.tenant(request.tenant_id)
        page = page_request(
            request.page_size, request.page_token, default=50, maximum=200, kind="reservations"
        )
        states = frozenset(convert.reservation_state_from_pb(s) for s in request.states)
        found, token = await self.ledger.reservations(tenant, request.location_id, states, page)
        return pb.ListReservationsResponse(
            reservations=[convert.reservation_to_pb(r) for r in found], next_page_token=token
        )

    @rpc(SCOPE_TOKENS_READ)
    async def SummarizeUsage(
        self, request: pb.SummarizeUsageRequest, caller: Caller
    ) -> pb.SummarizeUsageResponse:
        tenant = caller.tenant(request.tenant_id)
        rows = await self.ledger.spent_by_day(tenant, request.location_id, request.days or 30)
        return pb.SummarizeUsageResponse(
            days=[
                pb.DailyUsage(day=day, operation_type=convert.op_to_pb(op), tokens=tokens)
                for day, op, tokens in rows
            ]
        )

    @rpc(SCOPE_BILLING)
    async def AddTokens(self, request: pb.AddTokensRequest, caller: Caller) -> pb.AddTokensResponse:
        if not caller.is_platform:
            raise PermissionDenied("adding tokens needs a platform API key", reason="PLATFORM_ONLY")
        entry, balance = await self.ledger.add_tokens(
            caller.tenant(request.tenant_id),
            request.location_id,
            request.amount,
            request.request_id,
            request.description,
        )
        return pb.AddTokensResponse(
            entry=convert.entry_to_pb(entry), balance=convert.balance_to_pb(balance)
        )

    @rpc(None)
    async def GetCosts(self, request: pb.GetCostsRequest, caller: Caller) -> pb.GetCostsResponse:
        return pb.GetCostsResponse(costs=[convert.cost_to_pb(c) for c in self.costs.all()])

    def _debit(
        self,
        caller: Caller,
        request: pb.ChargeTokensRequest | pb.ReserveTokensRequest,
    ) -> Debit:
        about = convert.attribution_from_pb(request)
        if caller.person_bound and about.user_id and about.user_id != caller.user_id:
            raise PermissionDenied(
                f"this API key speaks for {caller.user_id!r} only, not {about.user_id!r}",
                reason="USER_MISMATCH",
            )
        if not about.user_id and caller.user_id:
            # The entry names the user the call is made for unless the request names one.
            about = Attribution(caller.user_id, about.session_id, about.metadata)
        return Debit(
            tenant_id=caller.tenant(request.tenant_id),
            location_id=request.location_id,
            operation_type=convert.op_from_pb(request.operation_type),
            amount=request.amount,
            request_id=request.request_id,
            description=request.description,
            attribution=about,
        )

    @rpc(SCOPE_TOKENS_WRITE)
    async def ChargeTokens(
        self, request: pb.ChargeTokensRequest, caller: Caller
    ) -> pb.ChargeTokensResponse:
        entry = await self.ledger.charge(self._debit(caller, request))
        return pb.ChargeTokensResponse(entry=convert.entry_to_pb(entry))

    @rpc(SCOPE_TOKENS_WRITE)
    async def ReserveTokens(
        self, request: pb.ReserveTokensRequest, caller: Caller
    ) -> pb.ReserveTokensResponse:
        debit = self._debit(caller, request)
        if request.HasField("ttl"):
            debit = Debit(**{**debit.__dict__, "ttl": convert.from_duration(request.ttl, "ttl")})
        reservation = await self.ledger.reserve(debit)
        return pb.ReserveTokensResponse(reservation=convert.reservation_to_pb(reservation))

    @rpc(SCOPE_TOKENS_WRITE)
    async def CaptureReservation(
        self, request: pb.CaptureReservationRequest, caller: Caller
    ) -> pb.CaptureReservationResponse:
        reservation, entry = await self.ledger.capture(
            caller.tenant(request.tenant_id),
            request.reservation_id,
            request.amount if request.HasField("amount") else None,
            request.request_id,
        )
        return pb.CaptureReservationResponse(
            reservation=convert.reservation_to_pb(reservation), entry=convert.entry_to_pb(entry)
        )

    @rpc(SCOPE_TOKENS_WRITE)
    async def ReleaseReservation(
        self, request: pb.ReleaseReservationRequest, caller: Caller
    ) -> pb.ReleaseReservationResponse:
        reservation, entry = await self.ledger.release(
            caller.tenant(request.tenant_id), request.reservation_id, request.request_id
        )
        return pb.ReleaseReservationResponse(
            reservation=convert.reservation_to_pb(reservation), entry=convert.entry_to_pb(entry)
        )
