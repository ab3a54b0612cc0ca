"""Domain errors. One table in the gRPC entrypoint maps each to a status code.

Hierarchy::

    DomainError
    ├── InvalidArgument        INVALID_ARGUMENT   (field violations)
    ├── Unauthenticated        UNAUTHENTICATED
    ├── PermissionDenied       PERMISSION_DENIED  (reason)
    ├── NotFound               NOT_FOUND
    ├── Conflict               ALREADY_EXISTS     (idempotency key reused with other content)
    ├── FailedPrecondition     FAILED_PRECONDITION (reason)
    │   └── InsufficientTokens FAILED_PRECONDITION (quota violation)
    ├── RateLimited            RESOURCE_EXHAUSTED (retry delay)
    └── Unavailable            UNAVAILABLE        (a dependency is down; retry)
"""

from __future__ import annotations

from dataclasses import dataclass


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""

    reason: str = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path and what is wrong with it."""

    field: str
    description: str


class InvalidArgument(DomainError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation] | FieldViolation) -> None:
        self.violations = violations if isinstance(violations, list) else [violations]
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls(FieldViolation(field, description))


class Unauthenticated(DomainError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    reason = "PERMISSION_DENIED"


class NotFound(DomainError):
    reason = "NOT_FOUND"


class Conflict(DomainError):
    reason = "IDEMPOTENCY_KEY_REUSED"


class FailedPrecondition(DomainError):
    reason = "FAILED_PRECONDITION"


@dataclass
class QuotaViolation:
    """What quota was exceeded: the wallet (subject) and by how much."""

    subject: str
    description: str
    requested: int = 0
    available: int = 0


class InsufficientTokens(FailedPrecondition):
    reason = "INSUFFICIENT_TOKENS"

    def __init__(self, subject: str, requested: int, available: int) -> None:
        self.violation = QuotaViolation(
            subject=subject,
            description=f"needs {requested} tokens, {available} available",
            requested=requested,
            available=available,
        )
        super().__init__(f"insufficient tokens: {self.violation.description}")


class RateLimited(DomainError):
    reason = "RATE_LIMITED"

    def __init__(self, message: str, retry_after_seconds: float, *, budget: str = "tenant") -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
        # Which limit refused: "tenant", or "unauthenticated" (per address, no valid key).
        self.budget = budget


class Unavailable(DomainError):
    reason = "UNAVAILABLE"
