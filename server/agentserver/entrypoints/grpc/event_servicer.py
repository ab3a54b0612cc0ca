"""EventService: the caller's tenant's events as a server stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

from agentserver.adapters.event_format import to_proto
from agentserver.domain.errors import PermissionDenied
from agentserver.domain.event_feed import DEFAULT_HEARTBEAT, EventFeed, Heartbeat
from agentserver.domain.identity import SCOPE_EVENTS, Authenticator, Caller
from agentserver.entrypoints.grpc import convert
from agentserver.entrypoints.grpc.base import ServicerBase, rpc_stream
from agentserver.v1 import event_service_pb2 as pb
from agentserver.v1 import event_service_pb2_grpc


def service_only(caller: Caller, what: str) -> None:
    """Events and webhooks are for services: a key bound to a person is refused."""
    if caller.person_bound:
        raise PermissionDenied(
            f"{what} is for service keys, not a key bound to a person", reason="SERVICE_ONLY"
        )


class EventServicer(ServicerBase, event_service_pb2_grpc.EventServiceServicer):
    service_name = "agentserver.v1.EventService"

    def __init__(self, auth: Authenticator, feed: EventFeed, *, access_log: bool) -> None:
        super().__init__(auth, access_log=access_log)
        self.feed = feed

    @rpc_stream(SCOPE_EVENTS)
    async def WatchEvents(
        self, request: pb.WatchEventsRequest, caller: Caller
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        service_only(caller, "WatchEvents")
        tenant = caller.tenant()
        heartbeat = DEFAULT_HEARTBEAT
        if request.HasField("heartbeat_interval"):
            heartbeat = convert.from_duration(request.heartbeat_interval, "heartbeat_interval")
        after = request.after_seq if request.HasField("after_seq") else None
        async for item in self.feed.watch(tenant, list(request.types), after, heartbeat):
            if isinstance(item, Heartbeat):
                beat = pb.Heartbeat(cursor=item.cursor)
                beat.time.FromDatetime(item.time)
                yield pb.WatchEventsResponse(heartbeat=beat)
            else:
                yield pb.WatchEventsResponse(event=to_proto(item))
