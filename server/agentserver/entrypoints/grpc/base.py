"""What every rpc shares: identity from metadata, the error table, access logs."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from agentserver.adapters.db.errors import is_unavailable
from agentserver.domain.errors import DomainError, InvalidArgument, RateLimited, Unavailable
from agentserver.domain.identity import Authenticator, Caller
from agentserver.domain.ids import new_id
from agentserver.domain.ratelimit import NoRateLimit, RateLimiter
from agentserver.entrypoints.grpc.errors import status_code, to_grpc_status
from agentserver.entrypoints.grpc.requests import Unparseable, check_request
from agentserver.logs import request_id_var

log = logging.getLogger("agentserver.rpc")

MAX_REQUEST_ID = 128

S = TypeVar("S", bound="ServicerBase")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class ServicerBase:
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
    """Record an rpc in the caller's tenant's trail or, when no key vouched for the
    call, in the trail of unauthenticated calls (never the tenant it names)."""
    if caller is not None:
        audit.record(
            tenant_id=caller.tenant_id or None,
            actor=f"{caller.key_id}/{caller.user_id}",
            operation=operation,
            outcome=outcome,
            request_id=request_id,
        )
        return
    audit.record(
        tenant_id=None,
        actor="anonymous",
        operation=operation,
        outcome=outcome,
        request_id=request_id,
        authenticated=False,
        payload={"claimed_tenant_id": md.get("x-tenant-id", "")[:64], "peer": peer},
    )


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
            md = _metadata(context)
            # A caller's correlation id, kept to a length logs and the audit trail hold.
            request_id = md.get("x-request-id", "")[:MAX_REQUEST_ID] or new_id("req")
            token = request_id_var.set(request_id)
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            failure: grpc.Status | None = None
            caller: Caller | None = None
            try:
                if isinstance(request, Unparseable):
                    await self.auth.admit_unvouched(_peer(context, md, self.client_address_header))
                    raise InvalidArgument(request.violation())
                caller = await self.auth.authenticate(
                    md.get("authorization", ""),
                    md.get("x-tenant-id", ""),
                    md.get("x-user-id", ""),
                    md.get("x-location-id", ""),
                    _peer(context, md, self.client_address_header),
                )
                if scope:
                    caller.require_scope(scope)
                if violation := check_request(request):
                    raise InvalidArgument(violation)
                wait = await self.limiter.acquire(caller.tenant_id or f"key:{caller.key_id}")
                if wait > 0:
                    raise RateLimited(
                        "too many requests for this tenant; retry after the delay", wait
                    )
                return await fn(self, request, caller)
            except DomainError as err:
                code = status_code(err)
                failure = to_grpc_status(err)
            except Exception as err:
                if not is_unavailable(err):
                    code = grpc.StatusCode.INTERNAL
                    log.exception("unhandled error in %s", name)
                    failure = None
                else:  # the database (or another dependency) is away: say so, retryably
                    log.warning("dependency unavailable in %s: %s", name, err)
                    unavailable = Unavailable("a dependency is unavailable; retry shortly")
                    code = status_code(unavailable)
                    failure = to_grpc_status(unavailable)
            finally:
                if self.audit is not None:
                    peer = _peer(context, md, self.client_address_header)
                    _audit(self.audit, caller, md, peer, name, code.name, request_id)
                if self.access_log or code not in (grpc.StatusCode.OK,):
                    log.info(
                        "rpc",
                        extra={
                            "rpc": name,
                            "code": code.name,
                            "ms": round((time.perf_counter() - start) * 1000, 2),
                        },
                    )
                request_id_var.reset(token)
            if failure is None:
                await context.abort(code, f"internal error (request id {request_id})")
                raise AssertionError("unreachable: abort raises")
            await context.abort(failure.code, failure.details, failure.trailing_metadata)
            raise AssertionError("unreachable: abort raises")

        return wrapper

    return decorate
