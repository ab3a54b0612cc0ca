"""The one error the client raises, and the parsed `google.rpc` details it carries.

Every gRPC failure of an rpc method (a status from the server, a missed deadline,
an unreachable server) is translated here, once, at the client's boundary::

    Exception
    └── AgentServerError          any rpc that did not end OK
          .code: StatusCode       which failure (mirrors grpc.StatusCode by name and number)
          .message: str           the status message, for people
          .details: ErrorDetails  the rich details from `grpc-status-details-bin`
            ├── field_violations         list[FieldViolation]         google.rpc.BadRequest
            ├── reason, domain, metadata str | None, dict[str, str]   google.rpc.ErrorInfo
            ├── quota_violations         list[QuotaViolation]         google.rpc.QuotaFailure
            ├── retry_delay              float | None (seconds)       google.rpc.RetryInfo
            └── precondition_violations  list[PreconditionViolation]  google.rpc.PreconditionFailure

There are deliberately no subclasses per code: branch on `.code` (and `.details.reason`
for the server's machine-readable reason). Misuse of the client itself (for example
calling it after `close()`) is not a gRPC failure and is not translated.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError

# googleapis-common-protos ships .pyi stubs but no py.typed marker, so mypy reads these
# as untyped unless configured to follow them; the ignores are harmless once it is.
from google.rpc.error_details_pb2 import (  # type: ignore[import-untyped, unused-ignore]
    BadRequest,
    ErrorInfo,
    PreconditionFailure,
    QuotaFailure,
    RetryInfo,
)
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "AgentServerError",
    "ErrorDetails",
    "FieldViolation",
    "PreconditionViolation",
    "QuotaViolation",
    "StatusCode",
]

_DETAILS_KEY = "grpc-status-details-bin"


class StatusCode(enum.IntEnum):
    """gRPC status codes, with the names and numbers of `grpc.StatusCode`.

    The client's own enum so callers need not import grpc to branch on a code;
    `StatusCode.from_grpc` converts.
    """

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def from_grpc(cls, code: grpc.StatusCode | None) -> StatusCode:
        """The code with the same number; UNKNOWN for None."""
        if code is None:
            return cls.UNKNOWN
        number: int = code.value[0]
        return cls(number)


# Codes where the same request may succeed if sent again later, even without RetryInfo.
_TRANSIENT_CODES = frozenset(
    {StatusCode.UNAVAILABLE, StatusCode.ABORTED, StatusCode.DEADLINE_EXCEEDED}
)


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field (from `google.rpc.BadRequest`): its path and what is wrong."""

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One exceeded quota (from `google.rpc.QuotaFailure`), for example a wallet's balance."""

    subject: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition (from `google.rpc.PreconditionFailure`)."""

    type: str
    subject: str
    description: str


@dataclass(frozen=True)
class ErrorDetails:
    """The rich details of a failed rpc; empty when the server sent none."""

    field_violations: list[FieldViolation] = field(default_factory=list)
    reason: str | None = None
    """`ErrorInfo.reason`: the server's machine-readable cause, e.g. `INSUFFICIENT_TOKENS`."""
    domain: str | None = None
    """`ErrorInfo.domain`: `agentserver` for errors the service raised itself."""
    metadata: dict[str, str] = field(default_factory=dict)
    """`ErrorInfo.metadata`: structured facts about the error."""
    quota_violations: list[QuotaViolation] = field(default_factory=list)
    retry_delay: float | None = None
    """`RetryInfo.retry_delay` in seconds: wait at least this long before retrying."""
    precondition_violations: list[PreconditionViolation] = field(default_factory=list)

    @classmethod
    def from_status(cls, status: Status) -> ErrorDetails:
        """Parses the details of a `google.rpc.Status`; unknown detail types are skipped."""
        field_violations: list[FieldViolation] = []
        quota_violations: list[QuotaViolation] = []
        precondition_violations: list[PreconditionViolation] = []
        reason: str | None = None
        domain: str | None = None
        metadata: dict[str, str] = {}
        retry_delay: float | None = None
        for detail in status.details:
            kind = detail.TypeName()
            if kind == "google.rpc.BadRequest":
                bad_request = BadRequest()
                detail.Unpack(bad_request)
                field_violations.extend(
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                )
            elif kind == "google.rpc.ErrorInfo":
                info = ErrorInfo()
                detail.Unpack(info)
                reason, domain = info.reason, info.domain
                metadata.update(info.metadata)
            elif kind == "google.rpc.QuotaFailure":
                quota = QuotaFailure()
                detail.Unpack(quota)
                quota_violations.extend(
                    QuotaViolation(v.subject, v.description) for v in quota.violations
                )
            elif kind == "google.rpc.RetryInfo":
                retry = RetryInfo()
                detail.Unpack(retry)
                retry_delay = retry.retry_delay.ToNanoseconds() / 1e9
            elif kind == "google.rpc.PreconditionFailure":
                precondition = PreconditionFailure()
                detail.Unpack(precondition)
                precondition_violations.extend(
                    PreconditionViolation(v.type, v.subject, v.description)
                    for v in precondition.violations
                )
        return cls(
            field_violations=field_violations,
            reason=reason,
            domain=domain,
            metadata=metadata,
            quota_violations=quota_violations,
            retry_delay=retry_delay,
            precondition_violations=precondition_violations,
        )


class AgentServerError(Exception):
    """An rpc did not end OK.

    Retrying is the caller's decision: the client never retries by itself. Writes
    (approve, reject, add, charge, reserve, capture, release) are idempotent by
    `request_id`, so resending the *same* request, with the same `request_id`, is
    safe; it returns the first result. `is_retryable` says whether a retry may help.
    """

    def __init__(self, code: StatusCode, message: str, details: ErrorDetails | None = None) -> None:
        details = details if details is not None else ErrorDetails()
        # All three in args, so the error pickles (e.g. across process pools).
        super().__init__(code, message, details)
        self.code = code
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name

    def __repr__(self) -> str:
        return f"AgentServerError(code={self.code.name}, message={self.message!r})"

    @property
    def is_retryable(self) -> bool:
        """True if the same request may succeed later.

        That is when the server attached a retry delay, or the code is transient
        (UNAVAILABLE, ABORTED, DEADLINE_EXCEEDED). Wait `details.retry_delay`
        seconds when it is set.
        """
        return self.details.retry_delay is not None or self.code in _TRANSIENT_CODES

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError) -> AgentServerError:
        """Translates a failed call, parsing `grpc-status-details-bin` if present.

        The call's own code and message win over those inside the status proto; a
        malformed details trailer yields empty details rather than a second error.
        """
        code = StatusCode.from_grpc(error.code())
        message = error.details() or ""
        return cls(code, message, _details_of(error))


def _details_of(error: grpc.aio.AioRpcError) -> ErrorDetails:
    trailing = error.trailing_metadata()
    if not trailing:
        return ErrorDetails()
    for key, value in trailing:
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = Status()
        try:
            status.ParseFromString(value)
            return ErrorDetails.from_status(status)
        except DecodeError:
            return ErrorDetails()
    return ErrorDetails()
