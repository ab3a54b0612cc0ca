"""Who is calling: API keys, tenants and scopes.

Keys look like `ask_<key id>_<secret>`; only a SHA-256 of the whole key is stored
(the secret is 256 random bits, so a slow hash adds nothing). A key belongs to a
tenant, or to the platform (tenant None) for billing operations such as AddTokens.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Protocol

from agentserver.domain.errors import (
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)

SCOPE_AGENT = "agent"  # Process, actions, conversations
SCOPE_TOKENS_READ = "tokens:read"
SCOPE_TOKENS_WRITE = "tokens:write"  # charge, reserve, capture, release
SCOPE_BILLING = "billing"  # AddTokens; platform keys only
TENANT_DEFAULT_SCOPES = (SCOPE_AGENT, SCOPE_TOKENS_READ, SCOPE_TOKENS_WRITE)
PLATFORM_DEFAULT_SCOPES = (SCOPE_BILLING, SCOPE_TOKENS_READ, SCOPE_TOKENS_WRITE, SCOPE_AGENT)


@dataclass(frozen=True)
class KeyRecord:
    id: str
    tenant_id: str | None
    scopes: frozenset[str]
    revoked: bool = False


# The longest ids the store keeps (a longer one is refused, never cut).
MAX_TENANT_ID = 64
MAX_USER_ID = 120
MAX_LOCATION_ID = 64


def check_lengths(*fields: tuple[str, str, int]) -> None:
    """INVALID_ARGUMENT naming every (field, value, limit) whose value is too long."""
    violations = [
        FieldViolation(name, f"must be at most {limit} characters")
        for name, value, limit in fields
        if len(value) > limit
    ]
    if violations:
        raise InvalidArgument(violations)


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the key, and the identity the metadata asserts."""

    key_id: str
    key_tenant_id: str | None
    scopes: frozenset[str]
    tenant_id: str  # the tenant acted for ('' for a platform key that named none)
    user_id: str = ""
    location_id: str = ""

    @property
    def is_platform(self) -> bool:
        return self.key_tenant_id is None

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes and "*" not in self.scopes:
            raise PermissionDenied(
                f"this API key lacks the {scope!r} scope", reason="SCOPE_MISSING"
            )

    def tenant(self, requested: str = "") -> str:
        """The tenant a request acts on: the request's `tenant_id` if given (it must
        be the caller's), else the caller's."""
        if requested and self.tenant_id and requested != self.tenant_id:
            raise PermissionDenied(
                f"tenant {requested!r} is not the caller's tenant", reason="TENANT_MISMATCH"
            )
        tenant = requested or self.tenant_id
        if not tenant:
            raise InvalidArgument.field("tenant_id", "is required (or send x-tenant-id)")
        return tenant


def generate_key() -> tuple[str, str]:
    """A new (key id, full key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"ask_{key_id}_{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore(Protocol):
    async def find_key(self, key_hash: str) -> KeyRecord | None: ...


@dataclass
class Authenticator:
    """Resolves `authorization` + `x-tenant-id`/`x-user-id`/`x-location-id` to a Caller.

    Keys are cached for `ttl` seconds to keep the hot path off the database; a
    revoked key stops working within that time on every replica.
    """

    keys: KeyStore
    ttl: float = 10.0
    _cache: dict[str, tuple[float, KeyRecord | None]] = field(default_factory=dict)

    async def authenticate(
        self, authorization: str, tenant_id: str, user_id: str, location_id: str
    ) -> Caller:
        check_lengths(
            ("x-tenant-id", tenant_id, MAX_TENANT_ID),
            ("x-user-id", user_id, MAX_USER_ID),
            ("x-location-id", location_id, MAX_LOCATION_ID),
        )
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("send `authorization: Bearer <api key>`")
        record = await self._lookup(hash_key(key.strip()))
        if record is None or record.revoked:
            raise Unauthenticated("unknown or revoked API key")
        if record.tenant_id is not None and tenant_id and tenant_id != record.tenant_id:
            raise PermissionDenied(
                f"x-tenant-id {tenant_id!r} is not this key's tenant", reason="TENANT_MISMATCH"
            )
        return Caller(
            key_id=record.id,
            key_tenant_id=record.tenant_id,
            scopes=record.scopes,
            tenant_id=record.tenant_id or tenant_id,
            user_id=user_id,
            location_id=location_id,
        )

    async def _lookup(self, key_hash: str) -> KeyRecord | None:
        now = time.monotonic()
        hit = self._cache.get(key_hash)
        if hit and hit[0] > now:
            return hit[1]
        record = await self.keys.find_key(key_hash)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key_hash] = (now + self.ttl, record)
        return record
