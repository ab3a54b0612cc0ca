"""The one place where domain errors become gRPC statuses with rich details."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc.code_pb2 import Code
from google.rpc.error_details_pb2 import (
    BadRequest,
    ErrorInfo,
    PreconditionFailure,
    QuotaFailure,
    RetryInfo,
)
from google.rpc.status_pb2 import Status
from grpc_status import rpc_status

from agentserver.domain import errors

DOMAIN = "agentserver.v1"

_CODES: list[tuple[type[errors.DomainError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
]


def status_code(err: errors.DomainError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(err, cls):
            return code
    return grpc.StatusCode.UNKNOWN


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_grpc_status(err: errors.DomainError) -> grpc.Status:
    """A grpc.Status whose trailing metadata carries a google.rpc.Status with details."""
    code = status_code(err)
    info = ErrorInfo(reason=err.reason, domain=DOMAIN)
    details: list[object] = []
    if isinstance(err, errors.InvalidArgument):
        details.append(
            BadRequest(
                field_violations=[
                    BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in err.violations
                ]
            )
        )
    elif isinstance(err, errors.InsufficientTokens):
        v = err.violation
        details.append(
            QuotaFailure(
                violations=[QuotaFailure.Violation(subject=v.subject, description=v.description)]
            )
        )
        info.metadata["requested"] = str(v.requested)
        info.metadata["available"] = str(v.available)
    elif isinstance(err, errors.RateLimited):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(err.retry_after_seconds * 1e9))
        details.append(RetryInfo(retry_delay=delay))
    elif isinstance(err, errors.FailedPrecondition):
        details.append(
            PreconditionFailure(
                violations=[PreconditionFailure.Violation(type=err.reason, description=err.message)]
            )
        )
    details.insert(0, info)
    status = Status(
        code=Code.Value(code.name),
        message=err.message,
        details=[_pack(d) for d in details],
    )
    return rpc_status.to_status(status)
