"""What every rpc shares, written once: identity from metadata, scope, request limits,
rate limits, the error table, the audit trail, metrics and the access log."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, NoReturn, Protocol, TypeVar

import grpc

from agentserver.adapters.db.errors import is_unavailable
from agentserver.domain.audit import Change
from agentserver.domain.errors import DomainError, InvalidArgument, RateLimited, Unavailable
from agentserver.domain.identity import Authenticator, Caller
from agentserver.domain.ids import new_id
from agentserver.domain.ratelimit import NoRateLimit, RateLimiter
from agentserver.domain.telemetry import NO_TELEMETRY, Telemetry
from agentserver.entrypoints.grpc.errors import status_code, to_grpc_status
from agentserver.entrypoints.grpc.requests import Unparseable, check_request
from agentserver.logs import request_id_var

log = logging.getLogger("agentserver.rpc")

MAX_REQUEST_ID = 128

S = TypeVar("S", bound="ServicerBase")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class ServicerBase:
    # The full name of the service the servicer implements (metrics, logs).
    service_name: ClassVar[str] = ""

    def __init__(
        self,
        auth: Authenticator,
        *,
        access_log: bool = True,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.auth = auth
        self.access_log = access_log
        self.limiter: RateLimiter = limiter or NoRateLimit()
        self.audit: AuditSink | None = None
        self.telemetry: Telemetry = NO_TELEMETRY
        # Behind a proxy: the metadata header naming the client's address.
        self.client_address_header = ""


class AuditSink(Protocol):
    def record(
        self,
        *,
        tenant_id: str | None,
        actor: str,
        operation: str,
        outcome: str,
        request_id: str,
        authenticated: bool = True,
        payload: dict[str, Any] | None = None,
        key_id: str = "",
        user_id: str = "",
        object: str = "",
    ) -> None: ...


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key.lower()] = value
    return out


def _peer(context: grpc.aio.ServicerContext[Any, Any], md: dict[str, str], header: str) -> str:
    """The caller's address without its port (`ipv4:10.0.0.7`, `ipv6:[::1]`), or what a
    trusted proxy says it is in `header`."""
    if header and (named := md.get(header, "").strip()):
        return named[:64]
    peer = context.peer() or ""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


def _audit(
    audit: AuditSink,
    caller: Caller | None,
    md: dict[str, str],
    peer: str,
    operation: str,
    outcome: str,
    request_id: str,
) -> None:
    """Record an rpc in the caller's tenant's trail (one event per change it made, or
    the call itself when it changed nothing) or, when no key vouched for the call, in
    the trail of unauthenticated calls (never the tenant it names)."""
    if caller is None:
        audit.record(
            tenant_id=None,
            actor="anonymous",
            operation=operation,
            outcome=outcome,
            request_id=request_id,
            authenticated=False,
            payload={"claimed_tenant_id": md.get("x-tenant-id", "")[:64], "peer": peer},
        )
        return
    changes: list[Change | None] = [*caller.changes] or [None]
    for change in changes:
        audit.record(
            tenant_id=(change.tenant_id if change else caller.tenant_id) or None,
            actor=f"{caller.key_id}/{caller.user_id}",
            operation=change.type if change else operation,
            outcome=outcome,
            request_id=request_id,
            key_id=caller.key_id,
            user_id=caller.user_id,
            object=change.object if change else "",
            payload=(
                {
                    "rpc": operation,
                    "before": change.before,
                    "after": change.after,
                    "reason": change.reason,
                }
                if change
                else None
            ),
        )


class _Call:
    """One rpc from its start to its answer: who called, how it ended, and what is
    recorded about it (audit event, metrics, access log line), once."""

    __slots__ = (
        "caller",
        "code",
        "context",
        "failure",
        "md",
        "method",
        "peer",
        "request_id",
        "servicer",
        "start",
        "token",
    )

    def __init__(
        self, servicer: ServicerBase, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self.servicer = servicer
        self.method = method
        self.context = context
        self.md = _metadata(context)
        # A caller's correlation id, kept to a length logs and the audit trail hold.
        self.request_id = self.md.get("x-request-id", "")[:MAX_REQUEST_ID] or new_id("req")
        self.token = request_id_var.set(self.request_id)
        self.start = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.failure: grpc.Status | None = None
        self.caller: Caller | None = None
        self.peer: str | None = None
        servicer.telemetry.rpc_started(servicer.service_name, method)

    def _peer(self) -> str:
        """The caller's address, read once: grpc must not be asked after a stream's
        call has ended (its context is gone; asking crashed the process)."""
        if self.peer is None:
            self.peer = _peer(self.context, self.md, self.servicer.client_address_header)
        return self.peer

    async def admit(self, request: Any, scope: str | None) -> Caller:
        """The caller, once the request parses, the key vouches for it, its scope
        allows the rpc, every field is within its limits and the tenant's rate allows."""
        s = self.servicer
        if isinstance(request, Unparseable):
            await s.auth.admit_unvouched(self._peer())
            raise InvalidArgument(request.violation())
        md = self.md
        caller = self.caller = await s.auth.authenticate(
            md.get("authorization", ""),
            md.get("x-tenant-id", ""),
            md.get("x-user-id", ""),
            md.get("x-location-id", ""),
            self._peer(),
        )
        if scope:
            caller.require_scope(scope)
        if violation := check_request(request):
            raise InvalidArgument(violation)
        wait = await s.limiter.acquire(caller.tenant_id or f"key:{caller.key_id}")
        if wait > 0:
            raise RateLimited("too many requests for this tenant; retry after the delay", wait)
        return caller

    def failed(self, err: Exception) -> None:
        """Turn what the call raised into its status: domain errors by the one table,
        a dependency that is away as UNAVAILABLE, anything else INTERNAL (logged)."""
        if isinstance(err, DomainError):
            self.code = status_code(err)
            self.failure = to_grpc_status(err)
            if isinstance(err, RateLimited):
                tenant = self.caller.tenant_id if self.caller else ""
                self.servicer.telemetry.rate_limited(err.budget, tenant)
        elif is_unavailable(err):  # the database (or another dependency) is away
            log.warning("dependency unavailable in %s: %s", self.method, err)
            unavailable = Unavailable("a dependency is unavailable; retry shortly")
            self.code = status_code(unavailable)
            self.failure = to_grpc_status(unavailable)
        else:
            self.code = grpc.StatusCode.INTERNAL
            self.failure = None
            log.exception("unhandled error in %s", self.method)

    def cancelled(self) -> None:
        self.code = grpc.StatusCode.CANCELLED
        self.failure = None

    def finish(self) -> None:
        """Audit, count and log the call, once, now that its status is known."""
        s = self.servicer
        seconds = time.perf_counter() - self.start
        caller = self.caller
        if s.audit is not None:
            _audit(
                s.audit, caller, self.md, self._peer(), self.method, self.code.name, self.request_id
            )
        s.telemetry.rpc_handled(
            s.service_name, self.method, self.code.name, seconds, caller.tenant_id if caller else ""
        )
        if s.access_log or self.code is not grpc.StatusCode.OK:
            log.info(
                "rpc",
                extra={
                    "rpc": self.method,
                    "code": self.code.name,
                    "ms": round(seconds * 1000, 2),
                    "tenant": caller.tenant_id if caller else "",
                    "user": caller.user_id if caller else "",
                    "key_id": caller.key_id if caller else "",
                },
            )
        with contextlib.suppress(ValueError):  # a stream closed from another context
            request_id_var.reset(self.token)

    async def abort(self) -> NoReturn:
        """Answer the status `failed` set (INTERNAL without internals when it is not
        a known failure)."""
        if self.failure is None:
            await self.context.abort(self.code, f"internal error (request id {self.request_id})")
        else:
            failure = self.failure
            await self.context.abort(failure.code, failure.details, failure.trailing_metadata)
        raise AssertionError("unreachable: abort raises")


