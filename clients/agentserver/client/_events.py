"""A resumable watch of the tenant's events: `AgentServerClient.watch_events`."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Self

import grpc

from agentserver.v1 import event_service_pb2, event_service_pb2_grpc

from ._errors import AgentServerError, StatusCode

__all__ = ["EventWatch"]

# Failures after which the watch reconnects from its cursor: the server went away
# or is shutting down, the connection broke, or the tenant's stream limit was hit.
_RESUMABLE = frozenset(
    {
        StatusCode.UNAVAILABLE,
        StatusCode.DEADLINE_EXCEEDED,
        StatusCode.RESOURCE_EXHAUSTED,
        StatusCode.INTERNAL,
        StatusCode.UNKNOWN,
        StatusCode.CANCELLED,
        StatusCode.ABORTED,
    }
)


class EventWatch:
    """Events of the client's tenant, in sequence order, across reconnections.

    Iterate it with ``async for event in watch``; it yields `event_service_pb2.Event`
    messages and never ends on its own. When the stream breaks (a server restarting
    or shutting down, a network hiccup) it reconnects, with backoff up to
    `max_backoff` seconds, from `cursor`: the sequence number of the last event
    yielded (or of the last heartbeat), so nothing is missed or repeated. Errors it
    cannot resume from are raised as `AgentServerError`: FAILED_PRECONDITION with
    reason CURSOR_EXPIRED when the events after the cursor are no longer kept
    (start a new watch without `after_seq`), PERMISSION_DENIED, INVALID_ARGUMENT.

    `reconnects` counts the reconnections so far; `close()` (or `async with`) ends it.
    """

    def __init__(
        self,
        stub: event_service_pb2_grpc.EventServiceAsyncStub,
        metadata: Callable[[], Sequence[tuple[str, str]]],
        *,
        types: Sequence[str] = (),
        after_seq: int | None = None,
        heartbeat_seconds: float | None = None,
        max_backoff: float = 5.0,
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self._types = list(types)
        self.cursor: int | None = after_seq
        self._heartbeat = heartbeat_seconds
        self._max_backoff = max_backoff
        self._call: (
            grpc.aio.UnaryStreamCall[
                event_service_pb2.WatchEventsRequest, event_service_pb2.WatchEventsResponse
            ]
            | None
        ) = None
        self._closed = False
        self.reconnects = 0

    def _request(self) -> event_service_pb2.WatchEventsRequest:
        request = event_service_pb2.WatchEventsRequest(types=self._types)
        if self.cursor is not None:
            request.after_seq = self.cursor
        if self._heartbeat is not None:
            request.heartbeat_interval.FromNanoseconds(int(self._heartbeat * 1e9))
        return request

    def __aiter__(self) -> AsyncIterator[event_service_pb2.Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[event_service_pb2.Event]:
        failures = 0
        while not self._closed:
            call = self._stub.WatchEvents(self._request(), metadata=tuple(self._metadata()))
            self._call = call
            try:
                async for response in call:
                    failures = 0
                    if response.HasField("event"):
                        self.cursor = response.event.seq
                        yield response.event
                    else:
                        self.cursor = response.heartbeat.cursor
            except grpc.aio.AioRpcError as error:
                if self._closed:
                    return
                failure = AgentServerError.from_rpc_error(error)
                if failure.code not in _RESUMABLE:
                    raise failure from error
                failures += 1
                self.reconnects += 1
                delay = failure.details.retry_delay or min(
                    self._max_backoff, 0.1 * 2 ** min(failures, 10)
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            finally:
                call.cancel()
                self._call = None

    async def close(self) -> None:
        """Stop watching (a pending iteration ends)."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