def rpc(
    scope: str | None,
) -> Callable[
    [Callable[[S, Req, Caller], Awaitable[Resp]]],
    Callable[[S, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
]:
    """Wrap a servicer method `(self, request, caller)`: authenticate, check the
    scope, run, and turn domain errors into rich statuses. Unexpected errors are
    logged with the request id and answered INTERNAL without internals."""

    def decorate(
        fn: Callable[[S, Req, Caller], Awaitable[Resp]],
    ) -> Callable[[S, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
        name = fn.__name__

        @functools.wraps(fn)
        async def wrapper(
            self: S, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
        ) -> Resp:
            call = _Call(self, name, context)
            try:
                return await fn(self, request, await call.admit(request, scope))
            except asyncio.CancelledError:
                call.cancelled()
                raise
            except Exception as err:
                call.failed(err)
            finally:
                call.finish()
            await call.abort()

        return wrapper

    return decorate


def rpc_stream(
    scope: str | None,
) -> Callable[
    [Callable[[S, Req, Caller], AsyncIterator[Resp]]],
    Callable[[S, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]],
]:
    """`rpc` for a server-streaming method: an async generator `(self, request,
    caller)`. A failure after some messages were sent ends the stream with its status."""

    def decorate(
        fn: Callable[[S, Req, Caller], AsyncIterator[Resp]],
    ) -> Callable[[S, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
        name = fn.__name__

        @functools.wraps(fn)
        async def wrapper(
            self: S, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
        ) -> AsyncIterator[Resp]:
            call = _Call(self, name, context)
            call._peer()  # now, while the call is alive
            try:
                stream = fn(self, request, await call.admit(request, scope))
                try:
                    async for message in stream:
                        yield message
                finally:  # at once, not when collected: its own `finally` may free things
                    await stream.aclose()  # type: ignore[attr-defined]
                return
            except (asyncio.CancelledError, GeneratorExit):
                call.cancelled()
                raise
            except Exception as err:
                call.failed(err)
            finally:
                call.finish()
            await call.abort()

        return wrapper

    return decorate
